"""Write Mach-O edits to a copy: collect them per file, apply them to every slice, re-read, check.

Two jobs, both for the clones of libpython on macOS:

* ``clone_libpython``: a copy with a new LC_ID_DYLIB and a fresh random
  LC_UUID per slice (dyld treats images with equal UUIDs as one image).
* ``rebind_extension``: a copy of an extension module (linked with
  ``-undefined dynamic_lookup``) that loads the clone's libpython by an
  added LC_LOAD_DYLIB, and whose ``_Py*``/``__Py*`` binds that were flat
  lookups (ordinal BIND_SPECIAL_DYLIB_FLAT_LOOKUP, or any bind of an image
  without MH_TWOLEVEL) name that new dylib's ordinal instead. Other flat
  binds stay flat lookups (in a flat image they are made explicit -2 binds
  when MH_TWOLEVEL is switched on, so their meaning does not change).

How binds are rewritten:

* classic dyld info: the bind stream is re-emitted (SET_DYLIB opcodes are
  re-derived before each DO_BIND), so it may change length; __LINKEDIT
  contents after it move and every offset that points past it (LC_SYMTAB,
  LC_DYSYMTAB, LC_DYLD_INFO, linkedit_data commands) is shifted. The lazy
  bind stream is patched byte for byte instead, because __stub_helper code
  holds offsets into it: each SET_DYLIB_SPECIAL_IMM(-2) becomes
  SET_DYLIB_ORDINAL_IMM(n), which needs n <= 15 (else RewriteError). The
  weak bind stream binds by name across all images and carries no
  ordinals; it is left alone.
* chained fixups (LC_DYLD_CHAINED_FIXUPS): the lib_ordinal of each import
  in the imports table is rewritten in place.
* undefined nlist entries get the new ordinal in n_desc too (for nm -m and
  the like; dyld itself reads the streams above).

@rpath / @loader_path: every existing load command is kept byte for byte, so
an @loader_path reference in a copy resolves against the *copy's* directory.
The cloner therefore places each copy at the same relative position to the
libraries it loads (a mirrored directory tree), or passes
``loader_path_base`` so that ``@loader_path/`` prefixes in LC_LOAD_* and
LC_RPATH are replaced by that absolute directory (the original's).
The new libpython reference is whatever ``new_libpython_install_name`` says:
an absolute path, or ``@loader_path/...`` relative to where the copy goes.
An extension that links libpython by name instead (no dynamic lookup) has
that load command renamed (``rename_dylibs``); its Py binds, flat or not,
then go to that command's ordinal. @rpath references are left as they are:
they resolve through LC_RPATH entries, which ``loader_path_base`` makes
absolute, or through the loading executable's, which do not move.

Every touched slice loses its old code signature and gets a fresh ad-hoc one
(cloner.codesign). The result is written to a temporary name, re-read with the
reader and checked against what was intended; any mismatch is a RewriteError
and nothing is left at ``dst``.
"""

import os
import struct
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from gilclone.cloner import codesign
from gilclone.platforms import macho

from gilclone.errors import BinaryFormatError, RewriteError

BIND_OPCODE_MASK = 0xF0
BIND_IMMEDIATE_MASK = 0x0F
BIND_OPCODE_DONE = 0x00
BIND_OPCODE_SET_DYLIB_ORDINAL_IMM = 0x10
BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB = 0x20
BIND_OPCODE_SET_DYLIB_SPECIAL_IMM = 0x30
BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM = 0x40
BIND_OPCODE_SET_TYPE_IMM = 0x50
BIND_OPCODE_SET_ADDEND_SLEB = 0x60
BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB = 0x70
BIND_OPCODE_ADD_ADDR_ULEB = 0x80
BIND_OPCODE_DO_BIND = 0x90
BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB = 0xA0
BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED = 0xB0
BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB = 0xC0
BIND_OPCODE_THREADED = 0xD0
_DO_BIND = (0x90, 0xA0, 0xB0, 0xC0)
_SET_DYLIB = (0x10, 0x20, 0x30)
BIND_SPECIAL_DYLIB_FLAT_LOOKUP = -2
DYNAMIC_LOOKUP_ORDINAL = 0xFE  # nlist n_desc library ordinal for flat lookups

