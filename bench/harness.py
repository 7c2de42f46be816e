"""The benchmark proper: ClonePool against serial, threads, process pools and subinterpreters.

``run.py`` calls ``main``. The parts: ``peers`` (what is compared and how each
pool is made), ``runs`` (rows, settings, the samples of a run), ``inprocess``
(workloads timed on warm pools), ``fresh`` (start-up and memory, measured in
fresh subprocesses), ``targets`` and ``report`` (what is printed and written).
See bench/README.md for what each row means.
"""

import argparse
import os
import platform
import time

import workloads
from busy import busy_reasons
from fresh import memory_phase, run_child, startup_phase
from inprocess import in_process_phases
from peers import CLONE_PEERS, PEERS, Unavailable, numpy_available, pool_factory
from report import print_report, write_files
from runs import PHASES, ROWS, Run, Settings, log, speedups
from targets import evaluate_targets

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def parse(argv):
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (smoke test)")
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    cpus = os.cpu_count() or 1
    default_counts = sorted({1, cpus, 2 * cpus})
    ap.add_argument("--scaling", default=",".join(map(str, default_counts)),
                    help="worker counts of the scaling phase (default 1, the CPU count, twice that: "
                    + ",".join(map(str, default_counts)) + ")")
    ap.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: " + ",".join(PHASES))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers: " + ",".join(PEERS))
    ap.add_argument(
        "--out",
        help="folder for latest.md/.json/.png (default: bench/results for a full run; "
        "a --quick or partial run writes nothing unless given)",
    )
    args = ap.parse_args(argv)
    phases = [p for p in args.only.split(",") if p]
    peers = [p for p in args.peers.split(",") if p]
    for name, chosen, allowed in (("phase", phases, PHASES), ("peer", peers, PEERS)):
        bad = [c for c in chosen if c not in allowed]
        if bad:
            ap.error(f"unknown {name}(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    try:
        args.scaling_counts = sorted({int(c) for c in args.scaling.split(",") if c})
    except ValueError:
        ap.error(f"--scaling takes worker counts separated by commas, not {args.scaling!r}")
    if any(c < 1 for c in args.scaling_counts):
        ap.error("--scaling counts must be at least 1")
    partial = args.quick or set(phases) != set(PHASES) or set(peers) != set(PEERS)
    if args.out is None and not partial:
        args.out = RESULTS_DIR
    args.phases = [p for p in PHASES if p in phases]
    args.peer_list = [p for p in PEERS if p in peers]
    return args


def main(argv):
    args = parse(argv)
    started = time.perf_counter()
    load_before = _load_average()
    busy_before = busy_reasons()
    for reason in busy_before:
        log(f"BUSY MACHINE before the run: {reason}")
    run = Run(Settings(args.quick, args.workers), args.peer_list, args.phases)
    available = available_peers(run)
    warm = [p for p in CLONE_PEERS if p in available]
    if warm and not warm_clone_cache(run, args.workers, warm[0]):
        for p in warm:
            del available[p]
    run_phases(run, available)
    if "scaling" in run.phases:
        scaling_phase(run, available, args.scaling_counts)
    targets = evaluate_targets(run)
    meta = run_meta(run, args, load_before, started)
    meta["busy"] = [f"before: {r}" for r in busy_before] + [f"after: {r}" for r in busy_reasons()]
    print_report(run, meta, targets)
    if args.out:
        write_files(args.out, run, meta, targets)
    return 0


def available_peers(run):
    """peer -> pool factory for the peers that can run here; the others get a note."""
    available = {}
    for p in run.peers:
        try:
            available[p] = pool_factory(p)
        except Unavailable as exc:
            run.note(list(ROWS), p, str(exc))
    if "numpy" in run.phases and not numpy_available():
        log("numpy workload: n/a (numpy not installed); `.venv-bench/bin/pip install numpy` to include it")
        for p in run.peers:
            run.note(["numpy_s", "numpy_speedup"], p, "numpy not installed")
    return available


def warm_clone_cache(run, workers, peer="clone"):
    """Prepare the clone set (3 clones: the memory phase uses 3 workers) outside any timing
    (both routes lease the set's clones)."""
    log("warming the clone cache ...")
    return run.attempt(list(ROWS), peer, lambda: run_child("memory", peer, max(3, workers)))


def run_phases(run, available):
    if any(ph in run.phases for ph in ("cpu", "tiny", "share", "numpy")):
        buf, expected = reference_results(run)
        in_process_phases(run, available, buf, expected)
        del buf
        if "cpu" in run.phases:
            speedups(run, "cpu_s", "cpu_speedup")
        if "numpy" in run.phases:
            speedups(run, "numpy_s", "numpy_speedup")
    if "startup" in run.phases:
        log("start-up in fresh processes ...")
        startup_phase(run, available)
    if "memory" in run.phases:
        log("memory in fresh processes ...")
        memory_phase(run, available)


def scaling_phase(run, available, counts):
    """CPU-bound speed-up over serial for each worker count (each count's pools made anew)."""
    peers = [p for p in run.peers if p in available]
    if "serial" not in peers:
        log("scaling: needs the serial peer; skipped")
        return
    expected = {"cpu": workloads.cpu_loop(run.s.cpu_n)}
    for w in counts:
        if w == run.s.workers and "cpu_speedup" in _measured_rows(run):
            run.scaling[w] = dict(run.values["cpu_speedup"])
            continue
        log(f"scaling: {w} workers ...")
        settings = Settings(run.s.quick, w)
        settings.cpu_reps = min(settings.cpu_reps, 3)
        sub = Run(settings, peers, ["cpu"])
        in_process_phases(sub, {p: available[p] for p in peers}, None, expected)
        speedups(sub, "cpu_s", "cpu_speedup")
        run.scaling[w] = dict(sub.values["cpu_speedup"])


def _measured_rows(run):
    return {row for row, values in run.values.items() if values}


def reference_results(run):
    """The shared buffer, and every workload's result computed here: each peer's is checked."""
    buf, expected = None, {}
    if "cpu" in run.phases:
        expected["cpu"] = workloads.cpu_loop(run.s.cpu_n)
    if "share" in run.phases:
        buf = bytearray(bytes(range(256))) * (run.s.share_bytes // 256)
        expected["touch"] = workloads.touch_ends(buf)
        expected["sum_fn"] = workloads.numpy_sum if numpy_available() else workloads.page_sum
        expected["sum"] = expected["sum_fn"](buf)
    return buf, expected


def run_meta(run, args, load_before, started):
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "quick": args.quick,
        "phases": run.phases,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": load_before,
        "load_after": _load_average(),
        "seconds": time.perf_counter() - started,
        "numpy": numpy_available(),
    }


def _load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0] * 3
