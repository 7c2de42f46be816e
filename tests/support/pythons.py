"""The real CPython builds the tests run against: pyenv's, or a list given in the environment.

``GILCLONE_TEST_PYTHONS="path1:path2"`` replaces the pyenv search; each path is an
interpreter executable and its version is asked of the interpreter itself.
Otherwise every ``<pyenv root>/versions/3.X.Y/bin/python3.X`` for 3.8-3.13 is used,
where the pyenv root is ``$PYENV_ROOT``, else ``pyenv root``, else ``/root/.pyenv``.
"""

import functools
import os
import re
import shutil
import subprocess
from typing import List, Optional, Tuple

import support

SUPPORTED = tuple(f"3.{minor}" for minor in range(8, 14))
MINIMUM_FOUND = 4
ENV_OVERRIDE = "GILCLONE_TEST_PYTHONS"

# "3.11.7", "2.7.18", "3.13.0rc2"; free-threaded ("3.13.0t") and named virtualenvs are left out.
_VERSION_DIR = re.compile(r"^(\d+)\.(\d+)\.\d+(?:(?:a|b|rc)\d+)?$")


def pyenv_root() -> Optional[str]:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "/root/.pyenv" if os.path.isdir("/root/.pyenv") else None


def where_searched() -> str:
    if os.environ.get(ENV_OVERRIDE):
        return f"${ENV_OVERRIDE}={os.environ[ENV_OVERRIDE]}"
    root = pyenv_root()
    return f"{root}/versions" if root else "no pyenv root (PYENV_ROOT unset, no `pyenv`, no /root/.pyenv)"


@functools.lru_cache(maxsize=None)
def all_pythons() -> Tuple[Tuple[str, str], ...]:
    """Every (version "X.Y", executable) found, whatever the version, oldest first."""
    override = os.environ.get(ENV_OVERRIDE)
    found: List[Tuple[str, str]] = []
    if override:
        for path in filter(None, override.split(os.pathsep)):
            version = _ask_version(path)
            if version:
                found.append((version, path))
    else:
        root = pyenv_root()
        versions = os.path.join(root, "versions") if root else None
        if versions and os.path.isdir(versions):
            for name in os.listdir(versions):
                m = _VERSION_DIR.match(name)
                if not m:
                    continue
                short = f"{m.group(1)}.{m.group(2)}"
                exe = os.path.join(versions, name, "bin", f"python{short}")
                if os.access(exe, os.X_OK):
                    found.append((short, exe))
    found.sort(key=lambda item: (tuple(int(p) for p in item[0].split(".")), item[1]))
    return tuple(found)


def pyenv_pythons() -> List[Tuple[str, str]]:
    """(version "3.X", path to bin/python3.X) for every CPython 3.8-3.13 found."""
    return [(v, exe) for v, exe in all_pythons() if v in SUPPORTED]


def unsupported_pythons() -> List[Tuple[str, str]]:
    """Interpreters found that gilclone must refuse (2.7, 3.6, 3.7)."""
    return [
        (v, exe)
        for v, exe in all_pythons()
        if tuple(int(p) for p in v.split(".")) < (3, 8)
    ]


def prefix_of(executable: str) -> str:
    """``<prefix>/bin/python3.X`` -> ``<prefix>``."""
    return os.path.dirname(os.path.dirname(os.path.realpath(executable)))


def require_enough_pythons(found) -> None:
    """Under CI the suite must run against at least four CPython versions; here, skip."""
    found = list(found)
    support.require(
        len(found) >= MINIMUM_FOUND,
        f"only {len(found)} CPython 3.8-3.13 interpreter(s) found in {where_searched()}; "
        f"at least {MINIMUM_FOUND} are needed (install them with pyenv, "
        f"--enable-shared, or set {ENV_OVERRIDE})",
    )


def _ask_version(path: str) -> Optional[str]:
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and re.match(r"^\d+\.\d+$", text) else None
