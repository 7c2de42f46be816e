"""Read an ELF file (shared library, extension module, executable) into a BinaryInfo.

pyelftools parses; this module only decides what matters to the cloner and
turns every way a file can be broken into one BinaryFormatError.
"""

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from gilclone.platforms.classify import classify
from gilclone.platforms.model import FORMAT_ELF, BinaryInfo, ElfFacts

from gilclone.errors import BinaryFormatError

_MACHINES = {
    "EM_X86_64": "x86_64",
    "EM_386": "x86",
    "EM_AARCH64": "arm64",
    "EM_ARM": "arm",
    "EM_PPC64": "ppc64",
    "EM_S390": "s390x",
    "EM_RISCV": "riscv",
}
DF_STATIC_TLS = 0x10
DF_1_PIE = 0x08000000
# JUMP_SLOT relocation types per machine: the PLT entries that interposition goes through.
_JUMP_SLOT = {"EM_X86_64": 7, "EM_386": 7, "EM_AARCH64": 1026, "EM_ARM": 22}


# e_ident[EI_CLASS] -> size of the ELF header.
_HEADER_SIZE = {1: 52, 2: 64}


def read(path: str) -> BinaryInfo:
    size = os.path.getsize(path)
    _check_header_size(path, size)
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            _check_bounds(elf, size)
            return _read(path, elf)
    except BinaryFormatError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError) as exc:
        raise BinaryFormatError(path, f"corrupt or truncated ELF file ({_reason(exc)})") from None
    except Exception as exc:  # pyelftools raises struct/construct errors of many types
        raise BinaryFormatError(path, f"corrupt or truncated ELF file ({_reason(exc)})") from None


@dataclass(frozen=True)
class DynamicSymbols:
    """The named entries of an ELF file's dynamic symbol table (.dynsym), in table order."""

    defined: Tuple[str, ...]  # defined in the file (any binding)
    undefined: Tuple[str, ...]  # to be found in another loaded object


