"""Read a Mach-O file (thin or universal) into a BinaryInfo.

One parser walks the raw headers and checks every size and offset it follows
against the image before using it, because a clone must never be made from a
cut or garbled file; macholib supplies only the constants. Every way a file
can be broken becomes one BinaryFormatError naming the file. Files are mapped,
not read, so inspecting one touches its headers and tables, not all its bytes.

Conventions (what the BinaryInfo fields mean for Mach-O):

* ``machine`` is the slice's architecture as ``lipo -archs`` spells it
  ("x86_64", "arm64", "arm64e", "i386", ...), or "universal" for a fat file.
* ``name``, ``needed``, ``rpaths``, ``exports_count``, ``kind`` and
  ``python_version`` describe the *first* slice of a fat file (the slices of
  real universal2 wheels are built from one source and agree); the per-slice
  facts are in ``facts.slices``.
* ``needed`` lists LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB, LC_REEXPORT_DYLIB,
  LC_LOAD_UPWARD_DYLIB (and the obsolete LC_LAZY_LOAD_DYLIB) in load-command
  order, as ``otool -L`` prints them after the image's own id.
* ``exports_count`` counts the terminal nodes of the export trie (from
  LC_DYLD_INFO(_ONLY) or LC_DYLD_EXPORTS_TRIE, whichever the image has; dyld
  uses nothing else), which is what ``llvm-objdump --macho --exports-trie``
  lists. Only an image with neither command falls back to the external
  defined nlist symbols (``llvm-nm --extern-only --defined-only``).
* ``uuid`` is upper-case and hyphenated, as ``otool -l`` and ``dwarfdump
  --uuid`` print it.
* ``header_padding`` is the number of bytes between the end of the load
  commands and the lowest file offset of any section (or of a section-less
  segment such as __LINKEDIT) with data in the file: the room a new load
  command can take without moving anything.
"""

import os
import struct
import uuid as _uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from gilclone.platforms.classify import classify
from gilclone.platforms.fileaccess import mapped_file
from gilclone.platforms.model import FORMAT_MACHO, BinaryInfo, MachoFacts, MachoSlice
from macholib.mach_o import (
    FAT_MAGIC,
    FAT_MAGIC_64,
    LC_CODE_SEGMENT_SPLIT_INFO,
    LC_CODE_SIGNATURE,
    LC_DATA_IN_CODE,
    LC_DYLD_CHAINED_FIXUPS,
    LC_DYLD_EXPORTS_TRIE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_DYLIB_CODE_SIGN_DRS,
    LC_DYSYMTAB,
    LC_FUNCTION_STARTS,
    LC_ID_DYLIB,
    LC_LAZY_LOAD_DYLIB,
    LC_LINKER_OPTIMIZATION_HINT,
    LC_LOAD_DYLIB,
    LC_LOAD_UPWARD_DYLIB,
    LC_LOAD_WEAK_DYLIB,
    LC_REEXPORT_DYLIB,
    LC_RPATH,
    LC_SEGMENT,
    LC_SEGMENT_64,
    LC_SYMTAB,
    LC_UUID,
    MH_EXECUTE,
    MH_FILETYPE_SHORTNAMES,
    MH_MAGIC_64,
    MH_TWOLEVEL,
    N_EXT,
    N_STAB,
    N_TYPE,
    N_UNDF,
    S_GB_ZEROFILL,
    S_THREAD_LOCAL_ZEROFILL,
    S_ZEROFILL,
    SECTION_TYPE,
)

from gilclone.errors import BinaryFormatError, GilcloneError

# A fat file names at most a handful of architectures; Java class files share the magic.
MAX_FAT_ARCHS = 32

