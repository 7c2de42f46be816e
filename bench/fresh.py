"""Measurements in fresh subprocesses: a pool's start-up, and its memory per worker.

``run_child`` starts ``python -c`` that imports this module and calls ``child``,
which prints one ``RESULT {json}`` line.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import workloads
from peers import pool_factory, pool_pids, proc_kib

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def child(argv):
    """In a fresh interpreter: time a pool's start-up, or read its memory, and print JSON."""
    mode, peer, workers = argv[0], argv[1], int(argv[2])
    make = pool_factory(peer)
    if mode == "startup":
        out = _startup(make, workers)
    elif mode == "memory":
        out = _memory(make, workers)
    else:
        raise ValueError(mode)
    print("RESULT " + json.dumps(out), flush=True)


def _startup(make, workers):
    t0 = time.perf_counter()
    pool = make(workers)
    pool.submit(workloads.identity, 1).result()
    elapsed = time.perf_counter() - t0
    pool.shutdown()
    return {"ms": elapsed * 1e3}


def _memory(make, workers):
    pool = make(workers)
    # One sleeping task per worker: process pools start a process per waiting task.
    list(pool.map(workloads.sleep_then, range(workers)))
    pids = [os.getpid()] + pool_pids(pool)
    rss = [proc_kib(p, "status", "VmRSS") for p in pids]
    pss = [proc_kib(p, "smaps_rollup", "Pss") for p in pids]
    pool.shutdown()
    return {
        "pids": len(pids),
        "rss_kib": None if None in rss else sum(rss),
        "pss_kib": None if None in pss else sum(pss),
    }


def run_child(mode, peer, workers, timeout=180):
    code = f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import fresh; fresh.child(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, mode, peer, str(workers)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH_DIR,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"child exited {proc.returncode}: {tail}")


def first_line_ms(argv, timeout=120):
    """Wall time from starting ``argv`` to its first line on stdout (it then runs to its end)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH_DIR)
    try:
        line = proc.stdout.readline()
        elapsed = (time.perf_counter() - t0) * 1e3
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if not line.startswith("FIRST"):
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"child exited {proc.returncode}: {tail}")
    return elapsed


def whole_process_ms(peer, workers):
    """A user's script, start to first result: interpreter, imports, pool, first task."""
    return first_line_ms([sys.executable, os.path.join(BENCH_DIR, "first_result.py"), peer, str(workers)])


def bare_python_ms():
    return first_line_ms([sys.executable, "-c", "print('FIRST')"])


def startup_phase(run, available):
    peers = [p for p in run.peers if p in available and p != "serial"]
    samples = {p: [] for p in peers}
    whole = {p: [] for p in peers}
    bare = []
    for p in peers:  # one untimed run each: warm caches (and the clone set)
        run.attempt(["startup_ms", "first_result_ms"], p, lambda p=p: (
            run_child("startup", p, run.s.workers), whole_process_ms(p, run.s.workers)))
    for _ in range(run.s.startup_reps):  # interleaved, so that noise spreads over all peers
        bare.append(bare_python_ms())
        for p in peers:
            if ("startup_ms", p) not in run.notes:
                run.attempt(["startup_ms", "first_result_ms"], p, lambda p=p: (
                    samples[p].append(run_child("startup", p, run.s.workers)["ms"]),
                    whole[p].append(whole_process_ms(p, run.s.workers))))
    for p in peers:
        if samples[p]:
            run.put("startup_ms", p, statistics.median(samples[p]), samples[p])
        if whole[p]:
            run.put("first_result_ms", p, statistics.median(whole[p]), whole[p])
    run.put("first_result_ms", "serial", statistics.median(bare), bare)  # no pool: the bare start
    if "serial" in run.peers:
        run.note(["startup_ms", "mem_rss_mib", "mem_pss_mib"], "serial", "no pool")


def memory_phase(run, available):
    if not os.path.exists("/proc/self/status"):
        for p in run.peers:
            run.note(["mem_rss_mib", "mem_pss_mib"], p, "needs /proc")
        return
    for p in run.peers:
        if p in available and p != "serial":
            run.attempt(["mem_rss_mib", "mem_pss_mib"], p, lambda p=p: _memory_per_worker(run, p))


def _memory_per_worker(run, peer):
    """(memory of a 3-worker pool - memory of a 1-worker pool) / 2, median of the reps."""
    per_rss, per_pss = [], []
    for _ in range(run.s.memory_reps):
        one_w = run_child("memory", peer, 1)
        three_w = run_child("memory", peer, 3)
        per_rss.append((three_w["rss_kib"] - one_w["rss_kib"]) / 2 / 1024)
        if one_w["pss_kib"] is not None and three_w["pss_kib"] is not None:
            per_pss.append((three_w["pss_kib"] - one_w["pss_kib"]) / 2 / 1024)
    run.put("mem_rss_mib", peer, statistics.median(per_rss), per_rss)
    if per_pss:
        run.put("mem_pss_mib", peer, statistics.median(per_pss), per_pss)
