"""Memory per added worker: libpython copies (gilclone today) against dlmopen namespaces.

An experiment for issue #14, not part of the benchmark run. Each clone is its own
file, so its text and read-only data are private to it; ``dlmopen(LM_ID_NEWLM,
same_file)`` maps ONE libpython once per link-map namespace and shares those pages
through the page cache. This script measures both routes side by side:

  copies       gilclone's ClonePool(N), one task per worker (what bench/fresh.py does)
  copies-bare  gilclone's Clone objects (bootstrap + site, no pool runner), the same
               work as a namespace does, to separate the loading route from the pool
  namespaces   the host's own libpython dlmopen'ed N times, Py_InitializeEx(0), the
               task run with PyRun_SimpleString on each namespace's own host thread

It also times two namespaces running a loop at once against one after the other,
and counts how many namespaces open with and without GLIBC_TUNABLES.

    python bench/dlmopen_memory.py [--workers N] [--reps R]

Every measurement runs in a fresh subprocess under ``timeout``: a namespace
experiment can segfault or hang, and smaps must see only one route.
"""

import argparse
import ctypes
import json
import os
import queue
import subprocess
import sys
import sysconfig
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
LM_ID_NEWLM = -1
# The small task: a loop, then two stdlib imports that load extension modules
# (_json, _decimal), which must bind to the namespace's/clone's own libpython.
TASK = """
import time
total = 0
for i in range(200000):
    total += i * i % 7
import json, decimal
assert json.loads(json.dumps({"a": str(decimal.Decimal(1) / 7)}))
"""
LOOP = "total = 0\nfor i in range(2000000):\n    total += i * i % 7\n"
# glibc reserves static TLS for DL_NNS (16) namespaces only when told at process
# start; every namespace's libc needs some (errno, ctype, malloc tcache pointers).
TUNABLES = "glibc.rtld.nns=16:glibc.rtld.optional_static_tls=16384"


def small_task(i):
    """The task for the pool (pickled by reference: this module is on the clones' path)."""
    exec(TASK, {})
    time.sleep(0.3)  # keep the worker busy so that each of the N workers gets one task
    return i


# -- the namespace route ----------------------------------------------------------

_libc = ctypes.CDLL(None)
_libc.dlmopen.restype = ctypes.c_void_p
_libc.dlmopen.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_int]
_libc.dlsym.restype = ctypes.c_void_p
_libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_libc.dlerror.restype = ctypes.c_char_p


def host_libpython():
    """The libpython file this interpreter runs on (the one mapped in this process)."""
    name = sysconfig.get_config_var("INSTSONAME")
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if os.path.basename(path) == name:
                return path
    raise SystemExit(f"{name} is not mapped: this Python is not built --enable-shared")


