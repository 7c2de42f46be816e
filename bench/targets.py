"""The targets ClonePool is held to, each stated as MET / NOT MET / NOT MEASURED with its numbers."""

import os

from peers import PROCESS_PEERS


def evaluate_targets(run):
    """[{"target", "status", "detail"}] for the targets of the phases that ran."""
    w = run.s.workers
    mib = run.s.share_bytes >> 20
    targets = [
        ("CPU speed-up >= 0.9 x workers and no worse than the best process pool", "cpu", _cpu_parts),
        ("per tiny task <= 1.5 x thread pool and <= 1/4 of process pool (fork)", "tiny", _tiny_parts),
        (f"start-up of a {w}-worker pool <= process spawn", "startup", _startup_parts),
        (f"sharing {mib} MiB: hand-over under 1 ms", "share", _share_parts),
    ]
    return [_status(name, parts(run)) for name, phase, parts in targets if phase in run.phases]


def _status(name, parts):
    """parts: list of (ok or None, text); None means a number is missing."""
    if not parts or any(ok is None for ok, _ in parts):
        status = "NOT MEASURED"
    else:
        status = "MET" if all(ok for ok, _ in parts) else "NOT MET"
    return {"target": name, "status": status, "detail": "; ".join(t for _, t in parts)}


def _num(run, row, peer):
    return run.values[row].get(peer)


def _cpu_parts(run):
    w = run.s.workers
    clone = _num(run, "cpu_speedup", "clone")
    if clone is None:
        return [(None, "ClonePool speed-up missing")]
    cpus = os.cpu_count() or 1
    beyond = f"; only {cpus} CPUs here, so at most ~{cpus}x is possible" if w > cpus else ""
    parts = [(clone >= 0.9 * w, f"ClonePool speed-up {clone:.2f}x vs required {0.9 * w:.2f}x (0.9 x {w} workers{beyond})")]
    procs = {p: _num(run, "cpu_speedup", p) for p in PROCESS_PEERS if _num(run, "cpu_speedup", p) is not None}
    if procs:
        best = max(procs, key=procs.get)
        parts.append((clone >= procs[best], f"best process pool ({best}) {procs[best]:.2f}x"))
    else:
        parts.append((None, "no process pool measured"))
    return parts


def _tiny_parts(run):
    clone, thr, fork = (_num(run, "tiny_us", p) for p in ("clone", "thread", "fork"))
    if clone is None:
        return [(None, "ClonePool per-task time missing")]
    return [
        (None, "thread pool missing") if thr is None
        else (clone <= 1.5 * thr, f"ClonePool {clone:.1f} µs vs 1.5 x thread pool {thr:.1f} µs = {1.5 * thr:.1f} µs"),
        (None, "fork process pool missing") if fork is None
        else (clone <= fork / 4, f"vs 1/4 of process fork {fork:.1f} µs = {fork / 4:.1f} µs"),
    ]


def _startup_parts(run):
    clone, spawn = _num(run, "startup_ms", "clone"), _num(run, "startup_ms", "spawn")
    if clone is None or spawn is None:
        return [(None, "start-up of ClonePool or process spawn missing")]
    return [(clone <= spawn, f"ClonePool {clone:.0f} ms vs process spawn {spawn:.0f} ms ({run.s.workers} workers)")]


def _share_parts(run):
    clone = _num(run, "share_handover_ms", "clone")
    if clone is None:
        return [(None, "ClonePool hand-over missing")]
    mib = run.s.share_bytes >> 20
    return [(clone < 1.0, f"ClonePool hand-over of {mib} MiB {clone:.3f} ms (median) vs 1 ms")]
