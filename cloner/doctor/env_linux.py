"""``doctor --env`` on Linux: extension modules loaded as dlopen from libpython loads them.

What the interpreter itself loaded (its executable's closure) is matched by name
first, and the run paths of libpython and the executable are inherited as ld.so
does for a dlopen from libpython. One ``ScanProbe`` reads each ELF file once, its
dynamic facts and its symbol versions together.
"""

import os
import re
from typing import Dict, Mapping, Tuple

from gilclone.cloner.doctor.env_rules import Rules
from gilclone.platforms import resolve
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.elf_scan import ScanProbe
from gilclone.platforms.model import PythonInstall

_SHARED_LIBRARY = re.compile(r"\.so(?:\.\d+)*$")


def rules(install: PythonInstall, config: resolve.LoaderConfig) -> Rules:
    probe = ScanProbe()
    chain = _dlopen_chain(install, probe)
    loaded = _host_loaded(chain, config, probe)
    return Rules(
        wanted=lambda name: bool(_SHARED_LIBRARY.search(name)),
        suffixes=tuple(s for s in (install.extension_suffix, ".abi3.so") if s),
        stdlib_dirs=tuple(d for d in install.extension_dirs if d.rstrip("/").endswith("lib-dynload")),
        probe=probe,
        versions=probe.versions,
        resolver=_loaded_first(loaded),
        chain=chain,
        host_loaded=loaded,
        config=config,
    )


def _dlopen_chain(install: PythonInstall, probe: resolve.Probe) -> Tuple[DynamicFacts, ...]:
    """Who dlopens an extension module, nearest first: libpython then the executable
    (a static host: the executable alone). Their DT_RPATH is inherited."""
    chain = []
    if install.linkage == "shared" and install.libpython:
        chain.append(probe(install.libpython))
    chain.append(probe(os.path.realpath(install.executable)))
    return tuple(c for c in chain if c is not None)


def _host_loaded(
    chain: Tuple[DynamicFacts, ...], config: resolve.LoaderConfig, probe: resolve.Probe
) -> Dict[str, DynamicFacts]:
    """What is in the process before any import: the executable's closure, by every name
    ld.so would match (sonames, DT_NEEDED names, paths)."""
    if not chain:
        return {}
    closure = resolve.resolve_closure(chain[-1], config, probe)
    loaded: Dict[str, DynamicFacts] = {}
    by_path = closure.by_path()
    for edge in closure.edges:
        if edge.path:
            loaded[edge.name] = by_path[edge.path]
    for obj in closure.objects[1:]:
        if obj.soname:
            loaded[obj.soname] = obj
    return loaded


def _loaded_first(loaded: Mapping[str, DynamicFacts]):
    """ld.so's resolution, but a name already loaded in the process is that object."""

    def resolver(name, loader, chain, config, probe):
        obj = loaded.get(name)
        if obj is not None:
            return obj, "loaded"
        return resolve.resolve_needed(name, loader, chain, config, probe)

    return resolver
