"""``ClonePool``: a concurrent.futures Executor whose workers are clones in this process.

Shaped like CPython's ``concurrent/futures/thread.py``: worker threads start as work
arrives and hold the pool only weakly, so a pool dropped without ``shutdown`` is
collected and its workers leave. What a thread pool cannot do, this one does: a
running task can be interrupted (its worker owns the clone's thread state), which
gives time limits, ``shutdown(cancel_futures=True)`` that stops running tasks, and
an exit that does not wait for a task spinning forever.
"""

import itertools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from functools import partial
from typing import TYPE_CHECKING, Dict, List, Optional

from gilclone.cloner.naming import MAX_CLONES
from gilclone.pool import deadlines, inclone
from gilclone.pool.errors import BrokenClonePool, TaskInterrupted
from gilclone.pool.interrupted import unstarted

from gilclone.errors import GilcloneError, PythonVersionError

# The cloner (set look-up, integrity checks, ELF reading) and the worker are imported when
# the first worker starts, not with this module: every clone re-runs the main script, whose
# `from gilclone.pool import ClonePool` would otherwise import them all again, in the clone,
# before its first task (~80 ms of a ~110 ms first result, measured; bench/README.md).
if TYPE_CHECKING:
    from gilclone.cloner import store
    from gilclone.pool.stats import WorkerStats
    from gilclone.pool.worker import WorkerContext

log = logging.getLogger(__name__)

ROUTES = ("copies", "namespaces")
_leased = set()  # libpython paths of clones in use by a live pool in this process
_lease_lock = threading.Lock()
_worker_states: "weakref.WeakKeyDictionary[threading.Thread, _PoolState]" = weakref.WeakKeyDictionary()
_exiting = False
_task_ids = itertools.count(1)


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs", "timeout")

    def __init__(self, future, fn, args, kwargs, timeout):
        self.future, self.fn, self.args, self.kwargs, self.timeout = future, fn, args, kwargs, timeout


class _CloneSource:
    """The clone set, found or prepared when the first worker needs a clone."""

    def __init__(self, clones, python):
        self._clones, self._python = clones, python
        self._cset: "Optional[store.CloneSet]" = None
        self._lock = threading.Lock()
        # The default cache heals itself (a damaged clone is rebuilt before it is leased);
        # a given set is only checked, and a damaged clone in it refused (docs/security.md).
        self.heals = clones is None
        if clones is not None:
            self.get()  # a given set is read now: a wrong one is the caller's error

    def get(self) -> "store.CloneSet":
        with self._lock:
            if self._cset is None:
                self._cset = _checked_set(self._clones, self._python)
            return self._cset


class _PoolState:
    """What the pool and its workers share; workers hold this, and the pool only weakly."""

    def __init__(self):
        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.shutdown = False
        self.broken: Optional[str] = None
        self.running: Dict[Future, tuple] = {}  # future -> (worker, task id)
        self.workers: "List[WorkerContext]" = []
        self.records: "List[store.CloneRecord]" = []
        self.idle = threading.Semaphore(0)
        self.cancelling = False  # cancel_pending ran: a worker drops the item it holds back too

    def fail_pending(self, cause=None) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.queue.put(None)
                return
            err = BrokenClonePool(self.broken)
            err.__cause__ = cause
            item.future.set_exception(err)

    def cancel_pending(self) -> None:
        self.cancelling = True
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.cancel()

    def interrupt_running(self, reason: str) -> None:
        for worker, task in list(self.running.values()):
            worker.interrupt(task, reason)

    def stop(self) -> None:
        """Cancel what waits, interrupt what runs, let every worker leave."""
        with self.lock:
            self.shutdown = True
            self.cancel_pending()
            self.queue.put(None)
        self.interrupt_running("shutdown")


