"""Dask workers that run tasks on clones: one worker process per machine, a clone per core.

Switch it on with the worker preload (``dask worker SCHEDULER --preload gilclone.dask``,
``LocalCluster(..., preload=["gilclone.dask"])``) or the plugin
(``client.register_plugin(gilclone.dask.ClonesPlugin())``). Each worker then has a
``ClonePool`` executor named ``"clones"``, as many clones as the worker has threads,
shut down with the worker. Tasks opt in with ``dask.annotate(executor="clones")``;
with the Dask config ``gilclone.default: true`` (``DASK_GILCLONE__DEFAULT=true``)
every task runs there.

A Dask worker hands a task to a non-thread executor as
``distributed.worker._run_task_simple(task, data, delay)``. The executor here runs
only ``task(data)`` in a clone (so clones never import distributed) and builds
the message that function would have returned on the host: result, its size,
start and stop times taken in the clone, the thread that ran it; or the error
with the clone's traceback.

This module is imported inside clones too (for ``_timed_call``): distributed is
imported only in the host, in functions.
"""

import threading
import time
from concurrent.futures import Executor, Future
from functools import partial

EXECUTOR_NAME = "clones"
PLUGIN_NAME = "gilclone-clones"


def _timed_call(task, data):
    """Runs in a clone: the task and the measures Dask keeps for it."""
    start = time.time()
    result = task(data)
    return result, start, time.time(), threading.get_ident()


def _prepare_clone():
    """Runs in each clone as it starts: the imports every task needs, paid before the first one."""
    import dask._task_spec  # noqa: F401  (Dask's task objects unpickle into it)

    try:
        import cloudpickle  # noqa: F401  (functions Dask ships by value)
    except ImportError:
        pass


class CloneExecutor(Executor):
    """A ``ClonePool`` as a Dask worker executor (the name must not say ThreadPoolExecutor:
    the worker would then pass it thread-only arguments)."""

    def __init__(self, max_workers, **pool_options):
        from gilclone.pool import ClonePool

        pool_options.setdefault("initializer", _prepare_clone)
        self.pool = ClonePool(max_workers, **pool_options)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        from distributed.worker import _run_task_simple

        if fn is _run_task_simple and not kwargs:
            return self._submit_task(*args)
        return self.pool.submit(fn, *args, **kwargs)

    def _submit_task(self, task, data, time_delay) -> Future:
        outer: Future = Future()
        outer.set_running_or_notify_cancel()
        inner = self.pool.submit(_timed_call, task, data)
        inner.add_done_callback(partial(_finish, outer, time.time(), time_delay))
        return outer

    def shutdown(self, wait=True, *, cancel_futures=False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    @property
    def workers(self) -> int:
        return self.pool.workers


def _finish(outer: Future, submitted: float, time_delay: float, inner: Future) -> None:
    """Turn the clone's outcome into ``_run_task_simple``'s message."""
    from dask.sizeof import sizeof

    try:
        result, start, stop, thread = inner.result()
    except (SystemExit, KeyboardInterrupt) as exc:
        outer.set_exception(exc)  # as Dask does: these are not task failures
        return
    except BaseException as exc:
        msg = _failure(exc)
        msg.update(start=submitted + time_delay, stop=time.time() + time_delay,
                   thread=threading.get_ident())
    else:
        msg = {
            "op": "task-finished",
            "status": "OK",
            "result": result,
            "nbytes": sizeof(result),
            "type": type(result) if result is not None else None,
            "start": start + time_delay,
            "stop": stop + time_delay,
            "thread": thread,
        }
    outer.set_result(msg)


def _failure(exc: BaseException) -> dict:
    """Dask's error message for ``exc``, with the clone's frames as its traceback."""
    from distributed.core import error_message

    remote = _remote_traceback(exc)
    try:
        raise exc.with_traceback(remote)
    except BaseException:
        msg = error_message(exc)
    msg["op"] = "task-erred"
    msg["actual_exception"] = exc
    return msg


def _remote_traceback(exc: BaseException):
    """The clone's traceback text (attached by ClonePool) rebuilt as a traceback object."""
    from gilclone.pool import RemoteTraceback

    cause = exc.__cause__
    if not isinstance(cause, RemoteTraceback):
        return exc.__traceback__
    try:
        from tblib import Traceback

        frames = Traceback.from_string(cause.tb, strict=False)
    except Exception:  # text it cannot parse: the host's frames will do
        return exc.__traceback__
    while frames.tb_next is not None and _is_plumbing(frames.tb_frame.f_code.co_filename):
        frames = frames.tb_next  # the clone's runner, _timed_call and Dask's Task.__call__
    return frames.as_traceback()


def _is_plumbing(filename: str) -> bool:
    path = filename.replace("\\", "/")
    return path.endswith(("/pool/inclone.py", "/gilclone/dask.py", "/dask/_task_spec.py"))


# -- installing it on a worker -----------------------------------------------------


def install(worker, name: str = EXECUTOR_NAME, default: bool = False, **pool_options) -> CloneExecutor:
    """Give ``worker`` a clone executor with one clone per worker thread."""
    from gilclone.errors import GilcloneError

    if not hasattr(worker, "executors"):
        raise GilcloneError(
            f"gilclone.dask runs on Dask workers, not on a {type(worker).__name__}: "
            "use `dask worker --preload gilclone.dask` or LocalCluster(preload=[...])"
        )
    executor = CloneExecutor(worker.state.nthreads, **pool_options)
    old = worker.executors.get(name)
    worker.executors[name] = executor
    if old is not None:
        old.shutdown(wait=False)
    if default:
        # The thread pool stays under another name, so the worker still shuts it down.
        worker.executors["threads"] = worker.executors["default"]
        worker.executors["default"] = executor
    return executor


def uninstall(worker, name: str = EXECUTOR_NAME) -> None:
    executor = worker.executors.get(name)
    if isinstance(executor, CloneExecutor):
        if worker.executors.get("default") is executor:
            worker.executors["default"] = worker.executors.pop("threads")
        del worker.executors[name]
        # Not waiting: this runs on the worker's event loop (plugin removal, worker close);
        # tasks already running finish and report, the clones are then given back.
        executor.shutdown(wait=False)


def dask_setup(worker) -> None:
    """Preload entry point; reads ``gilclone.executor`` and ``gilclone.default`` from Dask's config."""
    import dask

    install(worker, name=dask.config.get("gilclone.executor", EXECUTOR_NAME),
            default=bool(dask.config.get("gilclone.default", False)))


def dask_teardown(worker) -> None:
    import dask

    uninstall(worker, name=dask.config.get("gilclone.executor", EXECUTOR_NAME))


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class ClonesPlugin(WorkerPlugin):
        """``client.register_plugin(ClonesPlugin())``: a clone executor on every worker,
        those that join later included."""

        name = PLUGIN_NAME

        def __init__(self, executor: str = EXECUTOR_NAME, default: bool = False):
            self.executor = executor
            self.default = default

        def setup(self, worker):
            install(worker, name=self.executor, default=self.default)

        def teardown(self, worker):
            uninstall(worker, name=self.executor)

    ClonesPlugin.__module__ = __name__
    ClonesPlugin.__qualname__ = "ClonesPlugin"
    return ClonesPlugin


_lazy = {}


def __getattr__(name):
    # The plugin class needs distributed, which clones importing this module must not load.
    if name != "ClonesPlugin":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _lazy:
        _lazy[name] = _plugin_class()
    return _lazy[name]
