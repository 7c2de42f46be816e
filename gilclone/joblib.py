"""A joblib backend that runs batches on clones: ``import gilclone.joblib`` registers "gilclone".

    import gilclone.joblib  # noqa: F401
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="gilclone", n_jobs=4):
        squares = Parallel()(delayed(pow)(i, 2) for i in range(1000))

joblib groups calls into batches (``BatchedCalls``) and sizes them from how long
the last ones took (``AutoBatchingMixin``), as with loky; each batch is one task
on a ``ClonePool``. The pool of a given size is kept for the next ``Parallel``
call, as loky keeps its workers, and shut down at exit.

Like process backends, it shares no Python objects with the caller: a
``Parallel(require="sharedmem")`` under ``parallel_config(backend="gilclone")``
gets joblib's threading backend instead (and naming the backend in such a call
is an error, from joblib).
"""

import threading

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import cpu_count

BACKEND_NAME = "gilclone"

_pools = {}  # n_jobs -> ClonePool kept between Parallel calls
_pools_lock = threading.Lock()


def _prepare_clone():
    """Runs in each clone as it starts: joblib's batch objects unpickle into it."""
    import joblib.parallel  # noqa: F401


def _pool(n_jobs: int):
    """The shared pool of ``n_jobs`` clones (one size at a time: clones are not free)."""
    from gilclone.pool import ClonePool

    with _pools_lock:
        pool = _pools.get(n_jobs)
        if pool is None:
            for other in _pools.values():
                other.shutdown(wait=False)
            _pools.clear()
            pool = _pools[n_jobs] = ClonePool(n_jobs, initializer=_prepare_clone)
        return pool


class CloneBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` over a ``ClonePool``."""

    supports_retrieve_callback = True
    supports_sharedmem = False
    uses_threads = False  # tasks run on clones' own GILs, not on this interpreter's threads
    default_n_jobs = -1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pool = None
        self._pending = set()
        self._pending_lock = threading.Lock()

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            n_jobs = max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:  # one worker: joblib runs it inline, as it does for loky
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._pool = _pool(n_jobs)
        return n_jobs

    def submit(self, func, callback=None):
        future = self._pool.submit(func)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future):
        with self._pending_lock:
            self._pending.discard(future)

    def retrieve_result_callback(self, future):
        return future.result()

    def abort_everything(self, ensure_ready=True):
        """A task failed: drop the batches not started yet (running ones finish: a clone
        cannot be killed)."""
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    def terminate(self):
        self._pool = None  # kept in _pools for the next call
        self.reset_batch_stats()


register_parallel_backend(BACKEND_NAME, CloneBackend)
