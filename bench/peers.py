"""The peers ClonePool is measured against: what each is called and how to make one."""

import os
import sys

PEERS = ["serial", "thread", "fork", "spawn", "forkserver", "interp", "clone-ns", "clone"]
PEER_TITLES = {
    "serial": "serial",
    "thread": "ThreadPool",
    "fork": "Process fork",
    "spawn": "Process spawn",
    "forkserver": "Process forkserver",
    "interp": "InterpreterPool",
    "clone": "ClonePool",
    "clone-ns": "ClonePool (namespaces)",
}
CLONE_PEERS = ("clone", "clone-ns")  # ClonePool on its two loading routes (docs/pool.md)
PROCESS_PEERS = ("fork", "spawn", "forkserver")

# Keep numerical libraries to one thread per worker so workers, not BLAS threads, compete.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


def interpreter_pool_class():
    if sys.version_info < (3, 12):
        raise Unavailable("needs Python >= 3.12, this is %d.%d" % sys.version_info[:2])
    # The package's module was interpreters_backports up to 0.4 and is interpreters_backport in 0.5.
    for module in ("interpreters_backport", "interpreters_backports"):
        try:
            futures = __import__(module + ".concurrent.futures", fromlist=["InterpreterPoolExecutor"])
            return futures.InterpreterPoolExecutor
        except ImportError:
            continue
    raise Unavailable("interpreters-pep-734 not installed: `pip install interpreters-pep-734`")


def pool_factory(peer):
    """Import what ``peer`` needs and return ``make(workers) -> Executor`` (None for serial)."""
    if peer == "serial":
        return None
    if peer == "thread":
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor
    if peer in PROCESS_PEERS:
        return _process_pool_factory(peer)
    if peer == "interp":
        return interpreter_pool_class()
    if peer in CLONE_PEERS:
        try:
            from gilclone.pool.executor import ClonePool
        except ImportError as exc:
            raise Unavailable(f"gilclone is not importable: {exc}") from None
        if peer == "clone":
            return lambda n: ClonePool(n, route="copies")
        return _namespace_pool_factory(ClonePool)
    raise ValueError(f"unknown peer {peer!r}")


def _namespace_pool_factory(pool_class):
    from gilclone.cloner.namespace import unsupported_reason

    reason = unsupported_reason()
    if reason:
        raise Unavailable(reason)
    return lambda n: pool_class(n, route="namespaces")


def _process_pool_factory(method):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if method not in multiprocessing.get_all_start_methods():
        raise Unavailable(f"no {method} start method on {sys.platform}")
    context = multiprocessing.get_context(method)
    return lambda n: ProcessPoolExecutor(n, mp_context=context)


def share_arg(peer, buf):
    """How each peer is handed the buffer: by reference where it can, pickled otherwise."""
    if peer in CLONE_PEERS:
        from gilclone.pool import shared

        return shared(buf)
    return buf


def numpy_available():
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def pool_pids(pool):
    processes = getattr(pool, "_processes", None) or {}
    return list(processes)


def proc_kib(pid, path, field):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
