"""ClonePool in every CPython 3.8-3.13 on the machine, each from a venv with gilclone installed."""

import hashlib
import json
import os
import subprocess

import pytest
import support
from support import pythons

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FOUND = pythons.pyenv_pythons()


def _venv_for(version: str, exe: str) -> str:
    """A venv of ``exe`` with this checkout installed (editable), cached across runs."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        key = hashlib.sha256(f.read() + ROOT.encode() + exe.encode() + b"numpy").hexdigest()[:12]
    venv = support.cache_dir("venvs") / f"{version}-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([exe, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        out = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ROOT, "numpy"],
            capture_output=True, text=True,
        )
        assert out.returncode == 0, f"pip install into {venv} failed: {out.stderr[-2000:]}"
        (venv / ".ready").write_text("ok")
    return str(python)


def test_enough_pythons_found():
    pythons.require_enough_pythons(FOUND)


@pytest.mark.slow
@pytest.mark.parametrize("version,exe", FOUND, ids=[v for v, _ in FOUND])
def test_pool_scenario(version, exe):
    python = _venv_for(version, exe)
    # A clone set per venv: a set records the interpreter that prepared it, and a clone
    # starts as that one (its sys.prefix, its site-packages and their .pth finders), so a
    # set another checkout's venv prepared would load that checkout's gilclone in clones.
    env = dict(os.environ, GILCLONE_CACHE=str(support.cache_dir("clone-cache", os.path.basename(os.path.dirname(os.path.dirname(python))))))
    out = subprocess.run([python, os.path.join(HERE, "pool_scenario.py")], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["version"] == version
    failed = {k: v[1] for k, v in report["results"].items() if not v[0]}
    print(f"{version}: {report['results']['parallel'][1]}")
    assert not failed, failed
    assert set(report["results"]) >= {"map", "in_clones", "exception", "unpicklable", "shared",
                                      "parallel", "decimal", "broken_initializer", "tiny_tasks",
                                      "thirty_pools", "numpy", "interrupt", "timeout"}
