"""What one benchmark run measures and collects: its rows, settings and samples."""

import sys
import time

from peers import Unavailable

PHASES = ["cpu", "tiny", "startup", "share", "numpy", "memory", "scaling"]

# Rows of the table: key -> (label, unit, which direction is better)
ROWS = {
    "cpu_s": ("CPU-bound pure Python, wall", "s", "lower"),
    "cpu_speedup": ("CPU-bound pure Python, speed-up over serial", "x", "higher"),
    "tiny_us": ("tiny tasks (map, chunksize=1), per task", "µs", "lower"),
    "startup_ms": ("start-up to first result (fresh process)", "ms", "lower"),
    "first_result_ms": ("first result from process start, warm cache (serial: bare interpreter)", "ms", "lower"),
    "share_handover_ms": ("256 MiB buffer: hand-over (task reads 2 bytes)", "ms", "lower"),
    "share_sum_ms": ("256 MiB buffer: hand-over + sum", "ms", "lower"),
    "numpy_s": ("numpy eigvalsh 300x300, wall", "s", "lower"),
    "numpy_speedup": ("numpy eigvalsh 300x300, speed-up over serial", "x", "higher"),
    "mem_rss_mib": ("resident memory per added worker (VmRSS)", "MiB", "lower"),
    "mem_pss_mib": ("memory per added worker (PSS, shared pages split)", "MiB", "lower"),
}


class Settings:
    def __init__(self, quick, workers):
        self.workers = workers
        self.quick = quick
        self.cpu_tasks = 4 * workers if not quick else 2 * workers
        self.cpu_n = 2_000_000 if not quick else 200_000
        self.cpu_reps = 5 if not quick else 1
        self.tiny_n = 5000 if not quick else 500
        self.tiny_reps = 7 if not quick else 1
        self.startup_reps = 5 if not quick else 2
        self.share_bytes = (256 if not quick else 16) << 20
        self.share_reps = 5 if not quick else 2
        self.numpy_tasks = 4 * workers if not quick else 2 * workers
        self.numpy_repeat = 10 if not quick else 2
        self.numpy_reps = 3 if not quick else 1
        self.memory_reps = 2 if not quick else 1


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def check(value, expected, what):
    if value != expected:
        raise RuntimeError(f"{what}: wrong result {value!r}, expected {expected!r}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Run:
    """Collects the samples and notes of one benchmark run."""

    def __init__(self, settings, peers, phases):
        self.s = settings
        self.peers = peers
        self.phases = phases
        self.values = {row: {} for row in ROWS}
        self.samples = {row: {} for row in ROWS}
        self.notes = {}  # (row or "*", peer) -> why there is no number
        self.scaling = {}  # workers -> {peer: CPU-bound speed-up over serial}

    def put(self, row, peer, value, samples=None):
        self.values[row][peer] = value
        if samples is not None:
            self.samples[row][peer] = samples

    def note(self, rows, peer, why):
        for row in rows:
            self.notes.setdefault((row, peer), why)

    def attempt(self, rows, peer, fn):
        """Run ``fn``; on failure note why for ``rows`` of ``peer``. Returns whether it worked."""
        try:
            fn()
            return True
        except Unavailable as exc:
            self.note(rows, peer, str(exc))
        except Exception as exc:
            self.note(rows, peer, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log(f"  {peer}: {rows[0]} failed: {type(exc).__name__}: {exc}")
        return False


def speedups(run, wall_row, speed_row):
    serial = run.values[wall_row].get("serial")
    if serial is None:
        for peer in run.peers:
            run.note([speed_row], peer, "needs the serial peer")
        return
    for peer, t in run.values[wall_row].items():
        run.put(speed_row, peer, serial / t)
