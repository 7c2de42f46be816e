"""pandas and pyarrow for the closure tests, installed once into the test cache.

They are large (~300 MB installed) and only the closure tests need them, so they
are not in the ``test`` extra: the first run installs them with this
interpreter's pip (``--target``, wheels from pip's cache), later runs reuse them.
"""

import os
import subprocess
import sys

import support

PACKAGES = ("pandas", "pyarrow")
TIMEOUT_S = 900


def site_dir() -> str:
    """A directory to put first on sys.path, holding pandas, pyarrow and numpy for this Python."""
    tag = f"closure-site-py{sys.version_info[0]}{sys.version_info[1]}"
    target = support.cache_dir(tag)
    stamp = target / ".complete"
    if not stamp.exists():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--upgrade", "--target", str(target), *PACKAGES]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            done = None
        ok = done is not None and done.returncode == 0 and (target / "pyarrow").is_dir()
        support.require(ok, f"could not install {', '.join(PACKAGES)} into {target}: "
                        + (done.stderr[-500:] if done is not None else "timed out"))
        stamp.write_text("ok\n")
    return os.fspath(target)
