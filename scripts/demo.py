"""`make demo`: clone the active Python, verify the clones, run a CPU-bound workload on them."""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "bench"))

from busy import busy_reasons  # noqa: E402
from demo_tasks import count_primes  # noqa: E402
from gilclone.cloner.prepare import prepare  # noqa: E402
from gilclone.cloner.verify import verify  # noqa: E402
from gilclone.platforms.locate import locate  # noqa: E402
from gilclone.pool import ClonePool  # noqa: E402

from gilclone.commands.progress import terminal_progress  # noqa: E402

WORKERS = max(2, os.cpu_count() or 2)
CHUNKS = [(i * 100_000, (i + 1) * 100_000) for i in range(4 * WORKERS)]


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> int:
    install = locate()
    print(f"Python {install.version} at {install.executable}")
    print(f"  libpython: {install.libpython} ({install.linkage} host)\n")

    cset, took = timed(lambda: prepare(WORKERS, install=install, progress=terminal_progress))
    print(f"Prepared {len(cset.clones)} clones in {cset.root} ({took:.2f} s)")
    for c in cset.clones:
        print(f"  clone {c.index}: {c.soname}")

    report, took = timed(lambda: verify(cset.root))
    print(f"\nVerified in a child process ({took:.2f} s):")
    for check in report["checks"]:
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail'][:150]}")
    if not report["ok"]:
        print("verification failed; see `gilclone doctor`")
        return 1

    warn_if_busy("before the workload")
    print(f"\nWorkload: count primes below {CHUNKS[-1][1]:,} in {len(CHUNKS)} chunks, {WORKERS} workers")
    serial, t_serial = timed(lambda: sum(count_primes(a, b) for a, b in CHUNKS))
    print(f"  serial            {t_serial:6.2f} s  ({serial} primes)")
    with ThreadPoolExecutor(WORKERS) as tp:
        threaded, t_threads = timed(lambda: sum(tp.map(count_primes, *zip(*CHUNKS))))
    print(f"  ThreadPoolExecutor{t_threads:6.2f} s  speed-up {t_serial / t_threads:.2f}x (one GIL)")
    t0 = time.perf_counter()
    pool = ClonePool(WORKERS, clones=cset)
    t_ctor = time.perf_counter() - t0
    with pool:
        # Workers start as work arrives: the first result includes one clone's start-up.
        pool.submit(count_primes, 0, 10).result()
        t_first = time.perf_counter() - t0
        cloned, t_clones = timed(lambda: sum(pool.map(count_primes, *zip(*CHUNKS))))
    print(f"  ClonePool         {t_clones:6.2f} s  speed-up {t_serial / t_clones:.2f}x "
          f"(first result {t_first * 1000:.0f} ms after the constructor was called; "
          f"constructor alone {t_ctor * 1000:.1f} ms)")
    assert serial == threaded == cloned, (serial, threaded, cloned)
    print(f"\nClonePool vs serial: {t_serial / t_clones:.2f}x; vs threads: {t_threads / t_clones:.2f}x "
          f"on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f})")
    warn_if_busy("after the workload")
    return 0


def warn_if_busy(when: str) -> None:
    reasons = busy_reasons()
    if reasons:
        print(f"\nWARNING: the machine is busy {when} ({'; '.join(reasons)}): the timings "
              "and speed-ups shown are lower than this machine gives when idle.")


if __name__ == "__main__":
    sys.exit(main())