def dynamic_symbols(path: str) -> DynamicSymbols:
    """What ``path`` defines and needs at run time; BinaryFormatError if it is not a readable ELF file.

    A file without .dynsym (a static executable, an object file) has neither.
    """
    try:
        with open(path, "rb") as f:
            dynsym = ELFFile(f).get_section_by_name(".dynsym")
            if dynsym is None:
                return DynamicSymbols((), ())
            defined, undefined = [], []
            for sym in dynsym.iter_symbols():
                if sym.name:
                    (undefined if sym["st_shndx"] == "SHN_UNDEF" else defined).append(sym.name)
            return DynamicSymbols(tuple(defined), tuple(undefined))
    except Exception as exc:  # pyelftools raises many types on foreign or damaged files
        raise BinaryFormatError(path, f"not a readable ELF file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_header_size(path: str, size: int) -> None:
    """Name a cut inside the ELF header plainly instead of as a parser's short read."""
    with open(path, "rb") as f:
        ident = f.read(5)
    header_size = _HEADER_SIZE.get(ident[4]) if len(ident) == 5 else None
    if header_size is not None and size < header_size:
        raise BinaryFormatError(
            path,
            f"truncated ELF file: {size} bytes, shorter than its {header_size}-byte ELF header",
        )


def _check_bounds(elf: ELFFile, size: int) -> None:
    """pyelftools reads lazily and forgives; a clone must never be made from a cut file."""
    header = elf.header
    if header["e_phoff"] + header["e_phnum"] * header["e_phentsize"] > size:
        raise ValueError(f"program headers end past the end of the file ({size} bytes)")
    if header["e_shoff"] + header["e_shnum"] * header["e_shentsize"] > size:
        raise ValueError(f"section headers end past the end of the file ({size} bytes)")
    for seg in elf.iter_segments():
        end = seg["p_offset"] + seg["p_filesz"]
        if end > size:
            raise ValueError(f"segment {seg['p_type']} ends at {end}, past the end of the file ({size} bytes)")
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOBITS":
            continue
        end = sec["sh_offset"] + sec["sh_size"]
        if end > size:
            raise ValueError(f"section {sec.name or '?'} ends at {end}, past the end of the file ({size} bytes)")
    # Without program headers the sections still parse, but the loader cannot map the
    # file: a zeroed or emptied table must not pass for a loadable image.
    if header["e_type"] in ("ET_DYN", "ET_EXEC"):
        types = {seg["p_type"] for seg in elf.iter_segments()}
        if "PT_LOAD" not in types:
            raise ValueError("no loadable (PT_LOAD) segment; the program header table is missing or zeroed")
        has_dynamic = any(sec["sh_type"] == "SHT_DYNAMIC" for sec in elf.iter_sections())
        if has_dynamic and "PT_DYNAMIC" not in types:
            raise ValueError("a .dynamic section but no PT_DYNAMIC segment; the program header table is damaged")


def _read(path: str, elf: ELFFile) -> BinaryInfo:
    dynamic = _dynamic_section(elf)
    tags = list(dynamic.iter_tags()) if dynamic is not None else []
    needed = tuple(t.needed for t in tags if t.entry.d_tag == "DT_NEEDED")
    soname = next((t.soname for t in tags if t.entry.d_tag == "DT_SONAME"), None)
    rpaths: List[str] = []
    rpath_tag: Optional[str] = None
    for t in tags:
        if t.entry.d_tag == "DT_RUNPATH":
            rpaths.extend(p for p in t.runpath.split(":") if p)
            rpath_tag = "RUNPATH"
        elif t.entry.d_tag == "DT_RPATH":
            rpaths.extend(p for p in t.rpath.split(":") if p)
            rpath_tag = rpath_tag or "RPATH"
    flags = _tag_value(tags, "DT_FLAGS")
    flags_1 = _tag_value(tags, "DT_FLAGS_1")

    exported = _exported_names(elf)
    is_executable = elf.header["e_type"] == "ET_EXEC" or bool(flags_1 & DF_1_PIE)
    kind, version = classify(
        filename=os.path.basename(path),
        own_name=soname,
        exports=exported,
        needed=needed,
        is_executable=is_executable,
    )
    facts = ElfFacts(
        elf_class=elf.elfclass,
        byte_order="little" if elf.little_endian else "big",
        free_dynamic_slots=_free_dynamic_slots(dynamic),
        self_plt_relocations=_self_plt_relocations(elf, set(exported)),
        rpath_tag=rpath_tag,
        static_tls=bool(flags & DF_STATIC_TLS),
        tls_size=sum(s["p_memsz"] for s in elf.iter_segments() if s["p_type"] == "PT_TLS"),
    )
    return BinaryInfo(
        path=path,
        format=FORMAT_ELF,
        machine=_MACHINES.get(elf.header["e_machine"], str(elf.header["e_machine"]).lower()),
        name=soname,
        needed=needed,
        rpaths=tuple(rpaths),
        exports_count=len(exported),
        kind=kind,
        python_version=version,
        facts=facts,
    )


def _dynamic_section(elf: ELFFile) -> Optional[DynamicSection]:
    for sec in elf.iter_sections():
        if isinstance(sec, DynamicSection):
            return sec
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_DYNAMIC":
            return seg
    return None


def _free_dynamic_slots(dynamic) -> int:
    """DT_NULL entries after the terminator (pyelftools' iter_tags ends with the first one)."""
    if dynamic is None:
        return 0
    total = dynamic["sh_size"] // dynamic["sh_entsize"] if dynamic["sh_entsize"] else 0
    used = sum(1 for _ in dynamic.iter_tags())  # up to and including the first DT_NULL
    return max(0, total - used)


def _tag_value(tags, name: str) -> int:
    return next((t.entry.d_val for t in tags if t.entry.d_tag == name), 0)


def _exported_names(elf: ELFFile) -> List[str]:
    """Defined dynamic symbols with global or weak binding, as `readelf --dyn-syms` lists them."""
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None:
        return []
    names = []
    for sym in dynsym.iter_symbols():
        if sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
            continue
        if sym["st_info"]["bind"] not in ("STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE"):
            continue
        if sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
            continue
        names.append(sym.name)
    return names


def _self_plt_relocations(elf: ELFFile, exported: Iterable[str]) -> int:
    """Count PLT relocations that target symbols the image defines itself."""
    jump_slot = _JUMP_SLOT.get(elf.header["e_machine"])
    if jump_slot is None:
        return 0
    exported = set(exported)
    count = 0
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or sec["sh_type"] not in ("SHT_RELA", "SHT_REL"):
            continue
        if sec["sh_link"] == 0:
            continue
        symtab = elf.get_section(sec["sh_link"])
        if symtab.name != ".dynsym":
            continue
        for rel in sec.iter_relocations():
            if rel["r_info_type"] != jump_slot or rel["r_info_sym"] == 0:
                continue
            sym = symtab.get_symbol(rel["r_info_sym"])
            if sym.name in exported:
                count += 1
    return count
