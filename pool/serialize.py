"""Pickling for clones: by reference first, by value (cloudpickle) where that cannot work.

By reference is the fast path and keeps module state shared between tasks, so it
is tried first. Two kinds of callables cannot travel that way:

- pickle refuses them (lambdas, closures, functions Dask rebuilt on a worker,
  which are "not the same object as __main__.f");
- pickle accepts them but the clone would not find them: names in the host's
  ``__main__`` that did not come from the main script's file (clones re-run that
  file as ``__mp_main__``), such as functions of an interactive session,
  ``python -c`` or ``exec``.

Those are sent by value with cloudpickle, which the clone imports from the host's
``sys.path``. Without cloudpickle the error says how to get it. Results coming
back from a clone take the same fallback. Imported in the host and in clones.
"""

import functools
import io
import os
import pickle
import sys
import types

INSTALL_HINT = "install cloudpickle (pip install 'gilclone[dask]') to send it by value"
_REFUSED = (pickle.PicklingError, AttributeError)  # what pickle raises for these callables


class ByValueUnavailable(pickle.PicklingError):
    """A callable must travel by value and cloudpickle is not installed."""


def dumps(task, protocol: int, sink=None) -> bytes:
    """Pickle a task for a clone. ``sink`` is the list ``shared()`` arguments are
    collected into while pickling; a second pass puts it back as the first left it."""
    try:
        data = pickle.dumps(task, protocol)
    except _REFUSED as exc:
        _truncate(sink, 0)
        return _by_value(task, protocol, exc)
    # A cheap test for the rare case: a reference into the host's __main__, then a
    # check (no output kept) that the clone finds every __main__ object referenced.
    if b"__main__" in data and not _clone_finds_all(task, protocol, sink):
        _truncate(sink, 0)
        return _by_value(task, protocol, None)
    return data


def _clone_finds_all(task, protocol, sink) -> bool:
    kept = len(sink) if sink else 0
    try:
        _MainCheck(io.BytesIO(), protocol).dump(task)
    except _Unfindable:
        return False
    finally:
        _truncate(sink, kept)  # the check pass collected the shared() arguments again
    return True


def dumps_result(result, protocol: int) -> bytes:
    """Pickle a task's result in the clone, by value when it holds a lambda or closure."""
    try:
        return pickle.dumps(result, protocol)
    except _REFUSED as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise ByValueUnavailable(f"{exc}; {INSTALL_HINT}") from exc
        return cloudpickle.dumps(result, protocol)


def _by_value(task, protocol, first_error) -> bytes:
    out = io.BytesIO()
    try:
        _pickler_class()(out, protocol).dump(task)
    except ByValueUnavailable:
        raise
    except Exception:
        if first_error is not None and _cloudpickle() is None:
            raise ByValueUnavailable(f"{first_error}; {INSTALL_HINT}") from first_error
        raise
    return out.getvalue()


def _truncate(sink, length: int) -> None:
    if sink:
        del sink[length:]


class _Unfindable(Exception):
    pass


class _MainCheck(pickle.Pickler):
    """Walks a task as pickle does and stops at a ``__main__`` object clones cannot find."""

    def reducer_override(self, obj):
        if _in_main(obj) and not _clone_finds(obj):
            raise _Unfindable
        return NotImplemented


@functools.lru_cache(maxsize=None)
def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:  # optional: by reference works without it
        return None
    return cloudpickle


@functools.lru_cache(maxsize=None)
def _pickler_class():
    cloudpickle = _cloudpickle()
    base = cloudpickle.CloudPickler if cloudpickle else pickle.Pickler

    class Pickler(base):
        """Keeps by reference the ``__main__`` names a clone can find; the rest by value."""

        def reducer_override(self, obj):
            if _in_main(obj) and _clone_finds(obj):
                return NotImplemented  # ordinary pickling: by reference
            if cloudpickle is not None:
                return super().reducer_override(obj)
            if _in_main(obj) or _is_local(obj):
                raise ByValueUnavailable(
                    f"{type(obj).__name__} {obj.__qualname__!r} cannot be sent to a clone by "
                    f"reference (clones cannot import it from {obj.__module__}); {INSTALL_HINT}"
                )
            return NotImplemented

    return Pickler


def _in_main(obj) -> bool:
    return isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__"


def _is_local(obj) -> bool:
    return isinstance(obj, (types.FunctionType, type)) and "<" in obj.__qualname__


def _clone_finds(obj) -> bool:
    """A clone re-runs the host's main script file: it finds what that file defines."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or "<" in obj.__qualname__ or getattr(main, obj.__qualname__, None) is not obj:
        return False
    if isinstance(obj, types.FunctionType):
        made_in = obj.__code__.co_filename
        return made_in == path or os.path.abspath(made_in) == os.path.abspath(path)
    return True  # a class: nothing tells where it was made; its module says the main script
