"""One pool worker: a host thread driving one clone (initialize / run / finalize).

Per task the host makes four foreign calls into the clone (take its GIL, call
the runner, drop the result, release its GIL); a task with ``shared()``
arguments adds two (the argument tuple) and two per argument. Tiny tasks found
queued together go in one call (``call_batch``; layout in batches.py).
Arguments and results cross through a transport buffer that both sides address
directly.
"""

import ctypes
import logging
import os
import pickle
import struct
import sys
import threading
import time
import warnings
from typing import Dict, List, Optional, Set, Tuple

from gilclone.cloner.capi import Py_buffer, PyBUF_WRITE
from gilclone.cloner.load import Clone
from gilclone.pool import batches, inclone, serialize, sharing
from gilclone.pool.errors import RemoteTraceback, TaskPicklingError
from gilclone.pool.interrupted import unstarted

from gilclone.errors import CloneLoadError

log = logging.getLogger(__name__)

INITIAL_BUFFER = 64 * 1024
SHRINK_ABOVE = 1024 * 1024  # a transport grown past this goes back to INITIAL_BUFFER after the task
LARGE_TASK = 1024 * 1024  # a pickled task past this is sent in pieces (see _send_pieces)
LARGE_PIECE = 64 * 1024  # pickle writes objects this large on their own (FRAME_SIZE_TARGET)
PIECES_FLAG = 1 << 16  # byte 10 of the header
BATCH_BYTES = 256 * 1024  # tasks pickled larger than this together go one by one
_LENGTH = struct.Struct("<Q")
_HEADER = struct.Struct("<QQ")  # payload length, status (see inclone.py)
PyBUF_RECORDS = 0x1D  # writable, format, shape, strides
PyBUF_RECORDS_RO = 0x1C

_host_api = ctypes.pythonapi
_host_api.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int]
_host_api.PyObject_GetBuffer.restype = ctypes.c_int
_host_api.PyBuffer_Release.argtypes = [ctypes.POINTER(Py_buffer)]
_host_api.PyBuffer_Release.restype = None

# Buffers a clone kept using after its task: their exports must outlive the task.
_pinned: List[object] = []


