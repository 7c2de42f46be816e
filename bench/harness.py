"""The benchmark proper: ClonePool against serial, threads, process pools and subinterpreters.

``run.py`` calls ``main``; fresh subprocesses (start-up and memory
measurements) call ``child``. See bench/README.md for what each row means.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import workloads

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

PEERS = ["serial", "thread", "fork", "spawn", "forkserver", "interp", "clone"]
PEER_TITLES = {
    "serial": "serial",
    "thread": "ThreadPool",
    "fork": "Process fork",
    "spawn": "Process spawn",
    "forkserver": "Process forkserver",
    "interp": "InterpreterPool",
    "clone": "ClonePool",
}
PHASES = ["cpu", "tiny", "startup", "share", "numpy", "memory"]
PROCESS_PEERS = ("fork", "spawn", "forkserver")

# Rows of the table: key -> (label, unit, which direction is better)
ROWS = {
    "cpu_s": ("CPU-bound pure Python, wall", "s", "lower"),
    "cpu_speedup": ("CPU-bound pure Python, speed-up over serial", "x", "higher"),
    "tiny_us": ("tiny tasks (map, chunksize=1), per task", "µs", "lower"),
    "startup_ms": ("start-up to first result (fresh process)", "ms", "lower"),
    "share_handover_ms": ("256 MiB buffer: hand-over (task reads 2 bytes)", "ms", "lower"),
    "share_sum_ms": ("256 MiB buffer: hand-over + sum", "ms", "lower"),
    "numpy_s": ("numpy eigvalsh 300x300, wall", "s", "lower"),
    "numpy_speedup": ("numpy eigvalsh 300x300, speed-up over serial", "x", "higher"),
    "mem_rss_mib": ("resident memory per added worker (VmRSS)", "MiB", "lower"),
    "mem_pss_mib": ("memory per added worker (PSS, shared pages split)", "MiB", "lower"),
}

# Keep numerical libraries to one thread per worker so workers, not BLAS threads, compete.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


# -- the peers ------------------------------------------------------------------


def interpreter_pool_class():
    if sys.version_info < (3, 12):
        raise Unavailable("needs Python >= 3.12, this is %d.%d" % sys.version_info[:2])
    # The package's module was interpreters_backports up to 0.4 and is interpreters_backport in 0.5.
    for module in ("interpreters_backport", "interpreters_backports"):
        try:
            futures = __import__(module + ".concurrent.futures", fromlist=["InterpreterPoolExecutor"])
            return futures.InterpreterPoolExecutor
        except ImportError:
            continue
    raise Unavailable("interpreters-pep-734 not installed: `pip install interpreters-pep-734`")


def pool_factory(peer):
    """Import what ``peer`` needs and return ``make(workers) -> Executor`` (None for serial)."""
    if peer == "serial":
        return None
    if peer == "thread":
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor
    if peer in PROCESS_PEERS:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if peer not in multiprocessing.get_all_start_methods():
            raise Unavailable(f"no {peer} start method on {sys.platform}")
        context = multiprocessing.get_context(peer)
        return lambda n: ProcessPoolExecutor(n, mp_context=context)
    if peer == "interp":
        return interpreter_pool_class()
    if peer == "clone":
        try:
            from gilclone.pool.executor import ClonePool
        except ImportError as exc:
            raise Unavailable(f"gilclone is not importable: {exc}") from None
        return ClonePool
    raise ValueError(f"unknown peer {peer!r}")


def share_arg(peer, buf):
    """How each peer is handed the buffer: by reference where it can, pickled otherwise."""
    if peer == "clone":
        from gilclone.pool import shared

        return shared(buf)
    return buf


def numpy_available():
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def pool_pids(pool):
    processes = getattr(pool, "_processes", None) or {}
    return list(processes)


def proc_kib(pid, path, field):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -- the fresh-subprocess measurements ---------------------------------------------


def child(argv):
    """In a fresh interpreter: time a pool's start-up, or read its memory, and print JSON."""
    mode, peer, workers = argv[0], argv[1], int(argv[2])
    make = pool_factory(peer)
    if mode == "startup":
        t0 = time.perf_counter()
        pool = make(workers)
        pool.submit(workloads.identity, 1).result()
        elapsed = time.perf_counter() - t0
        pool.shutdown()
        out = {"ms": elapsed * 1e3}
    elif mode == "memory":
        pool = make(workers)
        # One sleeping task per worker: process pools start a process per waiting task.
        list(pool.map(workloads.sleep_then, range(workers)))
        pids = [os.getpid()] + pool_pids(pool)
        rss = [proc_kib(p, "status", "VmRSS") for p in pids]
        pss = [proc_kib(p, "smaps_rollup", "Pss") for p in pids]
        pool.shutdown()
        out = {
            "pids": len(pids),
            "rss_kib": None if None in rss else sum(rss),
            "pss_kib": None if None in pss else sum(pss),
        }
    else:
        raise ValueError(mode)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(mode, peer, workers, timeout=180):
    code = f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import harness; harness.child(sys.argv[1:])"
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


