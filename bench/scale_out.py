"""Scale-out layers: a Dask worker on threads vs on clones, and joblib's backends.

``python bench/scale_out.py [--quick] [--out DIR]`` (``bench/run.py`` runs it after the
main benchmark). Writes ``scale_out.md`` in ``bench/results`` (or ``--out``).

Dask: one worker process (``LocalCluster(processes=True, n_workers=1,
threads_per_worker=2)``) with the ``gilclone.dask`` preload, so the same worker
has its default 2-thread executor and a 2-clone executor; the same tasks go to
one or the other with ``dask.annotate(executor=...)``.
joblib: ``Parallel(n_jobs=2)`` with the ``gilclone``, ``loky`` and ``threading`` backends.

Every pool is warm before timing; each repetition runs every contender in turn
(load from elsewhere spreads over all); best of 5 rounds (2 with ``--quick``). Results are checked
against serial ones. Clones re-run this file as ``__mp_main__``: imports stay in
functions.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TARGET_DASK_SPEEDUP = 1.6


class Settings:
    def __init__(self, quick: bool):
        self.repeat = 2 if quick else 5
        self.cpu_tasks = 8
        self.cpu_n = 300_000 if quick else 2_000_000
        self.dask_tiny = 100 if quick else 400
        self.joblib_tiny = 2000 if quick else 20_000


def best_wall(fn, repeat):
    """Best wall time of ``fn()`` over ``repeat`` runs; checks every result is the same."""
    times, results = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - start)
    assert all(r == results[0] for r in results)
    return min(times), results[0]


def interleaved(contenders, repeat):
    """{name: best wall} running each contender once per round, so load hits all alike."""
    best = {name: float("inf") for name in contenders}
    for _ in range(repeat):
        for name, (fn, expected) in contenders.items():
            wall, result = best_wall(fn, 1)
            if result != expected:
                raise AssertionError(f"{name}: wrong result")
            best[name] = min(best[name], wall)
    return best


def missing_packages():
    """The packages this part needs that are not installed (Dask needs Python >= 3.10)."""
    import importlib.util

    return [name for name in ("dask", "distributed", "joblib", "cloudpickle")
            if importlib.util.find_spec(name) is None]


# -- Dask ----------------------------------------------------------------------------


def dask_rows(s: Settings):
    import dask
    import workloads
    from distributed import Client, LocalCluster

    def run(executor, fn, args):
        with dask.annotate(executor=executor):
            futures = client.map(fn, args, pure=False)
        return [f.result(timeout=600) for f in futures]

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      preload=["gilclone.dask"]) as cluster, Client(cluster) as client:
        for executor in ("default", "clones"):  # warm: clones import Dask's task module
            run(executor, workloads.cpu_loop, [1000] * 4)
        cpu_args = [s.cpu_n] * s.cpu_tasks
        expected = [workloads.cpu_loop(s.cpu_n)] * s.cpu_tasks
        cpu = interleaved({
            "serial": (lambda: [workloads.cpu_loop(n) for n in cpu_args], expected),
            "threads": (lambda: run("default", workloads.cpu_loop, cpu_args), expected),
            "clones": (lambda: run("clones", workloads.cpu_loop, cpu_args), expected),
        }, s.repeat)
        tiny_args = list(range(s.dask_tiny))
        tiny = interleaved({
            "threads": (lambda: run("default", workloads.identity, tiny_args), tiny_args),
            "clones": (lambda: run("clones", workloads.identity, tiny_args), tiny_args),
        }, s.repeat)
    return [
        ("Dask worker, CPU-bound pure Python "
         f"({s.cpu_tasks} x cpu_loop({s.cpu_n:,})), wall", "s", cpu["threads"], cpu["clones"]),
        (f"Dask worker, per-task overhead ({s.dask_tiny} identity tasks)", "ms",
         1000 * tiny["threads"] / s.dask_tiny, 1000 * tiny["clones"] / s.dask_tiny),
    ], cpu["threads"] / cpu["clones"], cpu["serial"]


# -- joblib --------------------------------------------------------------------------


def joblib_rows(s: Settings):
    import workloads
    from joblib import Parallel, delayed

    import gilclone.joblib  # noqa: F401  (registers the backend)

    backends = ("gilclone", "loky", "threading")

    def run(backend, fn, args):
        return Parallel(n_jobs=2, backend=backend)(delayed(fn)(a) for a in args)

    for backend in backends:  # warm: start loky's processes and the clones
        run(backend, workloads.cpu_loop, [1000] * 4)
    cpu_args = [s.cpu_n] * s.cpu_tasks
    expected = [workloads.cpu_loop(s.cpu_n)] * s.cpu_tasks
    cpu = interleaved({b: (lambda b=b: run(b, workloads.cpu_loop, cpu_args), expected)
                       for b in backends}, s.repeat)
    tiny_args = list(range(s.joblib_tiny))
    tiny = interleaved({b: (lambda b=b: run(b, workloads.identity, tiny_args), tiny_args)
                        for b in backends}, s.repeat)
    return [
        (f"joblib CPU-bound pure Python ({s.cpu_tasks} x cpu_loop({s.cpu_n:,})), wall", "s",
         *(cpu[b] for b in backends)),
        (f"joblib tiny tasks ({s.joblib_tiny:,} identity calls, auto batching), per call", "µs",
         *(1e6 * tiny[b] / s.joblib_tiny for b in backends)),
    ]


# -- report --------------------------------------------------------------------------


def report(dask_table, speedup, serial, joblib_table, load, quick) -> str:
    import platform

    met = "MET" if speedup >= TARGET_DASK_SPEEDUP else "NOT MET"
    lines = [
        "# Scale-out benchmark: Dask worker executors and joblib backends",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1 min) "
        f"{load[0]:.2f} before, {load[1]:.2f} after"
        + (" (quick run: not numbers to quote)" if quick else "") + ".",
        "",
        "| Dask, one worker process | unit | 2 threads | 2 clones |",
        "|---|---|---|---|",
        *(f"| {label} | {unit} | {a:.3g} | {b:.3g} |" for label, unit, a, b in dask_table),
        "",
        f"Clone executor speed-up over the thread executor on CPU-bound tasks: "
        f"**{speedup:.2f}x** (target >= {TARGET_DASK_SPEEDUP}x: {met}). For scale: the same "
        f"tasks one after another in the client process took {serial:.3g} s; a speed-up needs "
        "a second core free.",
        "",
        *_conditions(load),
        "| joblib, n_jobs=2 | unit | gilclone | loky | threading |",
        "|---|---|---|---|---|",
        *(f"| {label} | {unit} | {a:.3g} | {b:.3g} | {c:.3g} |" for label, unit, a, b, c in joblib_table),
        "",
    ]
    return "\n".join(lines)


def _conditions(load):
    """A warning when the numbers say more about the machine than about the contenders."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            autogroup = f.read().strip() == "1"
    except OSError:
        autogroup = False
    if max(load) < (os.cpu_count() or 1) / 2:
        return []
    note = (f"The machine was busy (load {max(load):.2f} on {os.cpu_count()} CPUs): "
            "parallel speed-ups need idle cores")
    if autogroup:
        note += (", and with Linux's sched_autogroup on, CPU time is shared per session, so "
                 "a benchmark's extra threads or processes get no more of it while other "
                 "sessions are busy")
    return [note + ".", ""]


def main(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--out", help="directory for scale_out.md (default bench/results)")
    args = parser.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    s = Settings(args.quick)
    before = os.getloadavg()[0]
    dask_table, speedup, serial = dask_rows(s)
    joblib_table = joblib_rows(s)
    text = report(dask_table, speedup, serial, joblib_table, (before, os.getloadavg()[0]),
                  args.quick)
    print(text)
    out = args.out or (None if args.quick else os.path.join(os.path.dirname(__file__), "results"))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "scale_out.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
