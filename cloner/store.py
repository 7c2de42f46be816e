"""Clone sets on disk: where they live, their manifests, and the checks before use.

Layout of a set directory::

    set.json                  which Python the set was made from (written once)
    .lock                     serialises preparation across processes
    clone-00/manifest.json    files of the clone with sizes and SHA-256
    clone-00/libgc….so        the libpython copy
    clone-00/ext/<name>-<h>/  extension-module copies, made on first import

A clone directory is built under a temporary name and renamed into place when
complete, so a reader sees a whole clone or none; a killed preparation leaves
only a ``.tmp-*`` directory that a later one removes once its owner is gone
(the name carries the owner's boot, pid and start time). Who may have written
a set is checked by trust.py, whether its files are those listed by
integrity.py.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from gilclone.cloner import integrity, leftovers, trust
from gilclone.cloner.setfiles import (  # noqa: F401  (the layout's names, read through store)
    FORMAT_VERSION,
    HASH_CHUNK,
    MANIFEST,
    SET_FILE,
    STAMP,
    clone_dir_name,
    manifest_entry,
    read_json,
    sha256_file,
    write_json_atomic,
)

from gilclone.errors import CacheLocationError, CloneSetCorruptError


def default_cache_root() -> str:
    """Where cached clone sets live: ``$GILCLONE_CACHE`` (in a shared sticky folder such as
    ``/tmp``, a per-user ``gilclone-<uid>`` folder in it: docs/security.md), else ``$XDG_CACHE_HOME/gilclone`` or ``~/.cache/gilclone``, and
    ``%LOCALAPPDATA%\\gilclone\\cache`` on Windows."""
    explicit = os.environ.get("GILCLONE_CACHE")
    if explicit:
        return trust.per_user_root(explicit)
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
        return os.path.join(base, "gilclone", "cache")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "gilclone")


@dataclass(frozen=True)
class CloneRecord:
    """One prepared clone: a self-bound libpython copy and its directory."""

    index: int
    directory: str
    soname: str  # file name of the libpython copy (also its soname on Linux)
    binary_format: str = "ELF"
    renames: Tuple[Tuple[str, str], ...] = ()  # original image name -> the clone's

    @property
    def rename_map(self) -> Dict[str, str]:
        """Original image name -> this clone's name for it (libpython, extension twins)."""
        return dict(self.renames)

    @property
    def libpython(self) -> str:
        """Path of this clone's libpython copy."""
        return os.path.join(self.directory, self.soname)

    @property
    def ext_dir(self) -> str:
        """Folder of this clone's extension-module copies (made on first import)."""
        return os.path.join(self.directory, "ext")


@dataclass(frozen=True)
class CloneSet:
    """A prepared set: the Python it was made from and its complete clones."""

    root: str
    set_id: str
    python: dict  # PythonInstall.to_json() of the source interpreter
    clones: Tuple[CloneRecord, ...]

    @property
    def version(self) -> str:
        """Full version of the Python the set was made from, e.g. ``"3.11.7"``."""
        return self.python["version"]


def load_set(root: str) -> CloneSet:
    """Read a set directory; only complete clones (with a manifest) are listed.

    Refuses (CacheTrustError) a set that someone else could have written, and
    (CloneSetCorruptError) one whose identity or clone list does not hold up:
    checked from the manifests alone, before anything is loaded.
    """
    trust.require_location(root)
    meta = integrity.read_set_file(root)
    clones: List[CloneRecord] = []
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if not name.startswith("clone-"):
            if not leftovers.is_temporary(name):
                trust.require_entry(directory)  # .lock and set.json: never a planted link
            continue
        trust.require_entry(directory, want_dir=True)
        try:
            manifest = integrity.read_manifest(directory)
        except (OSError, ValueError):
            continue  # reported by verify, rebuilt by prepare
        problem = integrity.manifest_problem(directory, manifest)
        if problem:
            raise CloneSetCorruptError(f"{directory}: {problem}; run `gilclone prepare --dest {root}` to rebuild it")
        clones.append(record_from_manifest(directory, manifest))
    problem = integrity.clones_problem(clones)
    if problem:
        raise CloneSetCorruptError(f"{root}: {problem}; run `gilclone prepare --dest {root}` to rebuild")
    return CloneSet(root=root, set_id=meta["set_id"], python=meta["python"], clones=tuple(clones))


def record_from_manifest(directory: str, manifest: dict) -> CloneRecord:
    return CloneRecord(
        index=manifest["index"],
        directory=directory,
        soname=manifest["soname"],
        binary_format=manifest.get("binary_format", "ELF"),
        renames=tuple(tuple(pair) for pair in manifest.get("renames", ())),
    )


def check_clone(record: CloneRecord, full: bool = False) -> Optional[str]:
    """None if the clone's files are exactly those of its manifest, else what is wrong.

    Raises CacheTrustError when a file of the clone could have been written by
    someone else. See integrity.check_clone.
    """
    return integrity.check_clone(record, full)


def check_writable_location(root: str) -> None:
    """Fail early, with the fix, when a set directory cannot hold loadable clones."""
    trust.require_creatable(root)
    try:
        trust.make_private_dirs(root)
    except OSError as exc:
        raise CacheLocationError(
            f"{root}: cannot create the clone directory ({exc.strerror}); "
            "choose another with --dest or GILCLONE_CACHE"
        ) from None
    trust.require_location(root)
    if not os.access(root, os.W_OK):
        raise CacheLocationError(f"{root}: not writable; choose another with --dest or GILCLONE_CACHE")
    if hasattr(os, "statvfs"):
        st = os.statvfs(root)
        if getattr(os, "ST_NOEXEC", 8) & st.f_flag:
            raise CacheLocationError(
                f"{root}: on a noexec mount, so copies there cannot be loaded; "
                "choose another directory with --dest or GILCLONE_CACHE"
            )


def discard(path: str) -> None:
    """Remove a directory by first renaming it aside, so no reader sees it half-deleted."""
    if os.path.islink(path):
        os.unlink(path)  # a planted link: remove the link, never what it points to
        return
    if not os.path.exists(path):
        return
    trash = os.path.join(os.path.dirname(path), f"{leftovers.TRASH}{os.urandom(4).hex()}")
    os.rename(path, trash)
    import shutil  # here: only removal needs it, not the first result's path

    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(root: str) -> None:
    """Remove what killed preparations, twin and library-copy builds left in the set at ``root``.

    The caller holds the set's lock, so every temporary directory directly in
    ``root`` is dead (only preparations, which hold that lock, make them).
    Below the clones, only those whose owner process is provably gone go.
    """
    leftovers.remove_in(root, lock_held=True)
    for name in os.listdir(root):
        clone = os.path.join(root, name)
        if name.startswith("clone-") and not os.path.islink(clone) and os.path.isdir(clone):
            leftovers.remove_in(clone, lock_held=False)
            for sub in ("ext", "lib"):  # twins; helper-library copies (closure.LIB_DIR)
                leftovers.remove_in(os.path.join(clone, sub), lock_held=False)
