"""macOS (Mach-O) side of closure cloning: what a dylib is to the resolver, and its copy.

NOT YET RUN ON A MAC (like macho_clone.py): checked statically with the LLVM tools.
A helper dylib's copy gets an install name that is its absolute path in the clone
(dyld keys loaded images by install name, so two clones' copies never meet), a
fresh UUID, its ``Py*`` binds pointed at the clone's libpython, its references to
other copied dylibs renamed to their copies' install names, ``@loader_path``
made absolute, and an ad-hoc signature (the writer's ``apply`` does all of it).
"""

import os
from typing import Dict, Optional

from gilclone.cloner import macho_writer
from gilclone.cloner.macho_clone import _clone_name
from gilclone.platforms import macho
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.resolve import file_probe

from gilclone.errors import BinaryFormatError


def _read_facts(path: str) -> DynamicFacts:
    info = macho.read(path)
    with open(path, "rb") as f:
        data = f.read()
    _fat, slices = macho.scan(data)
    binds = macho_writer.python_binds(data, slices[0])
    return DynamicFacts(
        path=path,
        soname=info.name,
        needed=info.needed,
        rpath=info.rpaths,
        runpath=None,
        nodeflib=False,
        elf_class=64,
        machine="Mach-O",
        python_refs=len(binds),
        python_init=info.kind == "extension",
    )


# The resolver's facts of a Mach-O image, None if there is no readable one.
probe = file_probe(_read_facts, unreadable=(BinaryFormatError, OSError, ValueError))


def library_edits(source: str, renames: Dict[str, str], libpython: Optional[str],
                  libraries: Dict[str, str]) -> macho_writer.MachoEdits:
    """Edits binding a copy of ``source`` to the clone: ``libpython`` is the clone's file
    name (None: the image has no Py* binds), ``libraries`` maps load-command names of
    copied dylibs to the copies' install names."""
    info = macho.read(source)
    rename = {n: new for n, new in libraries.items() if n in info.needed}
    clone = _clone_name(renames, libpython) if libpython else None
    linked = [n for n in info.needed if n in renames or (python_version_from_libname(n) or "").startswith("3")]
    if clone:
        rename.update({n: clone for n in linked})
    return macho_writer.MachoEdits(
        add_dylib=clone if clone and not linked else None,
        rename_dylibs=rename,
        rebind_python=bool(clone),
        loader_path_base=os.path.dirname(os.path.realpath(source)),
    )


def build_library(source: str, target: str, install_name: str, renames: Dict[str, str],
                  libpython: Optional[str], libraries: Dict[str, str]) -> None:
    edits = library_edits(source, renames, libpython, libraries)
    edits.new_id = install_name
    macho_writer.apply(source, target, edits)
