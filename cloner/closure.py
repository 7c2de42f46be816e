"""Per-clone copies of the helper libraries in an extension module's closure (ELF).

An extension twin is bound to its clone, but the shared libraries it loads are
found by name and loaded once per process. One that calls the C API itself
(pyarrow's ``libarrow_python``, pybind11 helpers) would bind its ``Py*``
references to the host's libpython. So, when a twin is made, its closure is
resolved as ld.so would (``platforms.resolve``); every library in it that
references the C API, and every library that depends on one that does, gets a
copy in ``<clone>/lib/`` with its own same-length soname, bound to the clone's
libpython, and every copy that names it (twin or library) names the copy by
path.

Libraries without Python references stay shared (OpenBLAS, libstdc++), with one
exception: the libraries a C-API helper library loads from its own directory
(its "companions": libarrow, libarrow_compute, libparquet beside
libarrow_python). Python-side code registers Python objects in their
process-wide registries (pandas registers Arrow extension types, pyarrow
compute functions); shared, a second clone got "A type extension with name
pandas.period already defined" and ran the first clone's functions. Whether a
library is a companion depends only on its directory, so every twin of a clone
agrees on it, whatever was imported first.
"""

import ctypes
import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from gilclone.cloner import naming, store
from gilclone.platforms import resolve
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_deps import DynamicFacts

from gilclone.errors import CloneError

LIB_DIR = "lib"


@dataclass(frozen=True)
class LibraryCopy:
    """One library of a closure that a clone gets its own copy of."""

    source: str  # real path of the original
    path: str  # the copy, inside the clone's lib directory
    soname: str  # the copy's soname (also its file name)
    uses_python_api: bool
    libraries: Tuple[Tuple[str, str], ...]  # its DT_NEEDED names -> copies' paths


@dataclass(frozen=True)
class ClosurePlan:
    """What a root object (twin or library loaded by path) needs copied."""

    root: str
    libraries: Tuple[Tuple[str, str], ...]  # the root's DT_NEEDED names -> copies' paths
    copies: Tuple[LibraryCopy, ...]


def is_libpython(name: str) -> bool:
    return (python_version_from_libname(name) or "").startswith("3")


def copied_objects(closure: resolve.Closure, companions=lambda path: False) -> Set[str]:
    """Paths of the closure's libraries (not the root) that need per-clone copies: the
    C-API users, the companions, and, transitively, whatever depends on one of them."""
    root = closure.objects[0].path
    chosen = {o.path for o in closure.objects[1:] if o.uses_python_api or companions(o.path)}
    grew = True
    while grew:
        grew = False
        for edge in closure.edges:
            if edge.loader != root and edge.path in chosen and edge.loader not in chosen:
                chosen.add(edge.loader)
                grew = True
    return chosen


def plan(
    source: str,
    record: store.CloneRecord,
    config: resolve.LoaderConfig,
    probe: resolve.Probe,
    chain: Tuple[DynamicFacts, ...] = (),
    resolver=resolve.resolve_needed,
) -> ClosurePlan:
    """The copies the clone of ``record`` needs for ``source`` (pure given probe and config).

    ``resolver``: ``resolve.resolve_needed`` for ELF, ``resolve.resolve_dyld_needed`` for Mach-O.
    """
    root = probe(source)
    if root is None:
        raise CloneError(f"{source}: not a readable {record.binary_format} image")
    closure = resolve.resolve_closure(root, config, probe, chain=chain, skip=is_libpython, resolver=resolver)
    chosen = copied_objects(closure, lambda path: is_companion(path, config, probe, resolver))
    copies: Dict[str, LibraryCopy] = {}
    names: Dict[str, str] = {}  # original path -> the copy's path
    for obj in closure.objects[1:]:
        if obj.path in chosen:
            names[obj.path] = _copy_path(record, obj)

    def renames(path: str) -> Tuple[Tuple[str, str], ...]:
        return tuple((e.name, names[e.path]) for e in closure.edges if e.loader == path and e.path in names)

    for obj in closure.objects[1:]:
        if obj.path in chosen:
            copy = names[obj.path]
            copies[obj.path] = LibraryCopy(
                source=os.path.realpath(obj.path),
                path=copy,
                soname=os.path.basename(copy),
                uses_python_api=obj.uses_python_api,
                libraries=renames(obj.path),
            )
    return ClosurePlan(root=root.path, libraries=renames(root.path), copies=tuple(copies.values()))


