"""The worker side of the pool, imported inside each clone (after the extension remapping).

The host and the clone share one transport buffer per worker, a block of host
memory that the clone sees as a writable memoryview. A task is one call of
``Runner.run``: the request is read from the buffer and the response written
back into it, so the host makes only a handful of foreign calls per task.

Buffer layout: bytes 0-8 length (little endian); byte 8 status; byte 9 set when a
shared view is still in use by the clone after the task; 16- payload.
"""

import os
import pickle
import runpy
import struct
import sys
import traceback

from gilclone.pool import serialize

HEADER = 16
OK, ERROR, BAD_TASK, BAD_RESULT, NEED_SPACE = range(5)
PROTOCOL = 5
_HEADER = struct.Struct("<QQ")
_LENGTH = struct.Struct("<Q")

_views = ()


def shared_view(index: int):
    """Unpickles a ``shared()`` argument: the memoryview over the host's memory."""
    return _views[index]


def run_chunk(fn, chunk):
    """``ClonePool.map`` with chunksize > 1 sends a chunk of argument tuples at once."""
    return [fn(*args) for args in chunk]


def fixup_main(main_path, main_name):
    """Make the host's ``__main__`` functions findable, as the spawn start method does."""
    if main_name and not (main_name == "__main__" or main_name.endswith(".__main__")):
        module = runpy.run_module(main_name, run_name="__mp_main__", alter_sys=True)
    elif main_path and os.path.isfile(main_path):
        module = runpy.run_path(main_path, run_name="__mp_main__")
    else:
        return
    import types

    main = types.ModuleType("__mp_main__")
    main.__dict__.update(module)
    sys.modules["__mp_main__"] = sys.modules["__main__"] = main


class Runner:
    def __init__(self, buffer):
        self.buffer = buffer
        self.pending = None

    def set_buffer(self, buffer):
        self.buffer.release()
        self.buffer = buffer

    def run(self, *views):
        """Run the task in the buffer; write the response; return the views not released."""
        global _views
        buf = self.buffer
        n = _LENGTH.unpack_from(buf, 0)[0]
        _views = views
        try:
            try:
                fn, args, kwargs = pickle.loads(buf[HEADER : HEADER + n])
            except BaseException as exc:
                return self._reply(BAD_TASK, _error_payload(exc, "cannot unpickle the task in the clone"))
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                return self._reply(ERROR, _error_payload(exc))
            try:
                data = serialize.dumps_result(result, PROTOCOL)
            except BaseException as exc:
                return self._reply(BAD_RESULT, _error_payload(exc, "cannot pickle the task's result"))
            return self._reply(OK, data)
        finally:
            _views = ()
            if views and release_views(*views):
                buf[9] = 1  # flag: the host must keep these buffers alive
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass

    def _reply(self, status, data):
        buf = self.buffer
        size = len(data)
        if HEADER + size > len(buf):
            self.pending = (status, data)
            status = NEED_SPACE
        else:
            buf[HEADER : HEADER + size] = data
        _HEADER.pack_into(buf, 0, size, status)
        return None

    def fetch(self):
        """After the host grew the buffer: write the pending response into it."""
        status, data = self.pending
        self.pending = None
        self._reply(status, data)


def release_views(*views):
    """Release the clone-side views of shared buffers; return the indexes still exported."""
    kept = []
    for i, view in enumerate(views):
        try:
            view.release()
        except BufferError:  # something in the clone still uses it; the host keeps it alive
            kept.append(i)
    return kept


def _error_payload(exc, context=None):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if context:
        tb = f"{context}\n{tb}"
    try:
        data = pickle.dumps((exc, tb, context), PROTOCOL)
        pickle.loads(data)  # an exception that cannot be rebuilt is sent as a stand-in
        return data
    except BaseException:
        from gilclone.pool.errors import UnpicklableRemoteError

        stand_in = UnpicklableRemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
        return pickle.dumps((stand_in, tb, context), PROTOCOL)