# -- the in-process measurements ---------------------------------------------------


class Settings:
    def __init__(self, quick, workers):
        self.workers = workers
        self.quick = quick
        self.cpu_tasks = 4 * workers if not quick else 2 * workers
        self.cpu_n = 2_000_000 if not quick else 200_000
        self.cpu_reps = 3 if not quick else 1
        self.tiny_n = 5000 if not quick else 500
        self.tiny_reps = 3 if not quick else 1
        self.startup_reps = 5 if not quick else 2
        self.share_bytes = (256 if not quick else 16) << 20
        self.share_reps = 5 if not quick else 2
        self.numpy_tasks = 4 * workers if not quick else 2 * workers
        self.numpy_repeat = 10 if not quick else 2
        self.numpy_reps = 2 if not quick else 1
        self.memory_reps = 2 if not quick else 1


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def check(value, expected, what):
    if value != expected:
        raise RuntimeError(f"{what}: wrong result {value!r}, expected {expected!r}")


class Run:
    """Collects the samples and notes of one benchmark run."""

    def __init__(self, settings, peers, phases):
        self.s = settings
        self.peers = peers
        self.phases = phases
        self.values = {row: {} for row in ROWS}
        self.samples = {row: {} for row in ROWS}
        self.notes = {}  # (row or "*", peer) -> why there is no number

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


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def in_process_phases(run, available, buf, expected):
    """Time the cpu, tiny, share and numpy workloads on warm pools, all peers interleaved.

    Every pool is started first (ClonePool last, so that no process is forked from a
    process with clones running); then each repetition runs once on every peer in
    turn, so that load from elsewhere on the machine spreads over all of them.
    """
    s = run.s
    rows_of = {
        "cpu": ["cpu_s", "cpu_speedup"],
        "tiny": ["tiny_us"],
        "share": ["share_handover_ms", "share_sum_ms"],
        "numpy": ["numpy_s", "numpy_speedup"],
    }
    phases = [ph for ph in rows_of if ph in run.phases]
    all_rows = [r for ph in phases for r in rows_of[ph]]
    pools, started = {}, []
    try:
        for p in run.peers:
            if p not in available:
                continue

            def start(p=p):
                make = available[p]
                pool = None
                if make is not None:
                    pool = make(s.workers)
                    started.append(pool)
                    # Start every worker before timing (process pools start them on demand).
                    list(pool.map(workloads.sleep_then, range(s.workers), [0.05] * s.workers))
                    if numpy_available() and ("numpy" in phases or "share" in phases):
                        # Import numpy in every worker first, untimed: clones copy its extension
                        # modules on first import; the workloads time the work, not the import.
                        list(pool.map(workloads.import_numpy_then_sleep, range(s.workers)))
                pools[p] = pool

            log(f"starting {PEER_TITLES[p]} ...")
            run.attempt(all_rows, p, start)

        def call(p, fn, *args):
            pool = pools[p]
            return fn(*args) if pool is None else pool.submit(fn, *args).result()

        def mapped(p, fn, *iterables):
            pool = pools[p]
            return list(map(fn, *iterables) if pool is None else pool.map(fn, *iterables))

        def cpu(p):
            t, out = timed(lambda: mapped(p, workloads.cpu_loop, [s.cpu_n] * s.cpu_tasks))
            check(out, [expected["cpu"]] * s.cpu_tasks, "cpu_loop")
            return t

        def tiny(p):
            t, out = timed(lambda: mapped(p, workloads.identity, range(s.tiny_n)))
            check(out, list(range(s.tiny_n)), "identity")
            return t / s.tiny_n * 1e6

        def big_argument(p):
            if p == "interp":
                # interpreters-pep-734 (0.5) pastes the pickled task into the script it runs in
                # the subinterpreter, as a bytes literal: ~23 ms per MiB measured, and a 16 MiB
                # argument of non-zero bytes never came back (its worker spins on the result
                # queue when the script fails).
                raise Unavailable("the backport passes arguments as source text; large ones hang it")

        def handover(p):
            big_argument(p)
            t, out = timed(lambda: call(p, workloads.touch_ends, share_arg(p, buf)))
            check(out, expected["touch"], "touch_ends")
            return t * 1e3

        def full_sum(p):
            big_argument(p)
            t, out = timed(lambda: call(p, expected["sum_fn"], share_arg(p, buf)))
            check(out, expected["sum"], "sum")
            return t * 1e3

        def warm_numpy(p):
            if not numpy_available():
                raise Unavailable("numpy not installed")

        def numpy_run(p):
            seeds = list(range(s.numpy_tasks))
            t, out = timed(lambda: mapped(p, workloads.numpy_eig, seeds, [s.numpy_repeat] * len(seeds)))
            if expected.get("numpy") is None:
                expected["numpy"] = out
            elif any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(out, expected["numpy"])):
                raise RuntimeError("numpy_eig: results differ from the first peer's")
            return t

        measures = []  # (phase, row, other rows that fail with it, reps, aggregate, prepare, measure)
        if "cpu" in phases:
            measures.append(("cpu_s", ["cpu_speedup"], s.cpu_reps, min, None, cpu))
        if "tiny" in phases:
            measures.append(("tiny_us", [], s.tiny_reps, min, None, tiny))
        if "share" in phases:
            measures.append(("share_handover_ms", [], s.share_reps, statistics.median, None, handover))
            measures.append(("share_sum_ms", [], max(1, s.share_reps - 2), statistics.median, None, full_sum))
        if "numpy" in phases:
            measures.append(("numpy_s", ["numpy_speedup"], s.numpy_reps, min, warm_numpy, numpy_run))

        for row, also, reps, aggregate, prepare, measure in measures:
            live = [p for p in pools if (row, p) not in run.notes]
            log(f"{row}: {reps} x {', '.join(PEER_TITLES[p] for p in live)}")
            if prepare is not None:
                live = [p for p in live if run.attempt([row] + also, p, lambda p=p, f=prepare: f(p))]
            samples = {p: [] for p in live}
            for _ in range(reps):
                for p in live:
                    if (row, p) not in run.notes:
                        run.attempt([row] + also, p, lambda p=p, f=measure, out=samples: out[p].append(f(p)))
            for p in live:
                if samples[p] and (row, p) not in run.notes:
                    run.put(row, p, aggregate(samples[p]), samples[p])
    finally:
        for pool in started:
            pool.shutdown()


