"""The "gilclone" joblib backend with real joblib (no mocks)."""

import importlib.util

import pytest
import support
from support import scale_tasks, tasks

HAVE_JOBLIB = all(importlib.util.find_spec(m) for m in ("joblib", "cloudpickle"))
if HAVE_JOBLIB:
    from joblib import Parallel, delayed, parallel_config

    import gilclone.joblib  # noqa: F401  (registers the backend)


@pytest.fixture(autouse=True)
def _needs_joblib():
    support.require(HAVE_JOBLIB, "joblib or cloudpickle missing: pip install -e '.[test]'")


def test_parallel_gives_the_serial_results_from_clones():
    sizes = range(0, 4000, 97)
    out = Parallel(n_jobs=2, backend="gilclone")(delayed(scale_tasks.spin_where)(n) for n in sizes)
    assert [value for value, _ in out] == [scale_tasks.spin(n) for n in sizes]
    assert None not in {where for _, where in out}


def test_a_joblib_user_with_n_jobs_runs_under_parallel_config():
    values = list(range(1000))
    serial = scale_tasks.MomentEstimator(n_jobs=1).fit(values)
    with parallel_config(backend="gilclone", n_jobs=2):
        parallel = scale_tasks.MomentEstimator(n_jobs=2).fit(values)
    assert parallel.moments_ == serial.moments_ == [sum(v**p for v in values) for p in (1, 2, 3)]
    assert serial.clones_ == {None} and None not in parallel.clones_


def test_tiny_tasks_are_batched(capsys):
    out = Parallel(n_jobs=2, backend="gilclone", verbose=10)(delayed(tasks.add)(i, 1) for i in range(3000))
    assert out == [i + 1 for i in range(3000)]
    assert "Setting batch_size=" in capsys.readouterr().err  # AutoBatchingMixin grew the batches


def test_an_exception_keeps_its_type():
    with pytest.raises(tasks.CustomError) as info:
        Parallel(n_jobs=2, backend="gilclone")(delayed(scale_tasks.fail_with)(i) for i in range(4))
    assert info.value.code in range(4)


def test_lambdas_travel_by_value():
    out = Parallel(n_jobs=2, backend="gilclone")(
        delayed(lambda x: (x * 3, scale_tasks.clone_index()))(i) for i in range(10))
    assert [v for v, _ in out] == [3 * i for i in range(10)] and None not in {w for _, w in out}


def test_sharedmem_requirement_falls_back_to_threads():
    """A library that needs shared memory gets joblib's threads under the configured backend."""
    with parallel_config(backend="gilclone", n_jobs=2):
        out = Parallel(require="sharedmem")(delayed(scale_tasks.clone_index)() for _ in range(4))
    assert out == [None] * 4
    with pytest.raises(ValueError, match="shared memory"):
        Parallel(n_jobs=2, backend="gilclone", require="sharedmem")(delayed(len)("x") for _ in "ab")
