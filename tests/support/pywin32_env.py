"""pywin32 in a copy of the embeddable CPython, for the Wine tests of helper DLLs.

The win_amd64 wheel is downloaded once with pip (cached in the test cache) and
unpacked into a site directory laid out as pip installs it; a copy of the embed
folder gets that directory, ``win32`` and ``win32/lib`` on its ``._pth`` path
(what ``pywin32.pth`` adds; the embeddable Python runs no ``.pth`` files, so the
scripts import ``pywin32_bootstrap`` themselves, as that file does).
"""

import shutil
import subprocess
import sys
import zipfile

import support
from support import windows_embed, wine

VERSION = "312"


def wheel_dir(version: str):
    """The unpacked pywin32 wheel for CPython ``version`` ("3.11")."""
    tag = version.replace(".", "")
    root = support.cache_dir("pywin32", f"cp{tag}")
    unpacked = root / "unpacked"
    if not (root / ".complete").exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "win_amd64", "--python-version", version, "--implementation", "cp",
               "--disable-pip-version-check", "-q", "-d", str(root), f"pywin32=={VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(root.glob("pywin32-*.whl"))
        support.require(proc.returncode == 0 and wheels, f"cannot download pywin32: {proc.stderr[-300:]}")
        shutil.rmtree(unpacked, ignore_errors=True)
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(unpacked)
        (root / ".complete").write_text("ok\n")
    return unpacked


def embed_with_pywin32(base, version: str):
    """python.exe of an embed copy that imports staged gilclone, pywintypes and win32api."""
    wine.require_wine()
    stage = wine.stage_packages(base / "stage")
    python = wine.embed_copy(windows_embed.embed_dir(version), base / "py", stage)
    unpacked = wheel_dir(version)
    site = base / "site"
    for name in ("win32", "pywin32_system32"):
        shutil.copytree(unpacked / name, site / name)
    pth = sorted(python.parent.glob("python3*._pth"))[0]
    extra = [wine.windows_path(d) for d in (site, site / "win32", site / "win32" / "lib")]
    pth.write_text(pth.read_text().rstrip("\n") + "\n" + "\n".join(extra) + "\n")
    return python