def speedups(run, wall_row, speed_row):
    serial = run.values[wall_row].get("serial")
    if serial is None:
        for peer in run.peers:
            run.note([speed_row], peer, "needs the serial peer")
        return
    for peer, t in run.values[wall_row].items():
        run.put(speed_row, peer, serial / t)


def startup_phase(run, available):
    peers = [p for p in run.peers if p in available and p != "serial"]
    samples = {p: [] for p in peers}
    for p in peers:  # one untimed run each: warm caches (and the clone set)
        run.attempt(["startup_ms"], p, lambda p=p: run_child("startup", p, run.s.workers))
    for _ in range(run.s.startup_reps):  # interleaved, so that noise spreads over all peers
        for p in peers:
            if ("startup_ms", p) in run.notes:
                continue

            def one(p=p):
                samples[p].append(run_child("startup", p, run.s.workers)["ms"])

            run.attempt(["startup_ms"], p, one)
    for p in peers:
        if samples[p]:
            run.put("startup_ms", p, statistics.median(samples[p]), samples[p])
    if "serial" in run.peers:
        run.note(["startup_ms", "mem_rss_mib", "mem_pss_mib"], "serial", "no pool")


def memory_phase(run, available):
    if not os.path.exists("/proc/self/status"):
        for p in run.peers:
            run.note(["mem_rss_mib", "mem_pss_mib"], p, "needs /proc")
        return
    for p in run.peers:
        if p not in available or p == "serial":
            continue

        def one(p=p):
            per_rss, per_pss = [], []
            for _ in range(run.s.memory_reps):
                one_w = run_child("memory", p, 1)
                three_w = run_child("memory", p, 3)
                per_rss.append((three_w["rss_kib"] - one_w["rss_kib"]) / 2 / 1024)
                if one_w["pss_kib"] is not None and three_w["pss_kib"] is not None:
                    per_pss.append((three_w["pss_kib"] - one_w["pss_kib"]) / 2 / 1024)
            run.put("mem_rss_mib", p, statistics.median(per_rss), per_rss)
            if per_pss:
                run.put("mem_pss_mib", p, statistics.median(per_pss), per_pss)

        run.attempt(["mem_rss_mib", "mem_pss_mib"], p, one)


