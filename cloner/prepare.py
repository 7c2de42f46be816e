"""Prepare a clone set: N copies of an interpreter's libpython, each bound to itself."""

import errno
import hashlib
import logging
import os
import time
from typing import Callable, Optional

from gilclone.cloner import integrity, leftovers, naming, store, trust
from gilclone.cloner.builders import builder_for
from gilclone.cloner.filelock import FileLock
from gilclone.platforms.binary import read_binary
from gilclone.platforms.locate import locate
from gilclone.platforms.model import KIND_LIBPYTHON, PythonInstall

from gilclone.errors import (
    CacheLocationError,
    CacheTrustError,
    CloneError,
    CloneSetCorruptError,
    LocateError,
)

# progress(done, total, what): how many of the set's clones are ready, and what is being
# done now. The CLI draws it; the cloner only reports.
Progress = Callable[[int, int, str], None]

log = logging.getLogger(__name__)


def set_id_for(install: PythonInstall, libpython_sha256: str) -> str:
    """Identifies the set by the exact libpython bytes and the layout version."""
    return integrity.expected_set_id(install.version, libpython_sha256)


def naming_id(set_id: str, root: str) -> str:
    """Sonames must differ between two sets of one Python (two directories) loaded in
    one process, or extension copies of one set would bind to the other's libpython."""
    return hashlib.sha256(f"{set_id}:{os.path.realpath(root)}".encode()).hexdigest()


def default_set_dir(install: PythonInstall, set_id: str) -> str:
    return os.path.join(store.default_cache_root(), f"{install.version}-{set_id[:12]}")


def prepare(
    count: int,
    dest: Optional[str] = None,
    python: Optional[str] = None,
    install: Optional[PythonInstall] = None,
    progress: Optional[Progress] = None,
) -> store.CloneSet:
    """Make sure the set holds at least ``count`` valid clones and return it.

    Safe to run from several processes at once (they serialise on the set's
    lock), and after a killed run (its temporary directories are removed).
    """
    if not 1 <= count <= naming.MAX_CLONES:
        # Worded for every caller: the CLI's --count and ClonePool(max_workers) both land here.
        raise CloneError(f"the number of clones must be between 1 and {naming.MAX_CLONES}, not {count}")
    started = time.perf_counter()
    install = install or locate(python)
    libpython = _source_libpython(install)
    sha = store.sha256_file(libpython)
    set_id = set_id_for(install, sha)
    root = os.path.abspath(dest or default_set_dir(install, set_id))
    log.info("clone set of %s (Python %s): %s", libpython, install.version, root)
    store.check_writable_location(root)
    try:
        with FileLock(os.path.join(root, ".lock")):
            store.remove_leftovers(root)
            _write_set_file(root, install, libpython, sha, set_id)
            for index in range(count):
                record = _existing(root, index)
                problem = _problem(record) if record else "missing"
                if problem is None:
                    log.debug("clone %d in %s is intact: reused", index, root)
                    integrity.bless(record)
                    continue
                if progress:
                    progress(index, count, f"building clone {index} ({problem})")
                t0 = time.perf_counter()
                _build_clone(root, index, libpython, naming_id(set_id, root))
                log.info("built clone %d (%s) in %.2f s", index, problem, time.perf_counter() - t0)
                if progress:
                    progress(index + 1, count, f"built clone {index}")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheLocationError(
                f"{root}: no space left on the device while preparing clones "
                f"(each needs about {os.path.getsize(libpython) // 2**20 + 1} MiB); free space or "
                "choose another directory with --dest or GILCLONE_CACHE"
            ) from None
        raise CloneError(f"{root}: preparing clones failed: {exc}") from None
    log.info("clone set %s ready (%d clones) in %.2f s", root, count, time.perf_counter() - started)
    return store.load_set(root)


def _problem(record: store.CloneRecord) -> Optional[str]:
    """What makes an existing clone unusable; a clone someone else could have written is rebuilt."""
    try:
        return store.check_clone(record, full=True)
    except CacheTrustError as exc:
        return str(exc)


def _source_libpython(install: PythonInstall) -> str:
    _require_libpython(install)
    info = read_binary(install.libpython)
    if info.kind != KIND_LIBPYTHON:
        raise LocateError(f"{install.libpython}: is not a libpython (it is a {info.kind})")
    if not info.name:
        raise CloneError(f"{install.libpython}: has no soname to rewrite")
    return install.libpython


def _require_libpython(install: PythonInstall) -> str:
    if not install.libpython:
        searched = ", ".join(install.libpython_searched) or "nowhere known"
        raise LocateError(
            f"{install.executable} links libpython statically and no shared libpython "
            f"{install.short_version} was found (searched: {searched}); install the shared "
            f"library (Debian: apt-get install libpython{install.short_version}) or use a "
            "Python built with --enable-shared"
        )
    return install.libpython


def _write_set_file(root: str, install: PythonInstall, libpython: str, sha: str, set_id: str) -> None:
    path = os.path.join(root, store.SET_FILE)
    if os.path.lexists(path):
        trust.require_entry(path)  # never adopt a set.json someone else could have written
        try:
            existing = store.read_json(path)
        except ValueError:
            existing = {}
        problem = integrity.set_problem(root, existing) if existing else None
        if problem:
            raise CloneSetCorruptError(f"{path}: {problem}; delete {root} and prepare again")
        if existing.get("set_id") == set_id:
            return
        if existing:
            raise CloneError(
                f"{root}: holds clones of another Python ({existing.get('python', {}).get('executable')} "
                f"{existing.get('python', {}).get('version')}); use an empty --dest"
            )
    store.write_json_atomic(
        path,
        {
            "format": store.FORMAT_VERSION,
            "set_id": set_id,
            "python": install.to_json(),
            "libpython": libpython,
            "libpython_sha256": sha,
        },
    )


