"""Opening a file that claims to be a binary, safely: regular files only, bounded memory.

Readers of every format open files through here, so a FIFO or a device is
refused before ``open()`` and a huge file costs only the pages a parser touches.
"""

import mmap
import os
import stat
from contextlib import contextmanager
from typing import Iterator, Tuple

from gilclone.errors import BinaryFormatError

# What a non-regular file is, for the message that refuses it.
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)
# Opening without blocking: a FIFO that slipped past the stat check is refused, not waited on.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def require_regular(path: str, mode: int) -> None:
    """Refuse anything but a regular file: reading a FIFO or a device can block forever."""
    for test, what in _SPECIAL:
        if test(mode):
            hint = "name a file inside it" if what == "a directory" else "name a regular file"
            raise BinaryFormatError(path, f"is {what}, not a binary; {hint}")
    if not stat.S_ISREG(mode):
        raise BinaryFormatError(path, "is not a regular file; name a regular file")


@contextmanager
def mapped_file(path) -> Iterator[Tuple[int, bytes]]:
    """(descriptor, contents) of the regular file at ``path``, mapped read-only.

    Mapping rather than reading keeps memory to the pages a parser touches, however large
    the file. Special files are refused before they are opened.
    """
    path = os.fspath(path)
    checked_stat(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise BinaryFormatError(path, f"cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        require_regular(path, info.st_mode)
        if info.st_size == 0:
            yield fd, b""
            return
        try:
            view = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise BinaryFormatError(
                path, f"cannot be mapped into memory ({exc}); at {info.st_size} bytes it may "
                "exceed this process's address-space limit (ulimit -v)"
            ) from None
        with view:
            yield fd, view
    finally:
        os.close(fd)


def checked_stat(path: str) -> os.stat_result:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise BinaryFormatError(path, "is a symbolic link to nothing; check the path") from None
        raise BinaryFormatError(path, "no such file; check the path") from None
    except OSError as exc:
        raise BinaryFormatError(path, f"cannot be read ({exc.strerror})") from None
    require_regular(path, info.st_mode)
    return info


def read_head(path: str) -> bytes:
    checked_stat(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise BinaryFormatError(path, f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        require_regular(path, os.fstat(f.fileno()).st_mode)
        return f.read(64)
