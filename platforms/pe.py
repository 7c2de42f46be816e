"""Read a Windows PE image (DLL, .pyd, .exe) into a BinaryInfo.

pefile does the parsing, but pefile is built for malware triage: it is lenient
and records most damage as warnings instead of failing. This module checks the
structure it relies on itself (headers, section table, section data, the
certificate table) before and after pefile runs, so a truncated or damaged file
gives one BinaryFormatError naming the file and the problem, never a traceback
and never a silently partial answer.

Conventions of the fields filled here:

- ``needed``: the DLL names of the normal import directory, in file order, then
  those of the delay-import directory (also listed alone in
  ``facts.delay_imports``). A delay-loaded DLL is still a dependency the cloner
  must rewire, hence its place in ``needed``; a name imported both ways appears
  twice.
- ``name``: the DLL name in the export directory, or None without exports.
- ``exports_count``: every entry pefile finds in the export directory: named,
  ordinal-only and forwarded (what ``llvm-readobj --coff-exports`` lists).
- ``facts.forwards_to``: sorted distinct DLL names as the forwarder strings
  give them, i.e. without ".dll": ``python3.dll`` gives ``("python313",)``.
- ``machine``: "x86_64", "x86", "arm64", "arm" (ARMNT, ARM, THUMB), otherwise the
  lowercase pefile name without IMAGE_FILE_MACHINE_ ("ia64"), or "unknown-0xNNNN".
"""

import errno
import os
import re
import struct

import pefile
from gilclone.platforms import classify
from gilclone.platforms.fileaccess import mapped_file
from gilclone.platforms.model import FORMAT_PE, BinaryInfo, PeFacts, PeSection

from gilclone.errors import BinaryFormatError

_DIRS = pefile.DIRECTORY_ENTRY
_EXPORT = _DIRS["IMAGE_DIRECTORY_ENTRY_EXPORT"]
_IMPORT = _DIRS["IMAGE_DIRECTORY_ENTRY_IMPORT"]
_SECURITY = _DIRS["IMAGE_DIRECTORY_ENTRY_SECURITY"]
_BOUND_IMPORT = _DIRS["IMAGE_DIRECTORY_ENTRY_BOUND_IMPORT"]
_DELAY_IMPORT = _DIRS["IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT"]

_IMAGE_FILE_DLL = 0x2000
_DOS_HEADER_SIZE = 64
_COFF_HEADER_SIZE = 20
_SECTION_HEADER_SIZE = 40
# Smallest optional header that still holds every field up to the data directories.
_MIN_OPTIONAL = {0x10B: 96, 0x20B: 112}
# The CheckSum field's offset in the optional header (the same in PE32 and PE32+).
_CHECKSUM_IN_OPTIONAL = 64
# Bytes summed at a time: big enough to be fast, small enough to stay far below 100 MB.
_CHECKSUM_CHUNK = 8 << 20
# Images are mapped into a 32-bit RVA space whatever the machine; anything past it is damage.
_MAX_IMAGE = 0xFFFFFFFF

_MACHINES = {
    "AMD64": "x86_64",
    "I386": "x86",
    "ARM64": "arm64",
    "ARMNT": "arm",
    "ARM": "arm",
    "THUMB": "arm",
}

# pefile warnings that mean the parts gilclone reads are damaged (anything else,
# e.g. about the entry point or resources, does not affect what is read here).
_FATAL_WARNING = re.compile(
    r"import (directory|table|data)|ILT and/or IAT|export directory|Delay import"
    r"|too many imported|Excessive number of imports|Error parsing section|Invalid section",
    re.IGNORECASE,
)

# Exceptions pefile and struct raise on damaged input instead of PEFormatError.
_PARSE_ERRORS = (
    pefile.PEFormatError,
    struct.error,
    IndexError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
)