# -- targets, tables, files ---------------------------------------------------------


def evaluate_targets(run):
    v = run.values
    w = run.s.workers
    out = []

    def target(name, parts, phase):
        """parts: list of (ok or None, text); None means a number is missing."""
        if phase not in run.phases:
            return
        if not parts or any(ok is None for ok, _ in parts):
            status = "NOT MEASURED"
        else:
            status = "MET" if all(ok for ok, _ in parts) else "NOT MET"
        out.append({"target": name, "status": status, "detail": "; ".join(t for _, t in parts)})

    def num(row, peer):
        return v[row].get(peer)

    clone = num("cpu_speedup", "clone")
    procs = {p: num("cpu_speedup", p) for p in PROCESS_PEERS if num("cpu_speedup", p) is not None}
    parts = []
    if clone is None:
        parts.append((None, "ClonePool speed-up missing"))
    else:
        cpus = os.cpu_count() or 1
        beyond = f"; only {cpus} CPUs here, so at most ~{cpus}x is possible" if w > cpus else ""
        parts.append((clone >= 0.9 * w, f"ClonePool speed-up {clone:.2f}x vs required {0.9 * w:.2f}x (0.9 x {w} workers{beyond})"))
        if procs:
            best = max(procs, key=procs.get)
            parts.append((clone >= procs[best], f"best process pool ({best}) {procs[best]:.2f}x"))
        else:
            parts.append((None, "no process pool measured"))
    target("CPU speed-up >= 0.9 x workers and no worse than the best process pool", parts, "cpu")

    clone, thr, fork = num("tiny_us", "clone"), num("tiny_us", "thread"), num("tiny_us", "fork")
    parts = []
    if clone is None:
        parts.append((None, "ClonePool per-task time missing"))
    else:
        parts.append(
            (None, "thread pool missing") if thr is None
            else (clone <= 1.5 * thr, f"ClonePool {clone:.1f} µs vs 1.5 x thread pool {thr:.1f} µs = {1.5 * thr:.1f} µs")
        )
        parts.append(
            (None, "fork process pool missing") if fork is None
            else (clone <= fork / 4, f"vs 1/4 of process fork {fork:.1f} µs = {fork / 4:.1f} µs")
        )
    target("per tiny task <= 1.5 x thread pool and <= 1/4 of process pool (fork)", parts, "tiny")

    clone, spawn = num("startup_ms", "clone"), num("startup_ms", "spawn")
    if clone is None or spawn is None:
        parts = [(None, "start-up of ClonePool or process spawn missing")]
    else:
        parts = [(clone <= spawn, f"ClonePool {clone:.0f} ms vs process spawn {spawn:.0f} ms ({w} workers)")]
    target(f"start-up of a {w}-worker pool <= process spawn", parts, "startup")

    clone = num("share_handover_ms", "clone")
    mib = run.s.share_bytes >> 20
    if clone is None:
        parts = [(None, "ClonePool hand-over missing")]
    else:
        parts = [(clone < 1.0, f"ClonePool hand-over of {mib} MiB {clone:.3f} ms (median) vs 1 ms")]
    target(f"sharing {mib} MiB: hand-over under 1 ms", parts, "share")
    return out


