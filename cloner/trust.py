"""Who could have written the files gilclone loads: ownership and mode checks.

Like OpenSSH for its keys: a directory or file of the clone cache is trusted
when it is owned by the effective user or by root and is not writable by group
or others, and no path inside a set is a symbolic link. The directories above
the cache (or above a ``--dest`` set) must be owned by the user or root and be
writable by nobody else, unless sticky (``/tmp``: others cannot rename our
entries there). Only POSIX systems are checked; on Windows these checks do
nothing (see docs/security.md).
"""

import os
import stat
from typing import List, Optional

from gilclone.errors import CacheTrustError

ENFORCED = os.name == "posix"
DIR_MODE = 0o700
FILE_MODE = 0o600
LOADED_MODE = 0o700  # files that are mapped as code
LOADED_SUFFIXES = (".so", ".dll", ".pyd", ".dylib")


def euid() -> int:
    return os.geteuid() if ENFORCED else 0


def _owner_problem(path: str, st: os.stat_result) -> Optional[str]:
    if st.st_uid in (0, euid()):
        return None
    return (f"{path}: owned by uid {st.st_uid}, not by you (uid {euid()}) or root, so its owner "
            "could put code there; remove it (as its owner or root) or choose another directory "
            "with --dest or GILCLONE_CACHE")


def _writable_problem(path: str, st: os.stat_result) -> Optional[str]:
    if not st.st_mode & 0o022:
        return None
    return (f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod go-w {path}` if you trust its content, else delete it and prepare again")


def entry_problem(path: str, st: Optional[os.stat_result] = None, want_dir: bool = False) -> Optional[str]:
    """Why ``path`` (inside a set) is not trusted, or None. ``st`` is its lstat."""
    if not ENFORCED:
        return None
    try:
        st = st or os.lstat(path)
    except FileNotFoundError:
        return None  # a missing file is the manifest check's business
    if stat.S_ISLNK(st.st_mode):
        return (f"{path}: is a symbolic link, and a clone set holds none; delete it and run "
                "`gilclone prepare` to rebuild")
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return f"{path}: is not a directory; delete it and run `gilclone prepare`"
    if not want_dir and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return f"{path}: is not a regular file; delete it and run `gilclone prepare`"
    return _owner_problem(path, st) or _writable_problem(path, st)


def require_entry(path: str, st: Optional[os.stat_result] = None, want_dir: bool = False) -> None:
    problem = entry_problem(path, st, want_dir)
    if problem:
        raise CacheTrustError(problem)


def ancestor_problems(path: str) -> List[str]:
    """Problems of the directories above ``path`` (resolved), from ``/`` down."""
    if not ENFORCED:
        return []
    real = os.path.realpath(path)
    parents, current = [], os.path.dirname(real)
    while True:
        parents.append(current)
        up = os.path.dirname(current)
        if up == current:
            break
        current = up
    problems = []
    for directory in reversed(parents):
        st = os.stat(directory)
        owner = _owner_problem(directory, st)
        if owner:
            problems.append(owner)
        elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            problems.append(f"{directory}: writable by group or others and not sticky, so another "
                            f"user could replace what lies below it; run `chmod go-w {directory}` "
                            "or choose another directory with --dest or GILCLONE_CACHE")
    return problems


def require_location(path: str) -> None:
    """``path`` (a cache root or a set directory) and everything above it are trusted."""
    problems = ancestor_problems(path)
    problem = problems[0] if problems else entry_problem(os.path.realpath(path), want_dir=True)
    if problem:
        raise CacheTrustError(problem)


def require_creatable(path: str) -> None:
    """The directories that hold ``path`` (which may not exist yet) are trusted: checked
    before anything is created, so a refusal leaves nothing behind."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    problems = ancestor_problems(os.path.join(existing, "_"))
    if problems:
        raise CacheTrustError(problems[0])


def tree_problems(root: str) -> List[str]:
    """Every untrusted entry at or below ``root`` (a set directory), symlinks not followed."""
    if not ENFORCED:
        return []
    root = os.path.realpath(root)  # a --dest reached through a link is fine; links inside are not
    problems = ancestor_problems(root)
    top = entry_problem(root, want_dir=True)
    if top:
        return problems + [top]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            problem = entry_problem(os.path.join(dirpath, name))
            if problem:
                problems.append(problem)
    return problems


def per_user_root(root: str) -> str:
    """A shared sticky directory (``/tmp``-like) as cache root gets a per-user directory in it."""
    if not ENFORCED:
        return root
    try:
        st = os.stat(root)
    except OSError:
        return root
    if st.st_mode & stat.S_ISVTX and st.st_mode & 0o022:
        return os.path.join(root, f"gilclone-{euid()}")
    return root


def make_private_dirs(path: str) -> None:
    """Create ``path`` and any missing parents with mode 0700, whatever the umask."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        up = os.path.dirname(current)
        if up == current:
            break
        current = up
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # made by a concurrent process; its mode is checked where it matters
        os.chmod(directory, DIR_MODE)


def seal(directory: str) -> None:
    """Modes of a freshly built tree: dirs 0700, loaded files 0700, others 0600."""
    os.chmod(directory, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), DIR_MODE)
        for name in filenames:
            loaded = name.lower().endswith(LOADED_SUFFIXES)
            os.chmod(os.path.join(dirpath, name), LOADED_MODE if loaded else FILE_MODE)


def open_private(path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
    """Open ``path`` for writing with mode 0600 whatever the umask, never through a symlink."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    if ENFORCED:
        os.fchmod(fd, FILE_MODE)
    return fd