class ClonePool(Executor):
    """Run callables on clones of this interpreter, each with its own GIL, in this process.

    A ``concurrent.futures.Executor``: each worker is a host thread driving one clone.
    Creating the pool starts nothing; workers (and their clones) start as tasks arrive.
    Create it under ``if __name__ == "__main__":``: clones re-run the main script.

    ``max_workers``: the most clones used at once; default: the CPUs this process may use
    (affinity mask, capped by a cgroup CPU quota). ``initializer(*initargs)`` runs once in
    each clone as it starts; if it raises, the pool is broken (BrokenClonePool).
    ``clones`` is a prepared set (a CloneSet or its directory, as made by
    ``gilclone prepare --dest``); by default the cached set of this Python is prepared or
    reused. ``python``: the interpreter whose cached set to use when ``clones`` is None
    (it must be this interpreter's version). ``task_timeout`` (seconds) limits every task:
    past it the task is interrupted and its future raises
    ``concurrent.futures.TimeoutError``. ``route``: how clones are loaded, ``"copies"``
    (each worker a libpython copy; any count, any OS) or ``"namespaces"`` (Linux with glibc:
    the original libpython once per link-map namespace, less memory per worker, at most
    15 workers); default: ``$GILCLONE_ROUTE``, else ``"copies"`` (docs/pool.md).
    """

    def __init__(self, max_workers=None, *, initializer=None, initargs=(), python=None, clones=None,
                 task_timeout=None, route=None):
        if hasattr(sys, "_gilclone_index"):
            raise GilcloneError(
                "a ClonePool cannot be created inside a clone; guard pool creation in your "
                "main script with `if __name__ == '__main__':`"
            )
        if max_workers is None:
            from gilclone.pool.stats import available_cpus  # dataclasses, inspect: not for clones

            max_workers = available_cpus()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_workers > MAX_CLONES:
            # Checked here: workers start lazily, and a set holds at most this many clones.
            raise ValueError(f"max_workers must be at most {MAX_CLONES} (clones per set), not {max_workers}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._route = _checked_route(route, max_workers)
        self._max_workers = max_workers
        self._task_timeout = _checked_timeout(task_timeout)
        self._source = _CloneSource(clones, python)
        from gilclone.pool.worker import main_module_location

        self._setup = (initializer, tuple(initargs), list(sys.path), main_module_location(), self._route)
        self._state = _PoolState()
        self._records = self._state.records  # the clones started workers hold
        self._threads: List[threading.Thread] = []

    # -- Executor ----------------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on a clone and return its Future.

        ``fn`` and the arguments are pickled into the clone (``shared()`` arguments arrive as
        memoryviews over the same memory); the first call starts a worker, preparing the
        clone set if needed. The pool's ``task_timeout`` applies.
        """
        return self._submit(fn, args, kwargs, self._task_timeout)

    def _submit(self, fn, args, kwargs, timeout) -> Future:
        state = self._state
        with state.lock:
            if state.broken is not None:
                raise BrokenClonePool(state.broken)
            if state.shutdown or _exiting:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            state.queue.put(_WorkItem(future, fn, args, kwargs, timeout))
            self._adjust_thread_count()
            return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like the builtin ``map(fn, *iterables)``, run on the clones: an iterator of results
        in the order of the inputs.

        All tasks are submitted at once. ``timeout`` (seconds from this call) bounds the wait
        for the results, not the tasks: past it the iterator raises TimeoutError and the
        tasks go on; use ``task_timeout`` or ``options(timeout=)`` to stop tasks.
        ``chunksize`` (default 1) sends that many items to a clone as one task, which saves
        the per-task overhead (tens of microseconds) when each call is short; an exception
        raised by one item ends the iteration at its chunk.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return _results(self._submit_all(fn, zip(*iterables), self._task_timeout), timeout)
        chunks = ((chunk,) for chunk in _chunks(zip(*iterables), chunksize))
        results = _results(self._submit_all(partial(inclone.run_chunk, fn), chunks, self._task_timeout), timeout)
        return itertools.chain.from_iterable(results)

    def _submit_all(self, fn, arg_tuples, timeout) -> List[Future]:
        """submit(fn, *args) for each of ``arg_tuples``, taking the pool's lock once: the
        per-task cost of map is mostly this thread's, so it is kept lean."""
        state, futures = self._state, []
        arg_tuples = list(arg_tuples)  # the caller's iterables run outside the lock (they may submit)
        with state.lock:
            for args in arg_tuples:
                if state.broken is not None:
                    raise BrokenClonePool(state.broken)
                if state.shutdown or _exiting:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                future = Future()
                state.queue.put(_WorkItem(future, fn, args, {}, timeout))
                futures.append(future)
                self._adjust_thread_count()
        return futures

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        """As Executor.shutdown; ``cancel_futures=True`` also interrupts running tasks.

        A KeyboardInterrupt while waiting interrupts the running tasks before it goes on.
        """
        state = self._state
        with state.lock:
            state.shutdown = True
            if cancel_futures:
                state.cancel_pending()
            state.queue.put(None)  # each worker passes it on as it leaves
        if cancel_futures:
            state.interrupt_running("shutdown")
        if wait:
            try:
                for t in list(self._threads):
                    t.join()
            except KeyboardInterrupt:
                state.stop()
                raise

    def __exit__(self, exc_type, exc, tb):
        # Ctrl-C or SystemExit leaving the block: stop the tasks rather than wait for them.
        stop = exc_type is not None and not issubclass(exc_type, Exception)
        self.shutdown(wait=True, cancel_futures=stop)
        return False

    # -- this pool's own --------------------------------------------------------

    def interrupt(self, future: Future) -> bool:
        """Stop ``future``'s task: a pending one is cancelled, a running one gets
        TaskInterrupted raised inside it (its future then ends with that error).

        Returns whether an interrupt was sent or the future cancelled (False when it is
        done). The exception reaches Python code within the clone's switch interval
        (5 ms); a C call that does not return (time.sleep, blocking I/O) gets it when it
        returns.
        """
        entry = self._state.running.get(future)
        deadline = time.monotonic() + 5
        while entry is None and future.running() and time.monotonic() < deadline:
            # Marked running by its worker a moment before the worker registers it.
            time.sleep(0.0005)
            entry = self._state.running.get(future)
        if entry is not None:
            worker, task = entry
            return worker.interrupt(task, "interrupt")
        return future.cancel()

    def options(self, *, timeout=None) -> "PoolOptions":
        """A view of this pool whose ``submit`` and ``map`` give each task ``timeout``
        seconds (None: no limit), instead of the pool's ``task_timeout``."""
        return PoolOptions(self, _checked_timeout(timeout))

    def stats(self) -> "List[WorkerStats]":
        """Per started worker: its clone, tasks run, CPU time, transport sizes."""
        from gilclone.pool.stats import WorkerStats

        return [WorkerStats.of(w) for w in list(self._state.workers)]

    @property
    def workers(self) -> int:
        """Worker threads started so far (they start as work arrives)."""
        return len(self._threads)

    # -- workers -------------------------------------------------------------------

    def _adjust_thread_count(self) -> None:
        if len(self._threads) >= self._max_workers:
            return  # checked first: the semaphore costs a lock on every submit
        if self._state.idle.acquire(timeout=0):
            return  # a worker is waiting for work

        def wake_on_collect(_, q=self._state.queue):
            q.put(None)

        t = threading.Thread(
            target=_worker,
            args=(weakref.ref(self, wake_on_collect), self._state, self._source, self._setup),
            name=f"ClonePool-worker{len(self._threads)}",
            daemon=_DAEMON_WORKERS,
        )
        t.start()
        self._threads.append(t)
        _worker_states[t] = self._state


class PoolOptions(Executor):
    """``pool.options(timeout=...)``: submit and map with per-call settings."""

    def __init__(self, pool: ClonePool, timeout):
        self._pool, self._timeout = pool, timeout

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """As ``ClonePool.submit``, with this view's time limit for the task."""
        return self._pool._submit(fn, args, kwargs, self._timeout)

    map = ClonePool.map

    @property
    def _task_timeout(self):
        return self._timeout

    def _submit_all(self, fn, arg_tuples, timeout) -> List[Future]:
        return self._pool._submit_all(fn, arg_tuples, timeout)

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        """Refused: a view does not own the workers; shut the pool itself down."""
        raise TypeError("shut the pool down, not a view of its options")


def _worker(pool_ref, state: _PoolState, source: _CloneSource, setup) -> None:
    """One worker thread: start a clone, run items until shut down or the pool is gone."""
    worker = _start_worker(state, source, setup)
    if worker is None:
        return
    pace = _Pace()
    item = None  # an item taken from the queue that did not fit the last batch
    try:
        while True:
            if item is None:
                try:
                    item = state.queue.get_nowait()
                except queue.Empty:
                    worker.idle()
                    item = state.queue.get()
            if item is not None:
                t0 = time.perf_counter()
                items, item = _gather(state, item, pace.allows(item))
                if len(items) > 1:
                    _run_batch(state, worker, items)
                else:
                    _run_item(state, worker, items[0])
                pace.update(items[0].fn, len(items), time.perf_counter() - t0)
                del items
                if item is not None and state.cancelling:
                    item.future.cancel()  # taken from the queue but left out of the batch
                    item = None
                state.idle.release()
                continue
            pool = pool_ref()
            if _exiting or pool is None or state.shutdown:
                state.queue.put(None)  # for the next worker
                return
            del pool
    finally:
        worker.finalize()
        _release([worker.clone.record])


def _start_worker(state: _PoolState, source: _CloneSource, setup) -> "Optional[WorkerContext]":
    from gilclone.pool.worker import WorkerContext

    initializer, initargs, sys_path, (main_path, main_name), route = setup
    worker = record = None
    try:
        cset = source.get()
        record = _lease(cset, 1, source.heals)[0]
        log.info("starting a worker on clone %d of %s (route %s)", record.index, cset.root, route)
        worker = WorkerContext(_clone_of(record, cset, route), sys_path, main_path, main_name)
        state.records.append(record)
        worker.initialize(initializer, initargs)
    except BaseException as exc:
        if worker is not None and worker.started:
            what = "the initializer failed"
        else:
            what = "a clone could not start" if record is None else f"clone {record.index} could not start"
        _break(state, f"{what}: {type(exc).__name__}: {exc}", exc)
        if worker is not None:
            worker.finalize()
        if record is not None:
            _release([record])
        return None
    state.workers.append(worker)
    return worker


def _clone_of(record: "store.CloneRecord", cset: "store.CloneSet", route: str):
    """The interpreter for a leased record: its copy, or the set's libpython in a namespace
    (leased by record all the same, so two live pools never share one)."""
    if route == "namespaces":
        from gilclone.cloner.namespace import namespace_for

        return namespace_for(record, cset)
    from gilclone.cloner.load import clone_for

    return clone_for(record, cset.python)


def _checked_route(route, max_workers: int) -> str:
    """The route asked for (argument, then $GILCLONE_ROUTE, then copies), if it can work here."""
    chosen = route if route is not None else (os.environ.get("GILCLONE_ROUTE") or "copies")
    if chosen not in ROUTES:
        where = "route" if route is not None else "GILCLONE_ROUTE"
        raise ValueError(f"{where} must be one of {', '.join(map(repr, ROUTES))}, not {chosen!r}")
    if chosen == "namespaces":
        from gilclone.cloner import namespace

        reason = namespace.unsupported_reason()
        if reason:
            raise GilcloneError(f"{reason}; use route='copies'")
        if max_workers > namespace.MAX_NAMESPACES:
            raise ValueError(
                f"route='namespaces' gives at most {namespace.MAX_NAMESPACES} workers (glibc's "
                f"link-map namespaces), not {max_workers}; use route='copies' for more"
            )
    return chosen


def _break(state: _PoolState, reason: str, cause: BaseException) -> None:
    with state.lock:
        if state.broken is None:
            state.broken = reason
        state.fail_pending(cause)


class _Pace:
    """How many queued tasks a worker may take at once: tasks of the function it ran last,
    as many as that function's last run suggests fit in ``BATCH_SECONDS``. A single task
    while they are slow or unknown, so that long tasks spread over the workers, stay
    cancellable while queued, and hold back no finished results of their batch."""

    BATCH_SECONDS = 0.001
    MAX = 256

    def __init__(self):
        self.fn = None
        self.limit = 1

    def update(self, fn, tasks: int, seconds: float) -> None:
        per_task = seconds / tasks
        self.fn = fn
        self.limit = max(1, min(self.MAX, int(self.BATCH_SECONDS / max(per_task, 1e-7))))

    def allows(self, item: _WorkItem) -> int:
        return self.limit if item.fn is self.fn and item.timeout is None else 1


def _gather(state: _PoolState, first: _WorkItem, limit: int):
    """(items for one call, the item taken but left out): ``first`` and the tasks of the
    same function queued behind it, up to ``limit`` and a fair share of the queue, while
    they have no time limit (a limit starts with its task, which the host sees only one
    by one)."""
    items = [first]
    limit = min(limit, 1 + state.queue.qsize() // max(1, len(state.workers)))
    while len(items) < limit:
        try:
            item = state.queue.get_nowait()
        except queue.Empty:
            break
        if item is None or item.timeout is not None or item.fn is not first.fn:
            return items, item
        items.append(item)
    return items, None


def _run_batch(state: _PoolState, worker: "WorkerContext", items) -> None:
    """Run ``items`` in one call into the clone; each future gets its own result. Their
    futures all turn running when the call starts, as a process pool's do when their
    items enter its call queue."""
    live = _start_batch(state, worker, items)
    data = worker.pickle_batch([(i.fn, i.args, i.kwargs) for i, _ in live]) if len(live) > 1 else None
    outcomes = None
    if data is not None:
        try:
            outcomes = worker.call_batch([task for _, task in live], data)
        except BaseException as exc:
            outcomes = [(None, (False, exc))] * len(live)
        finally:
            del data
            worker.end()
    if outcomes is None:  # one task left, or the clone could not read them together
        _run_one_by_one(state, worker, live, worker.batch_over())
        return
    worker.batch_over()
    for item, _ in live:
        del state.running[item.future]
    worker.tasks += len(live)
    for (item, _), (_, (ok, value)) in zip(live, outcomes):
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)


def _start_batch(state: _PoolState, worker: "WorkerContext", items):
    """Register the batch's tasks, then mark their futures running (as ``_run_item`` does:
    whoever sees a future running must find whom to interrupt); [(item, task)] of those
    not cancelled."""
    tasks = [next(_task_ids) for _ in items]
    worker.expect_batch(tasks)
    live = []
    for item, task in zip(items, tasks):
        if state.broken is not None:
            item.future.set_exception(BrokenClonePool(state.broken))
            continue
        state.running[item.future] = (worker, task)
        if item.future.set_running_or_notify_cancel():
            live.append((item, task))
        else:
            del state.running[item.future]
    return live


def _run_one_by_one(state: _PoolState, worker: "WorkerContext", live, interrupted) -> None:
    for item, task in live:
        del state.running[item.future]
        if task in interrupted:
            item.future.set_exception(unstarted(interrupted[task]))
        else:
            _run_item(state, worker, item, started=True)


def _run_item(state: _PoolState, worker: "WorkerContext", item: _WorkItem, started=False) -> None:
    future = item.future
    if state.broken is not None:
        future.set_exception(BrokenClonePool(state.broken))
        return
    task = next(_task_ids)
    worker.begin(task)
    # Registered before the future says it runs: whoever sees it running (interrupt,
    # shutdown) must find whom to interrupt, or a spinning task would never be stopped.
    state.running[future] = (worker, task)
    if not started and not future.set_running_or_notify_cancel():
        del state.running[future]
        worker.end()  # drops an interrupt sent in that moment
        return
    limit = None
    if item.timeout is not None:
        limit = deadlines.after(item.timeout, partial(worker.interrupt, task, "timeout"))
    try:
        result = worker.call(item.fn, item.args, item.kwargs)
        error = None
    except BaseException as exc:
        result, error = None, exc
    finally:
        if limit is not None:
            limit.cancel()
        reason = worker.end()
        del state.running[future]
        worker.tasks += 1
    if reason == "timeout":
        error = FuturesTimeoutError(f"the task ran past its time limit of {item.timeout} s")
        error.__cause__ = TaskInterrupted("time limit")
        result = None
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _checked_timeout(timeout):
    if timeout is None:
        return None
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError("a task timeout must be a positive number of seconds")
    return timeout


def _checked_set(clones, python) -> "store.CloneSet":
    from gilclone.cloner import store
    from gilclone.cloner.prepare import ensure_set

    if clones is None:
        cset = ensure_set(1, python=python)
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


def _results(futures, timeout):
    """The results of ``futures`` in order, as Executor.map yields them (its iterator,
    without the per-item submit)."""
    if timeout is not None:
        end_time = timeout + time.monotonic()
    futures.reverse()  # popped from the end: the first result first
    try:
        while futures:
            future = futures.pop()
            if timeout is None:
                yield future.result()
            else:
                yield future.result(end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _chunks(iterator, size):
    while True:
        chunk = tuple(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _lease(cset: "store.CloneSet", count: int, heal: bool) -> "List[store.CloneRecord]":
    """Take ``count`` clones of the set that no live pool in this process uses, preparing
    more when there are too few (``cset`` may be an older reading of a set grown since).
    ``heal``: check the chosen clones now and rebuild damaged ones (the default cache);
    otherwise each clone is checked when loaded, and a damaged one is refused."""
    from gilclone.cloner.prepare import ensure_set

    with _lease_lock:
        while True:
            free = [r for r in cset.clones if r.libpython not in _leased]
            if len(free) >= count:
                break
            cset = ensure_set(len(cset.clones) + count - len(free), dest=cset.root)
        chosen = free[:count]
        if heal:
            # A set is checked only up to the count it was found or prepared for: a clone
            # beyond that is checked now, and rebuilt if damaged, before anyone loads it.
            cset = ensure_set(max(r.index for r in chosen) + 1, dest=cset.root)
            current = {r.directory: r for r in cset.clones}
            chosen = [current[r.directory] for r in chosen]
        _leased.update(r.libpython for r in chosen)
        return chosen


def _release(records) -> None:
    with _lease_lock:
        for r in records:
            _leased.discard(r.libpython)


def _python_exit() -> None:
    """Leaving the main script: pending tasks are cancelled and running ones interrupted,
    so the joins that follow end (a task inside a C call that never returns still holds
    its worker)."""
    global _exiting
    _exiting = True
    threads = list(_worker_states.items())
    for state in {id(s): s for _, s in threads}.values():
        state.stop()
    for t, _ in threads:
        t.join()


# Python 3.9+: runs before threading joins the (non-daemon) workers, as CPython's own
# executors do. 3.8 joins non-daemon threads before any atexit function runs, so there
# workers are daemon threads and this hook joins them.
_DAEMON_WORKERS = not hasattr(threading, "_register_atexit")
if _DAEMON_WORKERS:
    import atexit

    atexit.register(_python_exit)
else:
    threading._register_atexit(_python_exit)
