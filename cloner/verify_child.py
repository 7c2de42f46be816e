"""The process that ``gilclone verify`` starts: load every clone of a set and prove independence.

Run as ``python -c ... DIR`` by cloner/verify.py; prints one JSON report on
stdout. Kept apart so that a clone that crashes takes down only this process.
Each check returns (ok, detail) with what was measured.
"""

import ctypes
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

from gilclone.cloner import store
from gilclone.cloner.load import clone_for, environment_check, python_for_host
from gilclone.platforms.binary import read_binary

from gilclone.errors import GilcloneError

log = logging.getLogger("gilclone.cloner.verify_child")  # run as __main__, named all the same

Check = Tuple[str, bool, str]
PROBE_MODULE = "_decimal"  # has C-level static state (DefaultContext) worth comparing
BUSY_SECONDS = 0.4
HOLD_SECONDS = 20  # how long a clone spins holding its GIL before the check gives up


def mapped_images() -> Dict[str, List[int]]:
    """Path -> start addresses of its mappings, from this process's own map of loaded objects."""
    if os.name == "nt":
        return _windows_modules()
    images: Dict[str, List[int]] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                start = int(parts[0].split("-")[0], 16)
                images.setdefault(parts[5].strip(), []).append(start)
    return images


def _windows_modules() -> Dict[str, List[int]]:
    """Windows: path -> [base address] of every module loaded (psapi EnumProcessModules)."""
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    psapi = ctypes.WinDLL("psapi", use_last_error=True)
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    psapi.EnumProcessModules.argtypes = [wintypes.HANDLE, ctypes.POINTER(ctypes.c_void_p),
                                         wintypes.DWORD, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetModuleFileNameW.argtypes = [ctypes.c_void_p, wintypes.LPWSTR, wintypes.DWORD]
    process = kernel32.GetCurrentProcess()
    count = 512
    while True:
        handles = (ctypes.c_void_p * count)()
        needed = wintypes.DWORD()
        if not psapi.EnumProcessModules(process, handles, ctypes.sizeof(handles), ctypes.byref(needed)):
            raise ctypes.WinError(ctypes.get_last_error())
        if needed.value <= ctypes.sizeof(handles):
            break
        count = needed.value // ctypes.sizeof(ctypes.c_void_p) + 16
    images: Dict[str, List[int]] = {}
    buf = ctypes.create_unicode_buffer(32768)
    for handle in handles[: needed.value // ctypes.sizeof(ctypes.c_void_p)]:
        if handle and kernel32.GetModuleFileNameW(handle, buf, len(buf)):
            images.setdefault(os.path.realpath(buf.value), []).append(handle)
    return images


class Verifier:
    def __init__(self, cset: store.CloneSet):
        self.cset = cset
        self.python = python_for_host(cset.python)
        self.clones = [clone_for(r, cset.python) for r in cset.clones]
        self.checks: List[Check] = []

    def add(self, name: str, fn: Callable[[], Tuple[bool, str]]) -> bool:
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except (GilcloneError, OSError, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        log.info("%s %s in %.2f s: %s", name, "holds" if ok else "FAILED", time.perf_counter() - t0, detail)
        self.checks.append((name, bool(ok), detail))
        return ok

    def run(self) -> dict:
        if len(self.clones) < 1:
            self.checks.append(("clones_present", False, "the set has no complete clone; run gilclone prepare"))
            return self.report()
        # files_intact and the identities were checked by the parent (cloner/audit.py)
        if not self.add("distinct_sonames", self.distinct_sonames):
            return self.report()
        self.add("environment", lambda: environment_check(self.cset.python))
        self.add("independent_initialisation", self.independent_initialisation)
        self.add("distinct_images", self.distinct_images)
        self.add("distinct_runtime_state", self.distinct_runtime)
        self.add("sentinel_isolation", self.sentinel_isolation)
        if self.add("extension_copies_bound", self.extension_copies_bound):
            self.add("extension_state_isolation", self.extension_state)
        if len(self.clones) >= 2:
            self.add("parallel_gils", self.parallel_gils)
        return self.report()

    def report(self) -> dict:
        return {
            "ok": all(ok for _, ok, _ in self.checks),
            "clones": len(self.clones),
            "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
        }

    # -- checks -------------------------------------------------------------------

    def distinct_sonames(self):
        names = [read_binary(c.record.libpython).name for c in self.clones]
        source = read_binary(self.python["libpython"]).name
        if os.name == "nt":  # Windows matches DLL names whatever their case
            names, source = [n.lower() for n in names], source.lower()
        if source in names:
            bad = [c.index for c, n in zip(self.clones, names) if n == source]
            return False, f"clone(s) {bad} keep the original soname {source}: they would be taken for the host's libpython"
        if len(set(names)) != len(names):
            return False, f"sonames repeat: {names}"
        return True, f"{len(names)} distinct sonames, none equal to {source}: {', '.join(names)}"

    def independent_initialisation(self):
        apis = [c.load() for c in self.clones]
        states = []
        for i, clone in enumerate(self.clones):
            before = [api.Py_IsInitialized() for api in apis]
            if any(before[i:]):
                return False, f"before initialising clone {i}, Py_IsInitialized() gave {before}"
            opener = threading.Thread(target=clone.open, kwargs={"sys_path": self.python["sys_path"]})
            errors = []
            opener.run = _capture(opener.run, errors)
            opener.start()
            opener.join()
            if errors:
                raise errors[0]
            states.append([api.Py_IsInitialized() for api in apis])
        expected = [[1 if j <= i else 0 for j in range(len(apis))] for i in range(len(apis))]
        return states == expected, f"Py_IsInitialized() of every clone after each initialisation: {states}"

    def distinct_images(self):
        images = mapped_images()
        starts = {}
        for c in self.clones:
            path = os.path.realpath(c.record.libpython)
            if path not in images:
                return False, f"{path} is not among this process's loaded images"
            starts[c.index] = min(images[path])
        host_name = re.compile(r"^(libpython3|python3\d+\.dll$)", re.IGNORECASE)
        host = [p for p in images if host_name.match(os.path.basename(p))]
        distinct = len(set(starts.values())) == len(starts)
        detail = ", ".join(f"clone {i} at {hex(a)}" for i, a in sorted(starts.items()))
        return distinct, f"{detail}; host libpython: {host or 'linked into the executable'}"

    def distinct_runtime(self):
        addresses = {c.index: ctypes.addressof(ctypes.c_char.in_dll(c.api.lib, "_PyRuntime")) for c in self.clones}
        host = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
        values = list(addresses.values()) + [host]
        ok = len(set(values)) == len(values)
        detail = ", ".join(f"clone {i} {hex(a)}" for i, a in sorted(addresses.items()))
        return ok, f"_PyRuntime: {detail}, host {hex(host)}"

    def sentinel_isolation(self):
        token = f"gilclone-{os.getpid()}-{time.time_ns()}"
        first = self.clones[0]
        first.run_source(f"import sys\nsys.gilclone_sentinel = {token!r}\ngilclone_sentinel = {token!r}")
        seen = {}
        for c in self.clones:
            seen[c.index] = c.run_source(
                "import sys\n_r = repr((getattr(sys, 'gilclone_sentinel', None), "
                "globals().get('gilclone_sentinel')))",
                "_r",
            )
        own = repr((token, token))
        others_clean = all(v == repr((None, None)) for i, v in seen.items() if i != first.index)
        ok = seen[first.index] == own and others_clean and not hasattr(sys, "gilclone_sentinel")
        return ok, f"sentinel set in clone {first.index}; seen by each clone: {seen}; host has it: {hasattr(sys, 'gilclone_sentinel')}"

    def extension_copies_bound(self):
        """Before importing, make each clone's copy of the probe module and check its binding."""
        origin = self.probe_origin()
        problems, twins = [], []
        for c in self.clones:
            twin = c.twins.twin_for(origin)
            twins.append(twin)
            needed = read_binary(twin).needed
            if os.name == "nt":
                needed = [n.lower() for n in needed]
                stray = [n for n in needed if re.match(r"python3\d*\.dll$", n)]
                if stray:
                    problems.append(f"clone {c.index}'s copy {twin} still imports {stray}")
            soname = c.record.soname.lower() if os.name == "nt" else c.record.soname
            if soname not in needed:
                problems.append(f"clone {c.index}'s copy {twin} has no DT_NEEDED on {c.record.soname} (needed: {list(needed)}); it would bind to the host")
        if len(set(twins)) != len(twins):
            problems.append(f"copies are shared between clones: {twins}")
        return not problems, "; ".join(problems) or f"{len(twins)} copies of {PROBE_MODULE}, each needing its clone's libpython"

    def probe_origin(self) -> str:
        """The probe module's file of the set's own Python (not of this interpreter)."""
        names = [PROBE_MODULE + self.python["extension_suffix"]]
        if os.name == "nt":
            names.append(PROBE_MODULE + ".pyd")  # CPython's own .pyd files carry no tag
        for d in self.python["extension_dirs"]:
            for name in names:
                if os.path.isfile(os.path.join(d, name)):
                    return os.path.join(d, name)
        raise ValueError(f"{' or '.join(names)} not found in {self.python['extension_dirs']}")

    def extension_state(self):
        files, precs = {}, {}
        for c in self.clones:
            c.run_source(f"import {PROBE_MODULE}\n{PROBE_MODULE}.DefaultContext.prec = {11 + c.index}")
        for c in self.clones:
            precs[c.index] = int(c.run_source(f"import {PROBE_MODULE}\n_r = str({PROBE_MODULE}.DefaultContext.prec)", "_r"))
            files[c.index] = c.run_source(f"import sys\n_r = sys._gilclone_twins[{PROBE_MODULE}.__spec__.origin]", "_r")
        images = mapped_images()
        mapped = {i: os.path.realpath(f) in images for i, f in files.items()}
        ok = (
            len(set(files.values())) == len(files)
            and all(mapped.values())
            and all(p == 11 + i for i, p in precs.items())
        )
        return ok, (
            f"{PROBE_MODULE} loaded from {len(set(files.values()))} files (mapped: {mapped}); "
            f"DefaultContext.prec per clone after each set its own: {precs}"
        )

    def parallel_gils(self):
        """One clone spins holding its GIL while another runs: only separate GILs allow that.

        The first clone sets a 1000 s switch interval and spins until a flag in
        host memory is set; the second clone sets it. With one GIL shared by both,
        the second could not run until the spin gave up after HOLD_SECONDS, and the
        check fails; with two it passes at once, however busy the machine is. The
        speed of two busy loops is measured once and reported, not judged: on a
        loaded machine it says more about the load than about the clones.
        """
        holder, setter = self.clones[:2]
        flags = (ctypes.c_int * 2)()  # [0]: set by the setter, [1]: the holder is spinning
        address = ctypes.addressof(flags)
        spin = (
            "import ctypes, sys, time\n"
            f"_f = (ctypes.c_int * 2).from_address({address})\n"
            "_old = sys.getswitchinterval()\nsys.setswitchinterval(1000.0)\n"
            f"_end = time.monotonic() + {HOLD_SECONDS}\n"
            "_f[1] = 1\n"
            "while not _f[0] and time.monotonic() < _end:\n    pass\n"
            "sys.setswitchinterval(_old)\n"
            "_r = 'released' if _f[0] else 'timed out'"
        )
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(r=holder.run_source(spin, "_r")))
        started = time.monotonic()
        thread.start()
        while not flags[1] and thread.is_alive():
            time.sleep(0.001)
        setter.run_source(f"import ctypes\n(ctypes.c_int * 2).from_address({address})[0] = 1")
        thread.join()
        took = time.monotonic() - started
        ok = outcome.get("r") == "released"
        return ok, (
            f"clone {setter.index} ran while clone {holder.index} spun holding its GIL "
            f"({outcome.get('r', 'holder failed')} after {took:.2f} s); {self._busy_rates()}"
        )

    def _busy_rates(self) -> str:
        pair = self.clones[:2]
        loop = (
            "import time\n_t0 = time.perf_counter(); _n = 0\n"
            f"while time.perf_counter() - _t0 < {BUSY_SECONDS}:\n"
            "    for _ in range(1000): _n += 1\n"
            "_r = repr((_t0, time.perf_counter(), _n))"
        )
        solo = eval(pair[0].run_source(loop, "_r"))
        solo_rate = solo[2] / (solo[1] - solo[0])
        results = {}

        def busy(clone):
            results[clone.index] = eval(clone.run_source(loop, "_r"))

        threads = [threading.Thread(target=busy, args=(c,)) for c in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (s0, e0, n0), (s1, e1, n1) = results[pair[0].index], results[pair[1].index]
        rates = [n0 / (e0 - s0) / solo_rate, n1 / (e1 - s1) / solo_rate]
        return (
            f"two busy loops ran at {rates[0]:.0%} and {rates[1]:.0%} of the solo rate "
            f"(combined {sum(rates):.2f}x one clone, {os.cpu_count()} CPUs, for the record)"
        )


def _capture(run, errors):
    def wrapped():
        try:
            run()
        except BaseException as exc:
            errors.append(exc)

    return wrapped


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cset = store.load_set(argv[0])
    report = Verifier(cset).run()
    sys.stdout.flush()
    os.write(1, (json.dumps(report) + "\n").encode())
    # Skip finalisation: clones still running threads must not hold up the report.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
