"""An exclusive lock on a file, across processes, released when the holder dies."""

import os
import time

from gilclone.errors import CloneError

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
    """``with FileLock(path):`` holds an exclusive lock on ``path`` (created if missing)."""

    def __init__(self, path: str, timeout_s: float = 600.0):
        self.path = path
        self.timeout_s = timeout_s
        self._fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
