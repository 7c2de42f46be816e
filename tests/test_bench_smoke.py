"""`make bench` must keep working: a quick partial run of bench/run.py in a subprocess."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "<status>  <target>: <numbers>", status right-aligned in 12 columns (bench/report.py).
TARGET_LINE = re.compile(r"^ *(MET|NOT MET|NOT MEASURED)  ([^:]+): (.+)$")


def _cells(line):
    return re.split(r" {2,}", line.strip())


def _table(stdout):
    """{row label prefix: {peer title: cell}} of the first (values) table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("workload "))
    head = _cells(lines[start])
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = _cells(line)
        assert len(cells) == len(head), (head, line)
        rows[cells[0]] = dict(zip(head[2:], cells[2:]))
    return rows


def _row(table, prefix):
    found = [cells for label, cells in table.items() if label.startswith(prefix)]
    assert len(found) == 1, (prefix, list(table))
    return found[0]


@pytest.mark.slow
def test_bench_quick_run_reports_targets():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--quick", "--only", "tiny,startup"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = _table(out.stdout)
    tiny, startup = _row(table, "tiny tasks"), _row(table, "start-up to first result")
    assert list(tiny)[-1] == "ClonePool"
    assert float(tiny["ClonePool"]) > 0 and float(startup["ClonePool"]) > 0, out.stdout
    assert startup["serial"] == "n/a"  # a serial run has no pool to start
    # One line per target of the phases run, each with a status and its numbers.
    targets = [TARGET_LINE.match(line) for line in out.stdout.splitlines() if TARGET_LINE.match(line)]
    names = [m.group(2) for m in targets]
    assert len(names) == 2 and names[0].startswith("per tiny task") and names[1].startswith("start-up of"), names
    tiny_target = targets[0]
    assert tiny_target.group(1) in ("MET", "NOT MET")  # both numbers were measured
    stated = re.search(r"ClonePool ([0-9.]+) µs", tiny_target.group(3))
    assert stated, tiny_target.group(0)
    in_table = float(tiny["ClonePool"])  # the table rounds more coarsely than the target line
    assert abs(float(stated.group(1)) - in_table) <= max(0.05, 0.01 * in_table), tiny_target.group(0)
    assert not any(line.startswith("ClonePool: n/a") for line in out.stdout.splitlines()), out.stdout
