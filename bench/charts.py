"""The charts of a run, drawn with matplotlib (the ``bench`` extra: ``make bench`` installs it).

One PNG per workload (a panel per row, peers side by side, the bar at the median and a
line from the fastest to the slowest sample), and ``scaling.png``: CPU-bound speed-up
over serial against the number of workers, per peer.
"""

import os

from peers import CLONE_PEERS, PEER_TITLES

CLONE_COLOUR, PEER_COLOUR, IDEAL_COLOUR = "#e6781e", "#5a78aa", "#999999"
# Scaling lines: ClonePool alone in orange; serial is 1x by definition and not drawn.
LINE_COLOURS = {"thread": "#1f77b4", "fork": "#2ca02c", "spawn": "#d62728", "forkserver": "#9467bd",
                "interp": "#8c564b", "clone": CLONE_COLOUR, "clone-ns": "#f2b134"}


def pyplot():
    """matplotlib's pyplot on a file-only backend, or None when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def workload_charts(plt, folder, run, rows_by_phase, label_of):
    """Write chart-<phase>.png for each phase with numbers; return the file names."""
    written = []
    for phase, rows in rows_by_phase.items():
        rows = [r for r in rows if any(v is not None for v in run.values[r].values())]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.6 * len(rows)), squeeze=False)
        for ax, row in zip(axes[:, 0], rows):
            _panel(ax, run, row, label_of(row))
        fig.suptitle(f"{phase}: ClonePool and its peers, {run.s.workers} workers", fontsize=11)
        fig.tight_layout()
        name = f"chart-{phase}.png"
        fig.savefig(os.path.join(folder, name), dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def _panel(ax, run, row, label):
    text, unit, better = label
    peers = [p for p in run.peers if run.values[row].get(p) is not None]
    values = [run.values[row][p] for p in peers]
    lows, highs = [], []
    for p, v in zip(peers, values):
        samples = run.samples[row].get(p) or [v]
        lows.append(max(0.0, v - min(samples)))
        highs.append(max(0.0, max(samples) - v))
    colours = [LINE_COLOURS[p] if p in CLONE_PEERS else PEER_COLOUR for p in peers]
    ys = range(len(peers))
    ax.barh(ys, values, color=colours, xerr=[lows, highs], ecolor="#333333", capsize=3)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([PEER_TITLES[p] for p in peers], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{text} ({unit}, {better} is better)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    top = max(values) if values else 1
    for y, v in zip(ys, values):
        ax.text(v + top * 0.01, y, _short(v), va="center", fontsize=7)


def scaling_chart(plt, folder, scaling, cpus):
    """scaling: {workers: {peer: speed-up}}; writes scaling.png, returns its name."""
    counts = sorted(scaling)
    if not counts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(counts, [min(w, cpus) for w in counts], linestyle="--", color=IDEAL_COLOUR,
            label=f"ideal on {cpus} CPUs")
    peers = [p for p in LINE_COLOURS if any(p in scaling[w] for w in counts)]
    for p in peers:
        xs = [w for w in counts if scaling[w].get(p) is not None]
        style = {"color": LINE_COLOURS[p], "linewidth": 2.5 if p in CLONE_PEERS else 1.2}
        ax.plot(xs, [scaling[w][p] for w in xs], marker="o", label=PEER_TITLES[p], **style)
    ax.set_xlabel("workers")
    ax.set_ylabel("CPU-bound speed-up over serial (x)")
    ax.set_xticks(counts)
    ax.set_title("CPU-bound pure Python: speed-up against worker count (medians)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "scaling.png"), dpi=90)
    plt.close(fig)
    return "scaling.png"


def _short(v):
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
