"""Which files a running Linux process has mapped, read from ``/proc/PID/maps``.

``parse_maps`` is a pure function of the text, so it is tested on captured
output anywhere; ``mapped_files`` adds the reading and its errors.
"""

import os
from dataclasses import dataclass
from typing import List, Tuple

from gilclone.errors import GilcloneError

_DELETED = " (deleted)"


class ProcessReadError(GilcloneError):
    """A process's mappings could not be read (no such process, no permission, not Linux)."""


@dataclass(frozen=True)
class MappedFile:
    """One file mapped into a process, at the lowest address it is mapped at."""

    path: str
    device: str  # "major:minor" as the kernel prints it
    inode: int
    start: int  # lowest mapped address of the file
    deleted: bool  # the file was removed (or replaced) after it was mapped


def parse_maps(text: str) -> Tuple[MappedFile, ...]:
    """Files (not anonymous memory, not [heap]/[stack]/...) in order of first address."""
    seen = {}
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        address, _perms, _offset, device, inode, path = fields
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        start = int(address.split("-", 1)[0], 16)
        known = seen.get(path)
        if known is None or start < known.start:
            seen[path] = MappedFile(path, device, int(inode), start, deleted)
    return tuple(sorted(seen.values(), key=lambda m: m.start))


def mapped_files(pid: int) -> Tuple[MappedFile, ...]:
    maps = f"/proc/{pid}/maps"
    try:
        with open(maps) as f:
            text = f.read()
    except FileNotFoundError:
        hint = "no such process" if os.path.isdir("/proc") else "/proc is not mounted (Linux only)"
        raise ProcessReadError(f"{maps}: {hint}; check the pid") from None
    except PermissionError:
        raise ProcessReadError(
            f"{maps}: permission denied; run as the process's owner or as root"
        ) from None
    return parse_maps(text)


def same_file_groups(files: Tuple[MappedFile, ...]) -> List[Tuple[MappedFile, ...]]:
    """Files mapped under two or more paths that are one file on disk (same device, inode)."""
    by_identity = {}
    for m in files:
        if m.inode:
            by_identity.setdefault((m.device, m.inode), []).append(m)
    return [tuple(group) for group in by_identity.values() if len(group) > 1]