def _existing(root: str, index: int) -> Optional[store.CloneRecord]:
    """The clone at ``index`` if its directory and manifest hold up; else it is discarded."""
    directory = os.path.join(root, store.clone_dir_name(index))
    try:
        trust.require_entry(directory, want_dir=True)
        manifest = integrity.read_manifest(directory)
        if integrity.manifest_problem(directory, manifest) is None:
            return store.record_from_manifest(directory, manifest)
    except (OSError, ValueError, KeyError, CacheTrustError):
        pass
    store.discard(directory)
    return None


def _build_clone(root: str, index: int, libpython: str, name_id: str) -> None:
    binary_format = read_binary(libpython).format
    tmp = os.path.join(root, leftovers.temp_name())
    os.mkdir(tmp, trust.DIR_MODE)
    built = builder_for(binary_format).build_libpython(libpython, tmp, name_id, index)
    for name in built.files:
        _fsync(os.path.join(tmp, name))
    # Twins are built under ext/.lock, which readers also take: made here, it is always there.
    os.mkdir(os.path.join(tmp, "ext"), trust.DIR_MODE)
    os.close(trust.open_private(os.path.join(tmp, integrity.EXT_LOCK)))
    trust.seal(tmp)  # before the manifest: no file may be newer than it (see integrity)
    store.write_json_atomic(
        os.path.join(tmp, store.MANIFEST),
        {
            "format": store.FORMAT_VERSION,
            "binary_format": binary_format,
            "index": index,
            "soname": built.libpython,
            "renames": [list(pair) for pair in built.renames],
            "source": libpython,
            "files": {name: store.manifest_entry(os.path.join(tmp, name)) for name in built.files},
        },
    )
    final = os.path.join(root, store.clone_dir_name(index))
    store.discard(final)
    os.rename(tmp, final)


def _fsync(path: str) -> None:
    # Windows flushes only a handle opened for writing (EACCES otherwise).
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_known_sets = {}  # (libpython, size, mtime_ns, inode, dest) -> (set directory, set id), for this process
INDEX_FILE = "sources.json"


def ensure_set(count: int, dest: Optional[str] = None, python: Optional[str] = None) -> store.CloneSet:
    """Like ``prepare`` but quick when the set is already there and intact.

    ``prepare`` hashes the source libpython to name the set and every clone to
    check it; a pool starting up only needs to know that nothing changed since,
    which file metadata tells (see integrity.check_clone). A set found through
    the index is used only if it is the one the index recorded, in the cache.
    """
    install = locate(python)
    libpython = _require_libpython(install)
    st = os.stat(libpython)
    key = f"{libpython}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{dest or ''}"
    found = _known_sets.get(key) or ((os.path.abspath(dest), None) if dest else _indexed(key, install))
    cset = _usable(found, install, count) if found else None
    if cset is None:
        cset = prepare(count, dest=dest, install=install)
        if dest is None:
            _remember(key, cset)
    else:
        log.debug("clone set %s found intact for %d clones", cset.root, count)
    _known_sets[key] = (cset.root, cset.set_id)
    return cset


def _usable(found, install: PythonInstall, count: int) -> Optional[store.CloneSet]:
    """The set at ``found`` if it is of this Python and its first ``count`` clones are intact.

    A set directory that someone else could have written is refused
    (CacheTrustError); for anything wrong inside it this returns None, and
    ``prepare`` rebuilds the clone or refuses the set.
    """
    root, set_id = found
    if not os.path.lexists(os.path.join(root, store.SET_FILE)):
        return None
    trust.require_location(root)  # someone else could have written the set: refused
    try:
        cset = store.load_set(root)
    except CloneError:
        return None  # damaged or untrusted inside: prepare rebuilds, or refuses, as it decides
    if (set_id and cset.set_id != set_id) or cset.python.get("libpython") != install.libpython \
            or cset.version != install.version:
        return None
    usable = [r for r in cset.clones if r.index < count]
    try:
        if len(usable) < count or any(store.check_clone(r) is not None for r in usable):
            return None
    except CacheTrustError:
        return None  # inside a trusted set: prepare rebuilds the clone
    return cset


def _indexed(key: str, install: PythonInstall):
    """(set directory, set id) recorded for ``key``, if it names a set of the cache by its id."""
    entry = _index().get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("set_id"), str):
        return None
    set_id = entry["set_id"]
    return os.path.join(store.default_cache_root(), f"{install.version}-{set_id[:12]}"), set_id


def _index() -> dict:
    path = os.path.join(store.default_cache_root(), INDEX_FILE)
    if trust.entry_problem(path):
        return {}  # someone else could have written it: start a new one
    try:
        value = store.read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _remember(key: str, cset: store.CloneSet) -> None:
    index = _index()
    index[key] = {"set_id": cset.set_id}
    try:
        store.write_json_atomic(os.path.join(store.default_cache_root(), INDEX_FILE), index)
    except OSError:
        pass  # only a shortcut; the set is found by hashing next time
