"""Linux (ELF) clones: how a libpython copy and an extension twin are made.

The libpython copy gets a new, same-length soname written in place. An
extension twin gets a DT_NEEDED on that soname (replacing one on libpython if
the module linked it) and its ``$ORIGIN`` run paths made absolute, so a
RTLD_DEEPBIND load binds its ``Py*`` references to the clone and still finds
the libraries bundled next to the original.
"""

import os
import re
from typing import Dict, List

from gilclone.cloner import elf_writer, naming
from gilclone.cloner.built_clone import BuiltClone
from gilclone.platforms import elf as elf_reader
from gilclone.platforms.classify import python_version_from_libname


def build_libpython(source: str, directory: str, name_id: str, index: int) -> BuiltClone:
    original = elf_reader.read(source).name
    soname = naming.clone_soname(original, name_id, index)
    elf_writer.apply(source, os.path.join(directory, soname), elf_writer.ElfEdits(soname=soname))
    return BuiltClone(libpython=soname, files=(soname,), renames=((original, soname),))


def build_twin(source: str, target: str, renames: Dict[str, str], libpython: str) -> None:
    info = elf_reader.read(source)
    linked = [n for n in info.needed if (python_version_from_libname(n) or "").startswith("3")]
    edits = elf_writer.ElfEdits(
        replace_needed={old: renames.get(old, libpython) for old in linked},
        add_needed=[] if linked else [libpython],
        rpaths=tuple(resolve_origin(info.rpaths, os.path.dirname(source))),
    )
    elf_writer.apply(source, target, edits)


# $ORIGIN or ${ORIGIN}, but not the start of a longer name such as $ORIGINAL (ld.so's rule).
_ORIGIN = re.compile(r"\$\{ORIGIN\}|\$ORIGIN(?![A-Za-z0-9_])")


def resolve_origin(rpaths, origin_dir: str) -> List[str]:
    """Run paths with $ORIGIN replaced by the directory of the original file."""
    return [_ORIGIN.sub(lambda _m: origin_dir, p) for p in rpaths]
