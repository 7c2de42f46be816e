"""A Windows CPython described from its directory alone (``prepare --target windows``).

Works on an unpacked installation or embeddable build that cannot run here: the
libpython is the ``python3X.dll`` in the directory, the version comes from that
DLL's version resource (its name as a fallback), and ``sys.path`` is what the
directory's ``python3X._pth`` lists (an embeddable build) or the usual layout of
a full installation (``python3X.zip``, ``Lib``, ``DLLs``, ``Lib/site-packages``).

Paths are joined with ``ntpath`` so they read as Windows paths on every OS;
a POSIX home (cross-preparing on Linux) keeps its forward slashes in front.
"""

import ntpath
import os
import re
from typing import List, Optional, Tuple

import pefile
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.model import KIND_LIBPYTHON, PythonInstall

from gilclone.errors import BinaryFormatError, LocateError

_DLL = re.compile(r"^python3(\d+)\.dll$", re.IGNORECASE)
_RESOURCE = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]
_VERSION = re.compile(r"^3\.\d+\.\d+(?:(?:a|b|rc)\d+)?$")


def install_from_home(home: str) -> PythonInstall:
    dll = find_dll(home)
    try:
        info = pe_reader.read(dll)
    except BinaryFormatError as exc:
        raise LocateError(str(exc)) from None
    if info.kind != KIND_LIBPYTHON:
        raise LocateError(f"{dll}: is not a Python DLL (it is a {info.kind})")
    version = dll_version(dll) or _version_from_name(dll)
    stem = os.path.splitext(os.path.basename(dll))[0]
    exe = _join(home, "python.exe")
    return PythonInstall(
        executable=exe,
        version=version,
        platform="windows",
        machine=info.machine,
        libpython=dll,
        linkage="shared",
        libpython_searched=(),
        libpython_version=version,
        extension_dirs=tuple(extension_dirs(home)),
        extension_suffix=_ext_suffix(version, info.machine),
        prefix=home,
        base_prefix=home,
        sys_path=tuple(sys_path(home, stem)),
    )


def find_dll(home: str) -> str:
    """The ``python3X.dll`` of ``home``; exactly one must be there."""
    try:
        names = sorted(n for n in os.listdir(home) if _DLL.match(n))
    except OSError as exc:
        raise LocateError(f"{home}: cannot be listed ({exc.strerror})") from None
    if not names:
        raise LocateError(
            f"{home}: holds no python3X.dll; --python-home names the directory with "
            "python.exe and python3X.dll (an installation or an unpacked embeddable zip)"
        )
    if len(names) > 1:
        raise LocateError(f"{home}: holds several Python DLLs ({', '.join(names)}); "
                          "give the directory of one Python")
    return os.path.join(home, names[0])


def dll_version(path: str) -> Optional[str]:
    """ProductVersion (else FileVersion) of the DLL's version resource, e.g. "3.11.9"."""
    try:
        pe = pefile.PE(path, fast_load=True)
    except (OSError, pefile.PEFormatError):
        return None
    try:
        pe.parse_data_directories(directories=[_RESOURCE])
        strings = {}
        for info in getattr(pe, "FileInfo", None) or ():
            for entry in info:
                for table in getattr(entry, "StringTable", ()):
                    strings.update(table.entries)
    except Exception:  # a damaged resource tree: fall back to the name
        return None
    finally:
        pe.close()
    for key in (b"ProductVersion", b"FileVersion"):
        text = strings.get(key, b"").decode("ascii", "replace").strip()
        if _VERSION.match(text):
            return text
    return None


def _version_from_name(dll: str) -> str:
    digits = _DLL.match(os.path.basename(dll)).group(1)
    return f"3.{digits}.0"


def extension_dirs(home: str) -> List[str]:
    out = [home]
    for parts in (("DLLs",), ("Lib", "site-packages")):
        if os.path.isdir(os.path.join(home, *parts)):
            out.append(_join(home, *parts))
    return out


def sys_path(home: str, stem: str) -> List[str]:
    """``sys.path`` the home's Python starts with, as absolute paths."""
    entries, _site = read_pth(os.path.join(home, f"{stem}._pth"))
    if entries is None:
        entries = [f"{stem}.zip", "DLLs", "Lib", "."]
        entries = [e for e in entries if os.path.exists(os.path.join(home, e))]
        if os.path.isdir(os.path.join(home, "Lib", "site-packages")):
            entries.append("Lib\\site-packages")
    out = []
    for e in entries:
        path = e if ntpath.isabs(e) else _join(home, e)
        path = ntpath.normpath(path) if not home.startswith("/") else _tidy(path)
        if path not in out:
            out.append(path)
    return out


def read_pth(path: str) -> Tuple[Optional[List[str]], bool]:
    """(path entries, "import site" present) of a ._pth file; (None, False) without one."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, False
    entries, site = [], False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "import site":
            site = True
        elif not line.startswith("import "):
            entries.append(line)
    return entries, site


def _ext_suffix(version: str, machine: str) -> str:
    tag = "".join(version.split(".")[:2])
    plat = {"x86_64": "win_amd64", "x86": "win32", "arm64": "win_arm64"}.get(machine, "win_amd64")
    return f".cp{tag}-{plat}.pyd"


def _join(home: str, *parts: str) -> str:
    """Join Windows-style; a POSIX home (cross-preparing) keeps "/" as its separator."""
    if home.startswith("/"):
        return "/".join([home.rstrip("/")] + [p.replace("\\", "/") for p in parts])
    return ntpath.join(home, *parts)


def _tidy(path: str) -> str:
    """Normalise a POSIX-style path ("." and ".." parts) without touching the disk."""
    import posixpath

    return posixpath.normpath(path.replace("\\", "/"))
