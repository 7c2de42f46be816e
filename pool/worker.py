"""One pool worker: a host thread driving one clone (initialize / run / finalize).

Per task the host makes four foreign calls into the clone (take its GIL, call
the runner, drop the result, release its GIL); a task with ``shared()``
arguments adds two (the argument tuple) and two per argument. Arguments and
results cross through a transport buffer that both sides address directly.
"""

import ctypes
import os
import pickle
import struct
import sys
import warnings
from typing import List, Optional

from gilclone.cloner.capi import Py_buffer, PyBUF_WRITE
from gilclone.cloner.load import Clone
from gilclone.pool import inclone, serialize, sharing
from gilclone.pool.errors import RemoteTraceback, TaskPicklingError

from gilclone.errors import CloneLoadError

INITIAL_BUFFER = 64 * 1024
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
        self._tstate = None
        self._gil = None
        self.started = False  # the clone is set up; what fails after this is the initializer
        self._attached = False  # this thread holds the clone's GIL
        self._buffer = self._view = None
        self._runner = self._run = self._fetch = None

    # -- initialize / finalize --------------------------------------------------

    def initialize(self, initializer=None, initargs=()) -> None:
        self.clone.open(sys_path=self.sys_path, argv=list(sys.argv))
        api = self.clone.api
        self._gil = api.PyGILState_Ensure()
        try:
            self._setup_runner()
            self.clone_exec(f"import sys\nsys.path[:] = {self.sys_path!r}")
            self.clone_exec(f"from gilclone.pool import inclone\ninclone.fixup_main(*{self.main!r})")
        finally:
            self._tstate = api.PyEval_SaveThread()
        self.started = True
        if initializer is not None:
            self.call(initializer, tuple(initargs), {})

    def _setup_runner(self) -> None:
        api = self.clone.api
        module = api.PyImport_ImportModule(b"gilclone.pool.inclone")
        if not module:
            api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: cannot import gilclone.pool.inclone")
        self._set_host_buffer(ctypes.create_string_buffer(INITIAL_BUFFER))
        view = self._clone_view_of_buffer()
        runner_type = api.PyObject_GetAttrString(module, b"Runner")
        args = api.PyTuple_New(1)
        api.PyTuple_SetItem(args, 0, view)  # steals the view
        self._runner = api.PyObject_CallObject(runner_type, args)
        api.Py_DecRef(args)
        api.Py_DecRef(runner_type)
        api.Py_DecRef(module)
        self._run = api.PyObject_GetAttrString(self._runner, b"run")
        self._fetch = api.PyObject_GetAttrString(self._runner, b"fetch")
        self._set_buffer = api.PyObject_GetAttrString(self._runner, b"set_buffer")
        if not (self._runner and self._run and self._fetch):
            api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: cannot create the task runner")

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
        """Give the clone back: drop this thread's state in it (the clone stays initialised)."""
        api = self.clone.api
        if self._tstate is None and not self._attached:
            return
        self._enter()
        for obj in (self._run, self._fetch, self._set_buffer, self._runner):
            if obj:
                api.Py_DecRef(obj)
        self._run = self._fetch = self._set_buffer = self._runner = None
        self._tstate = None
        self._attached = False
        api.PyGILState_Release(self._gil)

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

    # -- run ---------------------------------------------------------------------

    def call(self, fn, args, kwargs):
        """Run ``fn(*args, **kwargs)`` in the clone and return its result or raise its error."""
        sink = sharing.start_collecting()
        try:
            payload = serialize.dumps((fn, args, kwargs), inclone.PROTOCOL, sink)
        except Exception as exc:
            raise TaskPicklingError(f"cannot send the task to a clone: {_one_line(exc)}") from exc
        finally:
            sharing.stop_collecting()
        size = len(payload)
        if inclone.HEADER + size > len(self._view):
            self._replace_buffer(max(inclone.HEADER + size, 2 * len(self._view)))
        view = self._view
        view[inclone.HEADER : inclone.HEADER + size] = payload
        _HEADER.pack_into(view, 0, size, 0)
        if not sink:
            self._call_runner(None)
            if view[8] == inclone.NEED_SPACE:
                self._grow_for_pending()
                view = self._view
        else:
            self._call_with_shared(sink)
            view = self._view
        size, status = _HEADER.unpack_from(view, 0)
        return _decode(status & 0xFF, view[inclone.HEADER : inclone.HEADER + size])

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
        if args:
            api.held.Py_DecRef(args)
        if not result:
            api.PyErr_Print()
            raise CloneLoadError(f"clone {self.clone.index}: the task runner itself failed")
        api.held.Py_DecRef(result)  # None: no finaliser can run

    def _set_host_buffer(self, buffer) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer).cast("B")

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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def main_module_location():
    """Where the host's ``__main__`` came from, for clones to load it as ``__mp_main__``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    path = getattr(main, "__file__", None)
    if path and not os.path.isabs(path):
        path = os.path.abspath(path)
    return path, name
