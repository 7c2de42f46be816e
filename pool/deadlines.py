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

    __slots__ = ("when", "action", "cancelled", "_owner")

    def __init__(self, when: float, action: Callable[[], object], owner: "_Watchdog"):
        self.when, self.action, self.cancelled, self._owner = when, action, False, owner

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.action = None  # drop the worker now, not when the deadline comes round
            self._owner.cancelled += 1


class _Watchdog:
    def __init__(self):
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread = None
        self.cancelled = 0  # cancelled entries still in the heap (approximately: no lock)

    def add(self, seconds: float, action: Callable[[], object]) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds, action, self)
        with self._cond:
            if self.cancelled > 1024 and self.cancelled > len(self._heap) // 2:
                # Long limits on many short tasks: do not keep every finished task's entry.
                self._heap = [e for e in self._heap if not e[2].cancelled]
                heapq.heapify(self._heap)
                self.cancelled = 0
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
                        self.cancelled = max(0, self.cancelled - 1)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        deadline = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            action = deadline.action
            if not deadline.cancelled and action is not None:
                # An interrupt waits for the clone's GIL, which a long C call may hold: on a
                # thread of its own it cannot hold up the other deadlines.
                threading.Thread(target=_quietly, args=(action,), name="ClonePool-timeout",
                                 daemon=True).start()
            del action
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
