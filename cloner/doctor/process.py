"""What a running Linux process has loaded, as a loader-conflict report.

Reads ``/proc/PID/maps`` (through platforms) and each mapped ELF file, then
says which libpython images are in the process (the host's and gilclone's
clones, with their set and index), which libpython each extension module is
bound to, and which libraries are mapped from more than one path.

Binding follows the Linux rules observed in loader-notes.md: an extension
module with a ``DT_NEEDED`` on a clone's libpython (a gilclone twin) binds to
that clone; any other extension resolves ``Py*`` in the global scope, which is
the host's libpython (or a statically linked host executable).
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from gilclone.cloner import store
from gilclone.platforms import procmaps
from gilclone.platforms.binary import ELF_MAGIC, read_binary
from gilclone.platforms.model import KIND_EXECUTABLE, KIND_EXTENSION, KIND_LIBPYTHON, BinaryInfo

from gilclone.errors import BinaryFormatError

log = logging.getLogger(__name__)

_CLONE_DIR = re.compile(r"^clone-(\d+)$")
_SET_DEPTH = 4  # clone-NN/libgc..., clone-NN/ext/<key>/<file>: a set.json is at most this far up


@dataclass(frozen=True)
class LibpythonImage:
    path: str
    role: str  # "host", "clone" or "foreign" (a libpython that is neither)
    version: Optional[str]
    set_root: Optional[str] = None  # for gilclone clones
    set_id: Optional[str] = None
    clone_index: Optional[int] = None


@dataclass(frozen=True)
class ExtensionImage:
    path: str
    bound_to: Optional[str]  # path of the libpython image its Py* symbols bind to
    clone_index: Optional[int]  # the clone it belongs to, None for the host's


@dataclass(frozen=True)
class DuplicateLibrary:
    name: str  # soname, or file name where there is none
    paths: Tuple[str, ...]
    # Every path but one is inside a gilclone clone: the copies the clones need.
    clone_copies: bool


@dataclass(frozen=True)
class ProcessReport:
    pid: int
    executable: Optional[str]
    libpythons: Tuple[LibpythonImage, ...]
    extensions: Tuple[ExtensionImage, ...]
    duplicates: Tuple[DuplicateLibrary, ...]
    same_file_paths: Tuple[Tuple[str, ...], ...]  # one file on disk mapped under several paths
    unreadable: Tuple[str, ...]  # mapped ELF files that could not be read (deleted, damaged)

    def to_json(self) -> dict:
        def rows(items):
            return [dict(vars(i)) for i in items]

        return {
            "pid": self.pid,
            "executable": self.executable,
            "libpythons": rows(self.libpythons),
            "extensions": rows(self.extensions),
            "duplicates": [dict(vars(d), paths=list(d.paths)) for d in self.duplicates],
            "same_file_paths": [list(p) for p in self.same_file_paths],
            "unreadable": list(self.unreadable),
        }


@dataclass(frozen=True)
class _CloneHome:
    set_root: str
    set_id: Optional[str]
    version: Optional[str]  # the Python the set was made from, as set.json says
    index: int


def inspect_process(pid: int) -> ProcessReport:
    files = procmaps.mapped_files(pid)
    executable = _readlink(f"/proc/{pid}/exe")
    infos, unreadable = _read_elf_files(files)
    homes = {path: _clone_home(path) for path in infos}
    libpythons = _libpythons(infos, homes, executable)
    by_soname = {
        os.path.basename(lp.path): lp for lp in libpythons if lp.role == "clone"
    }
    host = next((lp.path for lp in libpythons if lp.role == "host"), None)
    extensions = tuple(
        _extension(info, homes[path], by_soname, host)
        for path, info in infos.items()
        if info.kind == KIND_EXTENSION
    )
    return ProcessReport(
        pid=pid,
        executable=executable,
        libpythons=libpythons,
        extensions=extensions,
        duplicates=_duplicates(infos, homes),
        same_file_paths=tuple(
            tuple(m.path for m in group) for group in procmaps.same_file_groups(files)
        ),
        unreadable=tuple(unreadable),
    )


def _readlink(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_elf_files(files) -> Tuple[Dict[str, BinaryInfo], List[str]]:
    infos, unreadable = {}, []
    for m in files:
        if m.deleted or not _is_elf(m.path):
            if m.deleted:
                unreadable.append(m.path)
            continue
        try:
            infos[m.path] = read_binary(m.path)
        except BinaryFormatError as exc:
            log.debug("cannot read %s: %s", m.path, exc)
            unreadable.append(m.path)
    return infos, unreadable


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _clone_home(path: str) -> Optional[_CloneHome]:
    """The gilclone set and clone a mapped file belongs to, from its directory alone."""
    directory = os.path.dirname(path)
    for _ in range(_SET_DEPTH):
        m = _CLONE_DIR.match(os.path.basename(directory))
        parent = os.path.dirname(directory)
        if m and os.path.isfile(os.path.join(parent, store.SET_FILE)):
            set_id, version = _set_meta(parent)
            return _CloneHome(parent, set_id, version, int(m.group(1)))
        directory = parent
    return None


def _set_meta(root: str) -> Tuple[Optional[str], Optional[str]]:
    """(set id, short Python version) from set.json; None for what cannot be read."""
    try:
        meta = store.read_json(os.path.join(root, store.SET_FILE))
        set_id, version = meta.get("set_id"), meta.get("python", {}).get("version")
    except (OSError, ValueError, AttributeError):
        return None, None
    short = ".".join(version.split(".")[:2]) if isinstance(version, str) else None
    return (set_id if isinstance(set_id, str) else None), short


def _libpythons(infos, homes, executable) -> Tuple[LibpythonImage, ...]:
    found = []
    host_seen = False
    for path, info in infos.items():
        if info.kind != KIND_LIBPYTHON:
            continue
        home = homes[path]
        if home is not None:
            found.append(LibpythonImage(path, "clone", home.version, home.set_root,
                                        home.set_id, home.index))
        else:
            # The first libpython outside any set is the one the global scope binds to.
            found.append(LibpythonImage(path, "foreign" if host_seen else "host",
                                        info.python_version))
            host_seen = True
    if not host_seen and executable in infos and _is_static_python(infos[executable]):
        found.insert(0, LibpythonImage(executable, "host", _exe_version(executable)))
    order = {"host": 0, "foreign": 1, "clone": 2}
    return tuple(sorted(found, key=lambda lp: (order[lp.role], lp.set_root or "", lp.clone_index or 0)))


def _is_static_python(info: BinaryInfo) -> bool:
    """A Python executable with no libpython among its needs has the C API linked in."""
    return (
        info.kind == KIND_EXECUTABLE
        and os.path.basename(info.path).startswith("python")
        and info.python_version is None
    )


def _exe_version(path: str) -> Optional[str]:
    m = re.match(r"python(\d+)\.(\d+)", os.path.basename(path))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _extension(info, home, clone_libpythons, host) -> ExtensionImage:
    for name in info.needed:
        if name in clone_libpythons:
            lp = clone_libpythons[name]
            return ExtensionImage(info.path, lp.path, lp.clone_index)
    return ExtensionImage(info.path, host, home.index if home else None)


def _duplicates(infos, homes) -> Tuple[DuplicateLibrary, ...]:
    groups: Dict[str, List[str]] = {}
    for path, info in infos.items():
        if info.kind == KIND_EXECUTABLE:
            continue
        groups.setdefault(info.name or os.path.basename(path), []).append(path)
    out = []
    for name, paths in sorted(groups.items()):
        if len(paths) < 2:
            continue
        outside = [p for p in paths if homes[p] is None]
        out.append(DuplicateLibrary(name, tuple(paths), clone_copies=len(outside) <= 1))
    return tuple(out)


def has_conflicts(report: ProcessReport) -> bool:
    """A second libpython that is not a clone, or a library loaded twice that is not a twin."""
    return any(lp.role == "foreign" for lp in report.libpythons) or any(
        not d.clone_copies for d in report.duplicates
    )


def summary_lines(report: ProcessReport) -> List[str]:
    """The report as a person reads it."""
    lines = [f"process {report.pid} ({report.executable or 'executable unknown'})"]
    lines.append(f"libpython images: {len(report.libpythons)}")
    for lp in report.libpythons:
        where = (f" clone {lp.clone_index} of set {lp.set_id or '?'} ({lp.set_root})"
                 if lp.role == "clone" else "")
        lines.append(f"  {lp.role:7} {lp.version or '?':5} {lp.path}{where}")
    bound: Dict[Optional[str], List[str]] = {}
    for ext in report.extensions:
        bound.setdefault(ext.bound_to, []).append(os.path.basename(ext.path))
    lines.append(f"extension modules: {len(report.extensions)}")
    for target, names in bound.items():
        lines.append(f"  {len(names):3} bound to {target or 'no libpython (none mapped)'}")
    problems = [d for d in report.duplicates if not d.clone_copies]
    lines.append(
        f"libraries mapped from several paths: {len(problems)} "
        f"(+{len(report.duplicates) - len(problems)} clone copies)"
    )
    for d in problems:
        lines.append(f"  {d.name}: " + ", ".join(d.paths))
    for paths in report.same_file_paths:
        lines.append("  one file under several paths: " + ", ".join(paths))
    if report.unreadable:
        lines.append(f"unreadable mapped files: {len(report.unreadable)}")
    return lines
