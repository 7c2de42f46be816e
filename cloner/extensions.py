"""Per-clone copies ("twins") of extension modules, made on first import.

CPython extension modules on Linux resolve ``Py*`` symbols from whatever is
first in the global scope, i.e. the host's libpython. A clone needs its own
copy of each extension, with a DT_NEEDED on the clone's libpython (so a
RTLD_DEEPBIND load finds the clone first) and its ``$ORIGIN`` run paths made
absolute (so bundled libraries such as numpy's OpenBLAS are still found from
the copy's new place).

The helper libraries in the twin's closure that call the C API get per-clone
copies first (``closure.py``), in ``<clone>/lib/``, and the twin names those
copies. Twins and copies are members of the clone like its libpython: built
under the clone's ext lock, listed in its manifest with their ``.json``
records, private modes, and used only while listed and intact (``integrity``).
"""

import contextlib
import hashlib
import logging
import os
import threading
import time
from typing import Dict, List, Optional, Tuple

from gilclone.cloner import closure, integrity, leftovers, store, trust
from gilclone.cloner.builders import builder_for
from gilclone.cloner.filelock import FileLock
from gilclone.platforms import resolve

from gilclone.errors import BinaryFormatError, CloneError, GilcloneError

TWIN_FILE = "twin.json"

log = logging.getLogger(__name__)


