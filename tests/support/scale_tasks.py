"""Tasks for the Dask and joblib tests: module-level, so workers and clones import them."""

import sys


def clone_index():
    return getattr(sys, "_gilclone_index", None)


def spin(n):
    """Pure-Python CPU work with a result that depends on ``n``."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_003
    return total


def spin_where(n):
    return spin(n), clone_index()


def fail_with(code):
    from support.tasks import CustomError

    raise CustomError(code, "failed in a task")


def clone_number():
    """The clone index, or -1 outside clones (for numeric arrays)."""
    index = clone_index()
    return -1 if index is None else index
