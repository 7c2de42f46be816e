"""`make bench` must keep working: a quick partial run of bench/run.py in a subprocess."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_run_reports_targets():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--quick", "--only", "tiny,startup"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ClonePool" in out.stdout
    assert "tiny" in out.stdout.lower() and "start-up" in out.stdout.lower()
    assert "MET" in out.stdout  # each target is stated as MET or NOT MET