LOAD_DYLIB_COMMANDS = (
    LC_LOAD_DYLIB,
    LC_LOAD_WEAK_DYLIB,
    LC_REEXPORT_DYLIB,
    LC_LOAD_UPWARD_DYLIB,
    LC_LAZY_LOAD_DYLIB,
)
# Commands shaped as linkedit_data_command: cmd, cmdsize, dataoff, datasize.
LINKEDIT_DATA_COMMANDS = {
    LC_CODE_SIGNATURE: "LC_CODE_SIGNATURE",
    LC_CODE_SEGMENT_SPLIT_INFO: "LC_SEGMENT_SPLIT_INFO",
    LC_FUNCTION_STARTS: "LC_FUNCTION_STARTS",
    LC_DATA_IN_CODE: "LC_DATA_IN_CODE",
    LC_DYLIB_CODE_SIGN_DRS: "LC_DYLIB_CODE_SIGN_DRS",
    LC_LINKER_OPTIMIZATION_HINT: "LC_LINKER_OPTIMIZATION_HINT",
    LC_DYLD_EXPORTS_TRIE: "LC_DYLD_EXPORTS_TRIE",
    LC_DYLD_CHAINED_FIXUPS: "LC_DYLD_CHAINED_FIXUPS",
}
# Smallest valid size of each command this module or the cloner reads fields of.
_MIN_CMDSIZE = {
    LC_SEGMENT: 56, LC_SEGMENT_64: 72, LC_SYMTAB: 24, LC_DYSYMTAB: 80, LC_DYLD_INFO: 48,
    LC_DYLD_INFO_ONLY: 48, LC_UUID: 24, LC_RPATH: 12, LC_ID_DYLIB: 24,
    **{k: 24 for k in LOAD_DYLIB_COMMANDS},
    **{k: 16 for k in LINKEDIT_DATA_COMMANDS},
}
# macholib's short names stop at dsym; the newer kinds are spelt as cctools does.
FILETYPES = {**MH_FILETYPE_SHORTNAMES, 0xB: "kext_bundle", 0xC: "fileset"}

# macholib names CPU types only in a table, so the few arch_name needs are spelt here.
CPU_ARCH_ABI64 = 0x01000000
CPU_ARCH_ABI64_32 = 0x02000000
CPU_TYPE_X86 = 7
CPU_TYPE_ARM = 12
CPU_TYPE_PPC = 18
CPU_TYPE_X86_64 = CPU_TYPE_X86 | CPU_ARCH_ABI64
CPU_TYPE_ARM64 = CPU_TYPE_ARM | CPU_ARCH_ABI64
_ARM_SUBTYPES = {6: "armv6", 9: "armv7", 11: "armv7s", 12: "armv7k", 14: "armv6m", 15: "armv7m", 16: "armv7em"}

# Section types whose contents are not in the file.
_ZEROFILL_TYPES = (S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL)
# Export names longer than this are cut when they only feed classification, which looks
# at "Py_Initialize(Ex)" and the "PyInit_" prefix: a cut name classifies the same.
_CLASSIFY_NAME_BYTES = 64


def arch_name(cputype: int, cpusubtype: int) -> str:
    """The architecture as lipo/llvm-lipo name it."""
    sub = cpusubtype & 0x00FFFFFF
    if cputype == CPU_TYPE_X86_64:
        return "x86_64h" if sub == 8 else "x86_64"
    if cputype == CPU_TYPE_X86:
        return "i386"
    if cputype == CPU_TYPE_ARM64:
        return "arm64e" if sub == 2 else "arm64"
    if cputype == CPU_TYPE_ARM | CPU_ARCH_ABI64_32:
        return "arm64_32"
    if cputype == CPU_TYPE_ARM:
        return _ARM_SUBTYPES.get(sub, "arm")
    if cputype == CPU_TYPE_PPC:
        return "ppc"
    if cputype == CPU_TYPE_PPC | CPU_ARCH_ABI64:
        return "ppc64"
    return "cputype-0x%x" % cputype


# --------------------------------------------------------------------------
# Raw layout: what every other part (reader, writer, signer) builds on.


@dataclass
class RawCommand:
    index: int
    cmd: int
    cmdsize: int
    offset: int  # from the start of the slice


