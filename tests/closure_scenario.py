"""Child-process scenarios for test_closure.py: ``python closure_scenario.py NAME ARGS...``.

Each prints one JSON line with what the test checks. The functions run in clones
are module-level so the pool can send them by reference.
"""

import ctypes
import ctypes.util
import json
import os
import sys
import time

from gilclone.platforms.elf_deps import read_dynamic_facts
from gilclone.pool import ClonePool


def clone_index():
    return getattr(sys, "_gilclone_index", None)


def own_copy(module_file, library):
    """The copy of ``library`` that this clone's twin of ``module_file`` names; it must be
    mapped in the process (/proc/self/maps)."""
    twin = sys._gilclone_twins[module_file]
    copies = [n for n in read_dynamic_facts(twin).needed if "/" in n]
    copy = next(c for c in copies if os.path.basename(_source_of(c)).startswith(library))
    with open("/proc/self/maps") as f:
        mapped = {line.split()[-1] for line in f if "/" in line}
    assert copy in mapped, f"{copy} is not mapped"
    return copy


def _source_of(copy):
    with open(copy + ".json") as f:
        return json.load(f)["source"]


def file_of(address):
    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    libc = ctypes.CDLL(None)
    info = DlInfo()
    assert libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info))
    return os.path.realpath(info.fname.decode())


def wait_for_both(pool, fn, *args, limit=120):
    """Run ``fn`` until both clones answered; {clone index: result}.

    Workers start lazily: the second clone may still be starting (loading its twins) while
    the first has run a few rounds of quick tasks, so this waits for it up to ``limit``
    seconds rather than a fixed number of rounds (CI: "only clones [0] ran")."""
    seen = {}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for index, value in pool.map(fn, *[[a] * 4 for a in args]) if args else pool.map(fn, range(4)):
            seen.setdefault(index, value)
        if len(seen) == 2:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"only clones {sorted(seen)} ran in {limit} s")


# -- helper library -------------------------------------------------------------------------


def helper_task(_):
    import stateext

    time.sleep(0.05)  # keep this clone busy so the other one takes the next task
    index = clone_index()
    before = stateext.get()
    assert before in (0, index + 1), before
    stateext.set(index + 1)
    return index, [index, stateext.get(), own_copy(stateext.__file__, "libpyhelper")]


def helper_state(directory):
    sys.path.insert(0, directory)
    import stateext

    out = {"host_before": stateext.get(), "original": os.path.join(directory, "libpyhelper.so")}
    with ClonePool(2) as pool:
        seen = wait_for_both(pool, helper_task)
        stateext.set(100)
        again = wait_for_both(pool, helper_task)
    out["clones"] = sorted(v[:2] for v in seen.values())
    assert sorted(v[:2] for v in again.values()) == out["clones"]
    out["copies"] = [v[2] for v in seen.values()]
    out["host_after"] = stateext.get()
    return out