PAGE_SIZES = {"arm64": 0x4000, "arm64e": 0x4000, "arm64_32": 0x4000}


class HeaderPaddingError(RewriteError):
    """New load commands do not fit between the existing ones and the first section."""


def is_python_symbol(name: bytes) -> bool:
    """``Py*`` and ``_Py*`` C names, i.e. ``_Py*`` and ``__Py*`` in Mach-O."""
    return name.startswith(b"_Py") or name.startswith(b"__Py")


# ---------------------------------------------------------------------------
# Bind opcode streams


@dataclass
class BindToken:
    op: int
    imm: int
    raw: bytes
    value: Optional[int] = None  # ordinal for SET_DYLIB_*
    symbol: Optional[bytes] = None


def _skip_leb(buf: bytes, i: int) -> int:
    while True:
        if i >= len(buf):
            raise RewriteError("bind stream: LEB128 runs past the end")
        b = buf[i]
        i += 1
        if not b & 0x80:
            return i


def tokenize_binds(stream: bytes) -> List[BindToken]:
    """Split a bind / lazy bind / weak bind opcode stream into its opcodes."""
    out = []
    i = 0
    while i < len(stream):
        start = i
        byte = stream[i]
        op, imm = byte & BIND_OPCODE_MASK, byte & BIND_IMMEDIATE_MASK
        i += 1
        value = symbol = None
        if op == BIND_OPCODE_SET_DYLIB_ORDINAL_IMM:
            value = imm
        elif op == BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB:
            try:
                value, i = macho.read_uleb(stream, i)
            except macho.MalformedMachO as exc:
                raise RewriteError(f"bind stream: {exc}") from None
        elif op == BIND_OPCODE_SET_DYLIB_SPECIAL_IMM:
            value = imm - 16 if imm else 0
        elif op == BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM:
            zero = stream.find(b"\0", i)
            if zero < 0:
                raise RewriteError("bind stream: symbol name without NUL")
            symbol = bytes(stream[i:zero])
            i = zero + 1
        elif op in (BIND_OPCODE_SET_ADDEND_SLEB, BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB,
                    BIND_OPCODE_ADD_ADDR_ULEB, BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB):
            i = _skip_leb(stream, i)
        elif op == BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB:
            i = _skip_leb(stream, _skip_leb(stream, i))
        elif op == BIND_OPCODE_THREADED:
            raise RewriteError("bind stream uses threaded (arm64e) binds; not supported")
        elif op not in (BIND_OPCODE_DONE, BIND_OPCODE_SET_TYPE_IMM, BIND_OPCODE_DO_BIND,
                        BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED):
            raise RewriteError(f"bind stream: unknown opcode 0x{byte:02x} at {start}")
        out.append(BindToken(op, imm, bytes(stream[start:i]), value, symbol))
    return out


def encode_ordinal(ordinal: int) -> bytes:
    if ordinal < 0:
        return bytes([BIND_OPCODE_SET_DYLIB_SPECIAL_IMM | (ordinal & 0x0F)])
    if ordinal <= 15:
        return bytes([BIND_OPCODE_SET_DYLIB_ORDINAL_IMM | ordinal])
    return bytes([BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB]) + macho.write_uleb(ordinal)


def bind_records(stream: bytes, lazy: bool = False) -> List[Tuple[bytes, int]]:
    """(symbol, ordinal) of every bind the stream performs (one per DO_BIND opcode)."""
    out = []
    ordinal, symbol = 0, b""
    for t in tokenize_binds(stream):
        if t.op in _SET_DYLIB:
            ordinal = t.value
        elif t.symbol is not None:
            symbol = t.symbol
        elif t.op in _DO_BIND:
            out.append((symbol, ordinal))
        elif t.op == BIND_OPCODE_DONE and lazy:
            ordinal, symbol = 0, b""
    return out


def _retarget(ordinal: int, symbol: bytes, new_ordinal: int, flat_image: bool) -> int:
    if is_python_symbol(symbol) and (flat_image or ordinal == BIND_SPECIAL_DYLIB_FLAT_LOOKUP):
        return new_ordinal
    if flat_image and ordinal >= 0:
        return BIND_SPECIAL_DYLIB_FLAT_LOOKUP  # what a flat image meant for every bind
    return ordinal


