"""Which module builds clones for which binary format.

Each format module offers the same two functions:

- ``build_libpython(source, directory, name_id, index) -> BuiltClone``
  (cloner.built_clone) writes the clone's libpython (and any companion files:
  forwarders, path files) into ``directory``;
- ``build_twin(source, target, renames, libpython)`` writes a copy of extension
  module ``source`` at ``target`` bound to the clone (``renames`` maps original
  image names to the clone's, ``libpython`` is the clone's libpython name).
"""

import importlib

from gilclone.errors import CloneError

_MODULES = {
    "ELF": "gilclone.cloner.elf_clone",
    "PE": "gilclone.cloner.pe_clone",
    "Mach-O": "gilclone.cloner.macho_clone",
}


def builder_for(binary_format: str):
    name = _MODULES.get(binary_format)
    if name is None:
        raise CloneError(f"cannot clone {binary_format} binaries")
    try:
        return importlib.import_module(name)
    except ImportError:
        raise CloneError(f"cloning {binary_format} binaries is not implemented yet") from None