class Namespace:
    """One libpython in its own link-map namespace, driven by one host thread.

    Everything goes through ctypes.CFUNCTYPE, which releases the host's GIL
    during the call: the namespaces run in parallel with each other and the host.
    """

    def __init__(self, path, index):
        handle = _libc.dlmopen(LM_ID_NEWLM, path.encode(), os.RTLD_NOW | os.RTLD_LOCAL)
        if not handle:
            raise OSError(f"dlmopen #{index + 1}: {_libc.dlerror().decode()}")
        self.handle, self.index = handle, index
        # dlsym on the libpython handle also searches its dependencies, so these
        # are the NAMESPACE's libc functions, not the host's.
        self.ctype_init = self._fn("__ctype_init", None)
        self.key_create = self._fn("pthread_key_create", ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p)
        self.key_delete = self._fn("pthread_key_delete", ctypes.c_int, ctypes.c_uint)
        self.set_program_name = self._fn("Py_SetProgramName", None, ctypes.c_wchar_p)
        self.initialize = self._fn("Py_InitializeEx", None, ctypes.c_int)
        self.run = self._fn("PyRun_SimpleString", ctypes.c_int, ctypes.c_char_p)
        self.save_thread = self._fn("PyEval_SaveThread", ctypes.c_void_p)
        self.ensure = self._fn("PyGILState_Ensure", ctypes.c_int)
        self.release = self._fn("PyGILState_Release", None, ctypes.c_int)
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _fn(self, name, restype, *argtypes):
        address = _libc.dlsym(self.handle, name.encode())
        if not address:
            raise OSError(f"namespace {self.index}: no {name}")
        return ctypes.CFUNCTYPE(restype, *argtypes)(address)

    def start(self):
        """Initialise on the namespace's own thread; returns once it is idle."""
        done = queue.Queue()
        self.thread.start()
        self.jobs.put((None, done))
        return done.get()

    def call(self, source):
        """Run ``source`` on the namespace's thread; returns (rc, seconds)."""
        done = queue.Queue()
        self.jobs.put((source, done))
        return done.get()

    def _serve(self):
        # A thread created by the host libc never ran the namespace libc's
        # per-thread set-up: without this the tokenizer's isalnum() & co. read a
        # NULL ctype table (segfault in tok_get).
        self.ctype_init()
        _, done = self.jobs.get()
        self._move_keys_past(64 + 16 * self.index)
        self._program = ctypes.c_wchar_p(sys.executable)  # kept alive: CPython keeps the pointer
        self.set_program_name(self._program)  # finds the same prefix/venv as the host
        self.initialize(0)  # 0: signals stay with the host
        self.save_thread()  # idle: its GIL free, this thread's tstate kept for Ensure
        done.put(0)
        while True:
            source, done = self.jobs.get()
            t0 = time.perf_counter()
            state = self.ensure()
            rc = self.run(source.encode())
            self.release(state)
            done.put((rc, time.perf_counter() - t0))

    def _move_keys_past(self, first):
        """Burn pthread keys in the namespace's libc until its next key is ``first``.

        Each libc hands out keys from 0, but the values live in the thread
        descriptor, which all libcs share: the namespace's Python would store its
        GIL-state key in the slot of the host's (PyGILState_Ensure then hangs).
        Staggered by index so that namespaces do not collide with each other either.
        """
        key = ctypes.c_uint()
        while True:
            if self.key_create(ctypes.byref(key), None):
                raise OSError("pthread_key_create failed")
            if key.value >= first:
                self.key_delete(key.value)  # the next key handed out is this one
                return


def open_namespaces(n, task=TASK):
    path = host_libpython()
    spaces = []
    for i in range(n):
        ns = Namespace(path, i)
        ns.start()
        rc, _ = ns.call(task)
        if rc:
            raise RuntimeError(f"namespace {i}: the task failed (traceback on stderr)")
        spaces.append(ns)
    return spaces, [path]


# -- the copy routes ----------------------------------------------------------------


def open_pool(n):
    from gilclone.pool import ClonePool

    pool = ClonePool(n)
    assert sorted(pool.map(small_task, range(n))) == list(range(n))
    from gilclone.cloner.prepare import ensure_set

    return pool, [host_libpython()] + [r.libpython for r in ensure_set(n).clones[:n]]


def open_bare_copies(n):
    from gilclone.cloner.load import clone_for
    from gilclone.cloner.prepare import ensure_set

    cset = ensure_set(n)
    clones = [clone_for(r, cset.python) for r in cset.clones[:n]]

    def start(clone):  # each on its own thread, as a pool worker would
        clone.open(sys_path=sys.path)
        clone.run_source(TASK)

    threads = [threading.Thread(target=start, args=(c,)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clones, [host_libpython()] + [r.libpython for r in cset.clones[:n]]


# -- measuring ----------------------------------------------------------------------


def kind_of(path, perms, libpythons):
    """A mapping's row in the breakdown."""
    if not path or path.startswith("["):
        return "anon"  # heaps (host and namespace mallocs), thread stacks, [vdso]
    if path in libpythons:
        return f"libpython {perms}"
    name = os.path.basename(path)
    if name.startswith(("libc.so", "libm.so")):
        return "libc+libm"
    if ".so" in name:
        return "extension modules + other .so"
    return "other files"


def smaps_breakdown(libpythons):
    """{kind: [Pss KiB, private KiB]} over this process's mappings."""
    out, kind = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
                path = head[5].strip() if len(head) > 5 else ""
                kind = kind_of(path.replace(" (deleted)", ""), head[1], libpythons)
                out.setdefault(kind, [0, 0])
            elif head[0] == "Pss:":
                out[kind][0] += int(head[1])
            elif head[0] in ("Private_Clean:", "Private_Dirty:"):
                out[kind][1] += int(head[1])
    return out


def rollup_pss():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])


