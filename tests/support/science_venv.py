"""A venv holding the big binary wheels (numpy, scipy, pandas, pyarrow, pillow, cryptography,
lxml), built once into the test cache for the environment-scan tests.

It is a real venv of this interpreter's base Python (so its site-packages and
lib-dynload are what ``gilclone doctor --env --python`` finds); wheels come from
pip's cache after the first download. ~600 MB installed, so not in the ``test`` extra.
"""

import os
import subprocess
import sys

import support

PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "pillow", "cryptography", "lxml")
TIMEOUT_S = 1200


def python() -> str:
    """The venv's interpreter, building the venv on first use (skips if that fails)."""
    tag = f"science-venv-py{sys.version_info[0]}{sys.version_info[1]}"
    root = support.cache_dir(tag)
    exe = root / "bin" / "python"
    stamp = root / ".complete"
    if not stamp.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        problem = _run([base, "-m", "venv", "--clear", str(root)])
        if problem is None:
            problem = _run([str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *PACKAGES])
        support.require(problem is None, f"could not build the venv in {root}: {problem}")
        stamp.write_text("ok\n")
    return os.fspath(exe)


def _run(cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return None
