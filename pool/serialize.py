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

# The C pickler itself (pickle.py re-exports these very objects): pickle.py imports re and
# enum, which every clone would then load at start whether its tasks use them or not.
import _pickle as pickle
import functools
import io
import os
import sys
import types

INSTALL_HINT = "install cloudpickle (pip install 'gilclone[dask]') to send it by value"
_REFUSED = (pickle.PicklingError, AttributeError)  # what pickle raises for these callables


class ByValueUnavailable(pickle.PicklingError):
    """A callable must travel by value and cloudpickle is not installed."""


def dumps(task, protocol: int, sink=None) -> bytes:
    """Pickle a task for a clone. ``sink`` is the list ``shared()`` arguments are
    collected into while pickling; a second pass puts it back as the first left it."""
    out = io.BytesIO()
    dump(task, out, protocol, sink)
    return out.getvalue()


def dump(task, file, protocol: int, sink=None) -> None:
    """``dumps`` into ``file``, which must have ``truncate``/``seek`` or a ``reset()``
    (a second attempt by value starts the output again)."""
    pickler = pickle.Pickler(file, protocol)
    try:
        pickler.dump(task)
    except _REFUSED as exc:
        _restart(file, sink)
        return _by_value(task, file, protocol, exc)
    # The rare case: the task references something in the host's __main__. Every
    # function and class pickled by reference is in the pickler's memo, so the check
    # that clones can find them needs no second pass over the task.
    if not all(_clone_finds(obj) for obj in _main_objects(pickler)):
        _restart(file, sink)
        _by_value(task, file, protocol, None)


def _main_objects(pickler) -> list:
    return [obj for _, obj in pickler.memo.copy().values() if _in_main(obj)]


def _restart(file, sink) -> None:
    _truncate(sink, 0)
    if hasattr(file, "reset"):
        file.reset()
    else:
        file.seek(0)
        file.truncate()


def dumps_result(result, protocol: int) -> bytes:
    """Pickle a task's result in the clone, by value when it holds a lambda or closure."""
    try:
        return pickle.dumps(result, protocol)
    except _REFUSED as exc:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise ByValueUnavailable(f"{exc}; {INSTALL_HINT}") from exc
        return cloudpickle.dumps(result, protocol)


def _by_value(task, file, protocol, first_error) -> None:
    try:
        _pickler_class()(file, protocol).dump(task)
    except ByValueUnavailable:
        raise
    except Exception:
        if first_error is not None and _cloudpickle() is None:
            raise ByValueUnavailable(f"{first_error}; {INSTALL_HINT}") from first_error
        raise


def _truncate(sink, length: int) -> None:
    if sink:
        del sink[length:]


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
        return _same_file(obj.__code__.co_filename, path)
    return True  # a class: nothing tells where it was made; its module says the main script


@functools.lru_cache(maxsize=64)
def _same_file(made_in: str, main_path: str) -> bool:
    return made_in == main_path or os.path.abspath(made_in) == os.path.abspath(main_path)