class WorkerContext:
    """Owns one clone for one worker thread of a pool."""

    def __init__(self, clone: Clone, sys_path, main_path: Optional[str], main_name: Optional[str]):
        self.clone = clone
        self.sys_path = list(sys_path)
        self.main = (main_path, main_name)
        self.ident: Optional[int] = None  # the worker thread, also the id of its clone thread state
        self._tstate = None
        self._gil = None
        self.started = False  # the clone is set up; what fails after this is the initializer
        self._attached = False  # this thread holds the clone's GIL
        self._buffer = self._view = None
        self._runner = self._run = self._fetch = self._set_buffer = self._interrupt_type = None
        self._run_batch = None
        self._interrupt_lock = threading.Lock()  # one interrupter at a time
        self._running: Optional[int] = None  # the task in the clone; changed holding its GIL
        self._sent: Optional[Tuple[int, str]] = None  # (task, reason) of the interrupt sent
        self._batch: Optional[Dict[int, int]] = None  # task -> place in the batch in the clone
        self._batch_ahead: Set[int] = set()  # the tasks of a batch not yet in the clone
        self.batch_sent: Dict[int, str] = {}  # task of the batch -> reason it was interrupted
        self.tasks = 0
        self.peak_transport = 0
        self.cpu_at_exit: Optional[float] = None

    # -- initialize / finalize --------------------------------------------------

    def initialize(self, initializer=None, initargs=()) -> None:
        self.ident = threading.get_ident()
        self.clone.open(sys_path=self.sys_path, argv=list(sys.argv))
        api = self.clone.api
        self._gil = api.PyGILState_Ensure()
        self._attached = True
        try:
            self._setup_runner()
            self.clone_exec(f"import sys\nsys.path[:] = {self.sys_path!r}")
            self.clone_exec(f"from gilclone.pool import inclone\ninclone.fixup_main(*{self.main!r})")
        finally:
            self.idle()
        self.started = True
        log.info("worker on clone %d started", self.clone.index)
        if initializer is not None:
            self.call(initializer, tuple(initargs), {})

    def _setup_runner(self) -> None:
        api = self.clone.api
        module = self._checked(api.PyImport_ImportModule(b"gilclone.pool.inclone"), "import gilclone.pool.inclone")
        try:
            self._interrupt_type = self._attr(module, b"TaskInterrupted")
            runner_type = self._attr(module, b"Runner")
        finally:
            api.Py_DecRef(module)
        self._set_host_buffer(ctypes.create_string_buffer(INITIAL_BUFFER))
        args = self._checked(api.PyTuple_New(1), "make the runner's arguments")
        api.PyTuple_SetItem(args, 0, self._clone_view_of_buffer())  # steals the view
        self._runner = api.PyObject_CallObject(runner_type, args)
        api.Py_DecRef(args)
        api.Py_DecRef(runner_type)
        self._checked(self._runner, "create the task runner")
        self._run = self._attr(self._runner, b"run")
        self._fetch = self._attr(self._runner, b"fetch")
        self._set_buffer = self._attr(self._runner, b"set_buffer")
        self._run_batch = self._attr(self._runner, b"run_batch")

    def _attr(self, obj: int, name: bytes) -> int:
        return self._checked(self.clone.api.PyObject_GetAttrString(obj, name), f"find {name.decode()}")

    def _checked(self, obj: Optional[int], what: str) -> int:
        """``obj`` (a new reference) or, when the clone gave NULL, its error as CloneLoadError."""
        if not obj:
            self.clone.api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: cannot {what} (traceback on stderr)")
        return obj

    def _clone_view_of_buffer(self) -> int:
        return self.clone.api.PyMemoryView_FromMemory(
            ctypes.addressof(self._buffer), len(self._buffer), PyBUF_WRITE
        )

    def clone_exec(self, source: str) -> None:
        """Run setup code in the clone (the caller holds the clone's GIL); its error, with
        the clone's traceback, becomes a CloneLoadError."""
        wrapped = (
            "import sys\ntry:\n"
            f"    exec({source!r}, __import__('__main__').__dict__)\n"
            "    sys._gilclone_error = None\n"
            "except BaseException:\n"
            "    import traceback\n"
            "    sys._gilclone_error = traceback.format_exc()\n"
        )
        self.clone.api.PyRun_SimpleString(wrapped.encode("utf-8"))
        error = self.clone.sys_attr_text("_gilclone_error")
        if error:
            last = error.rstrip().splitlines()[-1]
            raise CloneLoadError(f"clone {self.clone.index}: set-up failed: {last}") from RemoteTraceback(error)

    def finalize(self) -> None:
        """Give the clone back: drop this thread's state in it (the clone stays initialised).

        Whatever failed before, the clone's GIL is released at the end: a GIL left held by
        a thread that is gone would stop every later user of this clone.
        """
        if self._gil is None:
            return  # the clone was never entered
        self.cpu_at_exit = time.thread_time()
        api = self.clone.api
        self._enter()
        try:
            for obj in (self._run, self._run_batch, self._fetch, self._set_buffer, self._runner,
                        self._interrupt_type):
                if obj:
                    api.Py_DecRef(obj)
        finally:
            self._run = self._fetch = self._set_buffer = self._runner = self._interrupt_type = None
            self._run_batch = None
            self._tstate = None
            self._attached = False
            gil, self._gil = self._gil, None
            api.PyGILState_Release(gil)
        log.info("worker on clone %d stopped", self.clone.index)

    # -- holding the clone's GIL -------------------------------------------------
    #
    # While tasks keep coming the worker keeps the clone's GIL between them (two
    # foreign calls per task instead of four); it lets go when its queue runs dry,
    # so threads a task started inside the clone run while the worker waits.

    def _enter(self) -> None:
        if not self._attached:
            self.clone.api.PyEval_RestoreThread(self._tstate)
            self._attached = True

    def idle(self) -> None:
        """The worker is about to wait for work: release the clone's GIL."""
        if self._attached:
            self._tstate = self.clone.api.held.PyEval_SaveThread()
            self._attached = False

    # -- interrupting ------------------------------------------------------------
    #
    # ``_running`` only changes on the worker thread while it holds the clone's GIL
    # (end) or before it enters the clone (begin), and an interrupter reads it holding
    # the clone's GIL too: so an interrupt meant for one task never lands in the next.

    def begin(self, task: int) -> None:
        self._sent = None  # first: an interrupter may act as soon as _running is set
        self._running = task

    def end(self) -> Optional[str]:
        """The task is over (call with nothing of it left to run): return why it was
        interrupted, if it was, and drop an interrupt that was sent but not delivered."""
        self._enter()  # normally held already; taken when the task never reached the clone
        self._running = None
        sent, self._sent = self._sent, None
        if sent is None:
            return None
        self.clone.api.PyThreadState_SetAsyncExc(self.ident, None)
        return sent[1]

    def interrupt(self, task: int, reason: str) -> bool:
        """Raise TaskInterrupted in ``task`` if this worker is running it (any thread)."""
        with self._interrupt_lock:
            if task in self._batch_ahead:  # its batch is not in the clone yet: it will skip it
                if task in self.batch_sent:
                    return False
                self.batch_sent[task] = reason
                return True
            batch = self._batch
            if batch is not None and task in batch:
                return self._interrupt_in_batch(batch, task, reason)
            if self._running != task or self._sent is not None:
                return False
            api = self.clone.api
            gil = api.PyGILState_Ensure()  # the task lets go of it at its next switch interval
            try:
                if self._running != task:
                    return False
                api.PyThreadState_SetAsyncExc(self.ident, self._interrupt_type)
                self._sent = (task, reason)
                return True
            finally:
                api.PyGILState_Release(gil)

    def _interrupt_in_batch(self, batch, task: int, reason: str) -> bool:
        """A task of a batch: raise in it if it runs, mark it skipped if it has not
        started (it then ends with TaskInterrupted unrun), nothing if it is over."""
        if task in self.batch_sent:
            return False
        api = self.clone.api
        gil = api.PyGILState_Ensure()
        try:
            if self._batch is not batch:
                return False  # the batch ended meanwhile
            place, progress = batch[task], batches.progress(self._view)
            if progress == 2 * place + 1:
                api.PyThreadState_SetAsyncExc(self.ident, self._interrupt_type)
                batches.mark_sent(self._view, place)
            elif progress <= 2 * place:
                batches.mark_skipped(self._view, place)
            else:
                return False
            self.batch_sent[task] = reason
            return True
        finally:
            api.PyGILState_Release(gil)

    def cpu_seconds(self) -> float:
        """CPU time of the worker thread, which runs the clone's side of every task."""
        if self.cpu_at_exit is not None or self.ident is None:
            return self.cpu_at_exit or 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self.ident))
        except (OSError, AttributeError):
            return self.cpu_at_exit or 0.0

    # -- run ---------------------------------------------------------------------

    def call(self, fn, args, kwargs):
        """Run ``fn(*args, **kwargs)`` in the clone and return its result or raise its error."""
        task = (fn, args, kwargs)
        payload, objects = _pickle_task(_dumps, task)
        try:
            if len(payload) <= LARGE_TASK:
                self._send(payload)
                del payload
            else:
                del payload  # pickled again in pieces: the large ones are not copied at all
                pieces, objects = _pickle_task(_dump_pieces, task)
                objects += self._send_pieces(pieces, len(objects))
                del pieces
            del task
            if not objects:
                self._call_runner(None)
                if self._view[8] == inclone.NEED_SPACE:
                    self._grow_for_pending()
            else:
                self._call_with_shared(objects)
            del objects
            size, status = _HEADER.unpack_from(self._view, 0)
            return _decode(status & 0xFF, self._view[inclone.HEADER : inclone.HEADER + size])
        finally:
            if len(self._view) > SHRINK_ABOVE:
                self._replace_buffer(INITIAL_BUFFER)  # a large payload's memory goes back now

    def pickle_batch(self, calls) -> Optional[bytes]:
        """``calls`` [(fn, args, kwargs)] pickled as one list, or None where they must go one
        by one: a task that cannot be pickled (its own future gets the error), a shared()
        argument, or more than BATCH_BYTES."""
        try:
            data, objects = _pickle_task(_dumps, calls)
        except TaskPicklingError:
            return None
        if objects or len(data) > BATCH_BYTES:
            return None
        return data

    def expect_batch(self, tasks: List[int]) -> None:
        """``tasks`` are about to run as one batch (call before their futures say they
        run): an interrupt from now on ends a task of them unrun."""
        with self._interrupt_lock:
            self._batch_ahead = set(tasks)
            self.batch_sent = {}

    def batch_over(self) -> Dict[int, str]:
        """Forget the expected batch; return its tasks interrupted before it reached the
        clone (task -> reason), for a batch that went one by one instead."""
        with self._interrupt_lock:
            sent, self.batch_sent, self._batch_ahead = self.batch_sent, {}, set()
            return sent

    def call_batch(self, tasks: List[int], data: bytes) -> Optional[list]:
        """Run the pickled tasks (ids ``tasks``) in one call: per task (the reason an
        interrupt was sent or None, (ok, result or error)); None when the clone could not
        unpickle them together (nothing ran: send them one by one)."""
        self._reserve(batches.request_size(len(tasks), len(data)))
        batches.write_request(self._view, len(tasks), data)
        del data
        api = self.clone.api
        self._enter()
        with self._interrupt_lock:
            self._batch = {task: i for i, task in enumerate(tasks)}
            for task in self.batch_sent:  # interrupted before the batch reached the clone
                batches.mark_skipped(self._view, self._batch[task])
            self._batch_ahead = set()
        result = api.PyObject_CallObject(self._run_batch, None)
        self._batch = None  # holding the clone's GIL: interrupters see the batch is over
        sent, self.batch_sent = self.batch_sent, {}
        if sent:
            api.PyThreadState_SetAsyncExc(self.ident, None)  # nothing may stay pending
        if not result:
            api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: the batch runner itself failed")
        api.held.Py_DecRef(result)
        try:
            if self._view[8] == inclone.NEED_SPACE:
                self._grow_for_pending()
            size, status = _HEADER.unpack_from(self._view, 0)
            if status & 0xFF == batches.UNREADABLE:
                return None
            replies = pickle.loads(self._view[inclone.HEADER : inclone.HEADER + size])
            return [(sent.get(task), _outcome(status, value)) for task, (status, value) in zip(tasks, replies)]
        finally:
            if len(self._view) > SHRINK_ABOVE:
                self._replace_buffer(INITIAL_BUFFER)

    def _send(self, payload: bytes) -> None:
        size = len(payload)
        self._reserve(size)
        self._view[inclone.HEADER : inclone.HEADER + size] = payload
        _HEADER.pack_into(self._view, 0, size, inclone.NO_REPLY)

    def _send_pieces(self, pieces, first: int) -> list:
        """Write the small pieces of a task and a table of all into the transport; return
        the large pieces, which the clone reads as views numbered from ``first``."""
        layout, small, large = [], [], []
        for piece in pieces:
            size = memoryview(piece).nbytes
            if size >= LARGE_PIECE:
                large.append(piece)
                layout.append(-(first + len(large)))
            else:
                small.append(piece)
                layout.append(size)
        table = pickle.dumps(tuple(layout), inclone.PROTOCOL)
        total = 8 + len(table) + sum(layout[i] for i in range(len(layout)) if layout[i] >= 0)
        self._reserve(total)
        view, pos = self._view, inclone.HEADER
        _LENGTH.pack_into(view, pos, len(table))
        view[pos + 8 : pos + 8 + len(table)] = table
        pos += 8 + len(table)
        for piece in small:
            data = memoryview(piece).cast("B")
            view[pos : pos + len(data)] = data
            pos += len(data)
        _HEADER.pack_into(view, 0, total, PIECES_FLAG | inclone.NO_REPLY)
        return large

    def _reserve(self, size: int) -> None:
        if inclone.HEADER + size > len(self._view):
            self._replace_buffer(max(inclone.HEADER + size, 2 * len(self._view)))

    def _call_with_shared(self, objects) -> None:
        exports = _export_all(objects)
        views_kept = False
        try:
            self._call_runner(exports)
            if self._view[8] == inclone.NEED_SPACE:
                self._grow_for_pending()
            views_kept = bool(self._view[9])
        finally:
            _release_exports(exports, views_kept)

    def _call_runner(self, exports) -> None:
        api = self.clone.api
        self._enter()
        args = None
        if exports:
            args = api.PyTuple_New(len(exports))
            for i, view in enumerate(exports):
                clone_view = Py_buffer.from_buffer_copy(view)
                clone_view.obj = None  # the clone's view must not release the host's export
                api.PyTuple_SetItem(args, i, api.PyMemoryView_FromBuffer(ctypes.byref(clone_view)))
        result = api.PyObject_CallObject(self._run, args)
        self._running = None  # holding the clone's GIL: no interrupt is sent for this task now
        if self._sent is not None:
            api.PyThreadState_SetAsyncExc(self.ident, None)  # one sent too late to be delivered
        if args:
            api.held.Py_DecRef(args)
        if not result:
            if self._sent is not None and api.PyErr_ExceptionMatches(self._interrupt_type):
                api.PyErr_Clear()
                if self._view[8] == inclone.NO_REPLY:  # delivered before the task started
                    raise unstarted(self._sent[1])
                return  # delivered after the runner had written its reply, which stands
            api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: the task runner itself failed")
        api.held.Py_DecRef(result)  # None: no finaliser can run

    def _set_host_buffer(self, buffer) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer).cast("B")
        self.peak_transport = max(self.peak_transport, len(buffer))

    def _grow_for_pending(self) -> None:
        needed = inclone.HEADER + _HEADER.unpack_from(self._view, 0)[0]
        self._replace_buffer(needed)
        api = self.clone.api
        self._enter()
        result = api.PyObject_CallObject(self._fetch, None)
        api.Py_DecRef(result)

    def _replace_buffer(self, size: int) -> None:
        api = self.clone.api
        old = self._view
        self._set_host_buffer(ctypes.create_string_buffer(size))
        self._view[:16] = old[:16]
        old.release()
        self._enter()
        args = api.PyTuple_New(1)
        api.PyTuple_SetItem(args, 0, self._clone_view_of_buffer())
        result = api.PyObject_CallObject(self._set_buffer, args)
        api.Py_DecRef(args)
        if result:
            api.Py_DecRef(result)