def rewrite_bind_stream(stream: bytes, new_ordinal: int, flat_image: bool) -> Tuple[bytes, int]:
    """Re-emit a (non-lazy) bind stream with Py flat binds on ``new_ordinal``; (stream, changed)."""
    tokens = tokenize_binds(stream)
    out = bytearray()
    want = emitted = 0
    symbol = b""
    changed = 0
    for t in tokens:
        if t.op in _SET_DYLIB:
            want = t.value
            continue
        if t.symbol is not None:
            symbol = t.symbol
        if t.op in _DO_BIND:
            target = _retarget(want, symbol, new_ordinal, flat_image)
            changed += target != want
            if target != emitted:
                out += encode_ordinal(target)
                emitted = target
        out += t.raw
    if not changed:
        return bytes(stream), 0
    return bytes(out), changed


def rewrite_lazy_stream(stream: bytes, new_ordinal: int, flat_image: bool) -> Tuple[bytes, int]:
    """Patch a lazy bind stream in place (same length: __stub_helper holds offsets into it)."""
    out = bytearray(stream)
    changed = 0
    pos = 0
    entry_ord_tok = None  # (position, token) of the entry's SET_DYLIB opcode
    want, symbol = 0, b""
    for t in tokenize_binds(stream):
        if t.op in _SET_DYLIB:
            want = t.value
            entry_ord_tok = (pos, t)
        elif t.symbol is not None:
            symbol = t.symbol
        elif t.op in _DO_BIND:
            target = _retarget(want, symbol, new_ordinal, flat_image)
            if target != want:
                if entry_ord_tok is None:
                    raise RewriteError(
                        f"lazy bind of {symbol.decode(errors='replace')} sets no ordinal to patch"
                    )
                at, tok = entry_ord_tok
                new = encode_ordinal(target)
                if len(new) != len(tok.raw):
                    raise RewriteError(
                        f"lazy bind of {symbol.decode(errors='replace')}: ordinal {target} does not fit "
                        f"in the {len(tok.raw)}-byte opcode there (lazy binds are patched in place)"
                    )
                out[at : at + len(new)] = new
                want = target
                changed += 1
        elif t.op == BIND_OPCODE_DONE:
            want, symbol, entry_ord_tok = 0, b"", None
        pos += len(t.raw)
    return bytes(out), changed


# ---------------------------------------------------------------------------
# Chained fixups


def chained_imports(blob: bytes) -> Tuple[int, List[Tuple[int, int, bytes]]]:
    """(imports_format, [(entry offset in blob, lib_ordinal, name)]) of a chained-fixups blob."""
    if len(blob) < 28:
        raise RewriteError("LC_DYLD_CHAINED_FIXUPS data too short")
    (_version, _starts, imports_off, symbols_off, count, fmt, _symfmt) = struct.unpack_from(
        "<7I", blob, 0)
    sizes = {1: 4, 2: 8, 3: 16}
    if fmt not in sizes:
        raise RewriteError(f"chained fixups: unknown imports format {fmt}")
    if imports_off + count * sizes[fmt] > len(blob):
        raise RewriteError("chained fixups: imports table runs past the data")
    out = []
    for i in range(count):
        at = imports_off + i * sizes[fmt]
        if fmt == 3:
            word, name_off = struct.unpack_from("<II", blob, at)
            ordinal = word & 0xFFFF
            ordinal = ordinal - 0x10000 if ordinal >= 0xFFF0 else ordinal
        else:
            (word,) = struct.unpack_from("<I", blob, at)
            ordinal = word & 0xFF
            ordinal = ordinal - 0x100 if ordinal >= 0xF0 else ordinal
            name_off = word >> 9
        start = symbols_off + name_off
        name = bytes(blob[start : blob.find(b"\0", start)]) if start < len(blob) else b""
        out.append((at, ordinal, name))
    return fmt, out


