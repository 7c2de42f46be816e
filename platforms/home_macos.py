"""A macOS Python described from its installation directory, for ``prepare --target macos``.

Three layouts are recognised (``home`` is what ``sys.base_prefix`` is on the Mac):

* framework builds (python.org, Xcode's): ``.../Python.framework/Versions/3.X``
  holding ``Python`` (the libpython dylib), ``bin/python3.X`` and ``lib/python3.X``;
  the framework's root (``.../Python.framework``) is accepted too;
* ``--enable-shared`` builds (Homebrew, pyenv with --enable-shared):
  ``lib/libpython3.X.dylib`` next to ``lib/python3.X``;
* static hosts (pyenv's default): ``bin/python3.X`` exports the C API itself
  and ``lib/`` holds no dylib; the install then names no libpython and
  ``prepare`` says what to install instead.

The version comes from ``include/python3.X/patchlevel.h`` (PY_VERSION), else
from the version string inside the library, else the ``3.X`` of the layout.
Nothing here runs the Python: its files are only read.
"""

import os
import re
from typing import List, Optional, Tuple

from gilclone.platforms import macho
from gilclone.platforms.locate import libpython_version
from gilclone.platforms.model import KIND_LIBPYTHON, PythonInstall

from gilclone.errors import BinaryFormatError, LocateError

_LIB_DIR = re.compile(r"^python(3\.\d+)([a-z]*)$")
_PY_VERSION = re.compile(r'#define\s+PY_VERSION\s+"([^"]+)"')


def install_from_home(home: str) -> PythonInstall:
    home = _framework_version_dir(os.path.abspath(home))
    short, abiflags = _short_version(home)
    libpython, searched = _find_libpython(home, short, abiflags)
    executable = _executable(home, short, abiflags)
    linkage = "shared"
    if libpython is None or _exports_c_api(executable):
        linkage = "static"
    version = _full_version(home, short, libpython)
    machine = "unknown"
    if libpython:
        info = macho.read(libpython)
        machine = info.machine
    stdlib = os.path.join(home, "lib", f"python{short}")
    dynload = os.path.join(stdlib, "lib-dynload")
    site_packages = os.path.join(stdlib, "site-packages")
    return PythonInstall(
        executable=executable,
        version=version,
        platform="macos",
        machine=machine,
        libpython=libpython,
        linkage=linkage,
        libpython_searched=tuple(searched) if linkage == "static" else (),
        libpython_version=libpython_version(libpython, short) if libpython and linkage == "static" else None,
        extension_dirs=tuple(d for d in (dynload, site_packages) if os.path.isdir(d)),
        extension_suffix=f".cpython-{short.replace('.', '')}{abiflags}-darwin.so",
        prefix=home,
        base_prefix=home,
        sys_path=(
            os.path.join(home, "lib", f"python{short.replace('.', '')}.zip"),
            stdlib,
            dynload,
            site_packages,
        ),
    )


def _framework_version_dir(home: str) -> str:
    """``.../Python.framework`` -> its ``Versions/Current`` (or the only version there)."""
    versions = os.path.join(home, "Versions")
    if os.path.basename(home) != "Python.framework" or not os.path.isdir(versions):
        return home
    current = os.path.join(versions, "Current")
    if os.path.isdir(current):
        return os.path.realpath(current)
    found = sorted(d for d in os.listdir(versions) if re.match(r"^3\.\d+", d))
    if len(found) != 1:
        raise LocateError(f"{home}: holds versions {found or 'none'}; name one: {versions}/3.X")
    return os.path.join(versions, found[0])


def _short_version(home: str) -> Tuple[str, str]:
    lib = os.path.join(home, "lib")
    found = []
    if os.path.isdir(lib):
        for name in os.listdir(lib):
            m = _LIB_DIR.match(name)
            if m and os.path.isdir(os.path.join(lib, name)):
                found.append((m.group(1), m.group(2)))
    if len(found) != 1:
        what = ", ".join(f"python{v}{f}" for v, f in sorted(found)) or "no python3.X directory"
        raise LocateError(
            f"{home}: not a macOS Python installation directory ({lib} has {what}); "
            "--python-home names what sys.base_prefix is on the Mac, e.g. "
            "/Library/Frameworks/Python.framework/Versions/3.12 or /opt/homebrew/opt/python@3.12/"
            "Frameworks/Python.framework/Versions/3.12"
        )
    return found[0]


def _find_libpython(home: str, short: str, abiflags: str) -> Tuple[Optional[str], List[str]]:
    candidates = [
        os.path.join(home, "Python"),  # framework build: Versions/3.X/Python
        os.path.join(home, "lib", f"libpython{short}{abiflags}.dylib"),
        os.path.join(home, "lib", f"libpython{short}.dylib"),
    ]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            info = macho.read(path)
        except BinaryFormatError:
            continue
        if info.kind == KIND_LIBPYTHON:
            return os.path.realpath(path) if os.path.islink(path) else path, candidates
    return None, candidates


def _executable(home: str, short: str, abiflags: str) -> str:
    for name in (f"python{short}{abiflags}", f"python{short}", "python3"):
        path = os.path.join(home, "bin", name)
        if os.path.exists(path):
            return path
    return os.path.join(home, "bin", f"python{short}")


def _exports_c_api(executable: str) -> bool:
    """True for a static host: the executable itself exports the C API."""
    if not os.path.isfile(executable):
        return False
    try:
        exports = macho.read_exports(executable)
    except BinaryFormatError:
        return False
    return "_Py_Initialize" in exports or "_Py_InitializeEx" in exports


def _full_version(home: str, short: str, libpython: Optional[str]) -> str:
    header = os.path.join(home, "include", f"python{short}", "patchlevel.h")
    try:
        with open(header, errors="replace") as f:
            m = _PY_VERSION.search(f.read())
        if m and m.group(1).startswith(short + "."):
            return m.group(1)
    except OSError:
        pass
    found = libpython_version(libpython, short) if libpython else None
    return found or short
