"""__LINKEDIT of one Mach-O slice: move its contents, drop the signature, rewrite the binds.

A rewritten bind stream may be longer than the original; what follows it in
__LINKEDIT moves, and every load-command field that holds a file offset past
it (LC_SYMTAB, LC_DYSYMTAB, LC_DYLD_INFO, the linkedit_data commands) is
shifted. Undefined nlist entries get the clone's ordinal in n_desc too (for
``nm -m`` and the like; dyld itself reads the bind streams).

Constants are macholib's (macholib.mach_o).
"""

import struct
from dataclasses import dataclass
from typing import List, Tuple

from gilclone.cloner import codesign
from gilclone.cloner.macho_binds import (
    is_python_symbol,
    rewrite_bind_stream,
    rewrite_chained_imports,
    rewrite_lazy_stream,
)
from gilclone.platforms import macho
from macholib.mach_o import (
    DYNAMIC_LOOKUP_ORDINAL,
    LC_CODE_SIGNATURE,
    LC_DYLD_CHAINED_FIXUPS,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_DYSYMTAB,
    LC_SYMTAB,
    MH_TWOLEVEL,
    N_EXT,
    N_STAB,
    N_TYPE,
    N_UNDF,
)

from gilclone.errors import RewriteError


@dataclass(frozen=True)
class _LinkeditField:
    cmd_offset: int
    field: int


def _offset_fields(image: bytes, sl: macho.RawSlice) -> List[_LinkeditField]:
    """Every load-command field holding a file offset into __LINKEDIT."""
    out = []
    for c in sl.commands:
        if c.cmd == LC_SYMTAB:
            fields = (8, 16)
        elif c.cmd == LC_DYSYMTAB:
            fields = (32, 40, 48, 56, 64, 72)
        elif c.cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            fields = (8, 16, 24, 32, 40)
        elif c.cmd in macho.LINKEDIT_DATA_COMMANDS:
            fields = (8,)
        else:
            continue
        out.extend(_LinkeditField(c.offset, f) for f in fields)
    return out


def _u32(image, sl, at) -> int:
    return struct.unpack_from(sl.endian + "I", image, at)[0]


def _linkedit(image, sl):
    for c, name, fileoff, filesize, _s in macho.segments(image, sl):
        if name == "__LINKEDIT":
            return c, fileoff, filesize
    raise RewriteError(f"{sl.arch}: no __LINKEDIT segment")


def replace_blob(image: bytearray, sl: macho.RawSlice, off: int, old_size: int, new: bytes,
                  page_size: int) -> Tuple[bytearray, int]:
    """Put ``new`` where ``old_size`` bytes at ``off`` were; shift what follows in __LINKEDIT.

    Returns the new image and the size the blob now takes (grown by a multiple of 8).
    """
    if len(new) <= old_size:
        new = new + bytes(old_size - len(new))
        delta = 0
    else:
        grow = (len(new) - old_size + 7) // 8 * 8
        new = new + bytes(old_size + grow - len(new))
        delta = grow
    end = off + old_size
    image = image[:off] + bytearray(new) + image[end:]
    if delta:
        for f in _offset_fields(image, sl):
            at = f.cmd_offset + f.field
            value = _u32(image, sl, at)
            if value >= end:
                struct.pack_into(sl.endian + "I", image, at, value + delta)
        c, fileoff, filesize = _linkedit(image, sl)
        codesign.set_linkedit_size(image, sl, c, filesize + delta, page_size)
    return image, len(new)


def strip_signature(image: bytearray, sl: macho.RawSlice, page_size: int) -> bytearray:
    cmds = sl.find(LC_CODE_SIGNATURE)
    if not cmds:
        return image
    at = cmds[0].offset
    dataoff, datasize = struct.unpack_from(sl.endian + "II", image, at + 8)
    if not dataoff and not datasize:
        return image  # a command with no signature yet (left by an earlier edit)
    if len(image) - (dataoff + datasize) >= 16:
        raise RewriteError(f"{sl.arch}: the code signature is not at the end of the image")
    c, fileoff, _filesize = _linkedit(image, sl)
    image = image[:dataoff]
    struct.pack_into(sl.endian + "II", image, at + 8, 0, 0)
    codesign.set_linkedit_size(image, sl, c, dataoff - fileoff, page_size)
    return image


def rebind(image: bytearray, sl: macho.RawSlice, ordinal: int, page_size: int) -> Tuple[bytearray, int]:
    """Point the slice's Py* flat binds (all its binds, if it is a flat image) at dylib
    ``ordinal`` and make it two-level; returns the new image and how many binds changed."""
    flat_image = not sl.flags & MH_TWOLEVEL
    rebound = 0
    for c in sl.find(LC_DYLD_CHAINED_FIXUPS):
        off, size = struct.unpack_from(sl.endian + "II", image, c.offset + 8)
        new, n = rewrite_chained_imports(bytes(image[off : off + size]), ordinal, flat_image)
        image[off : off + size] = new
        rebound += n
    for c in sl.find(LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
        # Lazy first: it is patched in place, so the bind rewrite's shifts stay valid.
        lazy_off, lazy_size = struct.unpack_from(sl.endian + "II", image, c.offset + 32)
        new, n = rewrite_lazy_stream(bytes(image[lazy_off : lazy_off + lazy_size]), ordinal, flat_image)
        image[lazy_off : lazy_off + lazy_size] = new
        rebound += n
        bind_off, bind_size = struct.unpack_from(sl.endian + "II", image, c.offset + 16)
        new, n = rewrite_bind_stream(bytes(image[bind_off : bind_off + bind_size]), ordinal, flat_image)
        if n:
            image, new_size = replace_blob(image, sl, bind_off, bind_size, new, page_size)
            struct.pack_into(sl.endian + "I", image, c.offset + 20, new_size)
            rebound += n
    _rebind_nlist(image, sl, ordinal, flat_image)
    if flat_image:
        struct.pack_into(sl.endian + "I", image, 24, sl.flags | MH_TWOLEVEL)
    return image, rebound


def _rebind_nlist(image: bytearray, sl: macho.RawSlice, ordinal: int, flat_image: bool) -> None:
    cmds = sl.find(LC_SYMTAB)
    if not cmds or ordinal > 0xFD:
        return
    symoff, nsyms, stroff, strsize = struct.unpack_from(sl.endian + "IIII", image, cmds[0].offset + 8)
    entry = 16 if sl.is64 else 12
    for i in range(nsyms):
        at = symoff + i * entry
        n_strx, n_type, _sect, n_desc = struct.unpack_from(sl.endian + "IBBH", image, at)
        if n_type & N_STAB or (n_type & N_TYPE) != N_UNDF or not n_type & N_EXT:
            continue
        lib = (n_desc >> 8) & 0xFF
        if lib != DYNAMIC_LOOKUP_ORDINAL and not flat_image:
            continue
        name = bytes(image[stroff + n_strx : image.find(b"\0", stroff + n_strx)])
        if is_python_symbol(name):
            struct.pack_into(sl.endian + "H", image, at + 6, (n_desc & 0x00FF) | (ordinal << 8))
