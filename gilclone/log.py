"""Logging set-up: quiet by default, one stderr handler when asked.

Every module logs through ``logging.getLogger(__name__)``; all those loggers sit
under the ``gilclone`` logger. Library code never prints: the ``gilclone``
logger has a NullHandler, so nothing is shown unless someone asks for it, by:

- the CLI's ``-v`` (info) or ``-vv`` (debug);
- ``GILCLONE_LOG=debug`` (or info, warning, error; any other value but 0/off
  means debug) in the environment, for a program that uses the library;
- the standard ``logging`` configuration of the program (``logging.basicConfig``
  and the like), which sees gilclone's records like any library's.

This module is at the base of the layers: every layer may import it.
"""

import logging
import os
import re
import sys
from typing import Optional, TextIO, Tuple

ROOT_LOGGER = "gilclone"
ENV_VAR = "GILCLONE_LOG"
FORMAT = "gilclone %(levelname)s %(name)s: %(message)s"
_FORMATTED = re.compile(r"gilclone (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")
LEVELS = ("debug", "info", "warning", "error")

# The handler this module installed, so that configuring again replaces it.
_handler: Optional[logging.Handler] = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (as logging's own
    last-resort handler does), so a replaced stderr (pytest, a GUI) is followed."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _install_null_handler() -> None:
    root = logging.getLogger(ROOT_LOGGER)
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())


def level_for_verbosity(verbose: int) -> int:
    """``-v`` count to a level: 0 warnings, 1 info, 2 or more debug."""
    if verbose >= 2:
        return logging.DEBUG
    return logging.INFO if verbose == 1 else logging.WARNING


def parse_level(text: str) -> Optional[int]:
    """A level name (any case) of LEVELS, or None for anything else."""
    name = text.strip().lower()
    return getattr(logging, name.upper()) if name in LEVELS else None


def configure(level: int, stream: Optional[TextIO] = None) -> logging.Handler:
    """Send gilclone's records of ``level`` and above to ``stream`` (default stderr).

    Calling it again replaces the handler it installed before; handlers that
    the program added itself are left alone.
    """
    global _handler
    root = logging.getLogger(ROOT_LOGGER)
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    _handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(_handler)
    root.setLevel(level)
    return _handler


def parse_line(line: str) -> Optional[Tuple[int, str, str]]:
    """(level, logger name, message) of a line that FORMAT wrote, else None: how a
    child process's records, read from its stderr, are logged again in the parent."""
    match = _FORMATTED.fullmatch(line)
    if match is None:
        return None
    level, name, message = match.groups()
    return getattr(logging, level), name, message


def environment_level(environ=None) -> Optional[int]:
    """The level ``GILCLONE_LOG`` asks for: a level name, None when unset, empty, 0 or
    off, and debug for anything else (``GILCLONE_LOG=1`` should show something)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if value.lower() in ("", "0", "off", "no", "none"):
        return None
    level = parse_level(value)
    return logging.DEBUG if level is None else level


def configure_from_environment(environ=None) -> Optional[int]:
    """Honour ``GILCLONE_LOG`` (called when gilclone is imported); returns the level set."""
    _install_null_handler()
    level = environment_level(environ)
    if level is not None:
        configure(level)
    return level
