"""`make demo`: clone the active Python, verify the clones, run a CPU-bound workload on them."""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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

    print(f"\nWorkload: count primes below {CHUNKS[-1][1]:,} in {len(CHUNKS)} chunks, {WORKERS} workers")
    serial, t_serial = timed(lambda: sum(count_primes(a, b) for a, b in CHUNKS))
    print(f"  serial            {t_serial:6.2f} s  ({serial} primes)")
    with ThreadPoolExecutor(WORKERS) as tp:
        threaded, t_threads = timed(lambda: sum(tp.map(count_primes, *zip(*CHUNKS))))
    print(f"  ThreadPoolExecutor{t_threads:6.2f} s  speed-up {t_serial / t_threads:.2f}x (one GIL)")
    (pool, t_start) = timed(lambda: ClonePool(WORKERS, clones=cset))
    with pool:
        pool.submit(count_primes, 0, 10).result()
        cloned, t_clones = timed(lambda: sum(pool.map(count_primes, *zip(*CHUNKS))))
    print(f"  ClonePool         {t_clones:6.2f} s  speed-up {t_serial / t_clones:.2f}x "
          f"(pool start-up {t_start * 1000:.0f} ms)")
    assert serial == threaded == cloned, (serial, threaded, cloned)
    print(f"\nClonePool vs serial: {t_serial / t_clones:.2f}x; vs threads: {t_threads / t_clones:.2f}x "
          f"on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