class TwinFactory:
    """Makes and finds the extension twins of one clone. Thread-safe and process-safe."""

    def __init__(self, record: store.CloneRecord):
        self.record = record
        self._known: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._python: Optional[dict] = None

    def twin_for(self, origin: str) -> str:
        """Path of the twin of extension ``origin``, built if missing or stale."""
        with self._lock:
            known = self._known.get(origin)
            if known:
                return known
            twin = self._twin_for(os.path.realpath(origin))
            self._known[origin] = twin
            return twin

    def library_for(self, name: str) -> str:
        """The clone's copy of the library ``name`` (a path or a bare name, as given to
        dlopen) if it needs one (it or a dependency calls the C API), else ""."""
        with self._lock:
            key = "lib\0" + name
            if key not in self._known:
                self._known[key] = self._library_for(name)
            return self._known[key]

    def _library_for(self, name: str) -> str:
        if self.record.binary_format != "ELF":
            return ""  # ctypes redirection: Linux clones only
        path = name if "/" in name else _search(name, _PROBE)
        facts = self._probe(path) if path else None
        if facts is None:
            return ""  # let dlopen report what it cannot find
        if os.path.realpath(path).startswith(os.path.realpath(self.record.directory) + os.sep):
            return ""  # already this clone's own file (its libpython, a twin or a copy)
        plan = self._plan(path)
        if not facts.uses_python_api and not plan.libraries:
            return ""
        return self._own_copy(path, plan)

    def _own_copy(self, path: str, plan: closure.ClosurePlan) -> str:
        copy = closure.plan_library(plan, self.record, self._probe(path))
        copies = plan.copies + (copy,)
        self._use_copies(copies)
        if not all(self._copy_is_current(c) for c in copies):
            with self._building():
                self._make_copies(copies)
        return copy.path

    def _twin_for(self, source: str) -> str:
        base = os.path.basename(source)
        key = f"{base}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"
        twin = os.path.join(self.record.ext_dir, key, base)
        if self.record.binary_format == "PE" and not source.lower().endswith(".pyd"):
            # A C-API DLL imported as a module (pywin32's pywintypes311.dll): the module
            # and the DLL that twins import by name must be one image, the clone's copy.
            return self._own_copy(source, self._plan(source))
        plan = self._plan(source)
        self._use_copies(plan.copies)
        libraries = dict(plan.libraries)
        rels = [f"ext/{key}/{base}", f"ext/{key}/{TWIN_FILE}"]
        if all(self._copy_is_current(c) for c in plan.copies) and _is_current(
                self.record, rels, source, {"libraries": libraries}):
            return twin
        with self._building():
            self._make_copies(plan.copies)
            if _is_current(self.record, rels, source, {"libraries": libraries}):
                return twin
            t0 = time.perf_counter()
            self._build(source, key, base, libraries)
        log.info("clone %d: built twin of %s in %.2f s", self.record.index, source, time.perf_counter() - t0)
        return twin

    @contextlib.contextmanager
    def _building(self):
        """Hold the clone's ext lock, the one verify and the pool check files under (see
        integrity.ext_lock): every twin and library copy is built and listed under it,
        so what lies unfinished in ext/ or lib/ while we hold it is dead."""
        trust.make_private_dirs(self.record.ext_dir)
        with FileLock(os.path.join(self.record.ext_dir, ".lock")):
            leftovers.remove_in(self.record.ext_dir, lock_held=True)
            leftovers.remove_in(os.path.join(self.record.directory, closure.LIB_DIR), lock_held=True)
            yield

    # -- helper libraries ----------------------------------------------------

    def _probe(self, path: str):
        if self.record.binary_format == "PE":
            from gilclone.cloner import pe_closure

            return pe_closure.probe(path)
        if self.record.binary_format == "Mach-O":
            from gilclone.cloner import macho_closure

            return macho_closure.probe(path)
        return _PROBE(path)

    def _plan(self, source: str) -> closure.ClosurePlan:
        if self.record.binary_format == "PE":
            from gilclone.cloner import pe_closure

            config = pe_closure.config_for(self._set_python())
            return closure.plan(source, self.record, config, pe_closure.probe,
                                resolver=pe_closure.resolve_needed)
        if self.record.binary_format == "Mach-O":  # checked statically (macho_closure.py)
            from gilclone.cloner import macho_closure

            return closure.plan(source, self.record, resolve.LoaderConfig(), macho_closure.probe,
                                resolver=resolve.resolve_dyld_needed)
        chain = tuple(f for f in (_PROBE(self.record.libpython), _PROBE(_executable())) if f)
        plan = closure.plan(source, self.record, resolve.system_config(), _PROBE, chain)
        problem = closure.refusal(plan, _PROBE)
        if problem:
            raise CloneError(problem)
        return plan

    def _set_python(self) -> dict:
        """The set's facts about its Python (set.json), for the DLL search directories."""
        if self._python is None:
            try:
                self._python = store.load_set(os.path.dirname(self.record.directory)).python
            except GilcloneError:
                self._python = {}
        return self._python

    def _use_copies(self, copies: Tuple[closure.LibraryCopy, ...]) -> None:
        if copies and os.name == "nt":
            _add_dll_directory(os.path.dirname(copies[0].path))

    def _copy_is_current(self, copy: closure.LibraryCopy) -> bool:
        return _is_current(self.record, _library_rels(copy), copy.source,
                           {"libraries": dict(copy.libraries)})

    def _make_copies(self, copies: Tuple[closure.LibraryCopy, ...]) -> None:
        """Build the stale ones (the caller holds the ext lock, see ``_building``)."""
        for copy in copies:
            if not self._copy_is_current(copy):
                t0 = time.perf_counter()
                self._build_library(copy)
                log.info("clone %d: copied helper library %s in %.2f s", self.record.index, copy.source,
                         time.perf_counter() - t0)

    def _build_library(self, copy: closure.LibraryCopy) -> None:
        lib_dir = os.path.dirname(copy.path)
        trust.make_private_dirs(lib_dir)
        tmp = os.path.join(lib_dir, leftovers.temp_name())
        os.mkdir(tmp, trust.DIR_MODE)
        target = os.path.join(tmp, copy.soname)
        try:
            try:
                _library_builder(self.record.binary_format)(
                    copy.source,
                    target,
                    copy.path if self.record.binary_format == "Mach-O" else copy.soname,  # install name
                    self.record.rename_map,
                    self.record.soname if copy.uses_python_api else None,
                    dict(copy.libraries),
                )
            except GilcloneError as exc:
                raise CloneError(f"cannot copy helper library {copy.source}: {exc}") from None
            store.write_json_atomic(target + ".json", _record(copy.source, target, dict(copy.libraries)))
            trust.seal(tmp)
            os.replace(target, copy.path)
            os.replace(target + ".json", copy.path + ".json")
            # The manifest lists every file of the clone: a copy not listed is refused.
            integrity.list_files_in_manifest(self.record.directory, _library_rels(copy))
        finally:
            if os.path.exists(tmp):
                store.discard(tmp)

    # -- twins ---------------------------------------------------------------

    def _build(self, source: str, key: str, base: str, libraries: Dict[str, str]) -> None:
        builder = builder_for(self.record.binary_format)
        tmp = os.path.join(self.record.ext_dir, leftovers.temp_name())
        os.mkdir(tmp, trust.DIR_MODE)
        target = os.path.join(tmp, base)
        extra = {"libraries": libraries} if libraries else {}
        try:
            try:
                builder.build_twin(source, target, self.record.rename_map, self.record.soname, **extra)
            except BinaryFormatError as exc:
                raise CloneError(f"cannot copy extension module: {exc}") from None
            store.write_json_atomic(os.path.join(tmp, TWIN_FILE), _record(source, target, libraries))
            trust.seal(tmp)
            twin_dir = os.path.join(self.record.ext_dir, key)
            store.discard(twin_dir)
            os.rename(tmp, twin_dir)
            # The manifest lists every file of the clone: a twin not listed is refused.
            integrity.list_in_manifest(self.record.directory, f"ext/{key}/",
                                       [f"ext/{key}/{base}", f"ext/{key}/{TWIN_FILE}"])
        finally:
            if os.path.exists(tmp):
                store.discard(tmp)


