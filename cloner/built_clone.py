"""What a format's builder returns for a clone's libpython (see cloner.builders).

A module of its own so that the format modules (elf_clone, pe_clone,
macho_clone) need not import builders, which chooses among them.
"""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class BuiltClone:
    libpython: str  # file name of the libpython copy inside the clone directory
    files: Tuple[str, ...]  # every file written, relative to the clone directory
    renames: Tuple[Tuple[str, str], ...]  # (original image name, clone's name)