def child(argv):
    """In a fresh process: one measurement, printed as ``RESULT {json}``."""
    mode = argv[0]
    if mode == "memory":
        route, n = argv[1], int(argv[2])
        opener = {"copies": open_pool, "copies-bare": open_bare_copies, "namespaces": open_namespaces}[route]
        keep, libpythons = opener(n)
        time.sleep(0.2)
        out = {"pss_kib": rollup_pss(), "kinds": smaps_breakdown(set(libpythons))}
    elif mode == "parallel":
        spaces, _ = open_namespaces(2, task="pass")
        for ns in spaces:
            ns.call(LOOP)  # warm
        serial = sum(ns.call(LOOP)[1] for ns in spaces)
        results = [None, None]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, spaces[i].call(LOOP)))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        out = {"serial_s": serial, "parallel_s": wall, "speedup": serial / wall,
               "rcs": [r[0] for r in results], "load": os.getloadavg()[0]}
    elif mode == "limits":
        opened, error = [], None
        try:
            for i in range(20):
                opened.append(open_namespaces_one(i))
        except Exception as exc:
            error = str(exc)
        out = {"opened": len(opened), "error": error}
    else:
        raise ValueError(mode)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # no finalisation: the namespaces' interpreters are left as they are


def open_namespaces_one(i):
    ns = Namespace(host_libpython(), i)
    ns.start()
    rc, _ = ns.call("import json, decimal")
    if rc:
        raise RuntimeError(f"namespace {i}: import failed")
    return ns


def run_child(args, env_extra=None, timeout=180):
    env = dict(os.environ, **(env_extra or {}))
    code = f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import dlmopen_memory as m; m.child(sys.argv[1:])"
    proc = subprocess.run(["timeout", str(timeout), sys.executable, "-c", code, *args],
                          capture_output=True, text=True, env=env, cwd=BENCH_DIR)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3, help="the larger pool (the smaller is 1)")
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs per route (median)")
    args = parser.parse_args()
    os.environ.setdefault("GILCLONE_CACHE", "/tmp/gc-dlm-cache")
    routes = ["copies", "copies-bare", "namespaces"]
    n_big = args.workers
    run_child(["memory", "copies", str(n_big)])  # prepares the clone set (untimed)

    per = {r: [] for r in routes}
    for _ in range(args.reps):  # interleaved, so that machine noise spreads over routes
        for r in routes:
            one, big = run_child(["memory", r, "1"]), run_child(["memory", r, str(n_big)])
            if "error" in one or "error" in big:
                print(f"{r}: {one.get('error') or big.get('error')}")
                continue
            per[r].append((one, big))
    print(f"# memory per added worker, PSS MiB = (PSS({n_big}) - PSS(1)) / {n_big - 1}, median of {args.reps}\n")
    kinds = sorted({k for pairs in per.values() for pair in pairs for res in pair for k in res["kinds"]})
    print("| mapping | " + " | ".join(routes) + " |")
    print("|---|" + "---|" * len(routes))

    def added(pairs, get):
        vals = sorted((get(big) - get(one)) / (n_big - 1) / 1024 for one, big in pairs)
        return f"{vals[len(vals) // 2]:.2f}" if vals else "-"

    print("| **total (smaps_rollup Pss)** | " + " | ".join(added(per[r], lambda x: x["pss_kib"]) for r in routes) + " |")
    for k in kinds:
        cells = [added(per[r], lambda x, k=k: x["kinds"].get(k, [0, 0])[0]) for r in routes]
        priv = [added(per[r], lambda x, k=k: x["kinds"].get(k, [0, 0])[1]) for r in routes]
        print(f"| {k} (Pss; private) | " + " | ".join(f"{c}; {p}" for c, p in zip(cells, priv)) + " |")
    for r in routes:
        if per[r]:
            one, big = per[r][len(per[r]) // 2]
            print(f"\n{r}: PSS(1) {one['pss_kib'] / 1024:.1f} MiB, PSS({n_big}) {big['pss_kib'] / 1024:.1f} MiB")

    print("\n# two namespaces, 2e6-iteration loop each:", json.dumps(run_child(["parallel"])))
    print("# namespaces opened, no GLIBC_TUNABLES:", json.dumps(run_child(["limits"], {"GLIBC_TUNABLES": ""})))
    print(f"# namespaces opened, GLIBC_TUNABLES={TUNABLES}:",
          json.dumps(run_child(["limits"], {"GLIBC_TUNABLES": TUNABLES})))


if __name__ == "__main__":
    main()