def rewrite_chained_imports(blob: bytes, new_ordinal: int, flat_image: bool) -> Tuple[bytes, int]:
    fmt, imports = chained_imports(blob)
    out = bytearray(blob)
    changed = 0
    for at, ordinal, name in imports:
        target = _retarget(ordinal, name, new_ordinal, flat_image)
        if target == ordinal:
            continue
        if fmt == 3:
            (word,) = struct.unpack_from("<I", out, at)
            struct.pack_into("<I", out, at, (word & ~0xFFFF) | (target & 0xFFFF))
        else:
            if target > 0xEF:
                raise RewriteError(f"chained fixups: ordinal {target} does not fit in 8 bits")
            (word,) = struct.unpack_from("<I", out, at)
            struct.pack_into("<I", out, at, (word & ~0xFF) | (target & 0xFF))
        changed += 1
    return bytes(out), changed


# ---------------------------------------------------------------------------
# One slice


@dataclass
class SliceEdits:
    new_id: Optional[str] = None
    fresh_uuid: bool = True
    add_dylib: Optional[str] = None
    rebind_python: bool = False
    loader_path_base: Optional[str] = None
    # LC_LOAD_* names to replace (an extension that links libpython by name: its
    # load command is pointed at the clone, and Py binds go to that ordinal).
    rename_dylibs: Dict[str, str] = field(default_factory=dict)
    identifier: str = ""
    # Filled in while applying: what the checks compare against.
    uuid: Optional[str] = None
    new_ordinal: Optional[int] = None
    rebound: int = 0


@dataclass
class _LinkeditField:
    cmd_offset: int
    field: int


def _offset_fields(image: bytes, sl: macho.RawSlice) -> List[_LinkeditField]:
    """Every load-command field holding a file offset into __LINKEDIT."""
    out = []
    for c in sl.commands:
        if c.cmd == macho.LC_SYMTAB:
            fields = (8, 16)
        elif c.cmd == macho.LC_DYSYMTAB:
            fields = (32, 40, 48, 56, 64, 72)
        elif c.cmd in (macho.LC_DYLD_INFO, macho.LC_DYLD_INFO_ONLY):
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


