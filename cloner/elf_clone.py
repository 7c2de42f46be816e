"""Linux (ELF) clones: how a libpython copy and an extension twin are made.

The libpython copy gets a new, same-length soname written in place. An
extension twin gets a DT_NEEDED on that soname (replacing one on libpython if
the module linked it) and its ``$ORIGIN`` run paths made absolute, so a
RTLD_DEEPBIND load binds its ``Py*`` references to the clone and still finds
the libraries bundled next to the original.
"""

import os
import re
from typing import Dict, List, Optional

from gilclone.cloner import elf_writer, naming
from gilclone.cloner.built_clone import BuiltClone
from gilclone.platforms import elf as elf_reader
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_deps import read_dynamic_facts


def build_libpython(source: str, directory: str, name_id: str, index: int) -> BuiltClone:
    original = elf_reader.read(source).name
    soname = naming.clone_soname(original, name_id, index)
    elf_writer.apply(source, os.path.join(directory, soname), elf_writer.ElfEdits(soname=soname))
    return BuiltClone(libpython=soname, files=(soname,), renames=((original, soname),))


def build_twin(
    source: str,
    target: str,
    renames: Dict[str, str],
    libpython: str,
    libraries: Optional[Dict[str, str]] = None,
) -> None:
    """``libraries`` maps DT_NEEDED names of helper libraries to the clone's copies (paths)."""
    elf_writer.apply(source, target, _bound_edits(source, renames, libpython, libraries or {}))


def build_library(
    source: str,
    target: str,
    soname: str,
    renames: Dict[str, str],
    libpython: Optional[str],
    libraries: Dict[str, str],
) -> None:
    """A clone's copy of a helper library: its own soname, its C-API references bound to
    the clone's libpython (``libpython`` None: it has none), its helper dependencies to
    the clone's copies of them."""
    edits = _bound_edits(source, renames, libpython, libraries)
    edits.soname = soname
    elf_writer.apply(source, target, edits)


def _bound_edits(source, renames, libpython, libraries) -> elf_writer.ElfEdits:
    info = read_dynamic_facts(source)
    linked = [n for n in info.needed if (python_version_from_libname(n) or "").startswith("3")]
    replace = {old: renames.get(old, libpython) for old in linked if libpython}
    replace.update({old: new for old, new in libraries.items() if old in info.needed})
    return elf_writer.ElfEdits(
        replace_needed=replace,
        add_needed=[] if linked or not libpython else [libpython],
        rpaths=tuple(resolve_origin(info.run_paths, os.path.dirname(source))),
    )


# $ORIGIN or ${ORIGIN}, but not the start of a longer name such as $ORIGINAL (ld.so's rule).
_ORIGIN = re.compile(r"\$\{ORIGIN\}|\$ORIGIN(?![A-Za-z0-9_])")


def resolve_origin(rpaths, origin_dir: str) -> List[str]:
    """Run paths with $ORIGIN replaced by the directory of the original file."""
    return [_ORIGIN.sub(lambda _m: origin_dir, p) for p in rpaths]
