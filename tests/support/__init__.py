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