_PROBE = resolve.file_probe()


_DLL_DIRECTORIES: Dict[str, object] = {}


def note_dll_directory(path: str) -> str:
    """Host operation "dlldir" (Windows): where the clone's helper DLLs are searched."""
    from gilclone.cloner import pe_closure

    return pe_closure.note_dll_directory(path)


def _add_dll_directory(directory: str) -> None:
    """Windows: twins import the clone's helper-DLL copies by name; let the loader find them."""
    if directory not in _DLL_DIRECTORIES:
        trust.make_private_dirs(directory)
        try:
            _DLL_DIRECTORIES[directory] = os.add_dll_directory(directory)
        except (OSError, AttributeError):
            pass


def _library_builder(binary_format: str):
    if binary_format == "Mach-O":
        from gilclone.cloner.macho_closure import build_library
    elif binary_format == "PE":
        from gilclone.cloner.pe_closure import build_library
    else:
        from gilclone.cloner.elf_clone import build_library
    return build_library


def _library_rels(copy: closure.LibraryCopy) -> List[str]:
    """A copy's file and its ``.json`` record, relative to the clone (as the manifest has them)."""
    rel = f"{closure.LIB_DIR}/{copy.soname}"
    return [rel, rel + ".json"]


def _executable() -> str:
    return os.path.realpath("/proc/self/exe") if os.path.exists("/proc/self/exe") else ""


def _search(name: str, probe: resolve.Probe) -> Optional[str]:
    """Where dlopen(name) would look (LD_LIBRARY_PATH, cache, default directories)."""
    exe = probe(_executable()) if _executable() else None
    if exe is None:
        return None
    found, _ = resolve.resolve_needed(name, exe, (), resolve.system_config(), probe)
    return found.path if found else None


def _record(source: str, target: str, libraries: Dict[str, str]) -> dict:
    """What twin.json (and a library copy's .json) says: where it came from, its hash and
    which helper-library copies it names."""
    src_stat = os.stat(source)
    return {
        "source": source,
        "source_size": src_stat.st_size,
        "source_mtime_ns": src_stat.st_mtime_ns,
        "sha256": store.sha256_file(target),
        "libraries": libraries,
    }


def _is_current(record: store.CloneRecord, rels: List[str], source: str, expect: dict) -> bool:
    """The copy (``rels``: the file, then its .json record) exists, was made from the source
    as it is now (with the ``expect``ed fields: which helper-library copies it names), and
    is listed and unaltered.

    The record only says which source the copy was made from; the copy's path is ours
    (``ext/<key>/<base>``, ``lib/<soname>``), never read from it.
    """
    try:
        meta = store.read_json(os.path.join(record.directory, rels[1]))
        src = os.stat(source)
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("source") != source:
        return False
    if meta.get("source_size") != src.st_size or meta.get("source_mtime_ns") != src.st_mtime_ns:
        return False
    if any(meta.get(k, {}) != v for k, v in expect.items()):
        return False
    return integrity.listed_and_intact(record, rels)
