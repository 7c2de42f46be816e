"""Time limits of running tasks: one watchdog thread per process fires them.

A timer per task would cost a thread start per task; a heap of deadlines served by
one daemon thread costs a lock and a heap push. The watchdog holds no pool, only
what to call when a deadline passes.
"""

import heapq
import itertools
import threading
import time
from typing import Callable, List, Tuple


class Deadline:
    """One registered time limit; ``cancel`` when the task ends first."""

    __slots__ = ("when", "action", "cancelled")

    def __init__(self, when: float, action: Callable[[], object]):
        self.when, self.action, self.cancelled = when, action, False

    def cancel(self) -> None:
        self.cancelled = True


class _Watchdog:
    def __init__(self):
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread = None

    def add(self, seconds: float, action: Callable[[], object]) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds, action)
        with self._cond:
            heapq.heappush(self._heap, (deadline.when, next(self._counter), deadline))
            if self._thread is None:
                # daemon: it never waits for anything but time, and holds nothing at exit
                self._thread = threading.Thread(target=self._serve, name="ClonePool-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def _serve(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        deadline = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            if not deadline.cancelled:
                # An interrupt waits for the clone's GIL, which a long C call may hold: on a
                # thread of its own it cannot hold up the other deadlines.
                threading.Thread(target=_quietly, args=(deadline.action,), name="ClonePool-timeout",
                                 daemon=True).start()
            del deadline


def _quietly(action) -> None:
    try:
        action()
    except Exception:  # a worker that went away meanwhile: nothing to stop
        pass


_watchdog = _Watchdog()


def after(seconds: float, action: Callable[[], object]) -> Deadline:
    """Call ``action()`` on the watchdog thread in ``seconds`` unless cancelled first."""
    return _watchdog.add(seconds, action)