@dataclass
class RawSlice:
    """One Mach-O image inside a file, with its load commands located and bounds-checked."""

    offset: int  # of the image in the file (0 for a thin file)
    size: int
    endian: str  # struct prefix, "<" or ">"
    is64: bool
    cputype: int
    cpusubtype: int
    filetype: int
    ncmds: int
    sizeofcmds: int
    flags: int
    commands: List[RawCommand] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return arch_name(self.cputype, self.cpusubtype)

    @property
    def header_size(self) -> int:
        return 32 if self.is64 else 28

    @property
    def commands_end(self) -> int:
        return self.header_size + self.sizeofcmds

    def find(self, *cmds: int) -> List[RawCommand]:
        return [c for c in self.commands if c.cmd in cmds]


class MalformedMachO(GilcloneError):
    """A structural problem in Mach-O bytes, found where the file's name is not known.

    The readers turn it into a BinaryFormatError naming the file; the cloner, which scans
    images it builds in memory, catches it to name its own file.
    """


def scan(data: bytes) -> Tuple[bool, List[RawSlice]]:
    """Locate every slice of ``data`` and check that all it points to lies inside the file.

    Returns (fat, slices). Raises MalformedMachO with a one-line description.
    """
    if len(data) < 4:
        raise MalformedMachO(f"truncated: {len(data)} bytes, too short for a Mach-O header")
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic in (FAT_MAGIC, FAT_MAGIC_64):
        return True, _scan_fat(data, magic == FAT_MAGIC_64)
    return False, [_scan_slice(data, 0, len(data), "")]


def _scan_fat(data: bytes, is64: bool) -> List[RawSlice]:
    if len(data) < 8:
        raise MalformedMachO("truncated inside the universal (fat) header")
    (nfat,) = struct.unpack_from(">I", data, 4)
    if nfat == 0:
        raise MalformedMachO("universal (fat) header lists no architectures")
    if nfat > MAX_FAT_ARCHS:
        raise MalformedMachO(
            f"universal (fat) header claims {nfat} architectures; not a Mach-O file "
            "(a Java class file shares this magic number)"
        )
    entry = 32 if is64 else 20
    table_end = 8 + nfat * entry
    if table_end > len(data):
        raise MalformedMachO(
            f"truncated: the universal header's table of {nfat} architectures ends at "
            f"{table_end}, past the end of the file ({len(data)} bytes)"
        )
    slices = []
    for i in range(nfat):
        at = 8 + i * entry
        if is64:
            cputype, cpusubtype, offset, size, _align, _res = struct.unpack_from(">iiQQII", data, at)
        else:
            cputype, cpusubtype, offset, size, _align = struct.unpack_from(">iiIII", data, at)
        cputype &= 0xFFFFFFFF
        label = f"slice {i} ({arch_name(cputype, cpusubtype)}): "
        if offset < table_end:
            raise MalformedMachO(f"{label}offset {offset} overlaps the universal header")
        if offset + size > len(data):
            raise MalformedMachO(
                f"{label}the universal header places it at {offset}..{offset + size}, past the "
                f"end of the file ({len(data)} bytes): truncated or corrupt"
            )
        sl = _scan_slice(data, offset, size, label)
        if (sl.cputype, sl.cpusubtype & 0x00FFFFFF) != (cputype, cpusubtype & 0x00FFFFFF):
            raise MalformedMachO(
                f"{label}the image inside is {sl.arch}, but the universal header says "
                f"{arch_name(cputype, cpusubtype)}"
            )
        slices.append(sl)
    spans = sorted((s.offset, s.offset + s.size) for s in slices)
    for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise MalformedMachO(f"universal header: slices overlap at offset {b0}")
    return slices