def pool_on(directory, dest):
    """A pool on the set ``dest`` whose tasks import stateext: ran, or refused (why)."""
    from gilclone.errors import GilcloneError

    sys.path.insert(0, directory)
    try:
        with ClonePool(2, clones=dest) as pool:
            seen = wait_for_both(pool, helper_task)
        return {"outcome": "RAN", "line": str(sorted(seen))}
    except GilcloneError as exc:
        return {"outcome": "REFUSED", "line": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


# -- ctypes ----------------------------------------------------------------------------------


def ctypes_task(directory):
    import stateext

    time.sleep(0.05)
    index = clone_index()
    stateext.set(index + 10)
    api = file_of(ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value)
    lib = ctypes.PyDLL(os.path.join(directory, "libpyhelper.so"))
    lib.helper_get.restype = ctypes.py_object
    assert lib.helper_get() == index + 10  # the copy stateext uses, not the host's
    cdll = ctypes.cdll.LoadLibrary(os.path.join(directory, "libpyhelper.so"))
    again = ctypes.PyDLL(lib._name)  # the copy itself: no copy of the copy
    assert again._name == lib._name
    try:
        import cffi
    except ImportError:
        cffi_file = None
    else:
        ffi = cffi.FFI()
        ffi.cdef("long helper_is_initialized(void);")
        via_cffi = ffi.dlopen(os.path.join(directory, "libpyhelper.so"))
        assert via_cffi.helper_is_initialized() == 1
        cffi_file = file_of(int(ffi.cast("uintptr_t", ffi.addressof(via_cffi, "helper_is_initialized"))))
        assert cffi_file == file_of(ctypes.cast(lib.helper_get, ctypes.c_void_p).value), cffi_file
    libm = ctypes.util.find_library("m")
    assert ctypes.CDLL(libm)._name == libm  # no C API: loaded as asked
    return index, [api, file_of(ctypes.cast(lib.helper_get, ctypes.c_void_p).value),
                   cdll.helper_is_initialized(), cffi_file]


def ctypes_api(directory):
    sys.path.insert(0, directory)
    out = {"host_pythonapi": file_of(ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value),
           "original": os.path.join(directory, "libpyhelper.so")}
    with ClonePool(2) as pool:
        seen = wait_for_both(pool, ctypes_task, directory)
    out["clone_pythonapi"] = [v[0] for v in seen.values()]
    out["cdll_files"] = [v[1] for v in seen.values()]
    out["cdll_initialized"] = [v[2] for v in seen.values()]
    out["cffi_files"] = [v[3] for v in seen.values()]
    return out


# -- refusal ---------------------------------------------------------------------------------


def try_import(_):
    try:
        import stateext  # noqa: F401
    except ImportError as exc:
        return f"ImportError: {exc}"
    return "imported"


def refused(directory):
    sys.path.insert(0, directory)
    ctypes.CDLL(os.path.join(directory, "libpyhelper.so"), mode=ctypes.RTLD_GLOBAL)
    with ClonePool(1) as pool:
        error = pool.submit(try_import, 0).result()
        alive = pool.submit(sum, [40, 2]).result()
    return {"error": error, "alive": alive}


# -- pyarrow and pandas ------------------------------------------------------------------------


def arrow_work(directory):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    time.sleep(0.05)
    table = pa.table({"x": list(range(1000)), "s": [f"k{i % 7}" for i in range(1000)]})
    path = os.path.join(directory, f"t{clone_index()}.parquet")
    pq.write_table(table, path)
    back = pq.read_table(path)
    counts = pc.value_counts(table["s"]).to_pylist()
    frame = table.to_pandas()
    answer = {
        "sum": pc.sum(table["x"]).as_py(),
        "counts": sorted((c["values"], c["counts"]) for c in counts),
        "pandas": [int(frame["x"].sum()), str(frame["s"].dtype)],
        "parquet": back.equals(table),
    }
    if clone_index() is None:
        return answer
    return clone_index(), [answer, own_copy(pa.lib.__file__, "libarrow_python")]


def pyarrow(site, directory):
    sys.path.insert(0, site)
    out = {"host": arrow_work(directory)}
    with ClonePool(2) as pool:
        seen = wait_for_both(pool, arrow_work, directory)
    out["clones"] = [v[0] for v in seen.values()]
    out["maps"] = [v[1] for v in seen.values()]
    return out


def pandas_work(_):
    start = time.perf_counter()
    import pandas as pd

    took = time.perf_counter() - start
    time.sleep(0.05)
    frame = pd.DataFrame({"a": range(100), "b": [f"s{i % 5}" for i in range(100)]})
    answer = {
        "groups": {k: int(v) for k, v in frame.groupby("b")["a"].sum().items()},
        "dtype": str(frame["b"].dtype),
        "arrow_sum": int(pd.array([1, 2, None], dtype="int64[pyarrow]").sum()),
        "upper": frame["b"].str.upper().tolist()[:6],
    }
    if clone_index() is None:
        return answer
    return clone_index(), [answer, took]


def pandas(site):
    sys.path.insert(0, site)
    with ClonePool(2) as pool:
        seen = wait_for_both(pool, pandas_work)
        memory = copies_resident()
    host = pandas_work(0)
    return {"host": host, "clones": [v[0] for v in seen.values()],
            "first_import_s": max(v[1] for v in seen.values()), "resident": memory}


def copies_resident():
    """{clone directory: [KiB resident of its helper-library copies, of its twins]}."""
    out, current = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 6:
                path = fields[-1]
                current = None
                for kind, marker in ((0, "/lib/"), (1, "/ext/")):
                    if "/clone-" in path and marker in path:
                        current = (path.split(marker)[0], kind)
            elif fields[0] == "Rss:" and current:
                out.setdefault(current[0], [0, 0])[current[1]] += int(fields[1])
    return out


# -- registries in shared libraries ----------------------------------------------------------


def registry_work(directory):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pandas.core.arrays.arrow import extension_types  # noqa: F401  registers pandas.period

    time.sleep(0.05)
    index = clone_index()
    factor = index + 2

    def scale(ctx, x):
        return pc.multiply(x, factor)

    if "gc_scale" not in pc.list_functions():  # once per clone (shared: once per process)
        pc.register_scalar_function(scale, "gc_scale", {"summary": "", "description": ""},
                                    {"x": pa.int64()}, pa.int64())
    path = os.path.join(directory, f"period{index}.parquet")
    pq.write_table(pa.table({"p": pa.array(pd.period_range("2020-01", periods=3, freq="M"))}), path)
    back = pq.read_table(path).to_pandas()["p"]
    called = pc.call_function("gc_scale", [pa.array([1, 2, 3])]).to_pylist()
    return index, [str(back.dtype), [str(p) for p in back], called]


def registries(site, directory):
    sys.path.insert(0, site)
    from pandas.core.arrays.arrow import extension_types  # noqa: F401  the host registers too

    with ClonePool(2) as pool:
        seen = wait_for_both(pool, registry_work, directory)
    return {"clones": {str(k): v for k, v in seen.items()}}


if __name__ == "__main__":
    result = globals()[sys.argv[1]](*sys.argv[2:])
    sys.stdout.flush()
    print(json.dumps(result))
