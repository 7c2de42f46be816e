"""Seeded mutation fuzzing of real ELF, PE and Mach-O files through ``read_binary``.

Each format gets CASES mutated copies of small real binaries (bit flips, words set to
edge values, random bytes, truncations), weighted towards the headers and tables at the
start and end of the file where the readers look. Every case must end in a BinaryInfo or
a BinaryFormatError; any other exception, or a case that runs past CASE_LIMIT_S, fails.

The batch runs in a child process (this file run as a script) so that a hang or a crash
is a failed test with the case named, not a stuck or dead test session.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback

CASES = 1000
SEED = 20261130
CASE_LIMIT_S = 10
BATCH_LIMIT_S = 300
# Where the readers look: headers and load commands at the start, section headers and
# linkedit tables at the end.
HOT_BYTES = 4096
EDGE_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)


def _elf_inputs():
    dynload = sysconfig.get_config_var("DESTSHARED") or ""
    names = ("_bisect", "_uuid", "_contextvars", "_opcode")
    found = [p for n in names for p in sorted(glob.glob(os.path.join(dynload, n + ".*.so")))]
    return found


def _pe_inputs():
    from support import windows_embed

    folder = windows_embed.embed_dir("3.10")
    return [str(folder / n) for n in ("_queue.pyd", "select.pyd", "python3.dll")]


def _macho_inputs():
    from support import macos_wheels as mw

    wanted = {
        "numpy-arm64": "_operand_flag_tests.cpython-312-darwin.so",
        "numpy-x86_64": "_operand_flag_tests.cpython-312-darwin.so",
        "markupsafe-universal2": "_speedups.cpython-312-darwin.so",
    }
    return [str(p) for key, name in wanted.items() for p in mw.binaries(key) if p.name == name]


# ---------------------------------------------------------------------------
# The child: mutate, read, classify the outcome.


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        at = _offset(len(out), rng)
        if kind < 0.35:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.7:
            at &= ~3
            if at + 4 <= len(out):
                order = rng.choice(("little", "big"))
                out[at:at + 4] = rng.choice(EDGE_WORDS).to_bytes(4, order)
        elif kind < 0.9:
            out[at] = rng.randrange(256)
        elif len(out) > 1:
            del out[rng.randrange(1, len(out)):]
    return bytes(out)


def _offset(size: int, rng: random.Random) -> int:
    if rng.random() < 0.7 and size > 2 * HOT_BYTES:
        at = rng.randrange(2 * HOT_BYTES)
        return at if at < HOT_BYTES else size - 2 * HOT_BYTES + at
    return rng.randrange(size)


class CaseTimeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise CaseTimeout()


def run_batch(fmt: str, paths, cases: int) -> dict:
    from gilclone.platforms.binary import read_binary

    from gilclone.errors import BinaryFormatError

    originals = [open(p, "rb").read() for p in paths]
    counts = {"ok": 0, "error": 0}
    failures = []
    signal.signal(signal.SIGALRM, _alarm)
    slowest = 0.0
    with tempfile.TemporaryDirectory(prefix="gc-fuzz-") as work:
        for case in range(cases):
            rng = random.Random(f"{SEED}-{fmt}-{case}")
            which = rng.randrange(len(paths))
            target = os.path.join(work, f"{case}-" + os.path.basename(paths[which]))
            with open(target, "wb") as f:
                f.write(mutate(originals[which], rng))
            start = time.perf_counter()
            signal.alarm(CASE_LIMIT_S)
            try:
                read_binary(target)
                counts["ok"] += 1
            except BinaryFormatError as exc:
                counts["error"] += 1
                if target not in str(exc):
                    failures.append({"case": case, "error": f"message without the path: {exc}"})
            except CaseTimeout:
                failures.append({"case": case, "error": f"no answer in {CASE_LIMIT_S} s"})
            except Exception as exc:  # what the test exists to find
                failures.append({"case": case, "source": os.path.basename(paths[which]),
                                 "error": f"{type(exc).__name__}: {exc}",
                                 "where": traceback.format_exc().splitlines()[-3:]})
            finally:
                signal.alarm(0)
            slowest = max(slowest, time.perf_counter() - start)
            os.unlink(target)
    return {"format": fmt, "cases": cases, **counts, "failures": failures,
            "slowest_s": round(slowest, 3)}


# ---------------------------------------------------------------------------
# The tests


def _fuzz(fmt, paths, capsys):
    import support

    support.require(len(paths) >= 1, f"no real {fmt} files to fuzz")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, fmt, str(CASES), *paths], env=env,
                          capture_output=True, text=True, timeout=BATCH_LIMIT_S)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"fuzz child died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\nfuzz {fmt}: {result['cases']} cases, {result['ok']} read, "
              f"{result['error']} clean errors, slowest {result['slowest_s']} s, "
              f"batch {elapsed:.1f} s")
    assert not result["failures"], json.dumps(result["failures"][:5], indent=1)
    assert result["ok"] + result["error"] == CASES
    # Mutations that hit nothing the reader checks must still read; damage must be seen.
    assert result["ok"] > 0 and result["error"] > CASES // 10, result


def test_fuzz_elf(capsys):
    _fuzz("elf", _elf_inputs(), capsys)


def test_fuzz_pe(capsys):
    _fuzz("pe", _pe_inputs(), capsys)


def test_fuzz_macho(capsys):
    _fuzz("macho", _macho_inputs(), capsys)


if __name__ == "__main__":
    print(json.dumps(run_batch(sys.argv[1], sys.argv[3:], int(sys.argv[2]))))
