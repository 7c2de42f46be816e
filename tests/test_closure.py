"""Clones copy the helper libraries that call the C API (issue #10).

Everything that could crash runs in a child process with a timeout: before this
work, pyarrow in a clone ended the process with SIGSEGV.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import support
from gilclone.cloner import closure, integrity, store
from gilclone.cloner.extensions import TwinFactory
from gilclone.platforms import resolve
from gilclone.platforms.elf_deps import DynamicFacts, read_dynamic_facts
from support import arrow_env, cbuild

TIMEOUT_S = 600
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF clones run on Linux")

HELPER_C = r"""
#include <Python.h>
static PyObject *state;                       /* one per copy of this library */
PyObject *helper_get(void) { if (!state) state = PyLong_FromLong(0); Py_INCREF(state); return state; }
void helper_set(long v) { Py_XDECREF(state); state = PyLong_FromLong(v); }
long helper_is_initialized(void) { return Py_IsInitialized(); }
"""

EXT_C = r"""
#include <Python.h>
PyObject *helper_get(void); void helper_set(long v);
static PyObject *get(PyObject *m, PyObject *a) { return helper_get(); }
static PyObject *set(PyObject *m, PyObject *a) { helper_set(PyLong_AsLong(a)); Py_RETURN_NONE; }
static PyMethodDef methods[] = {{"get", get, METH_NOARGS, 0}, {"set", set, METH_O, 0}, {0}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "stateext", 0, -1, methods};
PyMODINIT_FUNC PyInit_stateext(void) { return PyModule_Create(&def); }
"""


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    """An extension module ``stateext`` linked to ``libpyhelper.so``, which keeps a static
    PyObject* and calls PyLong_FromLong: a C-API library that is not an extension."""
    d = tmp_path_factory.mktemp("helper")
    cbuild.shared(d / "libpyhelper.so", HELPER_C, python=True)
    suffix = ".cpython-%d%d-x86_64-linux-gnu.so" % sys.version_info[:2]
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or suffix
    cbuild.shared(d / f"stateext{suffix}", EXT_C, python=True,
                  libs=["-L", str(d), "-lpyhelper", "-Wl,-rpath,$ORIGIN"])
    return d


def run_child(script: str, *args, env=None):
    """Run ``script`` in a fresh interpreter; (exit status, stdout, stderr)."""
    environ = dict(os.environ, PYTHONFAULTHANDLER="1", **(env or {}))
    path = os.path.join(os.path.dirname(__file__), "closure_scenario.py")
    try:
        done = subprocess.run(
            [sys.executable, path, script, *map(str, args)],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=environ,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} hung for {TIMEOUT_S} s: {exc.stderr}")
    return done.returncode, done.stdout, done.stderr


def results(script, *args, env=None):
    rc, out, err = run_child(script, *args, env=env)
    assert rc == 0, f"{script} ended with status {rc}:\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


# -- the plan, from ELF facts alone ---------------------------------------------------


def facts(path, needed=(), refs=0, soname=None):
    return DynamicFacts(path, soname, tuple(needed), ("/d",), None, False, 64, "EM_X86_64", refs, False)


def test_copied_are_c_api_users_and_whatever_depends_on_them():
    objs = {
        "/d/ext.so": facts("/d/ext.so", ["libwrap.so", "libplain.so", "libpython3.11.so.1.0"], refs=50),
        "/d/libwrap.so": facts("/d/libwrap.so", ["libpyhelp.so", "libplain.so"]),
        "/d/libpyhelp.so": facts("/d/libpyhelp.so", ["libplain.so", "libstdc++.so.6"], refs=12),
        "/d/libplain.so": facts("/d/libplain.so", ["libstdc++.so.6"]),
        "/d/libstdc++.so.6": facts("/d/libstdc++.so.6"),
    }
    record = store.CloneRecord(index=3, directory="/cache/set/clone-03", soname="libgcabcd03.so")
    plan = closure.plan("/d/ext.so", record, resolve.LoaderConfig(), objs.get)
    copies = {os.path.basename(c.source): c for c in plan.copies}
    assert sorted(copies) == ["libpyhelp.so", "libwrap.so"]  # libplain, libstdc++ and libpython: shared
    assert dict(plan.libraries) == {"libwrap.so": copies["libwrap.so"].path}
    assert dict(copies["libwrap.so"].libraries) == {"libpyhelp.so": copies["libpyhelp.so"].path}
    assert copies["libpyhelp.so"].uses_python_api and not copies["libwrap.so"].uses_python_api
    for c in copies.values():
        assert c.path.startswith("/cache/set/clone-03/lib/") and c.soname.endswith("03.so")
    name = os.path.basename(copies["libpyhelp.so"].path)
    assert len(name) == len("lib") + 6 + 2 + len(".so")  # too short for 6 hex digits: longer


# -- a helper library built here -------------------------------------------------------


def test_library_copies_are_named_recorded_checked_and_rebuilt(helper, tmp_path):
    """Made without loading anything: the twin names the copy by path, the copy has a
    same-length soname and needs the clone's libpython; a damaged copy is rebuilt."""
    record = bare_clone(tmp_path / "clone-01", 1, "libgcabcd01.so")
    ext = str(next(helper.glob("stateext*.so")))
    twin = TwinFactory(record).twin_for(ext)
    copies = sorted((tmp_path / "clone-01" / "lib").glob("*.so"))
    assert len(copies) == 1
    copy = copies[0]
    listed = store.read_json(os.path.join(record.directory, store.MANIFEST))["files"]
    assert {f"lib/{copy.name}", f"lib/{copy.name}.json"} <= set(listed)  # members of the clone
    assert set(integrity.list_files(record.directory)) == set(listed)  # nothing unlisted
    assert integrity.listed_and_intact(record, sorted(set(listed) - {record.soname}))  # not a real libpython
    assert [oct(os.stat(p).st_mode & 0o777) for p in (copy.parent, copy, f"{copy}.json")] == [
        "0o700", "0o700", "0o600"]  # private whatever the umask
    twin_needed = read_dynamic_facts(twin).needed
    assert str(copy) in twin_needed and "libpyhelper.so" not in twin_needed
    facts_ = read_dynamic_facts(str(copy))
    assert facts_.soname == copy.name and len(copy.name) == len("libpyhelper.so")
    assert "libgcabcd01.so" in facts_.needed and facts_.python_refs > 0
    meta = json.loads((tmp_path / "clone-01" / "lib" / (copy.name + ".json")).read_text())
    assert meta["source"] == os.path.realpath(helper / "libpyhelper.so")
    assert meta["sha256"] == store.sha256_file(str(copy))
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    leftover = copy.parent / ".tmp-1-deadbeef-libx.so"  # a killed process's half copy
    leftover.write_bytes(b"half")
    assert TwinFactory(record).twin_for(ext) == twin
    assert store.sha256_file(str(copy)) == meta["sha256"]  # rebuilt from the original
    assert not leftover.exists()
    listed = store.read_json(os.path.join(record.directory, store.MANIFEST))["files"]
    assert set(integrity.list_files(record.directory)) == set(listed)
    assert listed[f"lib/{copy.name}"]["sha256"] == meta["sha256"]  # the rebuilt copy, listed