def _dumps(task, sink) -> bytes:
    return serialize.dumps(task, inclone.PROTOCOL, sink)


class _PieceWriter:
    """The file a Pickler writes a large task to: the pickler hands large bytes-like
    objects to ``write`` as they are, so they are kept, not copied."""

    def __init__(self):
        self.pieces = []

    def write(self, data):
        self.pieces.append(data)
        return memoryview(data).nbytes

    def reset(self):
        self.pieces = []


def _dump_pieces(task, sink) -> list:
    writer = _PieceWriter()
    serialize.dump(task, writer, inclone.PROTOCOL, sink)
    return writer.pieces


def _pickle_task(dump, task):
    """``dump(task)`` and the shared() objects met while pickling it, as a list."""
    sink = sharing.start_collecting()
    try:
        return dump(task, sink), list(sink)
    except Exception as exc:
        raise TaskPicklingError(f"cannot send the task to a clone: {_one_line(exc)}") from exc
    finally:
        sharing.stop_collecting()


def _export_all(objects) -> List[Py_buffer]:
    exports: List[Py_buffer] = []
    try:
        for obj in objects:
            exports.append(_export(obj))
    except BaseException:
        _release_exports(exports, False)
        raise
    return exports


def _export(obj) -> Py_buffer:
    """Export ``obj``'s buffer (writable if it can be); the export keeps ``obj`` alive."""
    view = Py_buffer()
    for flags in (PyBUF_RECORDS, PyBUF_RECORDS_RO):
        try:
            _host_api.PyObject_GetBuffer(obj, ctypes.byref(view), flags)
            return view
        except BufferError:
            continue
    raise TaskPicklingError(f"shared(): a {type(obj).__name__} gives no strided buffer to share")


