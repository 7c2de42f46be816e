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


def partial_sum(values, power):
    return sum(v**power for v in values), clone_index()


class MomentEstimator:
    """A scikit-learn-style joblib user: ``n_jobs`` passed through to ``Parallel``."""

    def __init__(self, powers=(1, 2, 3), n_jobs=None):
        self.powers = powers
        self.n_jobs = n_jobs

    def fit(self, values):
        from joblib import Parallel, delayed

        chunks = [values[i : i + 100] for i in range(0, len(values), 100)]
        out = Parallel(n_jobs=self.n_jobs)(
            delayed(partial_sum)(chunk, p) for p in self.powers for chunk in chunks
        )
        self.moments_ = [sum(s for s, _ in out[i * len(chunks) : (i + 1) * len(chunks)])
                         for i in range(len(self.powers))]
        self.clones_ = {where for _, where in out}
        return self
