"""An exclusive lock on a file, across processes, released when the holder dies."""

import errno
import os
import time

from gilclone.cloner import trust

from gilclone.errors import CacheTrustError, CloneError

if os.name == "nt":
    import msvcrt

    def _lock(fd, block):
        mode = msvcrt.LK_LOCK if block else msvcrt.LK_NBLCK
        msvcrt.locking(fd, mode, 1)

    def _unlock(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd, block):
        fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)


class FileLock:
    """``with FileLock(path):`` holds an exclusive lock on ``path``.

    The file is created (mode 0600) unless ``create`` is false; then a missing
    file raises FileNotFoundError, and the lock is taken through a read-only
    descriptor, which is enough for ``flock`` and works in a set shared read-only.
    The file is never opened through a symbolic link: one planted there could
    make us create or lock a file elsewhere.
    """

    def __init__(self, path: str, timeout_s: float = 600.0, create: bool = True):
        self.path = path
        self.timeout_s = timeout_s
        self.create = create
        self._fd = None

    def _open(self) -> int:
        flags = (os.O_RDWR | os.O_CREAT) if self.create else os.O_RDONLY
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, trust.FILE_MODE)
        except OSError as exc:
            # ELOOP, or EACCES where the kernel protects links in sticky directories
            if exc.errno == errno.ELOOP or os.path.islink(self.path):
                raise CacheTrustError(
                    f"{self.path}: is a symbolic link, which gilclone never follows for its lock; "
                    "delete it and check who could write to that directory"
                ) from None
            raise
        try:
            trust.require_entry(self.path, os.fstat(fd))
        except CacheTrustError:
            os.close(fd)
            raise
        return fd

    def __enter__(self):
        fd = self._open()
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                _lock(fd, block=False)
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise CloneError(
                        f"{self.path}: still locked by another gilclone process after "
                        f"{self.timeout_s:.0f} s; if none is running, delete the lock file"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        try:
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
