"""``doctor --env --target macos``: a macOS environment read from its files alone.

dyld's rules are ``platforms.resolve.resolve_dyld_needed`` (``@rpath`` through the
LC_RPATH of the image and of its loaders, ``@loader_path``, absolute paths;
``/usr/lib`` and ``/System`` are the OS's). Here ``@executable_path`` is the
interpreter's directory, and an install name dyld has already loaded (the
interpreter's libpython) is that image. A Py* bind counts as a C-API call.
"""

import os
import re
from typing import Dict, Optional

from gilclone.cloner import macho_binds
from gilclone.cloner.doctor.env_rules import Rules
from gilclone.platforms import macho, resolve
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.model import KIND_EXTENSION, PythonInstall

from gilclone.errors import BinaryFormatError

_MACHO_FILE = re.compile(r"\.(?:so|dylib)$")


def macho_dynamic_facts(path: str) -> Optional[DynamicFacts]:
    """A Mach-O image as the resolver sees it (its first slice); None if unreadable."""
    try:
        info = macho.read(path)
        data, _fat, slices = macho.scan_path(path)
        binds = len(macho_binds.python_binds(data, slices[0]))
    except (BinaryFormatError, OSError, ValueError, IndexError):
        return None
    return DynamicFacts(
        path=path, soname=info.name, needed=info.needed, rpath=info.rpaths, runpath=None,
        nodeflib=False, elf_class=0, machine=info.machine, python_refs=binds,
        python_init=info.kind == KIND_EXTENSION,
    )


class MachoProbe:
    """Facts of each Mach-O file, read once; no symbol versions."""

    def __init__(self):
        self._read: Dict[str, Optional[DynamicFacts]] = {}

    def __call__(self, path: str) -> Optional[DynamicFacts]:
        if path not in self._read:
            self._read[path] = macho_dynamic_facts(path) if os.path.isfile(path) else None
        return self._read[path]

    def versions(self, path: str):
        return None


def rules(install: PythonInstall) -> Rules:
    probe = MachoProbe()
    loaded: Dict[str, DynamicFacts] = {}
    host = probe(install.libpython) if install.libpython and install.linkage == "shared" else None
    if host is not None:
        for name in filter(None, (host.soname, install.libpython)):
            loaded[name] = host
    exe_dir = os.path.dirname(install.executable)

    def resolver(name, loader, chain, config, probe):
        if name in loaded:
            return loaded[name], "loaded"
        if name.startswith("@executable_path/"):
            name = os.path.join(exe_dir, name[len("@executable_path/"):])
        return resolve.resolve_dyld_needed(name, loader, chain, config, probe)

    stdlib = [d for d in install.extension_dirs if d.rstrip("/").endswith("lib-dynload")]
    return Rules(
        wanted=lambda name: bool(_MACHO_FILE.search(name)),
        suffixes=tuple(s for s in (install.extension_suffix, ".abi3.so") if s),
        stdlib_dirs=tuple(stdlib),
        probe=probe,
        versions=probe.versions,
        resolver=resolver,
        chain=(),
        host_loaded=loaded,
    )