def is_companion(path: str, config: resolve.LoaderConfig, probe: resolve.Probe,
                 resolver=resolve.resolve_needed) -> bool:
    """True if a C-API helper library in the same directory loads ``path``.

    Only for libraries a package ships: the system's directories (default and ld.so
    cache ones) hold hundreds of libraries whose state no Python package fills.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if directory in _system_dirs(config):
        return False
    return os.path.realpath(path) in _companions(directory, config, probe, resolver)


@functools.lru_cache(maxsize=8)
def _system_dirs(config: resolve.LoaderConfig) -> frozenset:
    dirs = set(config.default_dirs) | {os.path.dirname(e.path) for e in config.cache}
    return frozenset(dirs | {os.path.realpath(d) for d in dirs})


@functools.lru_cache(maxsize=256)
def _companions(directory: str, config: resolve.LoaderConfig, probe: resolve.Probe, resolver) -> frozenset:
    found, seen = set(), set()
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return frozenset()
    for name in names:
        real = os.path.realpath(os.path.join(directory, name))
        if not (".so" in name or name.endswith(".dylib")) or real in seen:
            continue
        seen.add(real)
        helper = probe(os.path.join(directory, name))
        if helper is None or not helper.uses_python_api or helper.python_init or is_libpython(name):
            continue
        closure = resolve.resolve_closure(helper, config, probe, skip=is_libpython, resolver=resolver)
        found.update(
            os.path.realpath(o.path)
            for o in closure.objects[1:]
            if os.path.dirname(os.path.abspath(o.path)) == directory
        )
    return frozenset(found)


def plan_library(plan_: ClosurePlan, record: store.CloneRecord, root: DynamicFacts) -> LibraryCopy:
    """The copy of the plan's root itself, for a library loaded by path (ctypes)."""
    path = _copy_path(record, root)
    return LibraryCopy(
        source=os.path.realpath(root.path),
        path=path,
        soname=os.path.basename(path),
        uses_python_api=root.uses_python_api,
        libraries=plan_.libraries,
    )


def _copy_path(record: store.CloneRecord, obj: DynamicFacts) -> str:
    """ELF: a same-length soname. Mach-O: the path is the install name, so any length.
    PE: a same-length DLL name (imports are renamed in place)."""
    real = os.path.realpath(obj.path)
    key = hashlib.sha256(f"{record.directory}\0{real}".encode()).hexdigest()
    if record.binary_format == "Mach-O":
        name = f"lib{key[:16]}{naming.index_token(record.index)}.dylib"
    elif record.binary_format == "PE":
        from gilclone.cloner.pe_closure import copy_name

        name = copy_name(os.path.basename(obj.path), key, record.index)
    else:
        name = naming.library_soname(obj.soname or os.path.basename(obj.path), key, record.index)
    return os.path.join(record.directory, LIB_DIR, name)


# ---------------------------------------------------------------------------
# What cannot be copied: a library already in this process's global scope


def refusal(plan_: ClosurePlan, probe: resolve.Probe) -> Optional[str]:
    """Why the plan cannot be carried out safely in this process, or None."""
    for copy in plan_.copies:
        facts = probe(copy.source)
        if facts is not None and in_global_scope(facts):
            return (
                f"{copy.source} cannot be given a per-clone copy: this process already loaded "
                "it into its global symbol scope (RTLD_GLOBAL, LD_PRELOAD or the executable's "
                "own dependencies), so libraries that look it up there would reach the host's "
                "copy from the clone. Load it without RTLD_GLOBAL in the host, or import this "
                "module in the host only"
            )
    return None


def in_global_scope(facts: DynamicFacts) -> bool:
    """True if a symbol ``facts`` defines resolves, through the global scope, into that file."""
    libc = _libc()
    if libc is None or not facts.defines:
        return False
    real = os.path.realpath(facts.path)
    for name in facts.defines:
        address = libc.dlsym(None, name.encode())  # None: RTLD_DEFAULT, the global scope
        if address and _file_of(libc, address) == real:
            return True
    return False


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


_LIBC: List[object] = []


def _libc():
    if not _LIBC:
        try:
            # The process's global scope has libc's dlsym and dladdr; find_library would
            # start ldconfig in a subprocess on the way to a pool's first result.
            lib = ctypes.CDLL(None)
            lib.dlsym.restype = ctypes.c_void_p
            lib.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        except (OSError, AttributeError):
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def _file_of(libc, address: int) -> Optional[str]:
    info = _DlInfo()
    if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))