def read(path) -> BinaryInfo:
    """Inspect the PE image at ``path``; raise BinaryFormatError naming the problem."""
    path = os.fspath(path)
    # pefile reads through the mapping too, so memory follows the headers and tables it
    # parses, not the size of the file.
    with mapped_file(path) as (fd, data):
        _check_headers(path, data)
        try:
            pe = pefile.PE(data=data, fast_load=True)
            pe.parse_data_directories(
                directories=[_IMPORT, _DELAY_IMPORT, _EXPORT, _SECURITY]
            )
            return _info(path, data, pe, _checksum(fd, data, pe))
        except BinaryFormatError:
            raise
        except _PARSE_ERRORS as exc:
            raise BinaryFormatError(path, f"damaged PE file: {_describe(exc)}") from None


def _describe(exc) -> str:
    text = getattr(exc, "value", None) or str(exc) or type(exc).__name__
    return str(text).strip().rstrip(".")


def _check_headers(path: str, data: bytes) -> None:
    """Check, on the raw bytes, everything up to the end of the section table and the
    placement of every section's data, with messages that say what is wrong."""
    size = len(data)

    def fail(problem):
        raise BinaryFormatError(path, problem)

    if size < _DOS_HEADER_SIZE:
        fail(f"truncated PE file: the MZ header needs {_DOS_HEADER_SIZE} bytes, "
             f"the file has {size}")
    if data[:2] != b"MZ":
        fail("not a PE file (no MZ signature)")
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if e_lfanew + 4 > size:
        fail(f"no PE header: the MZ header points to offset {e_lfanew:#x}, past the end "
             f"of the file (size {size}); an MS-DOS program or a truncated PE file")
    signature = data[e_lfanew:e_lfanew + 4]
    if signature != b"PE\0\0":
        fail(f"no PE header: expected the signature 'PE\\0\\0' at offset {e_lfanew:#x}, "
             f"found {signature.hex()}; an MS-DOS program or a damaged PE header")
    coff = e_lfanew + 4
    if coff + _COFF_HEADER_SIZE > size:
        fail(f"truncated PE file: the COFF header at offset {coff:#x} extends past the "
             f"end of the file (size {size})")
    _machine, nsections, _t, _p, _n, opt_size, _chars = struct.unpack_from(
        "<HHIIIHH", data, coff
    )
    opt = coff + _COFF_HEADER_SIZE
    if opt + 2 > size:
        fail(f"truncated PE file: the optional header at offset {opt:#x} extends past the "
             f"end of the file (size {size})")
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic not in _MIN_OPTIONAL:
        fail(f"damaged PE header: unknown optional header magic {magic:#x} "
             f"(expected 0x10b for PE32 or 0x20b for PE32+)")
    if opt_size < _MIN_OPTIONAL[magic]:
        fail(f"damaged PE header: SizeOfOptionalHeader is {opt_size}, "
             f"too small for a {'PE32+' if magic == 0x20B else 'PE32'} header")
    if nsections == 0:
        fail("damaged PE header: the image has no sections")
    table = opt + opt_size
    table_end = table + nsections * _SECTION_HEADER_SIZE
    if table_end > size:
        fail(f"truncated PE file: the section table ({nsections} sections, offset "
             f"{table:#x}..{table_end:#x}) extends past the end of the file (size {size})")
    size_of_image_at = opt + 56
    (size_of_image, size_of_headers) = struct.unpack_from("<II", data, size_of_image_at)
    if size_of_headers > size:
        fail(f"truncated PE file: the headers (SizeOfHeaders {size_of_headers}) extend past "
             f"the end of the file (size {size})")
    for i in range(nsections):
        at = table + i * _SECTION_HEADER_SIZE
        raw_name = data[at:at + 8].rstrip(b"\0")
        name = raw_name.decode("latin-1")
        vsize, vaddr, raw_size, raw_ptr = struct.unpack_from("<IIII", data, at + 8)
        label = f"section {i} ({name!r})" if name.isprintable() else f"section {i}"
        if raw_size and raw_ptr + raw_size > size:
            fail(f"truncated PE file: {label} extends past the end of the file "
                 f"(data at offset {raw_ptr:#x}, {raw_size} bytes > file size {size})")
        mapped = vsize or raw_size
        if vaddr + mapped > size_of_image or vaddr + mapped > _MAX_IMAGE:
            fail(f"damaged section table: {label} maps {mapped:#x} bytes at RVA {vaddr:#x}, "
                 f"beyond SizeOfImage {size_of_image:#x}")