def bare_clone(directory, index, soname):
    """A clone directory whose manifest lists a stand-in libpython (copies join its manifest)."""
    os.makedirs(directory)
    (directory / soname).write_bytes(b"stand-in")
    store.write_json_atomic(
        os.path.join(directory, store.MANIFEST),
        {"index": index, "soname": soname, "files": {soname: store.manifest_entry(str(directory / soname))}},
    )
    return store.CloneRecord(index, str(directory), soname)



def test_helper_library_state_is_per_clone_and_the_host_keeps_its_own(helper):
    out = results("helper_state", helper)
    assert out["host_before"] == 0 and out["host_after"] == 100
    assert sorted(out["clones"]) == [[0, 1], [1, 2]]  # each clone saw only its own value
    assert len(set(out["copies"])) == 2 and not set(out["copies"]) & {out["original"]}


def test_ctypes_in_a_clone_loads_its_copy_and_pythonapi_is_the_clone_libpython(helper):
    out = results("ctypes_api", helper)
    host_lib, clone_libs = out["host_pythonapi"], out["clone_pythonapi"]
    assert len(set(clone_libs)) == 2 and host_lib not in clone_libs
    assert all(os.path.basename(p).startswith("libgc") for p in clone_libs)
    assert all(p != out["original"] and "/lib/" in p for p in out["cdll_files"])
    assert out["cdll_initialized"] == [1, 1]
    support.require(all(out["cffi_files"]), "cffi is not installed (the `test` extra has it)")
    assert out["cffi_files"] == out["cdll_files"]  # ffi.dlopen: the same per-clone copy


def test_a_library_in_the_host_global_scope_is_refused_with_import_error(helper):
    out = results("refused", helper)
    assert "ImportError" in out["error"] and "libpyhelper.so" in out["error"]
    assert "global" in out["error"]
    assert out["alive"] == 42


# -- library copies are members of the clone: the tamper matrix of test_trust.py ---------------

