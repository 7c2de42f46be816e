"""The namespace route: ClonePool(route="namespaces") on Linux with glibc (cloner/namespace.py).

The pool scenarios run tests/namespace_scenario.py in a subprocess with a timeout: a
namespace that shares a pthread key, a ctype table or a key block with the host hangs or
aborts the process (each was seen before its fix), and that must fail one test only.
"""

import json
import os
import subprocess
import sys

import pytest
import support
from support import pythons

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "namespace_scenario.py")
ON_GLIBC = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else "")
# glibc reserves static TLS for namespaces from these tunables (read at process start):
# nns=1 with no optional surplus leaves room for two namespaces' libcs (measured, glibc 2.36).
SMALL_LIMIT = "glibc.rtld.nns=1:glibc.rtld.optional_static_tls=0"

needs_glibc = pytest.mark.skipif(not ON_GLIBC, reason="the namespace route needs Linux with glibc")


def run_scenario(args, python=sys.executable, env=None, timeout=300):
    """(exit status, the last JSON line or None, stderr) of namespace_scenario.py ``args``."""
    try:
        out = subprocess.run([python, SCENARIO, *args], capture_output=True, text=True,
                             timeout=timeout, env=env, cwd=HERE)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the scenario hung (killed after {timeout} s); stderr: {exc.stderr!r}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return out.returncode, (json.loads(lines[-1]) if lines else None), out.stderr


def failed(report) -> dict:
    return {name: detail for name, (ok, detail) in report["results"].items() if not ok}


@needs_glibc
def test_two_namespaces_run_tasks_with_their_own_gils_and_libpython():
    rc, report, err = run_scenario(["basic"])
    assert rc == 0 and report is not None, err[-3000:]
    assert set(report["results"]) == {"parallel", "stdlib", "numpy", "pythonapi", "threads", "interrupt",
                                      "timeout", "environment", "keys", "copies_beside"}
    assert not failed(report), failed(report)


@needs_glibc
def test_more_workers_than_namespaces_gives_the_limit_and_its_fixes():
    env = dict(os.environ, GLIBC_TUNABLES=SMALL_LIMIT)
    rc, report, err = run_scenario(["limit", "4"], env=env)
    assert rc == 0 and report is not None, err[-3000:]
    error = report["error"]
    assert error is not None, f"4 namespaces opened under {SMALL_LIMIT}: {report}"
    assert error["cause"] == "NamespaceLimitError"
    message = error["message"]
    assert "static TLS" in message and "2 opened by gilclone" in message, message
    for fix in ("fewer workers", "route='copies'", "GLIBC_TUNABLES=glibc.rtld.nns=16"):
        assert fix in message, message
    assert report["copies_after"] == 5, "a copies pool no longer works after the failed dlmopen"


@needs_glibc
@pytest.mark.slow
def test_a_namespace_worker_costs_less_memory_than_a_copy_in_the_same_process():
    rc, report, err = run_scenario(["memory"])
    assert rc == 0 and report is not None, err[-3000:]
    ns, copies = report["namespaces"], report["copies"]
    assert ns["workers"] == copies["workers"] == 3
    # Measured 10.0-10.4 against 13.8-15.4 MiB (editable install): the copy's own text
    # and read-only data (3.9 MiB) and its extension twins are what namespaces share.
    assert ns["per_added_mib"] + 1.0 < copies["per_added_mib"], report


# -- choosing the route (nothing is loaded) ---------------------------------------------


def test_route_argument_env_and_default(monkeypatch):
    from gilclone.pool import ClonePool

    monkeypatch.delenv("GILCLONE_ROUTE", raising=False)
    assert ClonePool(1)._route == "copies"
    with pytest.raises(ValueError, match="route must be one of 'copies', 'namespaces', not 'fork'"):
        ClonePool(1, route="fork")
    monkeypatch.setenv("GILCLONE_ROUTE", "bogus")
    with pytest.raises(ValueError, match="GILCLONE_ROUTE must be one of"):
        ClonePool(1)
    assert ClonePool(1, route="copies")._route == "copies"  # the argument wins over the variable
    if ON_GLIBC:
        monkeypatch.setenv("GILCLONE_ROUTE", "namespaces")
        assert ClonePool(1)._route == "namespaces"
        with pytest.raises(ValueError, match="at most 15 workers.*route='copies'"):
            ClonePool(16, route="namespaces")


def test_route_refused_where_there_is_no_glibc(monkeypatch):
    from gilclone.pool import ClonePool

    from gilclone.errors import GilcloneError

    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(GilcloneError, match="needs Linux with glibc.*route='copies'"):
        ClonePool(1, route="namespaces")


def test_libpython_whose_hash_differs_is_refused(tmp_path):
    import hashlib

    from gilclone.cloner import namespace

    from gilclone.errors import CloneSetCorruptError

    lib = tmp_path / "libpython3.x.so"
    lib.write_bytes(b"\x7fELF the recorded bytes")
    good = hashlib.sha256(lib.read_bytes()).hexdigest()
    root = tmp_path / "set"
    root.mkdir(mode=0o700)
    namespace.check_source(str(root), str(lib), good)
    assert (root / namespace.SOURCE_STAMP).exists()  # vouches for the file's metadata next time
    lib.write_bytes(b"\x7fELF other bytes, same size!!")
    with pytest.raises(CloneSetCorruptError, match=f"{lib}.*not the one the clone set.*gilclone prepare"):
        namespace.check_source(str(root), str(lib), good)
    with pytest.raises(CloneSetCorruptError, match="records no libpython hash"):
        namespace.check_source(str(root), str(lib), None)


def test_key_layout_gives_every_namespace_a_block_of_its_own():
    from gilclone.cloner import namespace

    ranges = [namespace.key_range(slot) for slot in range(namespace.MAX_NAMESPACES)]
    blocks = [{k // namespace.KEY_BLOCK for k in range(*r)} | {namespace.anchor_key(s) // namespace.KEY_BLOCK}
              for s, r in enumerate(ranges)]
    assert all(len(b) == 1 for b in blocks)  # anchor and keys in one block
    assert len({b.pop() for b in blocks} | {0}) == namespace.MAX_NAMESPACES + 1  # none is the host's
    assert ranges[-1][1] <= namespace.HOST_KEYS_END <= 1024  # glibc's PTHREAD_KEYS_MAX


# -- every Python on the machine --------------------------------------------------------

FOUND = pythons.pyenv_pythons()


@needs_glibc
@pytest.mark.slow
@pytest.mark.parametrize("version,exe", FOUND, ids=[v for v, _ in FOUND])
def test_namespace_scenario_in_every_python(version, exe):
    from test_pool_versions import _venv_for

    python = _venv_for(version, exe)
    cache = support.cache_dir("clone-cache", os.path.basename(os.path.dirname(os.path.dirname(python))))
    rc, report, err = run_scenario(["basic"], python=python, env=dict(os.environ, GILCLONE_CACHE=str(cache)))
    assert rc == 0 and report is not None, err[-3000:]
    assert report["version"] == version
    assert not failed(report), failed(report)
