"""Mach-O bind information: read it, and point the Py* binds of a copy at the clone.

Binds name, per symbol, which loaded dylib (by ordinal) provides it; an
extension module linked with ``-undefined dynamic_lookup`` binds its ``Py*``
symbols by flat lookup (BIND_SPECIAL_DYLIB_FLAT_LOOKUP), which finds the
host's libpython first. Its copy must name the clone's ordinal instead.

* classic dyld info: the bind stream is re-emitted (SET_DYLIB opcodes are
  re-derived before each DO_BIND), so it may change length (the caller moves
  __LINKEDIT, cloner.macho_linkedit). The lazy bind stream is patched byte for
  byte instead, because __stub_helper code holds offsets into it: each
  SET_DYLIB_SPECIAL_IMM(-2) becomes SET_DYLIB_ORDINAL_IMM(n), which needs
  n <= 15 (else RewriteError). The weak bind stream binds by name across all
  images and carries no ordinals; it is left alone.
* chained fixups (LC_DYLD_CHAINED_FIXUPS): the lib_ordinal of each import in
  the imports table is rewritten in place.

In a flat image (no MH_TWOLEVEL) every bind is a flat lookup; its non-Python
binds become explicit -2 binds when MH_TWOLEVEL is switched on, so their
meaning does not change.

The opcode values are macholib's (macholib.mach_o).
"""

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from gilclone.platforms import macho
from macholib.mach_o import (
    BIND_IMMEDIATE_MASK,
    BIND_OPCODE_ADD_ADDR_ULEB,
    BIND_OPCODE_DO_BIND,
    BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED,
    BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB,
    BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB,
    BIND_OPCODE_DONE,
    BIND_OPCODE_MASK,
    BIND_OPCODE_SET_ADDEND_SLEB,
    BIND_OPCODE_SET_DYLIB_ORDINAL_IMM,
    BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB,
    BIND_OPCODE_SET_DYLIB_SPECIAL_IMM,
    BIND_OPCODE_SET_SEGMENT_AND_OFFSET_ULEB,
    BIND_OPCODE_SET_SYMBOL_TRAILING_FLAGS_IMM,
    BIND_OPCODE_SET_TYPE_IMM,
    BIND_SPECIAL_DYLIB_FLAT_LOOKUP,
    LC_DYLD_CHAINED_FIXUPS,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
)

from gilclone.errors import RewriteError

# arm64e threaded binds (ld64 >= 10.14); macholib does not define the opcode.
BIND_OPCODE_THREADED = 0xD0
_DO_BIND = (
    BIND_OPCODE_DO_BIND,
    BIND_OPCODE_DO_BIND_ADD_ADDR_ULEB,
    BIND_OPCODE_DO_BIND_ADD_ADDR_IMM_SCALED,
    BIND_OPCODE_DO_BIND_ULEB_TIMES_SKIPPING_ULEB,
)
_SET_DYLIB = (
    BIND_OPCODE_SET_DYLIB_ORDINAL_IMM,
    BIND_OPCODE_SET_DYLIB_ORDINAL_ULEB,
    BIND_OPCODE_SET_DYLIB_SPECIAL_IMM,
)


def is_python_symbol(name: bytes) -> bool:
    """``Py*`` and ``_Py*`` C names, i.e. ``_Py*`` and ``__Py*`` in Mach-O."""
    return name.startswith(b"_Py") or name.startswith(b"__Py")


@dataclass(frozen=True)
class BindToken:
    """One opcode of a bind stream, with its operands as read."""

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
    """The ordinal a bind of ``symbol`` on ``ordinal`` gets in the copy."""
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
# Every Py bind of a slice


def python_binds(data: bytes, sl: macho.RawSlice) -> List[Tuple[str, int]]:
    """(symbol, ordinal) of every bind of a Py symbol in a slice (all three kinds of stream)."""
    out = []
    base = sl.offset
    for c in sl.find(LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
        v = struct.unpack_from(sl.endian + "10I", data, base + c.offset + 8)
        for i, lazy in ((2, False), (6, True)):
            stream = bytes(data[base + v[i] : base + v[i] + v[i + 1]])
            out += [(n.decode(), o) for n, o in bind_records(stream, lazy) if is_python_symbol(n)]
    for c in sl.find(LC_DYLD_CHAINED_FIXUPS):
        off, size = struct.unpack_from(sl.endian + "II", data, base + c.offset + 8)
        _fmt, imports = chained_imports(bytes(data[base + off : base + off + size]))
        out += [(n.decode(), o) for _a, o, n in imports if is_python_symbol(n)]
    return out