EVIL_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) close(fd);
}
"""


def gilclone(*args):
    return subprocess.run([sys.executable, "-m", "gilclone", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def failed_checks(dest):
    """(exit status, {name: detail} of verify's failed checks) for the set ``dest``."""
    out = gilclone("verify", "--json", dest)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"verify printed no JSON (exit {out.returncode}): {out.stdout!r} {out.stderr[-2000:]!r}")
    return out.returncode, {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


@pytest.fixture(scope="module")
def copied_set(helper, tmp_path_factory):
    """A 2-clone set whose clone 1 holds a twin of stateext and its copy of libpyhelper.so
    (verify adds twins of _decimal to both), verified intact."""
    dest = tmp_path_factory.mktemp("copied") / "set"
    out = gilclone("prepare", "--count", 2, "--dest", dest)
    assert out.returncode == 0, out.stderr
    TwinFactory(store.load_set(str(dest)).clones[1]).twin_for(str(next(helper.glob("stateext*.so"))))
    assert failed_checks(dest) == (0, {})
    assert len(list((dest / "clone-01" / "lib").glob("*.so"))) == 1
    return dest


def altered_copy(dest, helper, evil):
    copy = next((dest / "clone-01" / "lib").glob("*.so"))
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))


def planted_copy(dest, helper, evil):
    """Clone 0's copy of libpyhelper.so, where the twin would look for it, with a record
    that says it is current: only the manifest tells it is not the clone's."""
    record = store.load_set(str(dest)).clones[0]
    ext = str(next(helper.glob("stateext*.so")))
    copy = closure.plan(ext, record, resolve.system_config(), resolve.file_probe()).copies[0]
    os.makedirs(os.path.dirname(copy.path), mode=0o700)
    shutil.copyfile(evil, copy.path)
    os.chmod(copy.path, 0o700)
    st = os.stat(copy.source)
    store.write_json_atomic(copy.path + ".json", {
        "source": copy.source, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
        "sha256": store.sha256_file(copy.path), "libraries": {}})


# name: (tamper(dest, helper dir, evil library), verify's failed check, what its detail says)
LIBRARY_TAMPERING = {
    "library_copy_altered": (altered_copy, "files_intact", "does not match its SHA-256"),
    "library_copy_planted": (planted_copy, "files_intact", "is not listed in the manifest"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LIBRARY_TAMPERING))
def test_tampered_library_copies_are_caught(case, copied_set, helper, tmp_path):
    tamper, check, says = LIBRARY_TAMPERING[case]
    marker = tmp_path / "RAN"
    evil = cbuild.shared(tmp_path / "libevil.so", EVIL_C, libs=[f'-DMARKER="{marker}"'])
    dest = tmp_path / "set"
    shutil.copytree(copied_set, dest, symlinks=True)
    for record in store.load_set(str(dest)).clones:  # stamped: the fast path is in use
        integrity.bless(record)
        assert store.check_clone(record) is None
    tamper(dest, helper, evil)

    code, failed = failed_checks(dest)
    assert code == 1 and check in failed and says in failed[check] and "/lib/" in failed[check], failed

    out = results("pool_on", helper, dest)
    assert out["outcome"] == "REFUSED" and "/lib/" in out["line"], out
    assert not marker.exists(), "the planted code ran in the pool"

    done = gilclone("prepare", "--count", 2, "--dest", dest)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert failed_checks(dest) == (0, {})  # the clone was rebuilt
    assert results("pool_on", helper, dest)["outcome"] == "RAN"  # and makes its copies again
    assert not marker.exists(), "the planted code ran"


# -- pandas and pyarrow ----------------------------------------------------------------


@pytest.fixture(scope="module")
def arrow_site():
    return arrow_env.site_dir()


@pytest.mark.slow
def test_pyarrow_in_two_clones_gives_the_host_answers_each_with_its_libarrow_python(arrow_site, tmp_path):
    out = results("pyarrow", arrow_site, tmp_path)
    assert out["clones"] == [out["host"], out["host"]]
    copies = out["maps"]
    assert len(copies) == 2 and len(set(copies)) == 2
    assert all("libarrow_python" not in os.path.basename(p) for p in copies)  # renamed copies


@pytest.mark.slow
def test_pandas_with_pyarrow_in_two_clones(arrow_site):
    out = results("pandas", arrow_site)
    assert out["clones"] == [out["host"], out["host"]]
    print("first import of pandas in a clone: %.2f s" % out["first_import_s"])
    print("resident KiB of [library copies, twins] per clone:", out["resident"])


@pytest.mark.slow
def test_arrow_registries_are_per_clone(arrow_site, tmp_path):
    """pandas registers its Arrow extension types and pyarrow its compute functions in
    libarrow's process-wide registries; shared, the second clone got ArrowKeyError
    ("pandas.period already defined") and ran the first clone's functions."""
    out = results("registries", arrow_site, tmp_path)
    for index, (dtype, periods, called) in out["clones"].items():
        assert dtype == "period[M]" and periods == ["2020-01", "2020-02", "2020-03"]
        assert called == [(int(index) + 2) * i for i in (1, 2, 3)]  # its own function