def _replace_blob(image: bytearray, sl: macho.RawSlice, off: int, old_size: int, new: bytes,
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


def _strip_signature(image: bytearray, sl: macho.RawSlice, page_size: int) -> bytearray:
    cmds = sl.find(macho.LC_CODE_SIGNATURE)
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


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _dylib_command(cmd: int, name: str, endian: str, timestamp=2, current=0, compat=0) -> bytes:
    raw = name.encode() + b"\0"
    size = _align(24 + len(raw), 8)
    return struct.pack(endian + "IIIIII", cmd, size, 24, timestamp, current, compat) + raw + bytes(
        size - 24 - len(raw))


def resolve_loader_path(name: str, base: str) -> Optional[str]:
    """``name`` with a leading ``@loader_path`` replaced by the directory ``base``; None if it has none."""
    if name == "@loader_path":
        return base
    if name.startswith("@loader_path/"):
        return os.path.join(base, name[len("@loader_path/"):])
    return None


def _rpath_command(path: str, endian: str) -> bytes:
    raw = path.encode() + b"\0"
    size = _align(12 + len(raw), 8)
    return struct.pack(endian + "III", macho.LC_RPATH, size, 12) + raw + bytes(size - 12 - len(raw))


def _edit_commands(image: bytearray, sl: macho.RawSlice, e: SliceEdits, path: str) -> bytearray:
    """Rebuild the load command area with the id, UUID, new dylib and signature command."""
    new_cmds = []
    last_dylib = -1
    for c in sl.commands:
        raw = bytes(image[c.offset : c.offset + c.cmdsize])
        if c.cmd == macho.LC_ID_DYLIB and e.new_id is not None:
            _n, ts, cur, compat = struct.unpack_from(sl.endian + "IIII", raw, 8)
            raw = _dylib_command(c.cmd, e.new_id, sl.endian, ts, cur, compat)
        elif c.cmd == macho.LC_UUID and e.fresh_uuid:
            fresh = _uuid.uuid4()
            e.uuid = str(fresh).upper()
            raw = raw[:8] + fresh.bytes
        elif c.cmd in macho.LOAD_DYLIB_COMMANDS + (macho.LC_RPATH,):
            old = macho.lc_str(image, sl, c)
            name = e.rename_dylibs.get(old) if c.cmd != macho.LC_RPATH else None
            if name is None and e.loader_path_base:
                name = resolve_loader_path(old, e.loader_path_base)
            if name is not None and name != old:
                if c.cmd == macho.LC_RPATH:
                    raw = _rpath_command(name, sl.endian)
                else:
                    ts, cur, compat = struct.unpack_from(sl.endian + "III", raw, 12)
                    raw = _dylib_command(c.cmd, name, sl.endian, ts, cur, compat)
        new_cmds.append(raw)
        if c.cmd in macho.LOAD_DYLIB_COMMANDS:
            last_dylib = len(new_cmds) - 1
    if e.add_dylib is not None:
        new_cmds.insert(last_dylib + 1, _dylib_command(macho.LC_LOAD_DYLIB, e.add_dylib, sl.endian))
    if e.fresh_uuid and not sl.find(macho.LC_UUID):
        fresh = _uuid.uuid4()
        e.uuid = str(fresh).upper()
        new_cmds.append(struct.pack(sl.endian + "II", macho.LC_UUID, 24) + fresh.bytes)
    if not sl.find(macho.LC_CODE_SIGNATURE):
        new_cmds.append(struct.pack(sl.endian + "IIII", macho.LC_CODE_SIGNATURE, 16, 0, 0))
    blob = b"".join(new_cmds)
    room = sl.sizeofcmds + macho.header_padding(image, sl)
    if len(blob) > room:
        raise HeaderPaddingError(
            f"{path} [{sl.arch}]: the edited load commands need {len(blob)} bytes but only {room} "
            f"fit before the first section ({room - sl.sizeofcmds} bytes of header padding); "
            "rebuild it linked with -Wl,-headerpad_max_install_names, or use a shorter install name"
        )
    start = sl.header_size
    image[start : start + room] = blob + bytes(room - len(blob))
    struct.pack_into(sl.endian + "II", image, 16, len(new_cmds), len(blob))
    return image


def _rebind(image: bytearray, sl: macho.RawSlice, e: SliceEdits, page_size: int) -> bytearray:
    flat_image = not sl.flags & macho.MH_TWOLEVEL
    ordinal = e.new_ordinal
    for c in sl.find(macho.LC_DYLD_CHAINED_FIXUPS):
        off, size = struct.unpack_from(sl.endian + "II", image, c.offset + 8)
        new, n = rewrite_chained_imports(bytes(image[off : off + size]), ordinal, flat_image)
        image[off : off + size] = new
        e.rebound += n
    for c in sl.find(macho.LC_DYLD_INFO, macho.LC_DYLD_INFO_ONLY):
        # Lazy first: it is patched in place, so the bind rewrite's shifts stay valid.
        lazy_off, lazy_size = struct.unpack_from(sl.endian + "II", image, c.offset + 32)
        new, n = rewrite_lazy_stream(bytes(image[lazy_off : lazy_off + lazy_size]), ordinal, flat_image)
        image[lazy_off : lazy_off + lazy_size] = new
        e.rebound += n
        bind_off, bind_size = struct.unpack_from(sl.endian + "II", image, c.offset + 16)
        new, n = rewrite_bind_stream(bytes(image[bind_off : bind_off + bind_size]), ordinal, flat_image)
        if n:
            image, new_size = _replace_blob(image, sl, bind_off, bind_size, new, page_size)
            struct.pack_into(sl.endian + "I", image, c.offset + 20, new_size)
            e.rebound += n
    _rebind_nlist(image, sl, ordinal, flat_image)
    if flat_image:
        struct.pack_into(sl.endian + "I", image, 24, sl.flags | macho.MH_TWOLEVEL)
    return image


def _rebind_nlist(image: bytearray, sl: macho.RawSlice, ordinal: int, flat_image: bool) -> None:
    cmds = sl.find(macho.LC_SYMTAB)
    if not cmds or ordinal > 0xFD:
        return
    symoff, nsyms, stroff, strsize = struct.unpack_from(sl.endian + "IIII", image, cmds[0].offset + 8)
    entry = 16 if sl.is64 else 12
    for i in range(nsyms):
        at = symoff + i * entry
        n_strx, n_type, _sect, n_desc = struct.unpack_from(sl.endian + "IBBH", image, at)
        if n_type & macho.N_STAB or (n_type & macho.N_TYPE) != macho.N_UNDF or not n_type & macho.N_EXT:
            continue
        lib = (n_desc >> 8) & 0xFF
        if lib != DYNAMIC_LOOKUP_ORDINAL and not flat_image:
            continue
        name = bytes(image[stroff + n_strx : image.find(b"\0", stroff + n_strx)])
        if is_python_symbol(name):
            struct.pack_into(sl.endian + "H", image, at + 6, (n_desc & 0x00FF) | (ordinal << 8))


def edit_slice(image: bytearray, e: SliceEdits, path: str) -> bytearray:
    """Apply ``e`` to one thin image and sign it; returns the new image."""
    try:
        _fat, (sl,) = macho.scan(image)
    except macho.MalformedMachO as exc:
        raise BinaryFormatError(path, str(exc)) from None
    page_size = PAGE_SIZES.get(sl.arch, 0x1000)
    image = _strip_signature(bytearray(image), sl, page_size)
    loads = sl.find(*macho.LOAD_DYLIB_COMMANDS)
    if e.add_dylib is not None:
        e.new_ordinal = len(loads) + 1
    elif e.rename_dylibs:
        renamed = [i for i, c in enumerate(loads) if macho.lc_str(image, sl, c) in e.rename_dylibs]
        e.new_ordinal = renamed[0] + 1 if renamed else None
    if e.rebind_python and e.new_ordinal is None:
        raise RewriteError(f"{path} [{sl.arch}]: no dylib to re-bind the Py symbols to "
                           "(neither added nor renamed)")
    if e.rebind_python:
        image = _rebind(image, sl, e, page_size)
        _fat, (sl,) = macho.scan(image)
    image = _edit_commands(image, sl, e, path)
    return codesign.sign_slice(image, e.identifier, page_size)


# ---------------------------------------------------------------------------
# Whole files


def _assemble_fat(data: bytes, slices: List[macho.RawSlice], images: List[bytes]) -> bytes:
    (magic,) = struct.unpack_from(">I", data, 0)
    is64 = magic == macho.FAT_MAGIC_64
    entry = 32 if is64 else 20
    header = bytearray(data[: 8 + len(slices) * entry])
    out_pos = len(header)
    body = []
    for i, img in enumerate(images):
        at = 8 + i * entry
        align_field = at + (24 if is64 else 16)
        (align,) = struct.unpack_from(">I", header, align_field)
        offset = _align(out_pos, 1 << min(align, 20))
        body.append(bytes(offset - out_pos) + img)
        if is64:
            struct.pack_into(">QQ", header, at + 8, offset, len(img))
        else:
            if offset + len(img) >= 1 << 32:
                raise RewriteError("universal file would exceed 4 GiB")
            struct.pack_into(">II", header, at + 8, offset, len(img))
        out_pos = offset + len(img)
    return bytes(header) + b"".join(body)


def _apply(src: str, dst: str, make_edits: Callable[[macho.RawSlice], SliceEdits]):
    src, dst = os.fspath(src), os.fspath(dst)
    data, fat, slices = macho.scan_path(src)
    edits = []
    images = []
    for sl in slices:
        e = make_edits(sl)
        e.identifier = e.identifier or os.path.basename(dst)
        edits.append(e)
        images.append(bytes(edit_slice(bytearray(data[sl.offset : sl.offset + sl.size]), e, src)))
    out = _assemble_fat(data, slices, images) if fat else images[0]
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(out)
        os.chmod(tmp, 0o755)
        _check(tmp, src, edits)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return edits


def _check(path: str, src: str, edits: List[SliceEdits]) -> None:
    """Re-read the result and compare it with what the edits intended."""
    problems = []
    try:
        info = macho.read(path)
        before = macho.read(src)
        data, _fat, slices = macho.scan_path(path)
        codesign.verify_file(path)
    except (BinaryFormatError, RewriteError) as exc:
        raise RewriteError(f"{src}: rewritten copy does not read back: {exc}") from None
    if info.facts.architectures != before.facts.architectures:
        problems.append("architectures changed")
    for sl, s, e in zip(slices, info.facts.slices, edits):
        if e.fresh_uuid and s.uuid != e.uuid:
            problems.append(f"{s.arch}: UUID is {s.uuid}, wanted {e.uuid}")
        names = {c.cmd: macho.lc_str(data, sl, c) for c in sl.find(macho.LC_ID_DYLIB)}
        if e.new_id is not None and names.get(macho.LC_ID_DYLIB) != e.new_id:
            problems.append(f"{s.arch}: install name is {names.get(macho.LC_ID_DYLIB)}")
        loads = [macho.lc_str(data, sl, c) for c in sl.find(*macho.LOAD_DYLIB_COMMANDS)]
        if e.add_dylib is not None:
            if len(loads) < e.new_ordinal or loads[e.new_ordinal - 1] != e.add_dylib:
                problems.append(f"{s.arch}: {e.add_dylib} is not load ordinal {e.new_ordinal}")
        left = [n for n in loads if n in e.rename_dylibs]
        if left:
            problems.append(f"{s.arch}: still loads {left[0]}")
        if e.loader_path_base:
            rpaths = [macho.lc_str(data, sl, c) for c in sl.find(macho.LC_RPATH)]
            stale = [n for n in loads + rpaths if n.startswith("@loader_path")]
            if stale:
                problems.append(f"{s.arch}: {stale[0]} was not made absolute")
        if e.rebind_python:
            if not sl.flags & macho.MH_TWOLEVEL:
                problems.append(f"{s.arch}: MH_TWOLEVEL not set")
            left = [n for n, o in python_binds(data, sl) if o != e.new_ordinal]
            if left:
                problems.append(f"{s.arch}: Py binds not on the clone's ordinal: {left[:3]}")
    if problems:
        raise RewriteError(f"{src}: rewritten copy does not check out: " + "; ".join(problems))


def python_binds(data: bytes, sl: macho.RawSlice) -> List[Tuple[str, int]]:
    """(symbol, ordinal) of every bind of a Py symbol in a slice (all three kinds of stream)."""
    out = []
    base = sl.offset
    for c in sl.find(macho.LC_DYLD_INFO, macho.LC_DYLD_INFO_ONLY):
        v = struct.unpack_from(sl.endian + "10I", data, base + c.offset + 8)
        for i, lazy in ((2, False), (6, True)):
            stream = bytes(data[base + v[i] : base + v[i] + v[i + 1]])
            out += [(n.decode(), o) for n, o in bind_records(stream, lazy) if is_python_symbol(n)]
    for c in sl.find(macho.LC_DYLD_CHAINED_FIXUPS):
        off, size = struct.unpack_from(sl.endian + "II", data, base + c.offset + 8)
        _fmt, imports = chained_imports(bytes(data[base + off : base + off + size]))
        out += [(n.decode(), o) for _a, o, n in imports if is_python_symbol(n)]
    return out


def clone_libpython(src, dst, new_install_name: str) -> List[SliceEdits]:
    """Copy libpython with LC_ID_DYLIB = ``new_install_name`` and a fresh UUID per slice."""
    return _apply(src, dst, lambda sl: SliceEdits(new_id=new_install_name))


def rebind_extension(src, dst, new_libpython_install_name: str, *,
                     loader_path_base: Optional[str] = None) -> List[SliceEdits]:
    """Copy an extension so its Py* flat binds go to ``new_libpython_install_name``."""
    return _apply(src, dst, lambda sl: SliceEdits(
        add_dylib=new_libpython_install_name, rebind_python=True, loader_path_base=loader_path_base,
    ))


@dataclass
class MachoEdits:
    """Edits for one file, collected and applied together (the writer's plan)."""

    new_id: Optional[str] = None
    add_dylib: Optional[str] = None
    rebind_python: bool = False
    loader_path_base: Optional[str] = None
    rename_dylibs: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def apply(src, dst, edits: MachoEdits) -> List[SliceEdits]:
    """Apply collected edits to every slice of ``src``, writing ``dst``."""
    return _apply(src, dst, lambda sl: SliceEdits(
        new_id=edits.new_id, add_dylib=edits.add_dylib, rebind_python=edits.rebind_python,
        loader_path_base=edits.loader_path_base, rename_dylibs=dict(edits.rename_dylibs),
    ))
