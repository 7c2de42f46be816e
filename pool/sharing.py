"""``shared(obj)``: pass a buffer to a task by reference, with no copy.

While a task's arguments are pickled, each Shared argument is exported with
the buffer protocol (the host keeps that export, and so the object, alive until
the task ends) and stands in the pickle as an index; the clone receives a
memoryview built over the same memory with the same format, shape and strides.
"""

import threading

_collecting = threading.local()


class Shared:
    """Marks ``obj`` (anything with the buffer protocol) to be passed by reference."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        memoryview(obj).release()  # fail now, in the caller, if obj has no buffer
        self.obj = obj

    def __reduce__(self):
        sink = getattr(_collecting, "sink", None)
        if sink is None:
            raise TypeError("shared() objects can only be passed as arguments of ClonePool tasks")
        sink.append(self.obj)
        from gilclone.pool import inclone

        return (inclone.shared_view, (len(sink) - 1,))


def shared(obj) -> Shared:
    """Wrap a buffer-protocol object so a ClonePool task sees the same memory."""
    return obj if isinstance(obj, Shared) else Shared(obj)


def start_collecting() -> list:
    """Gather the Shared objects pickled on this thread until ``stop_collecting``."""
    sink = _collecting.sink = []
    return sink


def stop_collecting() -> None:
    _collecting.sink = None
