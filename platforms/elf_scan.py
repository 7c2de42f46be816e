"""Read an ELF object once for an environment scan: its dynamic facts and its symbol versions.

``elf_deps`` (the resolver's reader) and ``elf_versions`` each take an open
``ELFFile``; here one ``ELFFile`` per file serves both, so the section headers are
parsed once and the version sections are found through pyelftools' cached name map.
``ScanProbe`` remembers both by path and modification stamp; it is the probe
``resolve.resolve_closure`` takes.
"""

import os
from typing import Dict, Optional, Tuple

from elftools.elf.elffile import ELFFile
from gilclone.platforms import elf_deps
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.elf_versions import VersionFacts, versions_of

Read = Tuple[Optional[DynamicFacts], Optional[VersionFacts]]


def read_object(path: str) -> Read:
    """(dynamic facts, version facts) of ``path``; (None, None) if it is no readable ELF object."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None, None
            f.seek(0)
            elf = ELFFile(f)
            # elf_deps reads from an open ELFFile in _read; read_dynamic_facts would open the
            # file a second time. (elf_deps.py is shared with the closure branch, kept as is.)
            return elf_deps._read(path, elf, 8), versions_of(path, elf)
    except Exception:  # pyelftools raises many types on damaged files: ld.so skips those too
        return None, None


class ScanProbe:
    """A ``resolve.Probe`` that also answers ``versions(path)``, each file read once."""

    def __init__(self):
        self._read: Dict[Tuple[str, tuple], Read] = {}

    def _get(self, path: str) -> Read:
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        if not os.path.isfile(path):
            return None, None
        key = (path, (st.st_size, st.st_mtime_ns, st.st_ino))
        if key not in self._read:
            self._read[key] = read_object(path)
        return self._read[key]

    def __call__(self, path: str) -> Optional[DynamicFacts]:
        return self._get(path)[0]

    def versions(self, path: str) -> Optional[VersionFacts]:
        return self._get(path)[1]