def fmt(value):
    if value is None:
        return "n/a"
    a = abs(value)
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def row_label(run, row):
    label, unit, better = ROWS[row]
    mib = run.s.share_bytes >> 20
    label = label.replace("256 MiB", f"{mib} MiB")
    if row == "share_sum_ms":
        label += " (numpy)" if numpy_available() else " (pure Python, 1 word per page)"
    if row.startswith("cpu"):
        label += f" ({run.s.cpu_tasks} tasks x {run.s.cpu_n:,} loops)"
    if row.startswith("numpy"):
        label += f" ({run.s.numpy_tasks} tasks x {run.s.numpy_repeat})"
    return label, unit, better


def row_phase(row):
    return {"mem": "memory"}.get(row.split("_")[0], row.split("_")[0])


def shown_rows(run):
    return [r for r in ROWS if row_phase(r) in run.phases]


def table_lines(run, markdown):
    peers = run.peers
    head = ["workload", "unit"] + [PEER_TITLES[p] for p in peers]
    body = []
    for row in shown_rows(run):
        label, unit, better = row_label(run, row)
        cells = [fmt(run.values[row].get(p)) for p in peers]
        body.append([f"{label} [{better} is better]", unit] + cells)
    ratio_head = ["ClonePool ÷ peer"] + [PEER_TITLES[p] for p in peers if p != "clone"]
    ratio_body = []
    for row in shown_rows(run):
        label, unit, better = row_label(run, row)
        clone = run.values[row].get("clone")
        cells = []
        for p in peers:
            if p == "clone":
                continue
            other = run.values[row].get(p)
            cells.append("n/a" if clone is None or not other else f"{clone / other:.2f}")
        ratio_body.append([f"{label} [{'<' if better == 'lower' else '>'} 1 favours ClonePool]"] + cells)
    return _table(head, body, markdown), _table(ratio_head, ratio_body, markdown)


