"""Is a set what it says it is, and is each clone exactly what its manifest lists?

- The set: ``set.json`` names the set id, which is recomputed from the recorded
  libpython hash and version, and matches the directory name where the set
  lives in the cache.
- Each clone: its manifest's index, directory and soname agree; every path it
  lists stays inside the clone; sonames are distinct across the set. All of
  it from the manifests alone, before anything is loaded.
- Each clone's files: every file under the clone directory (extension twins
  and helper-library copies included) is listed with its size and SHA-256, and
  nothing else is there.

The fast stamp (``.verified.json``) lets a check skip hashing a file whose
inode, size, mtime and ctime are those seen by the last hashing check, for the
same manifest bytes, and whose ctime is not newer than the manifest's. Writing
or replacing a file renews its ctime, which no user can set back, so content
written after the manifest is always hashed, even if the stamp is rewritten.
"""

import hashlib
import json
import os
import re
import stat
from contextlib import contextmanager
from typing import Dict, List, Optional

from gilclone.cloner import leftovers, naming, setfiles, trust
from gilclone.cloner.filelock import FileLock

from gilclone.errors import CloneSetCorruptError

EXT_LOCK = "ext/.lock"
BINARY_FORMATS = ("ELF", "PE", "Mach-O")
_SET_DIR_NAME = re.compile(r"^\d+\.\d+\S*-[0-9a-f]{12}$")


# -- the set ------------------------------------------------------------------------------


def expected_set_id(version: str, libpython_sha256: str, fmt: int = setfiles.FORMAT_VERSION) -> str:
    return hashlib.sha256(f"{fmt}:{version}:{libpython_sha256}".encode()).hexdigest()


def read_set_file(root: str) -> dict:
    """``set.json`` of a set, trusted and self-consistent, else CacheTrustError/CloneSetCorruptError."""
    path = os.path.join(root, setfiles.SET_FILE)
    if not os.path.lexists(path):
        raise CloneSetCorruptError(
            f"{root}: not a gilclone clone set (no {setfiles.SET_FILE}); create one with `gilclone prepare --dest {root}`"
        )
    trust.require_entry(path)
    try:
        meta = setfiles.read_json(path)
    except (OSError, ValueError):
        meta = None
    problem = set_problem(root, meta)
    if problem:
        raise CloneSetCorruptError(f"{path}: {problem}; delete {root} and prepare again")
    return meta


def set_problem(root: str, meta) -> Optional[str]:
    if not isinstance(meta, dict) or not isinstance(meta.get("python"), dict):
        return "unreadable"
    set_id, version = meta.get("set_id"), meta["python"].get("version")
    if not isinstance(set_id, str) or not re.fullmatch(r"[0-9a-f]{64}", set_id) or not isinstance(version, str):
        return "has no valid set id or version"
    sha = meta.get("libpython_sha256")
    if isinstance(sha, str) and set_id != expected_set_id(version, sha, meta.get("format", setfiles.FORMAT_VERSION)):
        return f"set id {set_id[:12]} is not the one of the recorded libpython (SHA-256 {sha[:12]}) and version"
    name = os.path.basename(os.path.normpath(root))
    if _SET_DIR_NAME.match(name) and name != f"{version}-{set_id[:12]}":
        return f"the directory name {name} does not match the set id {set_id[:12]} and version {version}"
    return None


# -- manifests ---------------------------------------------------------------------------


def read_manifest_bytes(directory: str) -> bytes:
    path = os.path.join(directory, setfiles.MANIFEST)
    trust.require_entry(path)
    with open(path, "rb") as f:
        return f.read()


