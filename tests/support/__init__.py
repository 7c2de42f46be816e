"""Helpers shared by the tests: the download cache and CI-aware skipping."""

import os
import pathlib

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cache_dir(*parts) -> pathlib.Path:
    """A directory for test downloads that outlives the checkout (never committed)."""
    root = os.environ.get("GILCLONE_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gilclone-tests"
    )
    path = pathlib.Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require(condition, reason: str):
    """Skip when ``condition`` is false; under CI an essential check may not skip, so fail."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def fast_once(values, fast, ids=None):
    """``values`` as pytest params where only those equal to ``fast`` stay in `make test-fast`
    and the others are marked slow: a test run per Python version is then run once, on the
    version given, by the fast suite, and on every version by `make test`.

    A value that is a tuple gives several arguments (``("3.11", "/usr/bin/python3.11")``);
    ``fast`` is compared with the value, or with its first item for a tuple.
    """
    params = []
    for i, value in enumerate(values):
        args = value if isinstance(value, tuple) else (value,)
        marks = () if args[0] == fast else (pytest.mark.slow,)
        params.append(pytest.param(*args, id=ids[i] if ids else None, marks=marks))
    return params
