"""Is this machine too busy for timings to mean much? Used by bench/run.py and `make demo`.

Two signs, each cheap: the 1-minute load average above the CPU count, and a
calibration loop that gets less than ~80% of a CPU (its wall time well above its
own CPU time: other work took the core from it).
"""

import os
import time

CALIBRATION_SECONDS = 0.1
MIN_CPU_SHARE = 0.8


def cpu_share(seconds: float = CALIBRATION_SECONDS) -> float:
    """The share of one CPU a pure-Python loop got over about ``seconds`` (1.0: all of it)."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    n = 0
    while time.perf_counter() - wall0 < seconds:
        for _ in range(10_000):
            n += 1
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    return min(1.0, cpu / wall) if wall > 0 else 1.0


def busy_reasons(cpus=None) -> list:
    """Why timings taken now are suspect ([] when the machine looks idle)."""
    cpus = cpus or os.cpu_count() or 1
    reasons = []
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        if load > cpus:
            reasons.append(f"load average {load:.2f} is above the {cpus} CPUs")
    share = cpu_share()
    if share < MIN_CPU_SHARE:
        reasons.append(f"a calibration loop got only {share:.0%} of a CPU")
    return reasons
