"""How one OS finds the files of an environment and loads them (``doctor --env``)."""

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

from gilclone.platforms import resolve
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.elf_versions import VersionFacts


@dataclass(frozen=True)
class Rules:
    """How one OS finds the files of an environment and loads them."""

    wanted: Callable[[str], bool]  # file names to read: extension modules and libraries
    suffixes: Tuple[str, ...]  # the names the import system loads as extension modules
    stdlib_dirs: Tuple[str, ...]  # directories whose files belong to the standard library
    probe: Callable[[str], Optional[DynamicFacts]]  # remembers what it read
    versions: Callable[[str], Optional[VersionFacts]]
    resolver: Callable  # resolve.resolve_needed's signature
    chain: Tuple[DynamicFacts, ...]  # who loads an extension module, nearest first
    host_loaded: Mapping[str, DynamicFacts]  # what is loaded before any import, by name
    config: resolve.LoaderConfig = resolve.LoaderConfig()