def _table(head, body, markdown):
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return lines
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    widths[0] = min(widths[0], 64)

    def line(r):
        first = str(r[0]) if len(str(r[0])) <= widths[0] else str(r[0])[: widths[0] - 1] + "…"
        rest = [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join([first.ljust(widths[0])] + rest)

    return [line(head), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [line(r) for r in body]


def notes_lines(run):
    """Why cells are n/a, one line per reason (peers sharing a reason on one line)."""
    shown = shown_rows(run)
    by_peer = {}
    for (row, peer), why in sorted(run.notes.items()):
        if row in shown and run.values[row].get(peer) is None:
            by_peer.setdefault((peer, why), []).append(row)
    grouped = {}
    for (peer, why), rows in by_peer.items():
        grouped.setdefault((why, tuple(rows)), []).append(PEER_TITLES[peer])
    return [f"{', '.join(peers)}: n/a ({why}) — {', '.join(rows)}" for (why, rows), peers in grouped.items()]


def meta_lines(meta):
    return [
        f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs, {meta['workers']} workers"
        f"{', QUICK run' if meta['quick'] else ''}; {meta['date']}",
        "load average (1/5/15 min) before: {} after: {}; run took {:.0f} s".format(
            " ".join(f"{x:.2f}" for x in meta["load_before"]),
            " ".join(f"{x:.2f}" for x in meta["load_after"]),
            meta["seconds"],
        ),
    ]


def write_markdown(path, run, meta, targets):
    table, ratios = table_lines(run, True)
    lines = ["# ClonePool benchmark", ""] + [f"{m}  " for m in meta_lines(meta)] + [""]
    lines += table + ["", "## ClonePool against each peer", ""] + ratios + ["", "## Targets", ""]
    lines += [f"- **{t['status']}** — {t['target']}: {t['detail']}" for t in targets]
    notes = notes_lines(run)
    if notes:
        lines += ["", "## Not measured", ""] + [f"- {n}" for n in notes]
    lines += ["", "See bench/README.md for how each number is taken.", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_json(path, run, meta, targets):
    data = {
        "meta": meta,
        "peers": run.peers,
        "rows": {
            row: {
                "label": row_label(run, row)[0],
                "unit": ROWS[row][1],
                "better": ROWS[row][2],
                "values": run.values[row],
                "samples": run.samples[row],
                "notes": {p: why for (r, p), why in run.notes.items() if r == row},
            }
            for row in shown_rows(run)
        },
        "targets": targets,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def write_png(path, run):
    from pngcanvas import Canvas

    rows = [r for r in shown_rows(run) if run.values[r].get("clone") is not None]
    peers = [p for p in run.peers]
    scale, line_h, label_w, width = 2, 16, 170, 900
    panel_h = 24 + line_h * len(peers) + 10
    canvas = Canvas(width, 40 + panel_h * max(1, len(rows)))
    canvas.text(10, 10, "CLONEPOOL VS PEERS, %d WORKERS (BARS NORMALISED PER ROW)" % run.s.workers, scale=scale)
    y = 40
    for row in rows:
        label, unit, better = row_label(run, row)
        title = f"{label} ({unit}, {better} is better)"
        canvas.text(10, y, title[: (width - 20) // (4 * scale)], scale=scale)
        values = [v for v in run.values[row].values() if v is not None]
        top = max(values) if values else 1.0
        bar_room = width - label_w - 90
        for i, p in enumerate(peers):
            yy = y + 20 + i * line_h
            canvas.text(10, yy + 2, PEER_TITLES[p], color=(60, 60, 60), scale=scale)
            value = run.values[row].get(p)
            if value is None:
                canvas.text(label_w, yy + 2, "n/a", color=(150, 150, 150), scale=scale)
                continue
            length = max(1, int(bar_room * value / top)) if top > 0 else 1
            color = (230, 120, 20) if p == "clone" else (90, 120, 170)
            canvas.rect(label_w, yy, length, line_h - 4, color)
            canvas.text(label_w + length + 6, yy + 2, fmt(value), scale=scale)
        y += panel_h
    with open(path, "wb") as f:
        f.write(canvas.png())


# -- main -------------------------------------------------------------------------


def parse(argv):
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (smoke test)")
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
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
    partial = args.quick or set(phases) != set(PHASES) or set(peers) != set(PEERS)
    if args.out is None and not partial:
        args.out = RESULTS_DIR
    args.phases = [p for p in PHASES if p in phases]
    args.peer_list = [p for p in PEERS if p in peers]
    return args


def main(argv):
    args = parse(argv)
    started = time.perf_counter()
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0] * 3
    settings = Settings(args.quick, args.workers)
    run = Run(settings, args.peer_list, args.phases)

    available = {}
    for p in run.peers:
        try:
            available[p] = pool_factory(p)
        except Unavailable as exc:
            run.note(list(ROWS), p, str(exc))
    if "numpy" in run.phases and not numpy_available():
        log("numpy workload: n/a (numpy not installed); `.venv/bin/pip install numpy` to include it")
        for p in run.peers:
            run.note(["numpy_s", "numpy_speedup"], p, "numpy not installed")

    if "clone" in available:
        # Prepare the clone set (3 clones: the memory phase uses 3 workers) outside any timing.
        log("warming the clone cache ...")
        if not run.attempt(list(ROWS), "clone", lambda: run_child("memory", "clone", max(3, args.workers))):
            del available["clone"]

    in_proc = [ph for ph in ("cpu", "tiny", "share", "numpy") if ph in run.phases]
    if in_proc:
        buf = None
        expected = {}
        if "cpu" in run.phases:
            expected["cpu"] = workloads.cpu_loop(settings.cpu_n)
        if "share" in run.phases:
            buf = bytearray(bytes(range(256))) * (settings.share_bytes // 256)
            expected["touch"] = workloads.touch_ends(buf)
            expected["sum_fn"] = workloads.numpy_sum if numpy_available() else workloads.page_sum
            expected["sum"] = expected["sum_fn"](buf)
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

    targets = evaluate_targets(run)
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "quick": args.quick,
        "phases": run.phases,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": load_before,
        "load_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0] * 3,
        "seconds": time.perf_counter() - started,
        "numpy": numpy_available(),
    }

    table, ratios = table_lines(run, False)
    print("\n".join(meta_lines(meta)))
    print()
    print("\n".join(table))
    print()
    if "clone" in run.peers:
        print("\n".join(ratios))
        print()
    for t in targets:
        print(f"{t['status']:>12}  {t['target']}: {t['detail']}")
    notes = notes_lines(run)
    if notes:
        print()
        print("\n".join(notes))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_markdown(os.path.join(args.out, "latest.md"), run, meta, targets)
        write_json(os.path.join(args.out, "latest.json"), run, meta, targets)
        write_png(os.path.join(args.out, "latest.png"), run)
        print(f"\nwrote {os.path.join(args.out, 'latest')}.md/.json/.png")
    return 0