# -- macOS, checked statically with the LLVM tools (not run on a Mac) ---------------------------


@pytest.mark.slow
def test_macos_copies_of_libarrow_python_bind_py_to_the_clone(tmp_path):
    from gilclone.cloner import codesign
    from gilclone.platforms import macho
    from support import macos_wheels as mw
    from test_macos import _bind_rows, _is_py, build_home, llvm_checked_pages

    support.require(shutil.which(mw.OBJDUMP) and shutil.which(mw.OTOOL), "the LLVM tools are needed")
    wheel = mw.binaries("pyarrow-arm64")
    ext = str(next(p for p in wheel if p.name == "lib.cpython-312-darwin.so"))
    home = build_home(str(tmp_path), "universal2")
    dest = str(tmp_path / "set")
    proc = subprocess.run([sys.executable, "-m", "gilclone", "prepare", "--target", "macos",
                           "--python-home", home, "--count", "2", "--dest", dest],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    seen = set()
    for rec in store.load_set(dest).clones:
        twin = TwinFactory(rec).twin_for(ext)
        libs = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-L", "-arch", "arm64", twin))
        copies = [n for n in libs if n.startswith(os.path.join(rec.directory, "lib") + os.sep)]
        assert copies and not any(os.path.basename(n).startswith("libarrow") for n in libs), libs
        helper = next(c for c in copies if "libarrow_python" in _source(c))
        assert macho.read(helper).name == helper and helper not in seen
        seen.add(helper)
        rows = _bind_rows(helper, "arm64")
        py = [r for r in rows if _is_py(r["symbol"]) and r["table"] != "Weak bind table"]
        leaf = os.path.splitext(rec.soname)[0]
        assert len(py) > 100 and all(r.get("dylib") == leaf for r in py), py[:3]
        assert all(c["pages"] > 0 for c in codesign.verify_file(helper))
        assert llvm_checked_pages(helper, "arm64") > 0
        arrow = next(c for c in copies if os.path.basename(_source(c)) == "libarrow.2600.dylib")
        assert not [r for r in _bind_rows(arrow, "arm64") if _is_py(r["symbol"])]
        assert arrow in mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-L", "-arch", "arm64", helper))


def _source(copy):
    with open(copy + ".json") as f:
        return json.load(f)["source"]


# -- Windows, under Wine with the official embeddable CPython -------------------------------

PYWIN32_SCRIPT = r"""
import json, sys, time


def work(_):
    import pywin32_bootstrap  # noqa: F401  what pywin32.pth does at start-up: DLL directory
    import win32api  # before pywintypes: win32api.pyd imports pywintypes311.dll by name
    import pywintypes

    time.sleep(0.2)
    answer = [win32api.GetSystemDirectory(), str(pywintypes.TimeType), win32api.HIWORD(0x12345678),
              str(pywintypes.Time(86400)), isinstance(pywintypes.Time(0), pywintypes.TimeType)]
    index = getattr(sys, "_gilclone_index", None)
    if index is None:
        return answer
    copies = sorted(t for t in sys._gilclone_twins.values() if "\\lib\\gl" in t)
    return index, [answer, copies]


if __name__ == "__main__":
    from gilclone.pool import ClonePool  # here: clones re-run this script as __mp_main__

    with ClonePool(2, clones=sys.argv[1]) as pool:
        seen = {}
        deadline = time.monotonic() + 120  # the second clone starts lazily: wait for it
        while len(seen) < 2 and time.monotonic() < deadline:
            for index, value in pool.map(work, range(4)):
                seen.setdefault(index, value)
    print(json.dumps({"host": work(0), "clones": seen}))
"""


@pytest.mark.slow
def test_pywin32_in_two_clones_under_wine(tmp_path):
    """win32api.pyd imports pywintypes311.dll, a C-API DLL that is not a .pyd: each clone
    gets its own copy under another name, and the module pywintypes is that copy."""
    from support import pywin32_env, wine

    python = pywin32_env.embed_with_pywin32(tmp_path, "3.11")
    dest = tmp_path / "set"
    proc = wine.run(python, ["-m", "gilclone", "prepare", "--count", "2", "--dest", wine.windows_path(dest)])
    assert proc.returncode == 0, wine.describe(proc)
    script = tmp_path / "pywin32_script.py"
    script.write_text(PYWIN32_SCRIPT)
    proc = wine.run(python, [wine.windows_path(script), wine.windows_path(dest)])
    assert proc.returncode == 0, wine.describe(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["clones"]) == ["0", "1"]
    copies = []
    for index, (answer, own) in out["clones"].items():
        assert answer == out["host"]
        assert len(own) == 1 and f"clone-0{index}" in own[0], own
        copies += own
    assert len(set(copies)) == 2
