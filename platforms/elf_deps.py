"""What the dynamic loader and the closure cloner need of one ELF object, read fast.

``elf.read`` builds a full BinaryInfo; resolving a dependency closure reads a
dozen libraries, some of them (libarrow) with tens of thousands of dynamic
symbols, and a clone's first extension import plans that module's twin in the
host. So this reader takes only the ELF header, the section headers, the
dynamic section and ``.dynsym``, all with ``struct``: importing pyelftools alone
costs a fresh process ~16 ms of its time to first result. Of ``.dynsym`` only the
undefined ``Py*``/``_Py*`` references and the ``PyInit_*`` exports matter here.

Every read is checked against the file's size, so a damaged file ends in a
BinaryFormatError naming the part that does not fit, never in another exception.
"""

import os
import struct
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

from gilclone.platforms.fileaccess import mapped_file

from gilclone.errors import BinaryFormatError

DF_1_NODEFLIB = 0x800
_PY_PREFIXES = (b"Py", b"_Py")
_EXPORTED_BINDINGS = (1, 2, 10)  # STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE
_NOT_EXPORTED_TYPES = (3, 4)  # STT_SECTION, STT_FILE
# Defined by the linker in every object: useless to tell one object from another.
_LINKER_NAMES = (b"_init", b"_fini", b"_edata", b"_end", b"__bss_start")

_SHT_STRTAB, _SHT_DYNAMIC, _SHT_DYNSYM = 3, 6, 11
_DT_NULL, _DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 0, 1, 14, 15, 29
_DT_FLAGS_1 = 0x6FFFFFFB
_STRING_TAGS = (_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH)

# e_machine as pyelftools' ENUM_E_MACHINE names it: the machines CPython runs on. Only
# equality matters (ld.so skips a file of another machine), so others read "EM_<number>".
_MACHINES = {
    2: "EM_SPARC", 3: "EM_386", 4: "EM_68K", 8: "EM_MIPS", 10: "EM_MIPS_RS3_LE",
    15: "EM_PARISC", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM",
    41: "EM_ALPHA", 42: "EM_SH", 43: "EM_SPARCV9", 50: "EM_IA_64", 62: "EM_X86_64",
    183: "EM_AARCH64", 243: "EM_RISCV", 247: "EM_BPF", 258: "EM_LOONGARCH",
}


@dataclass(frozen=True)
class DynamicFacts:
    """The dynamic-linking facts of one ELF object, as ld.so uses them."""

    path: str
    soname: Optional[str]
    needed: Tuple[str, ...]
    # DT_RPATH entries; empty when the object also has DT_RUNPATH (ld.so then ignores RPATH).
    rpath: Tuple[str, ...]
    runpath: Optional[Tuple[str, ...]]  # None: no DT_RUNPATH at all
    nodeflib: bool  # DF_1_NODEFLIB: skip the ld.so cache and the default directories
    elf_class: int  # 32 or 64
    machine: str  # e_machine as pyelftools names it ("EM_X86_64"), else "EM_<number>"
    python_refs: int  # undefined Py*/_Py* dynamic symbols: calls into the Python C API
    python_init: bool  # defines PyInit_*: an extension module
    defines: Tuple[str, ...] = ()  # a few defined dynamic symbols (for scope checks)
    exports: int = 0  # defined global/weak/unique dynamic symbols, as BinaryInfo.exports_count

    @property
    def run_paths(self) -> Tuple[str, ...]:
        """The run path entries in effect (RUNPATH if there is one, else RPATH)."""
        return self.runpath if self.runpath is not None else self.rpath

    @property
    def rpath_tag(self) -> Optional[str]:
        if self.runpath is not None:
            return "RUNPATH"
        return "RPATH" if self.rpath else None

    @property
    def uses_python_api(self) -> bool:
        return self.python_refs > 0

    def compatible_with(self, other: "DynamicFacts") -> bool:
        """ld.so skips candidate files of another class or machine and searches on."""
        return self.elf_class == other.elf_class and self.machine == other.machine


# NamedTuples, not dataclasses, for these two private records: a dataclass costs ~0.6 ms to
# define, and this module is on every fresh process's way to its first result.
class _Layout(NamedTuple):
    """The struct formats of one ELF class and byte order."""

    elf_class: int
    header: struct.Struct  # e_ident skipped: type, machine, ..., shentsize, shnum, shstrndx
    section: struct.Struct  # name, type, flags, addr, offset, size, link, info, align, entsize
    dyn: struct.Struct  # d_tag, d_val
    sym: struct.Struct
    sym_info: int  # where st_info and st_shndx sit in an unpacked symbol (st_name is first)
    sym_shndx: int