def _release_exports(exports, keep: bool) -> None:
    if not exports:
        return
    if keep:
        _pinned.extend(exports)
        warnings.warn(
            "a task kept using a shared() buffer after it returned; its source stays alive "
            "for the life of the process",
            ResourceWarning,
            stacklevel=2,
        )
        return
    for view in exports:
        _host_api.PyBuffer_Release(ctypes.byref(view))


def _decode(status: int, data):
    if status == inclone.OK:
        return pickle.loads(data)
    try:
        exc, tb, context = pickle.loads(data)
    except Exception as err:
        raise TaskPicklingError(f"cannot read the error a clone sent back: {_one_line(err)}") from None
    if status in (inclone.BAD_TASK, inclone.BAD_RESULT):
        raise TaskPicklingError(f"{context}: {_one_line(exc)}") from RemoteTraceback(tb)
    exc.__cause__ = RemoteTraceback(tb)
    raise exc


def _outcome(status: int, value):
    """(True, result) or (False, error) of one reply of a batch (an error comes pickled)."""
    if status == inclone.OK:
        return True, value
    try:
        return True, _decode(status, value)
    except BaseException as exc:
        return False, exc


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def main_module_location():
    """Where the host's ``__main__`` came from, for clones to load it as ``__mp_main__``."""
    main = sys.modules.get("__main__")
    inclone.alias_main_in_host(sys.modules)
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    path = getattr(main, "__file__", None)
    if path and not os.path.isabs(path):
        path = os.path.abspath(path)
    return path, name
