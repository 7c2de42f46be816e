"""ClonePool(route="namespaces") checked inside one interpreter; run by test_namespace_route.py
(under this checkout's Python, and under every pyenv Python by the version test).

    python namespace_scenario.py basic     {"version", "results": {name: [ok, detail]}}
    python namespace_scenario.py limit N   a pool of N namespace workers where glibc gives fewer
    python namespace_scenario.py memory    PSS per added worker, namespaces and copies, one process

Each prints one JSON line last. A namespace bug tends to hang or crash the process, so the
tests run this file in a subprocess with a timeout.
"""

import ctypes
import json
import os
import sys
import threading
import time

# tasks.py alone (tests/support/__init__ needs pytest, which the version venvs lack)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import tasks  # noqa: E402
from gilclone.pool import BrokenClonePool, ClonePool, shared  # noqa: E402
from scenario_checks import check, gil_held_while_other_runs, interrupt_then_reuse  # noqa: E402


def stdlib_work(n):
    """Extension modules of the standard library, loaded in the namespace from their files."""
    import _struct
    import decimal
    import json

    text = json.dumps({"q": str(decimal.Decimal(n) / 7)})
    return json.loads(text)["q"], _struct.pack("<i", n).hex(), getattr(sys, "_gilclone_index", None)


def numpy_work(n):
    return tasks.numpy_work(n)


def capi_addresses():
    """Where ctypes.pythonapi and PyDLL(None) point in this interpreter, and a call
    through pythonapi that builds a bytes object (it crashed when that was the host's)."""
    import ctypes

    def address(lib):
        return ctypes.cast(lib.Py_IsInitialized, ctypes.c_void_p).value

    fmt = ctypes.pythonapi.PyBytes_FromFormat
    fmt.restype = ctypes.py_object
    fmt.argtypes = [ctypes.c_char_p, ctypes.c_int]
    made = fmt(b"clone %d", 7)
    return address(ctypes.pythonapi), address(ctypes.PyDLL(None)), made, ctypes.pythonapi.Py_IsInitialized()


def threads_inside(n):
    """A threading.Thread and a ThreadPoolExecutor started by the task, in the namespace."""
    from concurrent.futures import ThreadPoolExecutor

    out = []
    t = threading.Thread(target=lambda: out.append(sum(range(n))))
    t.start()
    t.join(30)
    with ThreadPoolExecutor(3) as ex:
        squares = list(ex.map(lambda i: i * i, range(n)))
    return out, sum(squares)


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def sleep_then_work(seconds, n):
    time.sleep(seconds)
    return stdlib_work(n)






def host_address():
    return ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value


def basic():
    results = {}
    with ClonePool(2, route="namespaces") as pool:
        def parallel():
            held, _ = gil_held_while_other_runs(pool)  # by behaviour, not by speed
            routes = [s.route for s in pool.stats()]
            return held == "released" and routes == ["namespaces"] * 2, f"{held}; routes {routes}"

        check(results, "parallel", parallel)

        def environment():
            # The host grows its environment (its array is reallocated) after the namespaces
            # opened; each namespace's libc has an array of its own, and sees the host's
            # values as they were when it opened.
            from gilclone.cloner import namespace

            host = ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ").value
            before = [ctypes.c_void_p.from_address(namespace._symbol(c.api.lib._handle, "__environ")).value
                      for c in namespace._NAMESPACES.values() if c.slot is not None]
            if host in before:
                return False, f"a namespace's libc uses the host's environment array {host:#x}"
            for i in range(64):
                os.environ[f"GILCLONE_SCENARIO_{i}"] = "x" * i
            got = list(pool.map(_environ_rendezvous, [shared(bytearray(2))] * 2, [0, 1]))
            host = ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ").value
            arrays = {g[0] for g in got}
            ok = (host not in arrays and len(arrays) == 2
                  and all(g[1] == os.environ.get("PATH", "").encode() and g[2] == b"1" for g in got))
            return ok, f"host {host:#x}, namespaces {[hex(g[0]) for g in got]}"

        check(results, "environment", environment)

        def stdlib():
            got = list(pool.map(sleep_then_work, [0.2] * 4, range(4)))  # both workers take some
            expected = [stdlib_work(n)[:2] for n in range(4)]
            used = {g[2] for g in got}
            return [g[:2] for g in got] == expected and len(used - {None}) == 2, f"namespaces used {used}"

        check(results, "stdlib", stdlib)

        def numpy_in_both():
            try:
                import numpy  # noqa: F401
            except ImportError:
                return False, "numpy is not installed in this environment"
            flags = bytearray(2)
            # Both workers import numpy: a rendezvous holds each until both have arrived.
            got = list(pool.map(tasks.numpy_rendezvous, [shared(flags)] * 2, [0, 1]))
            more = list(pool.map(numpy_work, range(4)))
            expected = [tasks.numpy_work(i)[0] for i in range(4)]
            same = all(abs(a[0] - b) < 1e-9 for a, b in zip(more, expected))
            return same and len({g[2] for g in got} - {None}) == 2, f"rendezvous {got}"

        check(results, "numpy", numpy_in_both)

        def pythonapi():
            flags = bytearray(2)
            addrs = list(pool.map(_capi_rendezvous, [shared(flags)] * 2, [0, 1]))
            host = host_address()
            own = {a[0] for a in addrs}
            ok = (len(own) == 2 and host not in own and all(a[1] == a[0] for a in addrs)
                  and all(a[2] == b"clone 7" and a[3] == 1 for a in addrs))
            return ok, f"host {host:#x}, namespaces {[(hex(a[0]), hex(a[1])) for a in addrs]}"

        check(results, "pythonapi", pythonapi)

        def threads():
            got = pool.submit(threads_inside, 50).result(timeout=60)
            return got == ([1225], sum(i * i for i in range(50))), f"{got}"

        check(results, "threads", threads)

        def interrupt():
            return interrupt_then_reuse(pool)

        check(results, "interrupt", interrupt)

        def timeout():
            from concurrent.futures import TimeoutError as FuturesTimeout

            t0 = time.monotonic()
            try:
                pool.options(timeout=0.2).submit(tasks.spin).result(timeout=30)
            except FuturesTimeout:
                took = time.monotonic() - t0
                return pool.submit(tasks.add, 2, 2).result() == 4 and took < 10, f"timed out after {took:.2f} s"
            return False, "no TimeoutError"

        check(results, "timeout", timeout)

        def keys():
            # After numpy and threads: every namespace's next pthread key is still in its range.
            from gilclone.cloner import namespace

            seen = {}
            for clone in namespace._NAMESPACES.values():
                if clone.slot is None:
                    continue
                handle = clone.api.lib._handle
                create = namespace._fn(handle, "pthread_key_create", ctypes.c_int,
                                       ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p)
                delete = namespace._fn(handle, "pthread_key_delete", ctypes.c_int, ctypes.c_uint)
                key = ctypes.c_uint()
                create(ctypes.byref(key), None)
                delete(key.value)
                first, end = namespace.key_range(clone.slot)
                seen[clone.slot] = (first, key.value, end)
            return len(seen) == 2 and all(f < k < e for f, k, e in seen.values()), f"{seen}"

        check(results, "keys", keys)

    def copies_beside():
        # A copies pool in the same process, with a namespace pool still alive: each
        # leases its own records.
        with ClonePool(1, route="namespaces") as ns, ClonePool(1, route="copies") as cp:
            a, b = ns.submit(stdlib_work, 3).result(), cp.submit(stdlib_work, 3).result()
            routes = [ns.stats()[0].route, cp.stats()[0].route]
        return a[:2] == b[:2] and a[2] != b[2] and routes == ["namespaces", "copies"], f"{a} {b} {routes}"

    check(results, "copies_beside", copies_beside)
    return {"version": "%d.%d" % sys.version_info[:2], "results": results}


