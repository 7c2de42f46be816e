"""Per-clone copies ("twins") of extension modules, made on first import.

CPython extension modules on Linux resolve ``Py*`` symbols from whatever is
first in the global scope, i.e. the host's libpython. A clone needs its own
copy of each extension, with a DT_NEEDED on the clone's libpython (so a
RTLD_DEEPBIND load finds the clone first) and its ``$ORIGIN`` run paths made
absolute (so bundled libraries such as numpy's OpenBLAS are still found from
the copy's new place).

On ELF, the helper libraries in the twin's closure that call the C API get
per-clone copies first (``closure.py``), and the twin names those copies.
"""

import hashlib
import os
import threading
import uuid
from typing import Dict, Optional, Tuple

from gilclone.cloner import closure, store
from gilclone.cloner.builders import builder_for
from gilclone.cloner.filelock import FileLock
from gilclone.platforms import resolve

from gilclone.errors import BinaryFormatError, CloneError, GilcloneError

TWIN_FILE = "twin.json"


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
        self._make_copies(plan.copies + (copy,))
        return copy.path

    def _twin_for(self, source: str) -> str:
        base = os.path.basename(source)
        key = f"{base}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"
        twin_dir = os.path.join(self.record.ext_dir, key)
        twin = os.path.join(twin_dir, base)
        if self.record.binary_format == "PE" and not source.lower().endswith(".pyd"):
            # A C-API DLL imported as a module (pywin32's pywintypes311.dll): the module
            # and the DLL that twins import by name must be one image, the clone's copy.
            return self._own_copy(source, self._plan(source))
        plan = self._plan(source)
        self._make_copies(plan.copies)
        libraries = dict(plan.libraries)
        meta = os.path.join(twin_dir, TWIN_FILE)
        if _is_current(meta, twin, source, {"libraries": libraries}):
            return twin
        os.makedirs(self.record.ext_dir, exist_ok=True)
        with FileLock(os.path.join(self.record.ext_dir, ".lock")):
            if _is_current(meta, twin, source, {"libraries": libraries}):
                return twin
            self._build(source, twin_dir, base, libraries)
        return twin

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

    def _make_copies(self, copies: Tuple[closure.LibraryCopy, ...]) -> None:
        if copies and os.name == "nt":
            _add_dll_directory(os.path.dirname(copies[0].path))
        for copy in copies:
            expect = {"libraries": dict(copy.libraries)}
            meta = copy.path + ".json"
            if _is_current(meta, copy.path, copy.source, expect):
                continue
            os.makedirs(os.path.dirname(copy.path), exist_ok=True)
            with FileLock(os.path.join(os.path.dirname(copy.path), ".lock")):
                if not _is_current(meta, copy.path, copy.source, expect):
                    _remove_leftovers(os.path.dirname(copy.path))
                    self._build_library(copy, meta)

    def _build_library(self, copy: closure.LibraryCopy, meta: str) -> None:
        if self.record.binary_format == "Mach-O":
            from gilclone.cloner.macho_closure import build_library

            name = copy.path  # the install name
        elif self.record.binary_format == "PE":
            from gilclone.cloner.pe_closure import build_library

            name = copy.soname
        else:
            from gilclone.cloner.elf_clone import build_library

            name = copy.soname
        tmp = os.path.join(os.path.dirname(copy.path), f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{copy.soname}")
        try:
            try:
                build_library(
                    copy.source,
                    tmp,
                    name,
                    self.record.rename_map,
                    self.record.soname if copy.uses_python_api else None,
                    dict(copy.libraries),
                )
            except GilcloneError as exc:
                raise CloneError(f"cannot copy helper library {copy.source}: {exc}") from None
            os.replace(tmp, copy.path)
            store.write_json_atomic(meta, _record(copy.source, copy.path, {"libraries": dict(copy.libraries)}))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # -- twins ---------------------------------------------------------------

    def _build(self, source: str, twin_dir: str, base: str, libraries: Dict[str, str]) -> None:
        builder = builder_for(self.record.binary_format)
        tmp = os.path.join(self.record.ext_dir, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        target = os.path.join(tmp, base)
        extra = {"libraries": libraries} if libraries else {}
        try:
            try:
                builder.build_twin(source, target, self.record.rename_map, self.record.soname, **extra)
            except BinaryFormatError as exc:
                raise CloneError(f"cannot copy extension module: {exc}") from None
            store.write_json_atomic(os.path.join(tmp, TWIN_FILE), _record(source, target, {"libraries": libraries}))
            store.discard(twin_dir)
            os.rename(tmp, twin_dir)
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
        os.makedirs(directory, exist_ok=True)
        try:
            _DLL_DIRECTORIES[directory] = os.add_dll_directory(directory)
        except (OSError, AttributeError):
            pass


def _remove_leftovers(lib_dir: str) -> None:
    """Half-written copies of a killed process (only called holding the directory's lock)."""
    for name in os.listdir(lib_dir):
        if name.startswith(".tmp-") or ".json.tmp-" in name:
            try:
                os.remove(os.path.join(lib_dir, name))
            except OSError:
                pass


def _executable() -> str:
    return os.path.realpath("/proc/self/exe") if os.path.exists("/proc/self/exe") else ""


def _search(name: str, probe: resolve.Probe) -> Optional[str]:
    """Where dlopen(name) would look (LD_LIBRARY_PATH, cache, default directories)."""
    exe = probe(_executable()) if _executable() else None
    if exe is None:
        return None
    found, _ = resolve.resolve_needed(name, exe, (), resolve.system_config(), probe)
    return found.path if found else None


def _record(source: str, target: str, extra: dict) -> dict:
    """What twin.json (and a library copy's .json) says: where it came from, its hash."""
    src_stat = os.stat(source)
    tgt_stat = os.stat(target)
    return {
        "source": source,
        "source_size": src_stat.st_size,
        "source_mtime_ns": src_stat.st_mtime_ns,
        "sha256": store.sha256_file(target),
        "stamp": [tgt_stat.st_size, tgt_stat.st_mtime_ns, tgt_stat.st_ctime_ns, tgt_stat.st_ino],
        **extra,
    }


def _is_current(meta_path: str, twin: str, source: str, expect: Optional[dict] = None) -> bool:
    """The copy exists, was made from the source as it is now (with the ``expect``ed
    fields: which helper-library copies it names), and is unaltered."""
    try:
        meta = store.read_json(meta_path)
        src = os.stat(source)
        tgt = os.stat(twin)
    except (OSError, ValueError):
        return False
    if meta.get("source") != source or meta.get("source_size") != src.st_size:
        return False
    if meta.get("source_mtime_ns") != src.st_mtime_ns:
        return False
    if any(meta.get(k, {}) != v for k, v in (expect or {}).items()):
        return False
    stamp = [tgt.st_size, tgt.st_mtime_ns, tgt.st_ctime_ns, tgt.st_ino]
    if tgt.st_ino and meta.get("stamp") == stamp:  # no inode number: trust only the hash
        return True
    return store.sha256_file(twin) == meta.get("sha256")
