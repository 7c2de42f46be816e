"""The worker side of the pool, imported inside each clone (after the extension remapping).

The host and the clone share one transport buffer per worker, a block of host
memory that the clone sees as a writable memoryview. A task is one call of
``Runner.run``: the request is read from the buffer and the response written
back into it, so the host makes only a handful of foreign calls per task.

Buffer layout: bytes 0-8 length (little endian); byte 8 status; byte 9 set when a
shared view is still in use by the clone after the task; byte 10 set when a task
comes in pieces (see ``load_pieces``); 16- payload.
"""

# The C pickler itself (pickle.py re-exports these very objects): pickle.py imports re and
# enum, which every clone would then load at start whether its tasks use them or not.
import _pickle as pickle
import os
import struct
import sys

from gilclone.pool import batches, serialize
from gilclone.pool.interrupted import TaskInterrupted

HEADER = 16
OK, ERROR, BAD_TASK, BAD_RESULT, NEED_SPACE = range(5)
# The status byte of a request as the host writes it: every reply replaces it, so it is
# still there after a call only when the runner wrote none (an interrupt that landed before
# the runner's first line).
NO_REPLY = 0xFF
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
        import runpy  # here: a pool without a main script to re-run never needs it

        module = runpy.run_module(main_name, run_name="__mp_main__", alter_sys=True)
    elif main_path and os.path.isfile(main_path):
        import runpy

        module = runpy.run_path(main_path, run_name="__mp_main__")
    else:
        return
    import types

    main = types.ModuleType("__mp_main__")
    main.__dict__.update(module)
    sys.modules["__mp_main__"] = sys.modules["__main__"] = main


def alias_main_in_host(modules):
    """In the host, ``__mp_main__`` names ``__main__``, as importing multiprocessing makes it
    in a spawn pool's parent: what a clone pickles from its ``__mp_main__`` (classes and
    exceptions of the main script) is then read back as the host's own ``__main__`` ones."""
    if "__main__" in modules:
        modules.setdefault("__mp_main__", modules["__main__"])


class Runner:
    def __init__(self, buffer):
        self.buffer = buffer
        self.pending = None

    def set_buffer(self, buffer):
        self.buffer.release()
        self.buffer = buffer

    def run(self, *views):
        """Run the task in the buffer and write the response (nothing is returned).

        An interrupt may be delivered at any bytecode while this runs, also after the task's
        own code: it then ends the task all the same. The host sends at most one per task,
        so the handler below cannot itself be interrupted.
        """
        global _views
        _views = views
        try:
            try:
                self._execute(views)
            finally:
                self._finish(views)
        except TaskInterrupted as exc:
            self._reply(ERROR, _error_payload(exc))
            self._finish(views)  # after the reply, which clears the flag byte

    def _execute(self, views):
        buf = self.buffer
        n = _LENGTH.unpack_from(buf, 0)[0]
        try:
            if buf[10]:
                fn, args, kwargs = load_pieces(buf[HEADER : HEADER + n], views)
            else:
                fn, args, kwargs = pickle.loads(buf[HEADER : HEADER + n])
        except TaskInterrupted:
            raise
        except BaseException as exc:
            return self._reply(BAD_TASK, _error_payload(exc, "cannot unpickle the task in the clone"))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # TaskInterrupted too: the task's own error
            return self._reply(ERROR, _error_payload(exc))
        try:
            data = serialize.dumps_result(result, PROTOCOL)
        except TaskInterrupted:
            raise
        except BaseException as exc:
            return self._reply(BAD_RESULT, _error_payload(exc, "cannot pickle the task's result"))
        del result
        return self._reply(OK, data)

    def run_batch(self):
        """Run several queued tasks in one call (layout and interrupts: batches.py)."""
        try:
            batches.run(self, (OK, ERROR, BAD_RESULT, NEED_SPACE), _call, _error_payload)
        finally:
            self._finish(())

    def _finish(self, views):
        global _views
        _views = ()
        if views and release_views(*views):
            self.buffer[9] = 1  # flag: the host must keep these buffers alive
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


def _call(fn, args, kwargs):
    """(status, result or pickled error) of one task of a batch."""
    try:
        return OK, fn(*args, **kwargs)
    except BaseException as exc:  # TaskInterrupted too: the task's own error
        return ERROR, _error_payload(exc)


def load_pieces(payload, views):
    """Unpickle a large task sent in pieces: ``payload`` holds a table, then the small
    pieces; each large piece is one of ``views``, over the host's own object, read once."""
    table_size = _LENGTH.unpack_from(payload, 0)[0]
    layout = pickle.loads(payload[8 : 8 + table_size])
    pos = 8 + table_size
    parts = []
    for entry in layout:
        if entry >= 0:
            parts.append(payload[pos : pos + entry])
            pos += entry
        else:
            parts.append(views[-entry - 1].cast("B"))
    return pickle.Unpickler(_PieceReader(parts)).load()


class _PieceReader:
    """A read-only file over consecutive buffers; ``readinto`` lets the unpickler copy a
    large bytes object straight from the host's memory into its own."""

    def __init__(self, parts):
        self.parts = parts
        self.index = self.offset = 0

    def readinto(self, target):
        out = memoryview(target).cast("B")
        done = 0
        while done < len(out) and self.index < len(self.parts):
            part = self.parts[self.index]
            take = min(len(part) - self.offset, len(out) - done)
            out[done : done + take] = part[self.offset : self.offset + take]
            done += take
            self.offset += take
            if self.offset == len(part):
                self.index += 1
                self.offset = 0
        return done

    def read(self, size=-1):
        if size < 0:
            size = sum(len(p) for p in self.parts[self.index :]) - self.offset
        data = bytearray(size)
        return bytes(data[: self.readinto(data)])

    def readline(self):
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = self.read(1)
            if not byte:
                break
            line += byte
        return bytes(line)


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
    import traceback  # here: imported by the first error, not by every clone's start

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
