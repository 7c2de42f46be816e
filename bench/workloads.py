"""Task functions of the benchmark.

They live in their own module so that every peer (worker processes, clones,
subinterpreters) finds them by reference: pickle sends ``workloads.cpu_loop``,
not code. This module imports nothing at the top, so loading it in a worker
costs next to nothing and pulls in no extension module.
"""

PAGE = 4096


def identity(x):
    """The tiny task: the round trip is all there is to measure."""
    return x


def cpu_loop(n):
    """Pure-Python integer arithmetic, ``n`` iterations; holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def touch_ends(buf):
    """Read two bytes of a buffer: what is left to time is how it got here."""
    view = memoryview(buf)
    try:
        return view[0] + view[-1]
    finally:
        view.release()


def page_sum(buf):
    """Sum one 8-byte word of each 4 KiB page: touches every page, in pure Python."""
    view = memoryview(buf)
    try:
        words = view.cast("B").cast("Q")
        try:
            return sum(words[:: PAGE // 8])
        finally:
            words.release()
    finally:
        view.release()


def numpy_sum(buf):
    """Sum every byte of a buffer with numpy (no copy: ``frombuffer``)."""
    import numpy

    return int(numpy.frombuffer(buf, dtype=numpy.uint8).sum(dtype=numpy.uint64))


def numpy_eig(seed, repeat=1, n=300):
    """The numpy task: eigenvalues of ``repeat`` symmetric ``n`` x ``n`` matrices."""
    import numpy

    rng = numpy.random.default_rng(seed)
    total = 0.0
    for _ in range(repeat):
        a = rng.standard_normal((n, n))
        total += float(numpy.linalg.eigvalsh(a + a.T).sum())
    return total


def sleep_then(x, seconds=0.2):
    """Keeps a worker busy, so a process pool starts one process per task."""
    import time

    time.sleep(seconds)
    return x


def import_numpy_then_sleep(x, seconds=0.2):
    """Warm-up: have numpy imported in each worker before the numpy workload is timed."""
    import numpy  # noqa: F401

    return sleep_then(x, seconds)
