"""What the dynamic loader and the closure cloner need of one ELF object, read fast.

``elf.read`` builds a full BinaryInfo; resolving a dependency closure reads a
dozen libraries, some of them (libarrow) with tens of thousands of dynamic
symbols, so this reader takes the headers from pyelftools and walks ``.dynsym``
with ``struct`` itself: only the undefined ``Py*``/``_Py*`` references and the
``PyInit_*`` exports matter here.
"""

import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from gilclone.errors import BinaryFormatError

DF_1_NODEFLIB = 0x800
_PY_PREFIXES = (b"Py", b"_Py")
_EXPORTED_BINDINGS = (1, 2, 10)  # STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE
_NOT_EXPORTED_TYPES = (3, 4)  # STT_SECTION, STT_FILE
# Defined by the linker in every object: useless to tell one object from another.
_LINKER_NAMES = (b"_init", b"_fini", b"_edata", b"_end", b"__bss_start")


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
    machine: str  # e_machine as pyelftools names it ("EM_X86_64")
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


def read_dynamic_facts(path: str, sample: int = 8) -> DynamicFacts:
    """Read ``path``; BinaryFormatError if it is not a readable ELF object."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise BinaryFormatError(path, "not an ELF file")
            f.seek(0)
            return _read(path, ELFFile(f), sample)
    except BinaryFormatError:
        raise
    except Exception as exc:  # pyelftools raises many types on damaged files
        raise BinaryFormatError(path, f"corrupt or truncated ELF file ({type(exc).__name__})") from None


def _read(path: str, elf: ELFFile, sample: int) -> DynamicFacts:
    dynamic = next((s for s in elf.iter_sections() if isinstance(s, DynamicSection)), None)
    tags = list(dynamic.iter_tags()) if dynamic is not None else []
    rpath: Tuple[str, ...] = ()
    runpath: Optional[Tuple[str, ...]] = None
    for t in tags:
        if t.entry.d_tag == "DT_RUNPATH":
            runpath = (runpath or ()) + tuple(p for p in t.runpath.split(":") if p)
        elif t.entry.d_tag == "DT_RPATH":
            rpath += tuple(p for p in t.rpath.split(":") if p)
    flags_1 = next((t.entry.d_val for t in tags if t.entry.d_tag == "DT_FLAGS_1"), 0)
    refs, init, defines, exports = _scan_dynsym(elf, sample)
    return DynamicFacts(
        path=path,
        soname=next((t.soname for t in tags if t.entry.d_tag == "DT_SONAME"), None),
        needed=tuple(t.needed for t in tags if t.entry.d_tag == "DT_NEEDED"),
        rpath=() if runpath is not None else rpath,
        runpath=runpath,
        nodeflib=bool(flags_1 & DF_1_NODEFLIB),
        elf_class=elf.elfclass,
        machine=elf.header["e_machine"],
        python_refs=refs,
        python_init=init,
        defines=defines,
        exports=exports,
    )


def _scan_dynsym(elf: ELFFile, sample: int):
    """(undefined Py* count, defines PyInit_*, a few defined global names, exports) from .dynsym."""
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None or not dynsym["sh_entsize"]:
        return 0, False, (), 0
    strtab = elf.get_section(dynsym["sh_link"])
    stream = elf.stream
    stream.seek(strtab["sh_offset"])
    strings = stream.read(strtab["sh_size"])
    stream.seek(dynsym["sh_offset"])
    table = stream.read(dynsym["sh_size"])
    end = "<" if elf.little_endian else ">"
    # Elf64_Sym: name, info, other, shndx, value, size; Elf32_Sym: name, value, size, info, other, shndx
    if elf.elfclass == 64:
        layout, name_at, info_at, shndx_at = end + "IBBHQQ", 0, 1, 3
    else:
        layout, name_at, info_at, shndx_at = end + "IIIBBH", 0, 3, 5
    refs, init, defines, exports = 0, False, [], 0
    for entry in struct.iter_unpack(layout, table[: len(table) - len(table) % struct.calcsize(layout)]):
        offset = entry[name_at]
        if not offset:
            continue
        name = strings[offset : strings.find(b"\0", offset)]
        if entry[shndx_at] == 0:
            refs += name.startswith(_PY_PREFIXES)
            continue
        init = init or name.startswith(b"PyInit_")
        bind, kind = entry[info_at] >> 4, entry[info_at] & 0xF
        if bind in _EXPORTED_BINDINGS and kind not in _NOT_EXPORTED_TYPES:
            exports += 1
        if bind == 1 and kind in (1, 2) and len(defines) < sample and name not in _LINKER_NAMES:
            defines.append(name.decode("utf-8", "replace"))  # a global object or function
    return refs, init, tuple(defines), exports


def origin_of(path: str) -> str:
    """The directory ld.so substitutes for $ORIGIN: the path as opened, symlinks kept."""
    return os.path.dirname(os.path.abspath(path))