def read_manifest(directory: str) -> dict:
    value = json.loads(read_manifest_bytes(directory))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def safe_relative(name) -> bool:
    """A path that stays inside the clone directory: relative, no ``..``, no backslash."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or name.startswith("/"):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def manifest_problem(directory: str, manifest: dict) -> Optional[str]:
    """What makes the manifest of ``directory`` unusable, from its content alone."""
    index, soname, files = manifest.get("index"), manifest.get("soname"), manifest.get("files")
    if not isinstance(index, int) or not 0 <= index < naming.MAX_CLONES:
        return f"the manifest has no valid index ({index!r})"
    if os.path.basename(directory) != setfiles.clone_dir_name(index):
        return (f"the manifest says clone {index}, which belongs in {setfiles.clone_dir_name(index)}, "
                f"not {os.path.basename(directory)} (a copied or moved clone)")
    if not safe_relative(soname) or "/" in soname:
        return f"the manifest's soname {soname!r} is not a plain file name inside the clone"
    if os.path.splitext(soname)[0][-2:] != naming.index_token(index):
        return f"the soname {soname} is not the one of clone {index} (it ends in another index)"
    if not isinstance(files, dict) or not files:
        return "the manifest lists no files"
    bad = [n for n, e in files.items() if not safe_relative(n) or not _valid_entry(e)]
    if bad:
        return f"the manifest lists paths that leave the clone or have no size and hash: {bad[:3]}"
    if soname not in files:
        return f"the manifest does not list its libpython copy {soname}"
    if manifest.get("binary_format", "ELF") not in BINARY_FORMATS:
        return f"the manifest names an unknown binary format {manifest.get('binary_format')!r}"
    renames = manifest.get("renames", [])
    if not isinstance(renames, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in renames
    ):
        return "the manifest's renames are not pairs of names"
    return None


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64)


def clones_problem(records) -> Optional[str]:
    """Sonames must be distinct across the set: two copies under one name are one library."""
    seen: Dict[str, int] = {}
    for r in records:
        key = r.soname.lower()
        if key in seen:
            return f"clones {seen[key]} and {r.index} have the same soname {r.soname} (a duplicated clone)"
        seen[key] = r.index
    return None


# -- the files of a clone ------------------------------------------------------------------


@contextmanager
def ext_lock(directory: str):
    """Hold the clone's twin-building lock (library copies are built under it too), so
    no twin or copy appears half-listed while we look."""
    try:
        lock = FileLock(os.path.join(directory, EXT_LOCK), create=False)
        lock.__enter__()
    except FileNotFoundError:
        yield  # no twin was ever built in this clone (or a set made before the lock existed)
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def list_files(directory: str) -> Dict[str, os.stat_result]:
    """Relative path -> lstat of every file under the clone, each checked for trust."""
    found: Dict[str, os.stat_result] = {}
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(directory, rel_dir)) as entries:
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if leftovers.is_temporary(entry.name) or rel in (setfiles.MANIFEST, setfiles.STAMP, EXT_LOCK):
                    continue
                st = entry.stat(follow_symlinks=False)
                trust.require_entry(entry.path, st)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(rel)
                else:
                    found[rel] = st
    return found


def check_clone(record, full: bool = False) -> Optional[str]:
    """None if the clone's files are exactly those its manifest lists, else what is wrong.

    Raises CacheTrustError for a file someone else could have written.
    """
    trust.require_entry(record.directory, want_dir=True)
    with ext_lock(record.directory):  # the manifest and the files, as of one moment
        return _check_clone(record, full)


def _check_clone(record, full: bool) -> Optional[str]:
    try:
        raw = read_manifest_bytes(record.directory)
        manifest = json.loads(raw)
        manifest_st = os.lstat(os.path.join(record.directory, setfiles.MANIFEST))
    except (OSError, ValueError) as exc:
        return f"manifest unreadable ({exc})"
    problem = manifest_problem(record.directory, manifest) if isinstance(manifest, dict) else "not an object"
    if problem:
        return problem
    if manifest["soname"] != record.soname:
        return f"the manifest now names {manifest['soname']}, not {record.soname}"
    return _check_files(record, manifest, raw, manifest_st, full)


def _check_files(record, manifest, raw, manifest_st, full) -> Optional[str]:
    files: Dict[str, dict] = manifest["files"]
    present = list_files(record.directory)
    missing = sorted(set(files) - set(present))
    if missing:
        return f"{os.path.join(record.directory, missing[0])} is missing"
    extra = sorted(set(present) - set(files))
    if extra:
        return f"{os.path.join(record.directory, extra[0])} is not listed in the manifest (planted or left over)"
    manifest_sha = hashlib.sha256(raw).hexdigest()
    vouched = {} if full else _read_stamp(record.directory, manifest_sha)
    fresh = {}
    for name, entry in sorted(files.items()):
        problem, stamp = _check_file(record, name, entry, present[name], vouched, manifest_st)
        if problem:
            return problem
        fresh[name] = stamp
    if vouched != fresh:
        _write_stamp(record.directory, manifest_sha, fresh)
    return None


def _check_file(record, name, entry, st, vouched, manifest_st):
    path = os.path.join(record.directory, name)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    if st.st_size != entry["size"]:
        return f"{path} has {st.st_size} bytes, the manifest says {entry['size']}", stamp
    # Without an inode number (st_ino 0: some Windows file systems) a replaced file of the
    # same size and times would pass; and content newer than the manifest is never vouched for.
    if vouched.get(name) == stamp and st.st_ino and st.st_ctime_ns <= manifest_st.st_ctime_ns:
        return None, stamp
    if setfiles.sha256_file(path) != entry["sha256"]:
        return f"{path} does not match its SHA-256 in the manifest (altered or corrupt)", stamp
    if name == record.soname:
        return _identity_problem(record, path), stamp
    return None, stamp


def _identity_problem(record, path) -> Optional[str]:
    """A libpython copy replaced by another library (with a refreshed hash) names itself otherwise.

    Only the dynamic section is read (milliseconds; a whole read_binary takes most of a second).
    """
    if record.binary_format != "ELF":
        return None  # PE and Mach-O names are checked by their builders' static checks
    # Imported here: this runs only for a file whose stamp is not vouched for, and
    # pyelftools costs ~16 ms of every fresh process's time to first result.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            dynamic = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_DYNAMIC"]
            names = [t.soname for d in dynamic for t in d.iter_tags("DT_SONAME")]
    except (ELFError, OSError, ValueError, KeyError) as exc:
        return f"{path} cannot be read as a library: {exc}"
    if names != [record.soname]:
        return f"{path} is not the clone's libpython (its soname is {names or 'missing'}, not {record.soname})"
    return None


def _read_stamp(directory: str, manifest_sha: str) -> dict:
    path = os.path.join(directory, setfiles.STAMP)
    if trust.entry_problem(path):
        return {}
    try:
        stamp = setfiles.read_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(stamp, dict) or stamp.get("manifest") != manifest_sha:
        return {}
    files = stamp.get("files")
    return files if isinstance(files, dict) else {}


def _write_stamp(directory: str, manifest_sha: str, files: dict) -> None:
    try:
        setfiles.write_json_atomic(os.path.join(directory, setfiles.STAMP), {"manifest": manifest_sha, "files": files})
    except OSError:
        pass  # a read-only set is still usable; it is just hashed each time


# -- twins joining a clone ----------------------------------------------------------------


def listed_and_intact(record, rels: List[str]) -> bool:
    """Files ``rels`` of the clone are listed in its manifest and match it (twins and
    library copies, before use)."""
    try:
        raw = read_manifest_bytes(record.directory)
        files = json.loads(raw)["files"]
        manifest_st = os.lstat(os.path.join(record.directory, setfiles.MANIFEST))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    vouched = _read_stamp(record.directory, hashlib.sha256(raw).hexdigest())
    for rel in rels:
        path = os.path.join(record.directory, rel)
        try:
            st = os.lstat(path)
        except OSError:
            return False
        trust.require_entry(path, st)
        entry = files.get(rel) if isinstance(files, dict) else None
        if not _valid_entry(entry) or _check_file(record, rel, entry, st, vouched, manifest_st)[0]:
            return False
    return True


def list_in_manifest(directory: str, prefix: str, rels: List[str]) -> None:
    """Replace the manifest's entries under ``prefix`` by ``rels`` (caller holds the ext lock)."""
    _relist(directory, lambda name: name.startswith(prefix), rels)


