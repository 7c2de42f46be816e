"""Run gilclone inside the official Windows embeddable CPython under Wine.

The embeddable Python has no pip, so gilclone is staged as a plain package tree
(the checkout's folders under the names pyproject's package-dir gives them) next
to its pure-Python dependencies copied from this venv, and the stage directory is
added to a *copy* of the embed folder's ``python3X._pth`` (the download cache is
never modified).

One WINEPREFIX under the test cache serves every run; its first start (wineboot)
takes tens of seconds, later ones about two.
"""

import os
import pathlib
import shutil
import subprocess
import sys
from typing import Optional, Sequence

import support

ROOT = pathlib.Path(__file__).resolve().parents[2]
# pyproject: package-dir = {"gilclone.cloner" = "cloner", ...}
PACKAGES = {"gilclone": "gilclone", "cloner": "gilclone/cloner", "pool": "gilclone/pool",
            "platforms": "gilclone/platforms"}
DEPENDENCIES = ("pefile", "peutils", "ordlookup", "macholib", "altgraph", "elftools")
TIMEOUT_S = 300


def wine_binary() -> Optional[str]:
    for candidate in (shutil.which("wine64"), "/usr/lib/wine/wine64", shutil.which("wine")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_wine() -> str:
    wine = wine_binary()
    support.require(wine is not None, "wine64 is not installed (Debian: apt-get install wine64)")
    return wine


def environment() -> dict:
    env = dict(os.environ)
    env.update(
        WINEPREFIX=str(support.cache_dir("wine-prefix")),
        WINEDEBUG="-all",
        # No Mono/Gecko installer dialogs on the first start of the prefix.
        WINEDLLOVERRIDES="mscoree,mshtml=",
        PYTHONIOENCODING="utf-8",
    )
    env.pop("DISPLAY", None)
    for name in ("PYTHONPATH", "PYTHONHOME", "GILCLONE_CACHE", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def windows_path(path) -> str:
    """The path Windows programs under Wine see for a Unix path (Z: is the root)."""
    return "Z:" + str(path).replace("/", "\\")


def stage_packages(stage: pathlib.Path) -> pathlib.Path:
    """gilclone and its pure-Python dependencies as a package tree in ``stage``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dst in PACKAGES.items():
        shutil.copytree(ROOT / src, stage / dst, ignore=ignore, dirs_exist_ok=True)
    site = _site_packages()
    for name in DEPENDENCIES:
        if (site / name).is_dir():
            shutil.copytree(site / name, stage / name, ignore=ignore, dirs_exist_ok=True)
        elif (site / f"{name}.py").is_file():
            shutil.copy2(site / f"{name}.py", stage / f"{name}.py")
    return stage


def _site_packages() -> pathlib.Path:
    import pefile

    return pathlib.Path(pefile.__file__).resolve().parent


def embed_copy(embed: pathlib.Path, target: pathlib.Path, stage: pathlib.Path) -> pathlib.Path:
    """A copy of the embed folder whose ._pth also lists ``stage``; returns python.exe."""
    shutil.copytree(embed, target)
    pths = sorted(target.glob("python3*._pth"))
    assert pths, f"{embed} has no python3X._pth"
    text = pths[0].read_text()
    pths[0].write_text(text.rstrip("\n") + "\n" + windows_path(stage) + "\n")
    return target / "python.exe"


def run(python_exe, args: Sequence[str], timeout: float = TIMEOUT_S, cwd=None,
        env_extra: Optional[dict] = None) -> subprocess.CompletedProcess:
    """``python.exe ARGS`` under Wine; stdin is closed and both streams are pipes (a
    Windows Python under Wine cannot use a regular file as a standard stream)."""
    env = environment()
    env.update(env_extra or {})
    cmd = [require_wine(), str(python_exe), *args]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout, env=env,
                          cwd=cwd or str(ROOT))


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-4000:]}")


if __name__ == "__main__":  # manual use: python tests/support/wine.py EMBED_DIR STAGE
    stage_packages(pathlib.Path(sys.argv[2]))
