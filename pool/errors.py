"""Errors of the pool runtime. Importable in the host and inside clones (pure Python)."""

from concurrent.futures import BrokenExecutor

from gilclone.pool.interrupted import TaskInterrupted  # raised inside clones, so a leaf module

from gilclone.errors import GilcloneError

__all__ = ["BrokenClonePool", "RemoteTraceback", "TaskInterrupted", "TaskPicklingError", "UnpicklableRemoteError"]


class BrokenClonePool(BrokenExecutor, GilcloneError):
    """A clone failed to start or its initializer raised: the pool cannot run tasks."""


class TaskPicklingError(GilcloneError):
    """A task's callable, arguments or result could not be sent between host and clone."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a clone, attached as ``__cause__``."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class UnpicklableRemoteError(GilcloneError):
    """Stands for an exception raised in a clone that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (UnpicklableRemoteError, (self.type_name, self.message))
