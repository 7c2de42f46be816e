"""A matrix product computed in tiles on clones, straight into a shared output array.

    python examples/numpy_shared.py [--size 1200] [--workers N]

The inputs and the output are passed with ``shared()``: every clone works on the host's own
arrays (no pickling, no copy), each task writes its own band of rows of the output. numpy
is imported once per clone (each clone has its own copy of numpy's extension modules).
BLAS is limited to one thread per clone, so the parallelism is the pool's.
"""

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, host and clones
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from gilclone.pool import ClonePool, shared  # noqa: E402


def warm(_):
    """Keeps a worker busy briefly, so that each warm-up task starts its own clone."""
    time.sleep(0.05)
    return np.__version__


def multiply_band(a_view, b_view, out_view, start, stop):
    """out[start:stop] = a[start:stop] @ b, in the host's memory."""
    a, b, out = np.asarray(a_view), np.asarray(b_view), np.asarray(out_view)
    np.matmul(a[start:stop], b, out=out[start:stop])
    return stop - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=None, help="clones (default: CPUs)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    a = rng.random((args.size, args.size))
    b = rng.random((args.size, args.size))
    out = np.zeros((args.size, args.size))
    with ClonePool(args.workers) as pool:
        workers = args.workers or len(os.sched_getaffinity(0))
        list(pool.map(warm, range(workers)))  # start the clones before the clock
        bands = np.linspace(0, args.size, 4 * workers + 1, dtype=int)
        t0 = time.perf_counter()
        futures = [pool.submit(multiply_band, shared(a), shared(b), shared(out), int(lo), int(hi))
                   for lo, hi in zip(bands[:-1], bands[1:]) if hi > lo]
        rows = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - t0
    assert rows == args.size
    t0 = time.perf_counter()
    expected = a @ b
    serial = time.perf_counter() - t0
    print(f"{args.size}x{args.size} product on {len(futures)} tiles: {elapsed:.3f} s on clones, "
          f"{serial:.3f} s in one thread; equal: {np.allclose(out, expected)}")
    return 0 if np.allclose(out, expected) else 1


if __name__ == "__main__":
    raise SystemExit(main())
