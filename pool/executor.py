"""``ClonePool``: a concurrent.futures Executor whose workers are clones in this process."""

import itertools
import logging
import os
import queue
import sys
import threading
import weakref
from concurrent.futures import Executor, Future
from functools import partial
from typing import List, Optional

from gilclone.cloner import store
from gilclone.cloner.load import clone_for
from gilclone.cloner.prepare import ensure_set
from gilclone.pool import inclone
from gilclone.pool.errors import BrokenClonePool
from gilclone.pool.worker import WorkerContext, main_module_location

from gilclone.errors import GilcloneError, PythonVersionError

log = logging.getLogger(__name__)

_leased = set()  # libpython paths of clones in use by a live pool in this process
_lease_lock = threading.Lock()
_live_pools = weakref.WeakSet()
_exiting = False


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future, fn, args, kwargs):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class ClonePool(Executor):
    """Run callables on clones of this interpreter, each with its own GIL, in this process.

    ``clones`` is a prepared set (a CloneSet or its directory); by default the
    cached set of this Python is prepared or reused.
    """

    def __init__(self, max_workers=None, *, initializer=None, initargs=(), python=None, clones=None):
        if hasattr(sys, "_gilclone_index"):
            raise GilcloneError(
                "a ClonePool cannot be created inside a clone; guard pool creation in your "
                "main script with `if __name__ == '__main__':`"
            )
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        cset = self._clone_set(clones, python, max_workers)
        self._records = _lease(cset, max_workers)
        log.info("pool of %d workers on clones %s of %s", max_workers,
                 ", ".join(str(r.index) for r in self._records), cset.root)
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._broken: Optional[str] = None
        self._threads: List[threading.Thread] = []
        main_path, main_name = main_module_location()
        for record in self._records:
            ctx = WorkerContext(clone_for(record, cset.python), sys.path, main_path, main_name)
            t = threading.Thread(
                target=self._work,
                args=(ctx, initializer, initargs),
                name=f"ClonePool-clone{record.index}",
                daemon=not hasattr(threading, "_register_atexit"),
            )
            t.start()
            self._threads.append(t)
        _live_pools.add(self)

    @staticmethod
    def _clone_set(clones, python, count) -> store.CloneSet:
        if clones is None:
            cset = ensure_set(count, python=python)
        elif isinstance(clones, store.CloneSet):
            cset = clones
        else:
            cset = store.load_set(os.fspath(clones))
        here = "%d.%d" % sys.version_info[:2]
        if ".".join(cset.version.split(".")[:2]) != here:
            raise PythonVersionError(
                f"the clone set {cset.root} is of Python {cset.version}, this interpreter is {here}; "
                "tasks are pickled by reference, so the pool needs clones of its own version"
            )
        return cset

    # -- the worker thread -----------------------------------------------------

    def _work(self, ctx: WorkerContext, initializer, initargs) -> None:
        try:
            ctx.initialize(initializer, initargs)
        except BaseException as exc:
            what = "the initializer failed" if ctx.started else f"clone {ctx.clone.index} could not start"
            self._break(f"{what}: {type(exc).__name__}: {exc}", exc)
            _release([ctx.clone.record])
            try:
                ctx.finalize()
            except Exception:
                pass
            return
        try:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    ctx.idle()
                    item = self._queue.get()
                if item is None:
                    return
                if self._broken is not None:
                    item.future.set_exception(BrokenClonePool(self._broken))
                    continue
                if not item.future.set_running_or_notify_cancel():
                    continue
                try:
                    result = ctx.call(item.fn, item.args, item.kwargs)
                except BaseException as exc:
                    item.future.set_exception(exc)
                else:
                    item.future.set_result(result)
                del item
        finally:
            ctx.finalize()
            _release([ctx.clone.record])

    def _break(self, reason: str, cause: BaseException) -> None:
        with self._shutdown_lock:
            if self._broken is None:
                self._broken = reason
            self._fail_pending(cause)

    def _fail_pending(self, cause=None) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)
                return
            err = BrokenClonePool(self._broken)
            err.__cause__ = cause
            item.future.set_exception(err)

    # -- Executor ----------------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._shutdown_lock:
            if self._broken is not None:
                raise BrokenClonePool(self._broken)
            if self._shutdown or _exiting:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            self._queue.put(_WorkItem(future, fn, args, kwargs))
            return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunks(zip(*iterables), chunksize)
        results = super().map(partial(inclone.run_chunk, fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        with self._shutdown_lock:
            already = self._shutdown
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item.future.cancel()
            if not already:
                for _ in self._threads:
                    self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()

    @property
    def workers(self) -> int:
        return len(self._threads)


def _chunks(iterator, size):
    while True:
        chunk = tuple(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _lease(cset: store.CloneSet, count: int) -> List[store.CloneRecord]:
    """Take ``count`` clones of the set that no live pool in this process uses."""
    with _lease_lock:
        free = [r for r in cset.clones if r.libpython not in _leased]
        if len(free) < count:
            cset = ensure_set(len(cset.clones) + count - len(free), dest=cset.root)
            free = [r for r in cset.clones if r.libpython not in _leased]
        chosen = free[:count]
        _leased.update(r.libpython for r in chosen)
        return chosen


def _release(records) -> None:
    with _lease_lock:
        for r in records:
            _leased.discard(r.libpython)


def _python_exit() -> None:
    global _exiting
    _exiting = True
    for pool in list(_live_pools):
        pool.shutdown(wait=False)


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)  # runs before non-daemon threads are joined
else:
    import atexit

    atexit.register(_python_exit)
