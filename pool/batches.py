"""Several queued tasks in one foreign call: the batch layout, both sides of it.

A worker that finds more tiny tasks queued sends them together (see
``executor._gather``): one call into the clone, one release of the host's GIL,
one pickle of all the tasks (the function pickled once) and one of all the
results, instead of one of each per task. Imported by the host and inside every
clone (standard library only).

Request, after the transport's 16-byte header: u32 count, count skip bytes (set
by an interrupter for a task not started yet), then one pickle of the list of
``(fn, args, kwargs)``. Reply: one pickle of the list of ``(status, value)``,
value being the result itself for OK and the pickled error otherwise; status
``UNREADABLE`` for the whole batch when the clone cannot unpickle the list (the
host then sends the tasks one by one, so that each gets its own error).

Header bytes 12-13 (``PROGRESS``) say where the clone is: ``2*i+1`` while task
``i`` runs, ``2*i+2`` once it is over, ``DONE`` after the last. Bytes 14-15
(``SENT``) are ``i+1`` when the host raised an interrupt in task ``i``. Both
change only under the clone's GIL, so an interrupter that holds it sees a
consistent state and an interrupt never lands in another task (see ``run``).
"""

# The C pickler itself (pickle.py re-exports these very objects): pickle.py imports re and
# enum, which every clone would then load at start whether its tasks use them or not.
import _pickle as pickle
import struct

from gilclone.pool.interrupted import TaskInterrupted

HEADER = 16
PROGRESS = 12
SENT = 14
DONE = 0xFFFF
UNREADABLE = 0xFE  # status byte: the batch could not be unpickled as a whole
MAX_TASKS = 1024  # 2 * MAX_TASKS stays below DONE
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
# Iterations that certainly reach a pending asynchronous exception: each loop turn
# checks for one, so it arrives in the first; the rest is margin.
_DELIVERY_SPINS = 10_000


# -- host side ------------------------------------------------------------------


def request_size(count: int, data_size: int) -> int:
    return HEADER + 4 + count + data_size


def write_request(view, count: int, data) -> None:
    """Write a batch of ``count`` tasks pickled as ``data`` into ``view`` (the transport,
    at least request_size long)."""
    pos = HEADER
    _U32.pack_into(view, pos, count)
    view[pos + 4 : pos + 4 + count] = bytes(count)  # no task skipped yet
    pos += 4 + count
    view[pos : pos + len(data)] = data
    _LENGTH.pack_into(view, 0, pos + len(data) - HEADER)
    view[8:HEADER] = bytes(HEADER - 8)  # status, flags, progress, sent: all clear


def progress(view) -> int:
    return _U16.unpack_from(view, PROGRESS)[0]


def mark_sent(view, index: int) -> None:
    _U16.pack_into(view, SENT, index + 1)


def mark_skipped(view, index: int) -> None:
    view[HEADER + 4 + index] = 1


# -- clone side -------------------------------------------------------------------


def run(runner, codes, call, error_payload) -> None:
    """Run the batch in ``runner.buffer`` and write the replies (inside the clone).

    ``call(fn, args, kwargs) -> (status, value)`` runs one task, letting a
    TaskInterrupted raised outside the task's own code through. Per task: progress
    says it runs; an interrupt caught anywhere in its part ends it (its reply, when
    already made, stands); before the next task starts, an interrupt the host sent
    for this one is given the chance to arrive here, not in the next task.
    """
    ok, error, bad_result, need_space = codes
    buf = runner.buffer
    size = _LENGTH.unpack_from(buf, 0)[0]
    count = _U32.unpack_from(buf, HEADER)[0]
    skips = HEADER + 4
    try:
        tasks = pickle.loads(buf[skips + count : HEADER + size])
    except BaseException:
        return _reply(runner, UNREADABLE, b"", need_space)
    replies = []
    for i in range(count):
        reply = None
        try:
            _U16.pack_into(buf, PROGRESS, 2 * i + 1)
            if buf[skips + i]:
                reply = (error, error_payload(TaskInterrupted("interrupted before it started")))
            else:
                reply = call(*tasks[i])
            _U16.pack_into(buf, PROGRESS, 2 * i + 2)
            if _U16.unpack_from(buf, SENT)[0] == i + 1:
                for _ in range(_DELIVERY_SPINS):
                    pass
        except TaskInterrupted as exc:
            _U16.pack_into(buf, PROGRESS, 2 * i + 2)
            if reply is None:
                reply = (error, error_payload(exc))
        tasks[i] = None
        replies.append(reply)
    del tasks
    _U16.pack_into(buf, PROGRESS, DONE)
    _reply(runner, ok, _dump_replies(replies, ok, bad_result, error_payload), need_space)


def _dump_replies(replies, ok, bad_result, error_payload) -> bytes:
    try:
        return pickle.dumps(replies, 5)
    except Exception:
        pass
    checked = []
    for status, value in replies:  # find the results that cannot be pickled
        if status == ok:
            try:
                pickle.dumps(value, 5)
            except Exception as exc:
                status, value = bad_result, error_payload(exc, "cannot pickle the task's result")
        checked.append((status, value))
    return pickle.dumps(checked, 5)


def _reply(runner, status, blob, need_space) -> None:
    buf = runner.buffer
    if HEADER + len(blob) > len(buf):
        runner.pending = (status, blob)  # the host grows the transport and calls fetch
        status = need_space
    else:
        buf[HEADER : HEADER + len(blob)] = blob
    _LENGTH.pack_into(buf, 0, len(blob))
    buf[8] = status  # bytes 12-15 keep progress: an interrupter may still be reading it
