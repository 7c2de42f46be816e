"""What the platform layer reads: small frozen records, the same for every format and OS.

Readers (one module per format) fill these; the cloner and the CLI only ever
look at these records, never at pyelftools / pefile / macholib objects.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

# Kinds of binary, as the cloner cares about them.
KIND_LIBPYTHON = "libpython"
KIND_EXTENSION = "extension"
KIND_LIBRARY = "library"
KIND_EXECUTABLE = "executable"

FORMAT_ELF = "ELF"
FORMAT_PE = "PE"
FORMAT_MACHO = "Mach-O"


@dataclass(frozen=True)
class ElfFacts:
    """ELF details the cloner needs."""

    elf_class: int  # 32 or 64
    byte_order: str  # "little" or "big"
    # DT_NULL entries beyond the one terminator: room to add dynamic tags in place.
    free_dynamic_slots: int
    # PLT (JUMP_SLOT) relocations against symbols this image itself exports:
    # semantic interposition, the reason copies must be loaded with RTLD_DEEPBIND.
    self_plt_relocations: int
    # "RPATH", "RUNPATH" or None: the two differ in whether dependencies inherit them.
    rpath_tag: Optional[str]
    # DF_STATIC_TLS: the image uses the initial-exec TLS model, so each copy takes
    # a slice of glibc's small static TLS reserve.
    static_tls: bool
    # Size of PT_TLS in memory (0 when the image has no thread-local storage).
    tls_size: int


@dataclass(frozen=True)
class PeSection:
    name: str
    virtual_size: int
    raw_size: int

    @property
    def slack(self) -> int:
        """Bytes of file padding after the section's data, usable for new strings."""
        return max(0, self.raw_size - self.virtual_size)


@dataclass(frozen=True)
class PeFacts:
    """PE details the cloner needs."""

    sections: Tuple[PeSection, ...]
    # Free bytes between the end of the section table and the first section's data:
    # room for one more section header if at least 40.
    header_slack: int
    checksum: int  # as stored in the optional header
    computed_checksum: int  # what pefile computes for the file as it is
    certificate_size: int  # bytes of the Authenticode table, 0 if unsigned
    delay_imports: Tuple[str, ...]
    # DLL names that exports forward to (python3.dll forwards to python3X.dll).
    forwards_to: Tuple[str, ...]


@dataclass(frozen=True)
class MachoSlice:
    """One architecture of a Mach-O file (a thin file has exactly one)."""

    arch: str
    filetype: str  # "dylib", "bundle", "execute", ...
    uuid: Optional[str]
    # Free bytes between the load commands and the first section: room for new commands.
    header_padding: int
    code_signature_size: int  # 0 if unsigned
    two_level_namespace: bool  # MH_TWOLEVEL set


@dataclass(frozen=True)
class MachoFacts:
    """Mach-O details the cloner needs; a fat file has one slice per architecture."""

    fat: bool
    slices: Tuple[MachoSlice, ...]

    @property
    def architectures(self) -> Tuple[str, ...]:
        """The architecture of each slice, in file order."""
        return tuple(s.arch for s in self.slices)


@dataclass(frozen=True)
class BinaryInfo:
    """A binary as gilclone sees it, whatever its format."""

    path: str
    format: str  # FORMAT_ELF, FORMAT_PE or FORMAT_MACHO
    machine: str  # "x86_64", "x86", "arm64", "arm", ... ; "universal" for a fat Mach-O
    name: Optional[str]  # ELF soname, PE export name, Mach-O LC_ID_DYLIB
    needed: Tuple[str, ...]
    rpaths: Tuple[str, ...]
    exports_count: int
    kind: str  # KIND_*
    python_version: Optional[str]  # "3.11", "abi3" or None
    facts: object = field(default=None)  # ElfFacts, PeFacts or MachoFacts

    def to_json(self) -> dict:
        """Plain JSON data, as ``gilclone inspect --json`` prints it."""
        out = dataclasses.asdict(self)
        if isinstance(self.facts, MachoFacts):
            out["facts"]["architectures"] = list(self.facts.architectures)
        if isinstance(self.facts, PeFacts):
            for sec, raw in zip(self.facts.sections, out["facts"]["sections"]):
                raw["slack"] = sec.slack
        return _lists(out)


@dataclass(frozen=True)
class PythonInstall:
    """Where an interpreter's libpython and extension modules are."""

    executable: str
    version: str  # full version, e.g. "3.11.7"
    platform: str  # "linux", "windows" or "macos"
    machine: str
    libpython: Optional[str]  # the shared library the copies are made from
    linkage: str  # "shared": the executable loads libpython; "static": it is linked in
    # For a static host: where the matching shared library was looked for.
    libpython_searched: Tuple[str, ...]
    libpython_version: Optional[str]  # version found inside that library, if read
    extension_dirs: Tuple[str, ...]
    extension_suffix: str
    prefix: str
    base_prefix: str
    sys_path: Tuple[str, ...]

    @property
    def short_version(self) -> str:
        """``"3.11"`` for version ``"3.11.7"``."""
        return ".".join(self.version.split(".")[:2])

    def to_json(self) -> dict:
        """Plain JSON data, as ``gilclone locate --json`` prints it."""
        out = _lists(dataclasses.asdict(self))
        out["short_version"] = self.short_version
        return out


def _lists(value):
    """Tuples become lists so the JSON reads the same as what the readers saw."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value
