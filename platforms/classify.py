"""Format-neutral rules that say what a binary is to CPython.

Pure functions of names a reader already has, so every format classifies the
same way and the rules are testable without any file.
"""

import re
from typing import Iterable, Optional, Tuple

from gilclone.platforms.model import (
    KIND_EXECUTABLE,
    KIND_EXTENSION,
    KIND_LIBPYTHON,
    KIND_LIBRARY,
)

# ".cpython-311-x86_64-linux-gnu.so", ".cpython-38-darwin.so", ".cp311-win_amd64.pyd"
_TAGGED_SUFFIX = re.compile(r"\.(?:cpython-|cp)(3)(\d+)[a-z]*(?:-[^.]*)?\.(?:so|pyd|dylib)$")
_ABI3_SUFFIX = re.compile(r"\.abi3\.(?:so|pyd|dylib)$")
# libpython3.11.so.1.0, libpython3.7m.so, libpython3.11.dylib, libpython3.13t.so
_LIBPYTHON_ELF_MACHO = re.compile(r"libpython(3)\.(\d+)[a-z]*\.(?:so|dylib)")
_PYTHON_DLL = re.compile(r"^python(3)(\d+)[a-z_]*\.dll$", re.IGNORECASE)
_STABLE_ABI_DLL = re.compile(r"^python3[a-z_]*\.dll$", re.IGNORECASE)
_FRAMEWORK = re.compile(r"Python\.framework/Versions/(3)\.(\d+)[a-z]*/Python$")


def python_version_from_filename(filename: str) -> Optional[str]:
    """The CPython version an extension's file name is tagged for, "abi3", or None."""
    m = _TAGGED_SUFFIX.search(filename)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    if _ABI3_SUFFIX.search(filename):
        return "abi3"
    return None


def python_version_from_libname(name: str) -> Optional[str]:
    """The version a libpython's name (soname, DLL name, install name, path) says, or None."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for pattern, text in ((_LIBPYTHON_ELF_MACHO, base), (_PYTHON_DLL, base), (_FRAMEWORK, name)):
        m = pattern.search(text)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    if _STABLE_ABI_DLL.match(base):
        return "abi3"
    return None


def classify(
    *,
    filename: str,
    own_name: Optional[str],
    exports: Iterable[str],
    needed: Iterable[str],
    is_executable: bool,
) -> Tuple[str, Optional[str]]:
    """Return (kind, python_version) for a binary.

    ``exports`` are symbol names without any platform prefix (strip Mach-O's
    leading underscore before calling).
    """
    exports = set(exports)
    needed = list(needed)
    if is_executable:
        return KIND_EXECUTABLE, _version_from_needed(needed)
    # libpython exports PyInit_* for its built-in modules too, so test it first.
    if "Py_Initialize" in exports or "Py_InitializeEx" in exports:
        version = (
            python_version_from_libname(own_name or "")
            or python_version_from_libname(filename)
        )
        return KIND_LIBPYTHON, version
    if any(e.startswith("PyInit_") for e in exports):
        version = python_version_from_filename(filename) or _version_from_needed(needed)
        return KIND_EXTENSION, version
    return KIND_LIBRARY, _version_from_needed(needed)


def _version_from_needed(needed) -> Optional[str]:
    for lib in needed:
        version = python_version_from_libname(lib)
        if version:
            return version
    return None