def _layout(elf_class: int, end: str) -> _Layout:
    if elf_class == 64:  # Elf64_Sym: name, info, other, shndx, value, size
        return _Layout(64, struct.Struct(end + "16xHHIQQQIHHHHHH"), struct.Struct(end + "IIQQQQIIQQ"),
                       struct.Struct(end + "qQ"), struct.Struct(end + "IBBHQQ"), 1, 3)
    # Elf32_Sym: name, value, size, info, other, shndx
    return _Layout(32, struct.Struct(end + "16xHHIIIIIHHHHHH"), struct.Struct(end + "IIIIIIIIII"),
                   struct.Struct(end + "iI"), struct.Struct(end + "IIIBBH"), 3, 5)


class _Section(NamedTuple):
    type: int
    offset: int
    size: int
    link: int
    entsize: int


class _File:
    """A mapped file whose reads must lie within it: a damaged header cannot send us past the end."""

    def __init__(self, path: str, view: bytes):
        self.path = path
        self._view = view
        self.size = len(view)

    def fail(self, problem: str) -> BinaryFormatError:
        return BinaryFormatError(self.path, problem)

    def read(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self.fail(f"corrupt or truncated ELF file: the {what} (offset {offset}, "
                            f"{size} bytes) lies past the end of the file ({self.size} bytes)")
        return self._view[offset:offset + size]


def read_dynamic_facts(path: str, sample: int = 8) -> DynamicFacts:
    """Read ``path``; BinaryFormatError if it is not a readable ELF object."""
    # Mapped, not read: the resolver probes every candidate in a search path, and a FIFO or
    # device there must be refused, not waited on; a large library costs only the pages read.
    with mapped_file(path) as (_, view):
        return _read(_File(path, view), sample)


def _read(file: _File, sample: int) -> DynamicFacts:
    layout = _identify(file)
    header = layout.header.unpack(file.read(0, layout.header.size, "ELF header"))
    sections = _section_headers(file, layout, header)
    tags = _dynamic_tags(file, layout, sections)
    runpath = _paths(tags, _DT_RUNPATH) if any(t == _DT_RUNPATH for t, _ in tags) else None
    refs, init, defines, exports = _scan_dynsym(file, layout, sections, sample)
    return DynamicFacts(
        path=file.path,
        soname=next((v for t, v in tags if t == _DT_SONAME), None),
        needed=tuple(v for t, v in tags if t == _DT_NEEDED),
        rpath=() if runpath is not None else _paths(tags, _DT_RPATH),
        runpath=runpath,
        nodeflib=bool(next((v for t, v in tags if t == _DT_FLAGS_1), 0) & DF_1_NODEFLIB),
        elf_class=layout.elf_class,
        machine=_MACHINES.get(header[1], f"EM_{header[1]}"),
        python_refs=refs,
        python_init=init,
        defines=defines,
        exports=exports,
    )


def _identify(file: _File) -> _Layout:
    """The class and byte order from e_ident, which reads the same in every ELF flavour."""
    ident = file.read(0, min(file.size, 16), "identification")
    if not ident.startswith(b"\x7fELF"):
        raise file.fail("not an ELF file")
    if len(ident) < 16:
        raise file.fail(f"truncated ELF file: {len(ident)} bytes, shorter than its identification")
    if ident[4] not in (1, 2):
        raise file.fail(f"unknown ELF class {ident[4]} (EI_CLASS is 1 for 32-bit, 2 for 64-bit)")
    if ident[5] not in (1, 2):
        raise file.fail(f"unknown ELF byte order {ident[5]} (EI_DATA is 1 or 2)")
    return _layout(32 if ident[4] == 1 else 64, "<" if ident[5] == 1 else ">")


def _section_headers(file: _File, layout: _Layout, header: tuple) -> Tuple[_Section, ...]:
    shoff, shentsize, shnum = header[5], header[10], header[11]
    if shoff == 0:  # no section header table (stripped): no dynamic section to find
        return ()
    if shentsize < layout.section.size:
        raise file.fail(f"corrupt ELF file: section header size {shentsize} is below "
                        f"{layout.section.size}")
    if shnum == 0:  # 0xff00 sections or more: the count is section 0's sh_size
        shnum = _section(layout, file.read(shoff, layout.section.size, "first section header"), 0).size
    table = file.read(shoff, shnum * shentsize, "section header table")
    return tuple(_section(layout, table, i * shentsize) for i in range(shnum))


def _section(layout: _Layout, data: bytes, at: int) -> _Section:
    fields = layout.section.unpack_from(data, at)
    return _Section(type=fields[1], offset=fields[4], size=fields[5], link=fields[6], entsize=fields[9])


def _linked(file: _File, sections: Sequence[_Section], index: int, what: str) -> _Section:
    if index >= len(sections):
        raise file.fail(f"corrupt ELF file: the {what} links to section {index} of {len(sections)}")
    return sections[index]


def _dynamic_tags(file: _File, layout: _Layout, sections: Sequence[_Section]) -> list:
    """[(d_tag, value)] of the SHT_DYNAMIC section up to DT_NULL; string tags' values decoded."""
    dynamic = next((s for s in sections if s.type == _SHT_DYNAMIC), None)
    if dynamic is None:
        return []
    data = file.read(dynamic.offset, dynamic.size, "dynamic section")
    raw = []
    for tag, value in layout.dyn.iter_unpack(data[: len(data) - len(data) % layout.dyn.size]):
        if tag == _DT_NULL:
            break
        raw.append((tag, value))
    if not any(tag in _STRING_TAGS for tag, _ in raw):
        return raw
    strtab = _linked(file, sections, dynamic.link, "dynamic section")
    if strtab.type != _SHT_STRTAB:
        raise file.fail(f"corrupt ELF file: the dynamic section's strings are in section type {strtab.type}")
    strings = file.read(strtab.offset, strtab.size, "dynamic string table")
    return [(t, _dynamic_string(file, strings, v) if t in _STRING_TAGS else v) for t, v in raw]


def _dynamic_string(file: _File, strings: bytes, offset: int) -> str:
    if offset >= len(strings):
        raise file.fail(f"corrupt ELF file: a dynamic tag's string offset {offset} lies past "
                        f"its string table ({len(strings)} bytes)")
    return _cstring(strings, offset).decode("utf-8", "replace")


def _cstring(strings: bytes, offset: int) -> bytes:
    end = strings.find(b"\0", offset)
    return strings[offset:] if end < 0 else strings[offset:end]


def _paths(tags: list, kind: int) -> Tuple[str, ...]:
    """The entries of every ``kind`` tag (DT_RPATH or DT_RUNPATH), in order, empty ones dropped."""
    return tuple(p for t, v in tags if t == kind for p in v.split(":") if p)


def _scan_dynsym(file: _File, layout: _Layout, sections: Sequence[_Section], sample: int):
    """(undefined Py* count, defines PyInit_*, a few defined global names, exports) from .dynsym."""
    dynsym = next((s for s in sections if s.type == _SHT_DYNSYM), None)
    if dynsym is None or not dynsym.entsize:
        return 0, False, (), 0
    strtab = _linked(file, sections, dynsym.link, ".dynsym")
    strings = file.read(strtab.offset, strtab.size, "dynamic symbol names")
    table = file.read(dynsym.offset, dynsym.size, ".dynsym")
    refs, init, defines, exports = 0, False, [], 0
    for entry in layout.sym.iter_unpack(table[: len(table) - len(table) % layout.sym.size]):
        if not entry[0]:
            continue
        name = _cstring(strings, entry[0])
        if entry[layout.sym_shndx] == 0:
            refs += name.startswith(_PY_PREFIXES)
            continue
        init = init or name.startswith(b"PyInit_")
        bind, kind = entry[layout.sym_info] >> 4, entry[layout.sym_info] & 0xF
        if bind in _EXPORTED_BINDINGS and kind not in _NOT_EXPORTED_TYPES:
            exports += 1
        if bind == 1 and kind in (1, 2) and len(defines) < sample and name not in _LINKER_NAMES:
            defines.append(name.decode("utf-8", "replace"))  # a global object or function
    return refs, init, tuple(defines), exports


def origin_of(path: str) -> str:
    """The directory ld.so substitutes for $ORIGIN: the path as opened, symlinks kept."""
    return os.path.dirname(os.path.abspath(path))
