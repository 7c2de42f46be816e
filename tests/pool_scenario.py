"""Pool behaviour checked inside one interpreter; run by test_pool_versions.py per Python.

Prints one JSON object: {"version": ..., "results": {name: [ok, detail]}}.
"""

import json
import os
import sys
import time

# tasks.py alone (tests/support/__init__ needs pytest, which these venvs lack)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import tasks  # noqa: E402
from gilclone.pool import (  # noqa: E402
    BrokenClonePool,
    ClonePool,
    RemoteTraceback,
    TaskPicklingError,
    shared,
)
from scenario_checks import check, gil_held_while_other_runs, interrupt_then_reuse  # noqa: E402


def main():
    results = {}
    with ClonePool(2) as pool:
        check(results, "map", lambda: (list(pool.map(tasks.add, range(500), chunksize=7)) == list(range(500)), "map ok"))
        check(results, "in_clones", lambda: (
            {pool.submit(tasks.clone_index).result() for _ in range(30)} - {None} != set(), "clone indexes seen"))

        def exception():
            try:
                pool.submit(tasks.raise_custom, 3).result()
            except tasks.CustomError as exc:
                return isinstance(exc.__cause__, RemoteTraceback) and exc.code == 3, "CustomError with remote traceback"
            return False, "no exception"

        check(results, "exception", exception)

        def unpicklable():
            try:
                pool.submit(tasks.echo, tasks.Unpicklable()).result()
            except TaskPicklingError:
                return pool.submit(tasks.echo, 1).result() == 1, "future failed, pool usable"
            return False, "no error"

        check(results, "unpicklable", unpicklable)

        def sharing():
            buf = bytearray(16)
            pool.submit(tasks.write_view, shared(buf), 2, 5).result()
            return buf[2] == 5, "write seen by host"

        check(results, "shared", sharing)

        def parallel():
            held, other = gil_held_while_other_runs(pool)  # decided by behaviour
            # The speed-up, for the record only: it depends on the machine's load.
            n = 1_500_000
            t0 = time.perf_counter()
            tasks.busy(n)
            tasks.busy(n)
            serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(tasks.busy, [n, n]))
            par = time.perf_counter() - t0
            return held == "released", (f"clone {other} ran while another held its GIL: {held}; "
                                        f"serial {serial:.3f}s, two clones {par:.3f}s, "
                                        f"speed-up {serial / par:.2f}")

        check(results, "parallel", parallel)

        def decimal_work():
            from decimal import Decimal

            got = list(pool.map(Decimal.sqrt, [Decimal(2)] * 4))
            return got == [Decimal(2).sqrt()] * 4, "decimal in clones"

        check(results, "decimal", decimal_work)

    def tiny_tasks():
        workers = (os.cpu_count() or 1) + 2
        with ClonePool(workers) as p:
            got = list(p.map(tasks.echo, range(3000)))
        return got == list(range(3000)), f"3000 tasks on {workers} workers"

    check(results, "tiny_tasks", tiny_tasks)

    def thirty_pools():
        import threading

        before = threading.active_count()
        for i in range(30):
            with ClonePool(2) as p:
                assert p.submit(tasks.add, i, 1).result() == i + 1
        after = threading.active_count()
        return after == before, f"threads before {before}, after 30 pools {after}"

    check(results, "thirty_pools", thirty_pools)

    def numpy_in_clones():
        try:
            import numpy  # noqa: F401
        except ImportError:
            return False, "numpy is not installed in this environment"
        with ClonePool(2) as p:
            got = list(p.map(tasks.numpy_work, range(6)))
        expected = [tasks.numpy_work(i)[0] for i in range(6)]
        same = all(abs(a[0] - b) < 1e-9 for a, b in zip(got, expected))
        return same and {g[2] for g in got} - {None}, f"clones used: {sorted({g[2] for g in got})}"

    check(results, "numpy", numpy_in_clones)

    def broken():
        p = ClonePool(1, initializer=tasks.slow_fail_initializer, initargs=(0.3,))
        f = p.submit(tasks.echo, 1)
        try:
            f.result(timeout=60)
        except BrokenClonePool:
            return True, "BrokenClonePool"
        finally:
            p.shutdown()
        return False, "no error"

    check(results, "broken_initializer", broken)

    def interrupt():
        with ClonePool(1) as p:
            return interrupt_then_reuse(p)

    check(results, "interrupt", interrupt)

    def timeout():
        from concurrent.futures import TimeoutError as FuturesTimeout

        with ClonePool(1, task_timeout=0.2) as p:
            t0 = time.monotonic()
            try:
                p.submit(tasks.spin).result(timeout=30)
            except FuturesTimeout:
                took = time.monotonic() - t0
                ok = p.options(timeout=None).submit(tasks.add, 2, 2).result() == 4 and p.workers == 1
                return ok and took < 10, f"timed out after {took:.2f} s, worker reused"
            return False, "no TimeoutError"

    check(results, "timeout", timeout)
    print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "results": results}))


if __name__ == "__main__":
    main()
