"""Where Windows finds the DLLs an extension module imports, decided from the files alone.

CPython 3.8+ loads a ``.pyd`` with ``LoadLibraryExW(..., LOAD_LIBRARY_SEARCH_DEFAULT_DIRS |
LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR)``; for the ``.pyd`` and everything it imports the
loader then looks in:

1. modules already loaded, matched by base name, case-insensitively (python3X.dll);
2. the directory of the ``.pyd`` (DLL_LOAD_DIR: the module being loaded, not the importer);
3. the application directory (that of ``python.exe``);
4. System32, and the directories added with ``os.add_dll_directory``.

System32 cannot be read here: Windows' own DLLs (``KERNEL32``, ``api-ms-win-*``)
are taken as present. ``os.add_dll_directory`` is run by package code; the
directories that wheel repair tools and pywin32 add (``<pkg>.libs``,
``pywin32_system32``) are given as ``dll_dirs``.
"""

import os
import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

from gilclone.platforms import pe as pe_reader
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.model import KIND_EXTENSION

from gilclone.errors import BinaryFormatError

_SYSTEM = re.compile(
    r"^(?:api-ms-win-|ext-ms-)|^(?:kernel32|kernelbase|ntdll|user32|gdi32|gdiplus|advapi32|shell32|"
    r"shlwapi|ole32|oleaut32|comctl32|comdlg32|ws2_32|wsock32|mswsock|version|secur32|sspicli|"
    r"powrprof|crypt32|bcrypt|ncrypt|rpcrt4|setupapi|cfgmgr32|winmm|winhttp|wininet|iphlpapi|"
    r"dnsapi|dbghelp|psapi|userenv|netapi32|mpr|msi|imm32|uxtheme|dwmapi|d3d\w*|dxgi|opengl32|"
    r"glu32|msvcrt|ucrtbase|msvcp140\w*|vcruntime140\w*|concrt140|vcomp140|normaliz|credui|"
    r"cabinet|wtsapi32|propsys|oleacc|usp10|hid|wintrust|ntdsapi|activeds|odbc32|pdh|wevtapi|"
    r"winspool|mscoree|msimg32|avrt|mfplat|mf|ksuser|dinput8|xinput\w*|winusb|newdev|"
    r"authz|netutils|srvcli|wkscli|logoncli|samcli|dsrole|urlmon|shcore|aclui|dsound|lz32|rasapi32|"
    r"ktmw32|loadperf|query|sfc|mapi32|msacm32|wldap32|winscard|dbgeng|esent|mscms|tapi32|"
    r"clusapi|virtdisk|fltlib|wer|ntdll)\.(?:dll|drv)$",
    re.IGNORECASE,
)


def is_system_dll(name: str) -> bool:
    return bool(_SYSTEM.search(name))


def pe_dynamic_facts(path: str) -> Optional[DynamicFacts]:
    """A PE image as the resolver sees it; None if it is no readable PE file."""
    try:
        info = pe_reader.read(path)
    except (BinaryFormatError, OSError):
        return None
    api = [n for n in info.needed if python_version_from_libname(n)]
    return DynamicFacts(
        path=path, soname=os.path.basename(path), needed=info.needed, rpath=(), runpath=None,
        nodeflib=False, elf_class=0, machine=info.machine, python_refs=len(api),
        python_init=info.kind == KIND_EXTENSION and path.lower().endswith(".pyd"),
    )


class DirectoryListing:
    """Case-insensitive file lookup in directories, each listed once."""

    def __init__(self):
        self._dirs: Dict[str, Dict[str, str]] = {}

    def find(self, directory: str, name: str) -> Optional[str]:
        if directory not in self._dirs:
            try:
                self._dirs[directory] = {n.lower(): n for n in os.listdir(directory)}
            except OSError:
                self._dirs[directory] = {}
        found = self._dirs[directory].get(name.lower())
        return os.path.join(directory, found) if found else None


def windows_resolver(
    app_dir: str,
    dll_dirs: Sequence[str],
    loaded: Mapping[str, DynamicFacts],
    modules: Mapping[str, str] = {},
):
    """A ``resolve.resolve_closure`` resolver following the search above.

    ``loaded``: what the interpreter has loaded before any import, by lower-case name.
    ``modules``: the environment's ``.pyd`` files by lower-case name: one imported
    earlier is a loaded module, so a ``.pyd`` importing another (pywin32's axdebug
    imports axscript.pyd) finds it when the package imports that one first.
    """
    listing = DirectoryListing()

    def resolver(name, loader, chain, config, probe) -> Tuple[Optional[DynamicFacts], str]:
        if name.lower() in loaded:
            return loaded[name.lower()], "loaded"
        root = chain[-1] if chain else loader
        for directory, why in ((os.path.dirname(root.path), "module directory"),
                               (app_dir, "application directory"),
                               *((d, "DLL directory") for d in dll_dirs)):
            path = listing.find(directory, name)
            found = probe(path) if path else None
            if found is not None:
                return found, why
        if name.lower() in modules:
            found = probe(modules[name.lower()])
            if found is not None:
                return found, "imported module"
        if is_system_dll(name):
            return None, "system"
        return None, ""

    return resolver
