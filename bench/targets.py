"""The targets ClonePool is held to (issue #14's goal table), each stated as MET / NOT MET /
NOT MEASURED with its numbers."""

import os

from peers import PROCESS_PEERS


def evaluate_targets(run):
    """[{"target", "status", "detail"}] for the targets of the phases that ran."""
    w = run.s.workers
    mib = run.s.share_bytes >> 20
    targets = [
        ("CPU speed-up >= 0.95 x workers and >= every process pool", "cpu", _cpu_parts),
        ("per tiny task <= 1.2 x thread pool", "tiny", _tiny_parts),
        (f"start-up of a {w}-worker pool: first result from process start <= 1.5 x a bare interpreter start",
         "startup", _startup_parts),
        (f"sharing {mib} MiB: hand-over under 1 ms", "share", _share_parts),
        ("memory per added worker (PSS) <= 6 MiB and below process forkserver", "memory", _memory_parts),
    ]
    if "clone-ns" in run.peers:  # the other loading route, held to the same memory goal
        targets.append(("memory per added worker on the namespace route (PSS) <= 6 MiB and below process "
                        "forkserver", "memory", lambda r: _memory_parts(r, "clone-ns", "ClonePool (namespaces)")))
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
    parts = [(clone >= 0.95 * w, f"ClonePool speed-up {clone:.2f}x vs required {0.95 * w:.2f}x (0.95 x {w} workers{beyond})")]
    procs = {p: _num(run, "cpu_speedup", p) for p in PROCESS_PEERS if _num(run, "cpu_speedup", p) is not None}
    if procs:
        best = max(procs, key=procs.get)
        parts.append((clone >= procs[best], f"best process pool ({best}) {procs[best]:.2f}x"))
    else:
        parts.append((None, "no process pool measured"))
    return parts


def _tiny_parts(run):
    clone, thr = (_num(run, "tiny_us", p) for p in ("clone", "thread"))
    if clone is None:
        return [(None, "ClonePool per-task time missing")]
    if thr is None:
        return [(None, "thread pool missing")]
    return [(clone <= 1.2 * thr, f"ClonePool {clone:.1f} µs vs 1.2 x thread pool {thr:.1f} µs = {1.2 * thr:.1f} µs "
             f"({clone / thr:.2f}x; medians)")]


def _startup_parts(run):
    clone, bare = _num(run, "first_result_ms", "clone"), _num(run, "first_result_ms", "serial")
    if clone is None or bare is None:
        return [(None, "first result of ClonePool or the bare interpreter start missing")]
    return [(clone <= 1.5 * bare, f"ClonePool {clone:.0f} ms vs 1.5 x bare interpreter {bare:.0f} ms = {1.5 * bare:.0f} ms "
             f"({clone / bare:.1f}x; constructor to first result alone {_num(run, 'startup_ms', 'clone') or 0:.0f} ms)")]


def _share_parts(run):
    clone = _num(run, "share_handover_ms", "clone")
    if clone is None:
        return [(None, "ClonePool hand-over missing")]
    mib = run.s.share_bytes >> 20
    return [(clone < 1.0, f"ClonePool hand-over of {mib} MiB {clone:.3f} ms (median) vs 1 ms")]


def _memory_parts(run, peer="clone", title="ClonePool"):
    clone, fs = _num(run, "mem_pss_mib", peer), _num(run, "mem_pss_mib", "forkserver")
    if clone is None:
        return [(None, f"{title} PSS missing")]
    parts = [(clone <= 6.0, f"{title} {clone:.1f} MiB PSS per added worker vs 6 MiB")]
    parts.append((None, "process forkserver missing") if fs is None
                 else (clone < fs, f"process forkserver {fs:.1f} MiB"))
    return parts
