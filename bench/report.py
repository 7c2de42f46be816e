"""What a run shows: the tables and targets on stdout, and latest.md / .json and the charts."""

import json
import os

import charts
from peers import PEER_TITLES, numpy_available
from runs import ROWS, log


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
    first = row.split("_")[0]
    return {"mem": "memory", "first": "startup"}.get(first, first)


def shown_rows(run):
    return [r for r in ROWS if row_phase(r) in run.phases]


def table_lines(run, markdown):
    """(the values table, the ClonePool ÷ peer table), as lines."""
    return _values_table(run, markdown), _ratios_table(run, markdown)


def _values_table(run, markdown):
    head = ["workload", "unit"] + [PEER_TITLES[p] for p in run.peers]
    body = []
    for row in shown_rows(run):
        label, unit, better = row_label(run, row)
        cells = [fmt(run.values[row].get(p)) for p in run.peers]
        body.append([f"{label} [{better} is better]", unit] + cells)
    return _table(head, body, markdown)


def _ratios_table(run, markdown):
    others = [p for p in run.peers if p != "clone"]
    head = ["ClonePool ÷ peer"] + [PEER_TITLES[p] for p in others]
    body = []
    for row in shown_rows(run):
        label, unit, better = row_label(run, row)
        clone = run.values[row].get("clone")
        cells = []
        for p in others:
            other = run.values[row].get(p)
            cells.append("n/a" if clone is None or not other else f"{clone / other:.2f}")
        body.append([f"{label} [{'<' if better == 'lower' else '>'} 1 favours ClonePool]"] + cells)
    return _table(head, body, markdown)


def _table(head, body, markdown):
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return lines
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    widths[0] = min(widths[0], 64)
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return [_aligned(head, widths), rule] + [_aligned(r, widths) for r in body]


def _aligned(r, widths):
    """One text-table line: the first cell cut to its width, the others right-aligned."""
    first = str(r[0]) if len(str(r[0])) <= widths[0] else str(r[0])[: widths[0] - 1] + "…"
    rest = [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
    return "  ".join([first.ljust(widths[0])] + rest)


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
    busy = meta.get("busy") or []
    warning = [f"BUSY MACHINE: {'; '.join(busy)}: the numbers below are lower than this machine gives idle"] if busy else []
    return warning + [
        f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs, {meta['workers']} workers"
        f"{', QUICK run' if meta['quick'] else ''}; {meta['date']}",
        "load average (1/5/15 min) before: {} after: {}; run took {:.0f} s".format(
            " ".join(f"{x:.2f}" for x in meta["load_before"]),
            " ".join(f"{x:.2f}" for x in meta["load_after"]),
            meta["seconds"],
        ),
    ]


def print_report(run, meta, targets):
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


def write_files(folder, run, meta, targets):
    os.makedirs(folder, exist_ok=True)
    meta["charts"] = write_charts(folder, run, meta)
    write_markdown(os.path.join(folder, "latest.md"), run, meta, targets)
    write_json(os.path.join(folder, "latest.json"), run, meta, targets)
    print(f"\nwrote {os.path.join(folder, 'latest')}.md/.json and {len(meta['charts'])} charts")


def write_charts(folder, run, meta):
    plt = charts.pyplot()
    if plt is None:
        log("no charts: matplotlib is not installed (`make bench` installs the bench extra)")
        return []
    by_phase = {}
    for row in shown_rows(run):
        by_phase.setdefault(row_phase(row), []).append(row)
    names = charts.workload_charts(plt, folder, run, by_phase, lambda r: row_label(run, r))
    scaling = charts.scaling_chart(plt, folder, run.scaling, meta["cpus"] or 1) if run.scaling else None
    return names + ([scaling] if scaling else [])


def write_markdown(path, run, meta, targets):
    table, ratios = table_lines(run, True)
    lines = ["# ClonePool benchmark", ""] + [f"{m}  " for m in meta_lines(meta)] + [""]
    lines += table + ["", "## ClonePool against each peer", ""] + ratios + ["", "## Targets", ""]
    lines += [f"- **{t['status']}** — {t['target']}: {t['detail']}" for t in targets]
    lines += ["", "## Spread (fastest - slowest sample; the tables show medians)", ""] + spread_lines(run)
    if run.scaling:
        lines += ["", "## CPU-bound speed-up against worker count (medians)", ""] + scaling_lines(run)
    if meta.get("charts"):
        lines += ["", "## Charts", ""] + [f"![{name}]({name})" for name in meta["charts"]]
    notes = notes_lines(run)
    if notes:
        lines += ["", "## Not measured", ""] + [f"- {n}" for n in notes]
    lines += ["", "See bench/README.md for how each number is taken.", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def spread_lines(run):
    head = ["workload"] + [PEER_TITLES[p] for p in run.peers]
    body = []
    for row in shown_rows(run):
        cells = []
        for p in run.peers:
            samples = run.samples[row].get(p)
            cells.append(f"{fmt(min(samples))} - {fmt(max(samples))}" if samples else "")
        if any(cells):
            body.append([row_label(run, row)[0]] + cells)
    return _table(head, body, True)


def scaling_lines(run):
    counts = sorted(run.scaling)
    peers = [p for p in run.peers if any(p in run.scaling[w] for w in counts)]
    head = ["workers"] + [PEER_TITLES[p] for p in peers]
    body = [[str(w)] + [fmt(run.scaling[w].get(p)) for p in peers] for w in counts]
    return _table(head, body, True)


def write_json(path, run, meta, targets):
    data = {
        "meta": meta,
        "peers": run.peers,
        "scaling": {str(w): v for w, v in sorted(run.scaling.items())},
        "rows": {row: _json_row(run, row) for row in shown_rows(run)},
        "targets": targets,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _json_row(run, row):
    return {
        "label": row_label(run, row)[0],
        "unit": ROWS[row][1],
        "better": ROWS[row][2],
        "values": run.values[row],
        "samples": run.samples[row],
        "notes": {p: why for (r, p), why in run.notes.items() if r == row},
    }
