"""Build a minimal ELF shared object in any class and byte order, for reader tests.

This machine's objects are all 64-bit little-endian; the readers must also read
32-bit and big-endian ones (ppc64, s390x, i386, armhf). The object has just what
``elf_deps`` and pyelftools look at: a null section, ``.dynstr``, ``.dynsym``,
``.dynamic`` and ``.shstrtab``, no code and no program headers.
"""

import struct
from typing import Sequence, Tuple, Union

ET_DYN = 3
SHT_STRTAB, SHT_DYNAMIC, SHT_DYNSYM = 3, 6, 11
# (name, bind, type, shndx): shndx 0 is an undefined reference, anything else a definition.
Symbol = Tuple[str, int, int, int]
# (d_tag, value): a str value goes into .dynstr and the tag holds its offset.
Tag = Tuple[int, Union[int, str]]


class _Strings:
    def __init__(self):
        self.data = bytearray(b"\0")

    def add(self, text: str) -> int:
        at = len(self.data)
        self.data += text.encode() + b"\0"
        return at


def build(elf_class: int, big_endian: bool, machine: int, tags: Sequence[Tag],
          symbols: Sequence[Symbol] = ()) -> bytes:
    """The bytes of a shared object with these dynamic tags (DT_NULL appended) and symbols."""
    end = ">" if big_endian else "<"
    wide = elf_class == 64
    dynstr, shstr = _Strings(), _Strings()
    dyn_format = end + ("qQ" if wide else "iI")
    dynamic = b"".join(struct.pack(dyn_format, t, dynstr.add(v) if isinstance(v, str) else v)
                       for t, v in list(tags) + [(0, 0)])
    sym_format = end + ("IBBHQQ" if wide else "IIIBBH")
    rows = [(0, 0, 0)] + [(dynstr.add(n), (b << 4) | k, s) for n, b, k, s in symbols]
    dynsym = b"".join(struct.pack(sym_format, *((n, i, 0, s, 0, 0) if wide else (n, 0, 0, i, 0, s)))
                      for n, i, s in rows)
    names = [shstr.add(n) for n in (".dynstr", ".dynsym", ".dynamic", ".shstrtab")]
    blobs = [bytes(dynstr.data), dynsym, dynamic, bytes(shstr.data)]
    kinds = [(SHT_STRTAB, 0, 0), (SHT_DYNSYM, 1, struct.calcsize(sym_format)),
             (SHT_DYNAMIC, 1, struct.calcsize(dyn_format)), (SHT_STRTAB, 0, 0)]
    header_size = 64 if wide else 52
    body, offsets = bytearray(), []
    for blob in blobs:
        body += b"\0" * (-(header_size + len(body)) % 8)
        offsets.append(header_size + len(body))
        body += blob
    body += b"\0" * (-(header_size + len(body)) % 8)
    shoff = header_size + len(body)
    sh_format = end + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
    table = struct.pack(sh_format, *([0] * 10)) + b"".join(
        struct.pack(sh_format, name, kind, 0, 0, offset, len(blob), link, 0, 1, entsize)
        for name, (kind, link, entsize), offset, blob in zip(names, kinds, offsets, blobs))
    return _header(elf_class, end, machine, shoff, struct.calcsize(sh_format)) + bytes(body) + table


def _header(elf_class: int, end: str, machine: int, shoff: int, shentsize: int) -> bytes:
    ident = b"\x7fELF" + bytes([1 if elf_class == 32 else 2, 2 if end == ">" else 1, 1]) + bytes(9)
    layout = end + ("HHIQQQIHHHHHH" if elf_class == 64 else "HHIIIIIHHHHHH")
    size = 16 + struct.calcsize(layout)
    return ident + struct.pack(layout, ET_DYN, machine, 1, 0, 0, shoff, 0, size, 0, 0, shentsize, 5, 4)
