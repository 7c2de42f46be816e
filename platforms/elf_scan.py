"""Read an ELF object for an environment scan: its dynamic facts and its symbol versions.

``elf_deps`` (the resolver's reader, plain ``struct``) gives the dynamic facts;
``elf_versions`` reads the version sections through an open ``ELFFile``.
``ScanProbe`` remembers both by path and modification stamp; it is the probe
``resolve.resolve_closure`` takes.
"""

import os
from typing import Dict, Optional, Tuple

from elftools.elf.elffile import ELFFile
from gilclone.platforms.elf_deps import DynamicFacts, read_dynamic_facts
from gilclone.platforms.elf_versions import VersionFacts, versions_of

from gilclone.errors import BinaryFormatError

Read = Tuple[Optional[DynamicFacts], Optional[VersionFacts]]


def read_object(path: str) -> Read:
    """(dynamic facts, version facts) of ``path``; (None, None) if it is no readable ELF object."""
    try:
        facts = read_dynamic_facts(path)
    except BinaryFormatError:  # not ELF or damaged: ld.so skips those too
        return None, None
    try:
        with open(path, "rb") as f:
            return facts, versions_of(path, ELFFile(f))
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
