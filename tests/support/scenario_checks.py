"""Host-side pieces shared by the pool scenarios (tests/pool_scenario.py and
tests/namespace_scenario.py), which run as main scripts under every pyenv Python."""

import time

import tasks
from gilclone.pool import TaskInterrupted


def check(results, name, fn, keep=400):
    """Run one named check; record [ok, detail] (a scenario must report, not die)."""
    try:
        ok, detail = fn()
    except BaseException as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    results[name] = [bool(ok), str(detail)[:keep]]


def started(future, limit=60):
    """Wait until ``future`` runs; whether it does."""
    deadline = time.monotonic() + limit
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.001)
    return future.running()


def interrupt_then_reuse(pool):
    """A spinning task is interrupted, and its worker then runs the next task."""
    f = pool.submit(tasks.spin)
    if not started(f):
        return False, "task never started"
    t0 = time.monotonic()
    pool.interrupt(f)
    try:
        f.result(timeout=30)
    except TaskInterrupted:
        took = time.monotonic() - t0
        return pool.submit(tasks.add, 1, 1).result() == 2, f"interrupted in {took * 1000:.1f} ms"
    return False, "the task was not interrupted"


def gil_held_while_other_runs(pool):
    """(what the holder reported, the setter's clone): one worker spins without ever
    offering its GIL until another sets a flag in host memory. With one GIL for both the
    setter could never run; "released" says it did."""
    from gilclone.pool import shared

    flags = bytearray(2)
    holder = pool.submit(tasks.hold_gil_until_set, shared(flags))
    deadline = time.monotonic() + 120
    while not flags[1] and time.monotonic() < deadline and not holder.done():
        time.sleep(0.001)
    setter = pool.submit(tasks.set_flag, shared(flags))
    return holder.result(), setter.result()
