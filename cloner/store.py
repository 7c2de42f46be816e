"""Clone sets on disk: where they live, their manifests, and the checks before use.

Layout of a set directory::

    set.json                  which Python the set was made from (written once)
    .lock                     serialises preparation across processes
    clone-00/manifest.json    files of the clone with sizes and SHA-256
    clone-00/libgc….so        the libpython copy
    clone-00/ext/<name>-<h>/  extension-module copies, made on first import

A clone directory is built under a temporary name and renamed into place when
complete, so a reader sees a whole clone or none; a killed preparation leaves
only a ``.tmp-*`` directory that the next one removes.
"""

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from gilclone.errors import CacheLocationError, CloneSetCorruptError

FORMAT_VERSION = 1
SET_FILE = "set.json"
MANIFEST = "manifest.json"
STAMP = ".verified.json"
HASH_CHUNK = 1 << 20


def default_cache_root() -> str:
    explicit = os.environ.get("GILCLONE_CACHE")
    if explicit:
        return explicit
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
        return os.path.join(base, "gilclone", "cache")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "gilclone")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def write_json_atomic(path: str, value) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


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
        return dict(self.renames)

    @property
    def libpython(self) -> str:
        return os.path.join(self.directory, self.soname)

    @property
    def ext_dir(self) -> str:
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
        return self.python["version"]


def clone_dir_name(index: int) -> str:
    return f"clone-{index:02d}"


def load_set(root: str) -> CloneSet:
    """Read a set directory; only complete clones (with a manifest) are listed."""
    set_file = os.path.join(root, SET_FILE)
    if not os.path.isfile(set_file):
        raise CloneSetCorruptError(
            f"{root}: not a gilclone clone set (no {SET_FILE}); create one with `gilclone prepare --dest {root}`"
        )
    try:
        meta = read_json(set_file)
    except ValueError:
        raise CloneSetCorruptError(f"{set_file}: unreadable; delete {root} and prepare again") from None
    clones: List[CloneRecord] = []
    for name in sorted(os.listdir(root)):
        manifest_path = os.path.join(root, name, MANIFEST)
        if not name.startswith("clone-") or not os.path.isfile(manifest_path):
            continue
        try:
            manifest = read_json(manifest_path)
            clones.append(record_from_manifest(os.path.join(root, name), manifest))
        except (ValueError, KeyError):
            continue  # a damaged manifest: the clone is rebuilt or reported by check_clone
    return CloneSet(root=root, set_id=meta["set_id"], python=meta["python"], clones=tuple(clones))


def record_from_manifest(directory: str, manifest: dict) -> CloneRecord:
    return CloneRecord(
        index=manifest["index"],
        directory=directory,
        soname=manifest["soname"],
        binary_format=manifest.get("binary_format", "ELF"),
        renames=tuple(tuple(pair) for pair in manifest.get("renames", ())),
    )


def manifest_entry(path: str) -> dict:
    return {"sha256": sha256_file(path), "size": os.path.getsize(path)}


def _stat_stamp(path: str) -> List[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def check_clone(record: CloneRecord, full: bool = False) -> Optional[str]:
    """None if the clone's files match its manifest, else what is wrong.

    Hashing a libpython copy costs tens of milliseconds, so a successful full
    check leaves a stamp of each file's size, times and inode; while the stamp
    still matches (no write, chmod, touch or replacement since) the hash is
    not recomputed, unless ``full``.
    """
    try:
        manifest = read_json(os.path.join(record.directory, MANIFEST))
        files: Dict[str, dict] = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"manifest unreadable ({exc})"
    stamp_path = os.path.join(record.directory, STAMP)
    stamps = {}
    if not full:
        try:
            stamps = read_json(stamp_path)
        except (OSError, ValueError):
            stamps = {}
    fresh = {}
    for name, entry in files.items():
        path = os.path.join(record.directory, name)
        try:
            stamp = _stat_stamp(path)
        except OSError:
            return f"{path} is missing"
        if stamp[0] != entry["size"]:
            return f"{path} has {stamp[0]} bytes, the manifest says {entry['size']}"
        # Without an inode number (st_ino 0: some Windows file systems) a replaced file
        # of the same size and times would pass; hash it every time instead.
        if stamps.get(name) != stamp or not stamp[3]:
            if sha256_file(path) != entry["sha256"]:
                return f"{path} does not match its SHA-256 in the manifest (altered or corrupt)"
        fresh[name] = stamp
    if fresh != stamps:
        try:
            write_json_atomic(stamp_path, fresh)
        except OSError:
            pass  # a read-only set is still usable; it is just hashed each time
    return None


def check_writable_location(root: str) -> None:
    """Fail early, with the fix, when a set directory cannot hold loadable clones."""
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise CacheLocationError(
            f"{root}: cannot create the clone directory ({exc.strerror}); "
            "choose another with --dest or GILCLONE_CACHE"
        ) from None
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
    if not os.path.exists(path):
        return
    trash = os.path.join(os.path.dirname(path), f".trash-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(root: str) -> None:
    """Remove temporary and trash directories of preparations that were killed.

    A ``.tmp-<pid>-…`` entry of a process still alive is work under way, not a leftover:
    a pool grows its set while its running clones copy extension modules into it.
    """
    for directory in [root] + [
        os.path.join(root, d, "ext") for d in os.listdir(root) if d.startswith("clone-")
    ]:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if _owner_alive(name):
                continue
            if name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)
            elif ".json.tmp-" in name:
                os.remove(path)


def _owner_alive(name: str) -> bool:
    """Whether the process named in a ``….tmp-<pid>-…`` entry still runs (this one does)."""
    _, found, rest = name.partition(".tmp-")
    pid = rest.split("-", 1)[0]
    if not found or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    if os.name == "nt":  # os.kill would end the process there, not probe it
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True
