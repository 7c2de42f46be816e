"""Checks of the clone directory (any OS; a noexec mount where statvfs tells).

The directory is looked at the way store.check_writable_location does, but
nothing is created.
"""

import os
from dataclasses import dataclass
from typing import List, Optional

from gilclone.cloner.doctor.findings import ERROR, INFO, WARNING, Finding

# The cache should hold at least this many libpython copies.
COPIES_OF_SPACE = 3
_CACHE_FIX = (
    "choose another directory with `gilclone prepare --dest DIR` or the GILCLONE_CACHE "
    "environment variable (check it with `gilclone doctor --cache DIR`)"
)


@dataclass(frozen=True)
class CacheFacts:
    """The cache directory as found, without creating it."""

    root: str
    existing: Optional[str]  # root itself, or the nearest ancestor that exists
    problem: Optional[str]  # why root can never be a directory here, if so
    writable: bool  # a directory can be created / written there
    noexec: bool
    read_only: bool
    free_bytes: Optional[int]


def cache_facts(root: str) -> CacheFacts:
    """Look at ``root`` without creating it."""
    root = os.path.abspath(root)
    existing = root
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a directory"
    writable = problem is None and os.access(existing, os.W_OK | os.X_OK)
    noexec = read_only = False
    free = None
    if problem is None and hasattr(os, "statvfs"):
        try:
            st = os.statvfs(existing)
        except OSError as exc:
            problem = f"{existing}: {exc.strerror}"
        else:
            noexec = bool(st.f_flag & getattr(os, "ST_NOEXEC", 8))
            read_only = bool(st.f_flag & getattr(os, "ST_RDONLY", 1))
            free = st.f_bavail * st.f_frsize
    return CacheFacts(root, existing, problem, writable and not read_only, noexec, read_only, free)


def cache_findings(facts: CacheFacts, libpython_size: Optional[int]) -> List[Finding]:
    root = facts.root
    if facts.problem is not None:
        return [
            Finding(
                "cache-unusable",
                ERROR,
                f"cache directory {root} cannot be created: {facts.problem}",
                "Clones are written there before they are loaded.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    where = root if facts.existing == root else f"{root} (would be created in {facts.existing})"
    if not facts.writable:
        why = "read-only file system" if facts.read_only else "no write permission"
        return [
            Finding(
                "cache-not-writable",
                ERROR,
                f"cache directory {where} is not writable ({why})",
                "Clones are written there before they are loaded.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    if facts.noexec:
        return [
            Finding(
                "cache-noexec",
                ERROR,
                f"cache directory {where} is on a noexec mount",
                "Shared libraries on a noexec mount cannot be mapped executable, so dlopen of "
                "the copies fails.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    if facts.free_bytes is not None and libpython_size:
        needed = COPIES_OF_SPACE * libpython_size
        if facts.free_bytes < needed:
            return [
                Finding(
                    "cache-low-space",
                    WARNING,
                    f"cache directory {where} has {_mib(facts.free_bytes)} free, less than "
                    f"{COPIES_OF_SPACE} copies of libpython ({_mib(needed)})",
                    "Each clone is a full copy of libpython plus copies of its extension modules.",
                    "Free some space, or " + _CACHE_FIX,
                )
            ]
    free = f", {_mib(facts.free_bytes)} free" if facts.free_bytes is not None else ""
    return [Finding("cache", INFO, f"cache directory {where}{free}", "Clones are written there.", "")]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
