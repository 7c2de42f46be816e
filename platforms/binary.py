"""Read any supported binary into a BinaryInfo: the one entry point for inspection."""

import os

from gilclone.platforms.fileaccess import read_head
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


def read_binary(path) -> BinaryInfo:
    """Inspect ``path``; raise BinaryFormatError naming the file and the problem."""
    path = os.fspath(path)
    head = read_head(path)
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