def _scan_slice(data: bytes, base: int, size: int, label: str) -> RawSlice:
    if size < 28:
        raise MalformedMachO(f"{label}truncated: {size} bytes, too short for a Mach-O header")
    raw_magic = bytes(data[base : base + 4])
    if raw_magic in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf"):
        endian = ">"
    elif raw_magic in (b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"):
        endian = "<"
    else:
        raise MalformedMachO(f"{label}not a Mach-O image (magic {raw_magic.hex()})")
    (magic,) = struct.unpack_from(endian + "I", data, base)
    is64 = magic == MH_MAGIC_64
    hsize = 32 if is64 else 28
    if size < hsize:
        raise MalformedMachO(f"{label}truncated: {size} bytes, too short for a 64-bit Mach-O header")
    cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags = struct.unpack_from(
        endian + "IIIIII", data, base + 4
    )
    sl = RawSlice(base, size, endian, is64, cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags)
    if filetype == 0:
        raise MalformedMachO(f"{label}the Mach-O header is blank (file type 0)")
    if hsize + sizeofcmds > size:
        raise MalformedMachO(
            f"{label}truncated or corrupt: the load commands ({sizeofcmds} bytes) end at "
            f"{hsize + sizeofcmds}, past the end of the image ({size} bytes)"
        )
    if ncmds * 8 > sizeofcmds:
        raise MalformedMachO(f"{label}header claims {ncmds} load commands in only {sizeofcmds} bytes")
    pos = hsize
    end = hsize + sizeofcmds
    for i in range(ncmds):
        if pos + 8 > end:
            raise MalformedMachO(f"{label}load command {i} of {ncmds} starts past the load command area")
        cmd, cmdsize = struct.unpack_from(endian + "II", data, base + pos)
        if cmdsize < 8 or cmdsize % 4 or pos + cmdsize > end:
            raise MalformedMachO(
                f"{label}load command {i} (0x{cmd:x}) has an invalid size {cmdsize} "
                f"(load command area is {sizeofcmds} bytes)"
            )
        sl.commands.append(RawCommand(i, cmd, cmdsize, pos))
        pos += cmdsize
    if pos != end:
        raise MalformedMachO(
            f"{label}load commands fill {pos - hsize} bytes but the header says {sizeofcmds}"
        )
    for c in sl.commands:
        _check_command(data, sl, c, label)
    return sl


def _u32s(data: bytes, sl: RawSlice, at: int, count: int) -> Tuple[int, ...]:
    return struct.unpack_from(sl.endian + "I" * count, data, sl.offset + at)


def _check_range(sl: RawSlice, what: str, off: int, length: int, label: str) -> None:
    if length and off + length > sl.size:
        raise MalformedMachO(
            f"{label}{what} (file offset {off}, {length} bytes) extends past the end of the "
            f"image ({sl.size} bytes): the file is truncated or corrupt"
        )


def _check_command(data: bytes, sl: RawSlice, c: RawCommand, label: str) -> None:
    if c.cmdsize < _MIN_CMDSIZE.get(c.cmd, 8):
        raise MalformedMachO(f"{label}load command {c.index} (0x{c.cmd:x}) is too small ({c.cmdsize} bytes)")
    if c.cmd in (LC_SEGMENT, LC_SEGMENT_64):
        for name, fileoff, filesize, sections in _segment(data, sl, c):
            _check_range(sl, f"segment {name}", fileoff, filesize, label)
            for sname, soff, ssize, sflags in sections:
                if (sflags & SECTION_TYPE) in _ZEROFILL_TYPES:
                    continue
                _check_range(sl, f"section {name},{sname}", soff, ssize, label)
    elif c.cmd == LC_SYMTAB:
        symoff, nsyms, stroff, strsize = _u32s(data, sl, c.offset + 8, 4)
        _check_range(sl, "symbol table", symoff, nsyms * (16 if sl.is64 else 12), label)
        _check_range(sl, "string table", stroff, strsize, label)
    elif c.cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
        v = _u32s(data, sl, c.offset + 8, 10)
        for what, i in (("rebase info", 0), ("bind info", 2), ("weak bind info", 4),
                        ("lazy bind info", 6), ("export trie", 8)):
            _check_range(sl, what, v[i], v[i + 1], label)
    elif c.cmd in LINKEDIT_DATA_COMMANDS:
        dataoff, datasize = _u32s(data, sl, c.offset + 8, 2)
        _check_range(sl, LINKEDIT_DATA_COMMANDS[c.cmd] + " data", dataoff, datasize, label)
    elif c.cmd in LOAD_DYLIB_COMMANDS or c.cmd in (LC_ID_DYLIB, LC_RPATH):
        lc_str(data, sl, c)  # checks the name lies inside the command


def _segment(data: bytes, sl: RawSlice, c: RawCommand):
    """[(segname, fileoff, filesize, [(sectname, offset, size, flags)])] of one segment command."""
    at = sl.offset + c.offset
    if c.cmd == LC_SEGMENT_64:
        segname, _vmaddr, _vmsize, fileoff, filesize, _mp, _ip, nsects, _fl = struct.unpack_from(
            sl.endian + "16sQQQQiiII", data, at + 8
        )
        first, sect_size = 72, 80
    else:
        segname, _vmaddr, _vmsize, fileoff, filesize, _mp, _ip, nsects, _fl = struct.unpack_from(
            sl.endian + "16sIIIIiiII", data, at + 8
        )
        first, sect_size = 56, 68
    if first + nsects * sect_size != c.cmdsize:
        raise MalformedMachO(
            f"load command {c.index} (segment {_cname(segname)}) claims {nsects} sections but is "
            f"{c.cmdsize} bytes"
        )
    sections = []
    for j in range(nsects):
        s = at + first + j * sect_size
        sectname = data[s : s + 16]
        if c.cmd == LC_SEGMENT_64:
            _addr, ssize, soff, _al, _ro, _nr, sflags = struct.unpack_from(sl.endian + "QQIIIII", data, s + 32)
        else:
            _addr, ssize, soff, _al, _ro, _nr, sflags = struct.unpack_from(sl.endian + "IIIIIII", data, s + 32)
        sections.append((_cname(sectname), soff, ssize, sflags))
    return [(_cname(segname), fileoff, filesize, sections)]


def segments(data: bytes, sl: RawSlice):
    """Every segment of a slice: (command, segname, fileoff, filesize, sections)."""
    out = []
    for c in sl.find(LC_SEGMENT, LC_SEGMENT_64):
        for name, fileoff, filesize, sections in _segment(data, sl, c):
            out.append((c, name, fileoff, filesize, sections))
    return out


def _cname(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")


def lc_str(data: bytes, sl: RawSlice, c: RawCommand) -> str:
    """The string a dylib/rpath command carries (its lc_str is the first field after cmdsize)."""
    (name_off,) = _u32s(data, sl, c.offset + 8, 1)
    if name_off < 12 or name_off >= c.cmdsize:
        raise MalformedMachO(
            f"load command {c.index} (0x{c.cmd:x}): name offset {name_off} lies outside the command"
        )
    start = sl.offset + c.offset + name_off
    raw = bytes(data[start : sl.offset + c.offset + c.cmdsize])
    if b"\0" not in raw:
        raise MalformedMachO(f"load command {c.index} (0x{c.cmd:x}): name is not NUL-terminated")
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def header_padding(data: bytes, sl: RawSlice) -> int:
    """Free bytes between the end of the load commands and the first data in the file."""
    low = sl.size
    for _c, _name, fileoff, filesize, sections in segments(data, sl):
        if not sections:
            if filesize and fileoff:
                low = min(low, fileoff)
            continue
        for _sname, soff, ssize, sflags in sections:
            if ssize and soff and (sflags & SECTION_TYPE) not in _ZEROFILL_TYPES:
                low = min(low, soff)
    return low - sl.commands_end


# --------------------------------------------------------------------------
# Exports


def read_uleb(buf: bytes, pos: int, end: Optional[int] = None) -> Tuple[int, int]:
    end = len(buf) if end is None else end
    value = shift = 0
    while True:
        if pos >= end:
            raise MalformedMachO("ULEB128 runs past the end of its data")
        b = buf[pos]
        pos += 1
        if shift < 64:
            value |= (b & 0x7F) << shift
        elif b & 0x7F:
            raise MalformedMachO("ULEB128 value larger than 64 bits")
        shift += 7
        if not b & 0x80:
            return value, pos


def write_uleb(value: int) -> bytes:
    """ULEB128 encoding of ``value`` (the inverse of read_uleb)."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def parse_export_trie(buf: bytes, max_name: Optional[int] = None) -> List[str]:
    """Every exported name in a dyld export trie (depth-first, a node before its children).

    Each node is read once and no two nodes may share bytes (a linker never writes that), so
    the walk is linear in the trie's size. The names can still be longer in total than the
    trie (a chain of nested names "_a", "_ab", ... makes them quadratic), so a caller that
    only needs their starts passes ``max_name`` and gets each cut to that many bytes.
    """
    names: List[str] = []
    if not buf:
        return names
    seen = set()
    unclaimed = len(buf)  # bytes no node has used yet
    stack = [(0, b"")]
    while stack:
        node, prefix = stack.pop()
        if node in seen:
            raise MalformedMachO(f"export trie: node at offset {node} is reached twice (a loop)")
        seen.add(node)
        terminal, edges, end = _trie_node(buf, node)
        unclaimed -= end - node
        if unclaimed < 0:
            raise MalformedMachO(f"export trie: node at offset {node} overlaps another node")
        if terminal:
            names.append(prefix.decode("utf-8", "surrogateescape"))
        for start, stop, child in reversed(edges):
            if max_name is not None:
                stop = min(stop, start + max(0, max_name - len(prefix)))
            stack.append((child, prefix + bytes(buf[start:stop])))
    return names


def _trie_node(buf: bytes, node: int) -> Tuple[bool, List[Tuple[int, int, int]], int]:
    """(terminal?, [(label start, label end, child offset)], end) of the trie node at ``node``."""
    if node >= len(buf):
        raise MalformedMachO(f"export trie: child offset {node} is past its end ({len(buf)} bytes)")
    term_size, p = read_uleb(buf, node)
    if p + term_size > len(buf):
        raise MalformedMachO(f"export trie: terminal info at {node} runs past its end")
    p += term_size
    if p >= len(buf):
        raise MalformedMachO(f"export trie: node at {node} is cut off before its child count")
    count = buf[p]
    p += 1
    edges = []
    for _ in range(count):
        zero = buf.find(b"\0", p)
        if zero < 0:
            raise MalformedMachO(f"export trie: edge label at {p} is not NUL-terminated")
        child, after = read_uleb(buf, zero + 1)
        edges.append((p, zero, child))
        p = after
    return bool(term_size), edges, p


def _trie_bytes(data: bytes, sl: RawSlice) -> Optional[bytes]:
    for c in sl.commands:
        if c.cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            off, size = _u32s(data, sl, c.offset + 40, 2)
        elif c.cmd == LC_DYLD_EXPORTS_TRIE:
            off, size = _u32s(data, sl, c.offset + 8, 2)
        else:
            continue
        return bytes(data[sl.offset + off : sl.offset + off + size])
    return None


def _nlist_exports(data: bytes, sl: RawSlice, max_name: Optional[int]) -> List[str]:
    cmds = sl.find(LC_SYMTAB)
    if not cmds:
        return []
    symoff, nsyms, stroff, strsize = _u32s(data, sl, cmds[0].offset + 8, 4)
    entry = 16 if sl.is64 else 12
    names = []
    strtab = bytes(data[sl.offset + stroff : sl.offset + stroff + strsize])
    for i in range(nsyms):
        at = sl.offset + symoff + i * entry
        n_strx, n_type = struct.unpack_from(sl.endian + "IB", data, at)
        if n_type & N_STAB or not n_type & N_EXT or (n_type & N_TYPE) == N_UNDF:
            continue
        if n_strx >= len(strtab):
            raise MalformedMachO(f"symbol {i}: name offset {n_strx} is past the string table")
        end = strtab.find(b"\0", n_strx)
        end = len(strtab) if end < 0 else end
        if max_name is not None:
            end = min(end, n_strx + max_name)
        names.append(strtab[n_strx:end].decode("utf-8", "surrogateescape"))
    return names


def export_names(data: bytes, sl: RawSlice, max_name: Optional[int] = None) -> List[str]:
    """Exported symbol names of one slice (with Mach-O's leading underscore).

    ``max_name`` cuts each name to that many bytes (see parse_export_trie).
    """
    trie = _trie_bytes(data, sl)
    if trie is not None:
        return parse_export_trie(trie, max_name)
    return _nlist_exports(data, sl, max_name)


# --------------------------------------------------------------------------
# The reader


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """Damage found while parsing becomes a BinaryFormatError naming the file."""
    try:
        yield
    except MalformedMachO as exc:
        raise BinaryFormatError(path, str(exc)) from None


def read_exports(path) -> List[str]:
    """Exported names of the (first slice of the) Mach-O at ``path``."""
    path = os.fspath(path)
    with mapped_file(path) as (_fd, data), _naming(path):
        _fat, slices = scan(data)
        return export_names(data, slices[0])


def read(path) -> BinaryInfo:
    """Inspect a thin or universal Mach-O; BinaryFormatError on anything unreadable."""
    path = os.fspath(path)
    with mapped_file(path) as (_fd, data), _naming(path):
        fat, slices = scan(data)
        infos = [_slice_info(data, sl) for sl in slices]
        exports = export_names(data, slices[0], max_name=_CLASSIFY_NAME_BYTES + 1)
    first = infos[0]
    kind, version = classify(
        filename=os.path.basename(path),
        own_name=first["name"],
        exports=[e[1:] if e.startswith("_") else e for e in exports],
        needed=first["needed"],
        is_executable=slices[0].filetype == MH_EXECUTE,
    )
    facts = MachoFacts(fat=fat, slices=tuple(i["slice"] for i in infos))
    return BinaryInfo(
        path=path,
        format=FORMAT_MACHO,
        machine="universal" if fat else slices[0].arch,
        name=first["name"],
        needed=first["needed"],
        rpaths=first["rpaths"],
        exports_count=len(exports),
        kind=kind,
        python_version=version,
        facts=facts,
    )


def _slice_info(data: bytes, sl: RawSlice) -> dict:
    name = None
    needed: List[str] = []
    rpaths: List[str] = []
    uuid = None
    signature = 0
    for c in sl.commands:
        if c.cmd == LC_ID_DYLIB:
            name = lc_str(data, sl, c)
        elif c.cmd in LOAD_DYLIB_COMMANDS:
            needed.append(lc_str(data, sl, c))
        elif c.cmd == LC_RPATH:
            rpaths.append(lc_str(data, sl, c))
        elif c.cmd == LC_UUID:
            at = sl.offset + c.offset + 8
            uuid = str(_uuid.UUID(bytes=bytes(data[at : at + 16]))).upper()
        elif c.cmd == LC_CODE_SIGNATURE:
            (signature,) = _u32s(data, sl, c.offset + 12, 1)
    padding = header_padding(data, sl)
    if padding < 0:
        raise MalformedMachO(f"{sl.arch}: load commands overlap the first section by {-padding} bytes")
    msl = MachoSlice(
        arch=sl.arch,
        filetype=FILETYPES.get(sl.filetype, "filetype-0x%x" % sl.filetype),
        uuid=uuid,
        header_padding=padding,
        code_signature_size=signature,
        two_level_namespace=bool(sl.flags & MH_TWOLEVEL),
    )
    return {"name": name, "needed": tuple(needed), "rpaths": tuple(rpaths), "slice": msl}


def scan_path(path) -> Tuple[bytes, bool, List[RawSlice]]:
    """(data, fat, slices) of the file at ``path``; BinaryFormatError when it is malformed.

    The cloner rewrites what it scans, so this one reads the whole file into memory.
    """
    path = os.fspath(path)
    with mapped_file(path) as (_fd, mapped):
        data = bytes(mapped)
    with _naming(path):
        fat, slices = scan(data)
    return data, fat, slices
