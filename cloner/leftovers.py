"""Temporary names that say who made them, so leftovers are removed only once provably dead.

A temporary directory or file is named ``.tmp-<boot>-<pid>-<start>-<random>``
(or ``<file>.tmp-...``): the boot it was made in, the pid of its maker and
that process's start time. It is dead when the machine has rebooted since,
or no process with that pid and start time runs. Without /proc (macOS) start
times are unknown and a running pid counts as alive; on Windows every maker
counts as alive, and only the lock rule removes leftovers.
"""

import os
from typing import Optional

TMP = ".tmp-"
TRASH = ".trash-"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:8]
    except OSError:
        return "0"


def _start_time(pid: int) -> Optional[str]:
    """Start time of ``pid`` in clock ticks since boot; "0" where unknown, None if not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        pass
    if os.name == "nt":
        return "0"  # os.kill would terminate it there; count it alive (the lock rule still applies)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass  # exists, owned by someone else
    return "0"


_OWNER = None


def owner() -> str:
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER[0] != pid:  # recomputed in a forked child
        _OWNER = (pid, f"{_boot_id()}-{pid}-{_start_time(pid) or '0'}")
    return _OWNER[1]


def temp_name() -> str:
    """A directory name for work in progress."""
    return f"{TMP}{owner()}-{os.urandom(4).hex()}"


def temp_suffix() -> str:
    """Appended to a file name for a temporary file replaced into place."""
    return f"{TMP}{owner()}-{os.urandom(4).hex()}"


def is_temporary(name: str) -> bool:
    return name.startswith((TMP, TRASH)) or f".json{TMP}" in name


def owner_alive(name: str) -> bool:
    """Whether the process that made temporary ``name`` may still be running."""
    token = name.split(TMP, 1)[1] if TMP in name else ""
    parts = token.split("-")
    if len(parts) < 4 or not parts[1].isdigit():
        return False  # not made by this scheme (an older gilclone, or planted)
    boot, pid, start = parts[0], int(parts[1]), parts[2]
    if boot != _boot_id():
        return False
    now = _start_time(pid)
    return now is not None and (start == "0" or now == "0" or now == start)


def remove_in(directory: str, lock_held: bool) -> None:
    """Remove dead temporary entries of ``directory``; all of them if ``lock_held``.

    Trash (``.trash-*``) is always dead: it was renamed aside to be deleted.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not is_temporary(name):
            continue
        if not name.startswith(TRASH) and not lock_held and owner_alive(name):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil  # here: a pool's first result passes this module, rarely this line

            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
