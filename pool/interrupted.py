"""The exception a task sees when it is interrupted.

A module of its own, importing nothing, because both sides need it: inclone.py
(imported inside every clone) raises and recognises it, errors.py offers it to
users of the pool.
"""


class TaskInterrupted(BaseException):
    """Raised inside a running task by ``ClonePool.interrupt`` (and by its time limits); the
    task's future ends with it. A BaseException, like KeyboardInterrupt, so that a task's
    ``except Exception`` does not swallow it; a task may catch it to clean up."""


def unstarted(reason: str) -> TaskInterrupted:
    """The error of a task whose interrupt came before it started: it never ran."""
    return TaskInterrupted(f"{reason}: interrupted before it started")
