"""Read any supported binary into a BinaryInfo: the one entry point for inspection."""

import mmap
import os
import stat
from contextlib import contextmanager
from typing import Iterator, Tuple

from gilclone.platforms.model import BinaryInfo

from gilclone.errors import BinaryFormatError

ELF_MAGIC = b"\x7fELF"
PE_MAGIC = b"MZ"
# Mach-O thin (32/64, both byte orders) and fat headers.
MACHO_MAGICS = (
    b"\xfe\xed\xfa\xce",
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
    b"\xca\xfe\xba\xbf",
)
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


def read_binary(path) -> BinaryInfo:
    """Inspect ``path``; raise BinaryFormatError naming the file and the problem."""
    path = os.fspath(path)
    head = _read_head(path)
    try:
        return _dispatch(path, head)
    except MemoryError:
        raise BinaryFormatError(
            path, "ran out of memory reading it; its headers claim tables too large to hold"
        ) from None


def _dispatch(path: str, head: bytes) -> BinaryInfo:
    if head.startswith(ELF_MAGIC):
        from gilclone.platforms import elf

        return elf.read(path)
    if head.startswith(PE_MAGIC):
        from gilclone.platforms import pe

        return pe.read(path)
    if head[:4] in MACHO_MAGICS:
        from gilclone.platforms import macho

        return macho.read(path)
    raise BinaryFormatError(path, _describe_foreign(head))


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
    _stat(path)
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


def _stat(path: str) -> os.stat_result:
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


def _read_head(path: str) -> bytes:
    _stat(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise BinaryFormatError(path, f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        require_regular(path, os.fstat(f.fileno()).st_mode)
        return f.read(64)


def _describe_foreign(head: bytes) -> str:
    if not head:
        return "is empty, not a binary"
    if head.startswith(b"#!") or _looks_like_text(head):
        return "is a text file, not an ELF, PE or Mach-O binary"
    if head.startswith(b"PK\x03\x04"):
        return "is a zip archive (a wheel?); unpack it and name the binary inside"
    return "is not an ELF, PE or Mach-O binary (unknown magic %s)" % head[:4].hex()


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 9 for b in head)