def _info(path: str, data: bytes, pe: pefile.PE, computed_checksum: int) -> BinaryInfo:
    fatal = [w for w in pe.get_warnings() if _FATAL_WARNING.search(w)]
    if fatal:
        raise BinaryFormatError(path, f"damaged PE file: {fatal[0].strip().rstrip('.')}")

    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    for index, what, attr in (
        (_IMPORT, "import directory", "DIRECTORY_ENTRY_IMPORT"),
        (_DELAY_IMPORT, "delay-import directory", "DIRECTORY_ENTRY_DELAY_IMPORT"),
        (_EXPORT, "export directory", "DIRECTORY_ENTRY_EXPORT"),
    ):
        if index < len(dirs) and dirs[index].VirtualAddress and dirs[index].Size:
            rva = dirs[index].VirtualAddress
            if not hasattr(pe, attr) and not _rva_in_file(pe, rva):
                raise BinaryFormatError(
                    path, f"damaged PE file: the {what} (RVA {rva:#x}) lies outside every "
                          f"section's data")

    cert_size = _certificate_size(path, data, dirs)

    imports = tuple(_dll_name(path, e.dll) for e in getattr(pe, "DIRECTORY_ENTRY_IMPORT", ()))
    delay = tuple(
        _dll_name(path, e.dll) for e in getattr(pe, "DIRECTORY_ENTRY_DELAY_IMPORT", ())
    )
    export_dir = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    symbols = list(export_dir.symbols) if export_dir is not None else []
    own_name = _text(export_dir.name) if export_dir is not None and export_dir.name else None
    export_names = [_text(s.name) for s in symbols if s.name]
    forwards = sorted({_forward_target(_text(s.forwarder)) for s in symbols if s.forwarder})

    needed = imports + delay
    is_dll = bool(pe.FILE_HEADER.Characteristics & _IMAGE_FILE_DLL)
    kind, version = classify.classify(
        filename=os.path.basename(path),
        own_name=own_name,
        exports=export_names,
        needed=needed,
        is_executable=not is_dll,
    )

    sections = tuple(
        PeSection(
            name=_text(s.Name.rstrip(b"\0")),
            virtual_size=s.Misc_VirtualSize,
            raw_size=s.SizeOfRawData,
        )
        for s in pe.sections
    )
    facts = PeFacts(
        sections=sections,
        header_slack=_header_slack(pe),
        checksum=pe.OPTIONAL_HEADER.CheckSum,
        computed_checksum=computed_checksum,
        certificate_size=cert_size,
        delay_imports=delay,
        forwards_to=tuple(forwards),
    )
    return BinaryInfo(
        path=path,
        format=FORMAT_PE,
        machine=_machine(pe.FILE_HEADER.Machine),
        name=own_name,
        needed=needed,
        rpaths=(),
        exports_count=len(symbols),
        kind=kind,
        python_version=version,
        facts=facts,
    )


def _text(raw) -> str:
    """Names in PE files are bytes (ASCII in practice); latin-1 keeps any byte."""
    if isinstance(raw, str):
        return raw
    return bytes(raw).decode("latin-1")


def _dll_name(path: str, raw) -> str:
    if not raw:
        raise BinaryFormatError(path, "damaged PE file: an import entry has no DLL name")
    return _text(raw)


def _forward_target(forwarder: str) -> str:
    # "python313.PyAIter_Check" -> "python313"; the loader splits at the last dot,
    # so DLL names with dots ("api-ms-win-core-x-l1-1-0.Func") work as well.
    return forwarder.rsplit(".", 1)[0]


