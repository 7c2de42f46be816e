"""The cpu, tiny, share and numpy workloads, timed in the benchmark's own process on warm pools.

Every pool is started first (ClonePool last, so that no process is forked from a
process with clones running); then each repetition runs once on every peer in
turn, so that load from elsewhere on the machine spreads over all of them.
"""

import statistics
from typing import Callable, List, NamedTuple, Optional

import workloads
from peers import PEER_TITLES, Unavailable, numpy_available, share_arg
from runs import check, log, timed

ROWS_OF = {
    "cpu": ["cpu_s", "cpu_speedup"],
    "tiny": ["tiny_us"],
    "share": ["share_handover_ms", "share_sum_ms"],
    "numpy": ["numpy_s", "numpy_speedup"],
}


class Measure(NamedTuple):
    row: str
    also: List[str]  # other rows that have no number when this one fails
    reps: int
    aggregate: Callable
    prepare: Optional[Callable]  # peer -> None, once before the repetitions
    measure: Callable  # peer -> one sample


def in_process_phases(run, available, buf, expected):
    """Time the in-process phases chosen for ``run`` on every available peer."""
    phases = [ph for ph in ROWS_OF if ph in run.phases]
    bench = Workloads(run.s, buf, expected)
    started = []
    try:
        start_pools(run, available, phases, bench.pools, started)
        for measure in measures(run.s, phases, bench):
            measure_row(run, bench.pools, measure)
    finally:
        for pool in started:
            pool.shutdown()


def start_pools(run, available, phases, pools, started):
    """Fill ``pools`` (peer -> warm pool, None for serial); ``started`` gets every pool made."""
    all_rows = [r for ph in phases for r in ROWS_OF[ph]]
    with_numpy = numpy_available() and ("numpy" in phases or "share" in phases)
    for p in run.peers:
        if p not in available:
            continue
        log(f"starting {PEER_TITLES[p]} ...")
        run.attempt(all_rows, p, lambda p=p: _start(p, available[p], run.s.workers, with_numpy,
                                                    pools, started))


def _start(peer, make, workers, with_numpy, pools, started):
    pool = None
    if make is not None:
        pool = make(workers)
        started.append(pool)
        _warm_up(pool, workers, with_numpy)
    pools[peer] = pool


def _warm_up(pool, workers, with_numpy):
    # Start every worker before timing (process pools start them on demand).
    list(pool.map(workloads.sleep_then, range(workers), [0.05] * workers))
    if with_numpy:
        # Import numpy in every worker first, untimed: clones copy its extension
        # modules on first import; the workloads time the work, not the import.
        list(pool.map(workloads.import_numpy_then_sleep, range(workers)))


def measures(s, phases, bench) -> List[Measure]:
    out = []
    if "cpu" in phases:
        out.append(Measure("cpu_s", ["cpu_speedup"], s.cpu_reps, statistics.median, None, bench.cpu))
    if "tiny" in phases:
        out.append(Measure("tiny_us", [], s.tiny_reps, statistics.median, None, bench.tiny))
    if "share" in phases:
        out.append(Measure("share_handover_ms", [], s.share_reps, statistics.median, None, bench.handover))
        out.append(Measure("share_sum_ms", [], max(1, s.share_reps - 2), statistics.median, None,
                           bench.full_sum))
    if "numpy" in phases:
        out.append(Measure("numpy_s", ["numpy_speedup"], s.numpy_reps, statistics.median, bench.warm_numpy,
                           bench.numpy_run))
    return out


def measure_row(run, pools, m: Measure):
    """Take ``m.reps`` samples of ``m.row`` on every live peer, interleaved, and store them."""
    live = [p for p in pools if (m.row, p) not in run.notes]
    log(f"{m.row}: {m.reps} x {', '.join(PEER_TITLES[p] for p in live)}")
    rows = [m.row] + m.also
    if m.prepare is not None:
        live = [p for p in live if run.attempt(rows, p, lambda p=p: m.prepare(p))]
    samples = {p: [] for p in live}
    for _ in range(m.reps):
        for p in live:
            if (m.row, p) not in run.notes:
                run.attempt(rows, p, lambda p=p: samples[p].append(m.measure(p)))
    for p in live:
        if samples[p] and (m.row, p) not in run.notes:
            run.put(m.row, p, m.aggregate(samples[p]), samples[p])


class Workloads:
    """The timed workloads: each takes a peer, runs on its pool and returns one sample."""

    def __init__(self, settings, buf, expected):
        self.s = settings
        self.buf = buf
        self.expected = expected
        self.pools = {}  # peer -> warm pool (None: serial, in this thread)

    def call(self, p, fn, *args):
        pool = self.pools[p]
        return fn(*args) if pool is None else pool.submit(fn, *args).result()

    def mapped(self, p, fn, *iterables):
        pool = self.pools[p]
        return list(map(fn, *iterables) if pool is None else pool.map(fn, *iterables))

    def cpu(self, p):
        s = self.s
        t, out = timed(lambda: self.mapped(p, workloads.cpu_loop, [s.cpu_n] * s.cpu_tasks))
        check(out, [self.expected["cpu"]] * s.cpu_tasks, "cpu_loop")
        return t

    def tiny(self, p):
        n = self.s.tiny_n
        t, out = timed(lambda: self.mapped(p, workloads.identity, range(n)))
        check(out, list(range(n)), "identity")
        return t / n * 1e6

    def handover(self, p):
        _big_argument(p)
        t, out = timed(lambda: self.call(p, workloads.touch_ends, share_arg(p, self.buf)))
        check(out, self.expected["touch"], "touch_ends")
        return t * 1e3

    def full_sum(self, p):
        _big_argument(p)
        t, out = timed(lambda: self.call(p, self.expected["sum_fn"], share_arg(p, self.buf)))
        check(out, self.expected["sum"], "sum")
        return t * 1e3

    def warm_numpy(self, p):
        if not numpy_available():
            raise Unavailable("numpy not installed")

    def numpy_run(self, p):
        seeds = list(range(self.s.numpy_tasks))
        repeats = [self.s.numpy_repeat] * len(seeds)
        t, out = timed(lambda: self.mapped(p, workloads.numpy_eig, seeds, repeats))
        first = self.expected.get("numpy")
        if first is None:
            self.expected["numpy"] = out
        elif any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(out, first)):
            raise RuntimeError("numpy_eig: results differ from the first peer's")
        return t


def _big_argument(p):
    if p == "interp":
        # interpreters-pep-734 (0.5) pastes the pickled task into the script it runs in
        # the subinterpreter, as a bytes literal: ~23 ms per MiB measured, and a 16 MiB
        # argument of non-zero bytes never came back (its worker spins on the result
        # queue when the script fails).
        raise Unavailable("the backport passes arguments as source text; large ones hang it")