def _environ_rendezvous(flags, slot):
    """This namespace's libc: where its environ is, PATH through its getenv, and a variable
    set through it (setenv in this libc, both namespaces at once)."""
    tasks.rendezvous(flags, slot)
    os.environ[f"GILCLONE_SCENARIO_NS_{slot}"] = "1"
    libc = ctypes.CDLL("libc.so.6")  # loaded in this namespace: its own libc
    libc.getenv.restype = ctypes.c_char_p
    libc.getenv.argtypes = [ctypes.c_char_p]
    return (ctypes.c_void_p.in_dll(libc, "environ").value, libc.getenv(b"PATH"),
            libc.getenv(f"GILCLONE_SCENARIO_NS_{slot}".encode()))


def _capi_rendezvous(flags, slot):
    tasks.rendezvous(flags, slot)
    return capi_addresses()


def limit(workers):
    """More namespace workers than glibc gives: the error, then a copies pool still works."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    pool = ClonePool(workers, route="namespaces")
    flags = bytearray(workers)  # all must run at once: every worker has to start
    futures = [pool.submit(tasks.rendezvous, shared(flags), i, 60.0) for i in range(workers)]
    wait(futures, timeout=120, return_when=FIRST_EXCEPTION)
    errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
    pool.shutdown(cancel_futures=True)
    error = None
    if errors and isinstance(errors[0], BrokenClonePool):
        cause = errors[0].__cause__
        error = {"message": str(errors[0]), "cause": type(cause).__name__, "cause_message": str(cause)}
    with ClonePool(1, route="copies") as cp:
        after = cp.submit(tasks.add, 2, 3).result(timeout=60)
    return {"error": error, "other_errors": [repr(e) for e in errors if not isinstance(e, BrokenClonePool)],
            "done": sorted(f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None),
            "copies_after": after}


def memory():
    """PSS of this process after a pool's first worker and after its third, per route, in
    one process (namespaces first, then copies): each route's first worker pays one-time
    costs, the next two are the per-worker cost."""
    from gilclone.cloner.prepare import ensure_set

    ensure_set(6)  # built before measuring: a clone built while measuring would count
    out = {}
    pools = []
    for route in ("namespaces", "copies"):
        pool = ClonePool(3, route=route)
        pool.submit(stdlib_work, 1).result(timeout=120)
        time.sleep(0.2)
        one = pss_kib()
        # Three at once start two more workers; each runs the same work once.
        list(pool.map(sleep_then_work, [0.5] * 3, range(3)))
        time.sleep(0.2)
        three = pss_kib()
        out[route] = {"pss_one_kib": one, "pss_three_kib": three, "per_added_mib": (three - one) / 2 / 1024,
                      "workers": pool.workers}
        pools.append(pool)  # kept alive: the next route's workers must not reuse its clones
    for pool in pools:
        pool.shutdown()
    return out


def pss_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "basic":
        report = basic()
    elif mode == "limit":
        report = limit(int(sys.argv[2]))
    elif mode == "memory":
        report = memory()
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(report), flush=True)
