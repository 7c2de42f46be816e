"""Pool runtime: run tasks on clones of this interpreter behind the Executor interface.

Names are imported on first use (PEP 562): clones import ``gilclone.pool.inclone``
at start-up and must not pay for the host-side machinery.
"""

_EXPORTS = {
    "BrokenClonePool": "gilclone.pool.errors",
    "RemoteTraceback": "gilclone.pool.errors",
    "TaskInterrupted": "gilclone.pool.errors",
    "TaskPicklingError": "gilclone.pool.errors",
    "UnpicklableRemoteError": "gilclone.pool.errors",
    "ClonePool": "gilclone.pool.executor",
    "WorkerStats": "gilclone.pool.stats",
    "shared": "gilclone.pool.sharing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gilclone.pool' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
