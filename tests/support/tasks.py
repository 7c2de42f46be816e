"""Task functions for pool tests: module-level so clones can import them by reference."""

import os
import sys
import threading


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class CustomError(Exception):
    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code


class UnpicklableError(Exception):
    def __init__(self):
        super().__init__("cannot travel")
        self.lock = threading.Lock()


def echo(x):
    return x


def call(fn, *args, **kwargs):
    """One function for many kinds of task: calls of it may share a batch."""
    return fn(*args, **kwargs)


def add(a, b=0):
    return a + b


def busy(n):
    total = 0
    for i in range(n):
        total += i
    return total


def clone_index():
    return getattr(sys, "_gilclone_index", None)


def where():
    return (getattr(sys, "_gilclone_index", None), os.getpid(), threading.get_ident())


def raise_custom(code):
    raise CustomError(code, "custom failure")


def raise_unpicklable():
    raise UnpicklableError()


def return_unpicklable():
    return Unpicklable()


def fail_initializer():
    raise RuntimeError("initializer refuses")


_state = {}


def remember(value):
    _state["value"] = value


def recall():
    return _state.get("value")


def view_info(view):
    return (type(view).__name__, view.format, view.shape, view.strides, view.readonly, view.nbytes)


def write_view(view, index, value):
    view[index] = value
    return True


def first_and_last(view):
    flat = view.cast("B") if view.ndim == 1 and view.format == "B" else view
    return flat[0], flat[-1]


def numpy_fill(view, value):
    import numpy

    arr = numpy.asarray(view)
    arr[...] = value
    return float(arr.sum())


def numpy_work(n):
    import numpy

    rng = numpy.random.default_rng(n)
    m = rng.standard_normal((60, 60))
    sym = m + m.T
    return (float(numpy.linalg.eigvalsh(sym).sum()), numpy.__file__, getattr(sys, "_gilclone_index", None))


def rendezvous(slots, slot, timeout=60.0):
    """Mark ``slot`` of a shared buffer, then wait until every slot is marked. With as many
    tasks as slots, none returns unless all run at the same time, each on its own worker;
    returns this clone's index, or None when the others never came."""
    import time

    slots[slot] = 1
    deadline = time.monotonic() + timeout
    while not all(slots):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)
    return getattr(sys, "_gilclone_index", None)


def numpy_rendezvous(slots, slot):
    """numpy_work in a task that must meet the pool's other tasks (see rendezvous)."""
    total, path, _ = numpy_work(slot)
    return total, path, rendezvous(slots, slot)


def extension_file(name):
    import importlib

    mod = importlib.import_module(name)
    return sys._gilclone_twins.get(mod.__spec__.origin)


def slow_fail_initializer(delay):
    import time

    time.sleep(delay)
    raise RuntimeError("initializer refuses")


_counter = {"n": 0}


def start_counter():
    import time

    def count():
        while True:
            _counter["n"] += 1
            time.sleep(0.001)

    threading.Thread(target=count, daemon=True).start()
    return True


def read_counter():
    return _counter["n"]


def hold_gil_until_set(flags, timeout=60.0):
    """Spin without ever offering this clone's GIL until another task sets ``flags[0]``.

    ``flags[1]`` says the spin has begun. With one GIL shared by two clones the setter
    could not run before the spin gave up: a proof of separate GILs that a loaded machine
    cannot spoil, unlike a speed-up."""
    import time

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        flags[1] = 1
        deadline = time.monotonic() + timeout
        while not flags[0]:
            if time.monotonic() > deadline:
                return "timed out"
        return "released"
    finally:
        sys.setswitchinterval(old)


def set_flag(flags):
    flags[0] = 1
    return getattr(sys, "_gilclone_index", None)


def spin():
    """Runs until interrupted."""
    while True:
        pass