def list_files_in_manifest(directory: str, rels: List[str]) -> None:
    """List exactly ``rels``, replacing their old entries and no others (helper-library
    copies share ``lib/``, where one name can begin another; caller holds the ext lock)."""
    _relist(directory, set(rels).__contains__, rels)


def _relist(directory: str, replaced, rels: List[str]) -> None:
    manifest = read_manifest(directory)
    files = {n: e for n, e in manifest["files"].items() if not replaced(n)}
    for rel in rels:
        files[rel] = setfiles.manifest_entry(os.path.join(directory, rel))
    manifest["files"] = files
    setfiles.write_json_atomic(os.path.join(directory, setfiles.MANIFEST), manifest)


def bless(record) -> None:
    """After a full check held: rewrite the manifest if a file's ctime is newer (an admin's
    chmod or chown), so that the fast stamp can vouch for the files again."""
    path = os.path.join(record.directory, setfiles.MANIFEST)
    with ext_lock(record.directory):
        before = os.lstat(path)
        if any(st.st_ctime_ns > before.st_ctime_ns for st in list_files(record.directory).values()):
            setfiles.write_json_atomic(path, read_manifest(record.directory))
            os.chmod(path, stat.S_IMODE(before.st_mode) & ~0o022)  # a shared set stays readable
