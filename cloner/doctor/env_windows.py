"""``doctor --env --target windows``: a Windows environment read from its files alone.

The DLL search is ``platforms.pe_search``'s; the DLL directories that packages add
at import with ``os.add_dll_directory`` are taken to be the ``*.libs`` directories
of wheel repair tools (delvewheel) and pywin32's ``pywin32_system32``.
"""

import os
import re
from typing import Dict, List

from gilclone.cloner.doctor.env_rules import Rules
from gilclone.cloner.doctor.scan import scan_files
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.model import PythonInstall
from gilclone.platforms.pe_search import DirectoryListing, pe_dynamic_facts, windows_resolver

_PE_FILE = re.compile(r"\.(?:pyd|dll)$", re.IGNORECASE)
_ADDED_DIRS = re.compile(r"\.libs$|^pywin32_system32$", re.IGNORECASE)


class PeProbe:
    """Facts of each PE file, read once; PE has no symbol versions."""

    def __init__(self):
        self._read: Dict[str, object] = {}

    def __call__(self, path: str):
        if path not in self._read:
            self._read[path] = pe_dynamic_facts(path) if os.path.isfile(path) else None
        return self._read[path]

    def versions(self, path: str):
        return None


def rules(install: PythonInstall) -> Rules:
    probe = PeProbe()
    home = os.path.dirname(install.executable)
    loaded = _host_loaded(install, home, probe)
    return Rules(
        wanted=lambda name: bool(_PE_FILE.search(name)),
        suffixes=tuple(s for s in (install.extension_suffix, ".pyd") if s),
        stdlib_dirs=tuple(d for d in install.extension_dirs if not _under_site_packages(d)),
        probe=probe,
        versions=probe.versions,
        resolver=windows_resolver(home, _dll_dirs(install.extension_dirs), loaded,
                                  _modules(install.extension_dirs)),
        chain=(),
        host_loaded=loaded,
    )


def _host_loaded(install: PythonInstall, home: str, probe: PeProbe) -> Dict[str, DynamicFacts]:
    """python3X.dll and what python.exe imports from its own directory, by lower-case name."""
    loaded: Dict[str, DynamicFacts] = {}
    listing = DirectoryListing()
    exe = probe(install.executable)
    names = list(exe.needed) if exe is not None else []
    if install.libpython:
        names.append(os.path.basename(install.libpython))
    for name in names:
        path = listing.find(home, name)
        facts = probe(path) if path else None
        if facts is not None:
            loaded[name.lower()] = facts
    return loaded


def _dll_dirs(extension_dirs) -> List[str]:
    out = []
    for top in extension_dirs:
        if not _under_site_packages(top):
            continue
        try:
            names = sorted(os.listdir(top))
        except OSError:
            continue
        out += [os.path.join(top, n) for n in names if _ADDED_DIRS.search(n) and os.path.isdir(os.path.join(top, n))]
    return out


def _modules(extension_dirs) -> Dict[str, str]:
    """Every .pyd below the extension directories by lower-case name (the first one found)."""
    out: Dict[str, str] = {}
    for path in scan_files(extension_dirs, lambda n: n.lower().endswith(".pyd")).paths:
        out.setdefault(os.path.basename(path).lower(), path)
    return out


def _under_site_packages(path: str) -> bool:
    return "site-packages" in path.replace("\\", "/").lower().split("/")
