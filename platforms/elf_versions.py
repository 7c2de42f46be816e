"""The GNU symbol versions an ELF object needs (.gnu.version_r) and defines (.gnu.version_d).

ld.so refuses to load an object needing ``GLIBC_2.38`` from a ``libc.so.6`` whose
version definitions lack it ("version `GLIBC_2.38' not found"), unless the need
is weak; an object without version definitions satisfies every need (glibc only
warns). pyelftools reads both sections.
"""

from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from gilclone.errors import BinaryFormatError

VER_FLG_BASE = 0x1  # the version definition naming the file itself
VER_FLG_WEAK = 0x2  # a need that may be missing


@dataclass(frozen=True)
class VersionNeed:
    """``file`` (a DT_NEEDED name) must define ``version``."""

    file: str
    version: str
    weak: bool


@dataclass(frozen=True)
class VersionFacts:
    path: str
    needs: Tuple[VersionNeed, ...]
    # None: no .gnu.version_d at all (then ld.so accepts any need).
    defines: Optional[FrozenSet[str]]


def read_versions(path: str) -> VersionFacts:
    """Read ``path``'s version needs and definitions; BinaryFormatError if it is no ELF."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise BinaryFormatError(path, "not an ELF file")
            f.seek(0)
            return versions_of(path, ELFFile(f))
    except BinaryFormatError:
        raise
    except Exception as exc:  # pyelftools raises many types on damaged files
        raise BinaryFormatError(path, f"corrupt or truncated ELF file ({type(exc).__name__})") from None


def versions_of(path: str, elf: ELFFile) -> VersionFacts:
    """The version facts of an open ELFFile (found by section name: pyelftools caches the map)."""
    needs = []
    defines = None
    sections = (elf.get_section_by_name(n) for n in (".gnu.version_r", ".gnu.version_d"))
    for section in (s for s in sections if s is not None):
        if isinstance(section, GNUVerNeedSection):
            for verneed, auxes in section.iter_versions():
                needs += [
                    VersionNeed(verneed.name, aux.name, bool(aux["vna_flags"] & VER_FLG_WEAK))
                    for aux in auxes
                ]
        elif isinstance(section, GNUVerDefSection):
            names = set()
            for verdef, auxes in section.iter_versions():
                if verdef["vd_flags"] & VER_FLG_BASE:
                    continue
                first = next(iter(auxes), None)
                if first is not None:
                    names.add(first.name)
            defines = frozenset(names)
    return VersionFacts(path, tuple(needs), defines)


def missing_versions(needs: Tuple[VersionNeed, ...], file: str, provider: VersionFacts) -> Tuple[str, ...]:
    """The non-weak versions of ``file`` in ``needs`` that ``provider`` does not define."""
    if provider.defines is None:
        return ()
    return tuple(n.version for n in needs if n.file == file and not n.weak and n.version not in provider.defines)