def _rva_in_file(pe: pefile.PE, rva: int) -> bool:
    try:
        offset = pe.get_offset_from_rva(rva)
    except pefile.PEFormatError:
        return False
    return offset is not None and offset < len(pe.__data__)


def _certificate_size(path: str, data: bytes, dirs) -> int:
    """Size of the Authenticode table; its directory entry holds a file offset, not an RVA."""
    if _SECURITY >= len(dirs):
        return 0
    entry = dirs[_SECURITY]
    if not entry.VirtualAddress or not entry.Size:
        return 0
    end = entry.VirtualAddress + entry.Size
    if end > len(data):
        raise BinaryFormatError(
            path,
            f"truncated PE file: the Authenticode certificate table (offset "
            f"{entry.VirtualAddress:#x}, {entry.Size} bytes) extends past the end of the "
            f"file (size {len(data)})",
        )
    return entry.Size


def _checksum(fd: int, data: bytes, pe: pefile.PE) -> int:
    """The image checksum of the file as it is, as pefile's generate_checksum computes it,
    in time and memory that do not grow with the holes of a sparse file.

    pefile adds the file's little-endian dwords (skipping the one holding the CheckSum
    field) with end-around carry, folds the sum to 16 bits and adds the file size. That
    fold is the sum modulo 0xFFFF, given as 0xFFFF rather than 0 for a non-zero sum (and
    the sum is never zero: the file starts with "MZ"). Because 0x10000 = 1 (mod 0xFFFF),
    a stretch of the file that starts at an even offset, read as one little-endian
    integer, is congruent to the sum of its 16-bit words, and so of its dwords.
    Holes read as zeros and add nothing, so only the stretches holding data are read.
    """
    field = (pe.OPTIONAL_HEADER.get_file_offset() + _CHECKSUM_IN_OPTIONAL) & ~3
    total = -int.from_bytes(data[field : field + 4], "little")
    for start, end in _data_extents(fd, len(data)):
        for at in range(start & ~1, end, _CHECKSUM_CHUNK):
            total += int.from_bytes(data[at : min(at + _CHECKSUM_CHUNK, end)], "little") % 0xFFFF
    folded = total % 0xFFFF
    return (folded or 0xFFFF) + len(data)


def _data_extents(fd: int, size: int):
    """(start, end) of the parts of the file that hold data: all of it where the file
    system cannot tell holes (no SEEK_DATA), otherwise only the allocated extents."""
    seek_data, seek_hole = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)
    if seek_data is None:
        yield 0, size
        return
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, seek_data)
            end = os.lseek(fd, start, seek_hole)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after ``at``
                return
            yield at, size  # the file system does not support it: read everything
            return
        yield start, min(end, size)
        at = end


def _header_slack(pe: pefile.PE) -> int:
    """Free bytes after the section table, before the first section's data and its RVA.

    A bound-import directory, which linkers place right after the section table,
    counts as used.
    """
    table_end = (
        pe.DOS_HEADER.e_lfanew + 4 + _COFF_HEADER_SIZE + pe.FILE_HEADER.SizeOfOptionalHeader
        + pe.FILE_HEADER.NumberOfSections * _SECTION_HEADER_SIZE
    )
    limits = [s.PointerToRawData for s in pe.sections if s.SizeOfRawData]
    limits += [s.VirtualAddress for s in pe.sections]
    if not limits:
        return 0
    start = table_end
    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if _BOUND_IMPORT < len(dirs):
        bound = dirs[_BOUND_IMPORT]
        if bound.VirtualAddress and bound.Size and bound.VirtualAddress >= table_end:
            start = max(start, bound.VirtualAddress + bound.Size)
    return max(0, min(limits) - start)


def _machine(value: int) -> str:
    name = pefile.MACHINE_TYPE.get(value)
    if not name:
        return f"unknown-{value:#06x}"
    short = name.replace("IMAGE_FILE_MACHINE_", "")
    return _MACHINES.get(short, short.lower())
