"""Logging: quiet library, ``-v``/``-vv`` on every command, ``GILCLONE_LOG``; progress callbacks."""

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import support

from gilclone import log
from gilclone.commands.progress import terminal_progress
from gilclone.main import build_parser


def _environment(**extra):
    env = {k: v for k, v in os.environ.items() if k != log.ENV_VAR}
    env.update(extra)
    return env


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gilclone", *map(str, args)],
        capture_output=True, text=True, timeout=180, env=env or _environment(),
    )


def _records(stderr):
    """(level, logger) of every log line, and the lines that are not log lines."""
    parsed = [(line, log.parse_line(line)) for line in stderr.splitlines()]
    return [(r[0], r[1]) for _, r in parsed if r], [line for line, r in parsed if r is None]


# -- the set-up itself --------------------------------------------------------------


def test_verbosity_levels():
    assert [log.level_for_verbosity(n) for n in (0, 1, 2, 5)] == [
        logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG,
    ]


@pytest.mark.parametrize("value,level", [
    (None, None), ("", None), ("0", None), ("off", None), ("debug", logging.DEBUG),
    ("INFO", logging.INFO), ("warning", logging.WARNING), ("1", logging.DEBUG),
])
def test_environment_level(value, level):
    environ = {} if value is None else {log.ENV_VAR: value}
    assert log.environment_level(environ) == level


def test_library_logger_has_a_null_handler():
    handlers = logging.getLogger(log.ROOT_LOGGER).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_configure_replaces_its_own_handler_and_keeps_others():
    root = logging.getLogger(log.ROOT_LOGGER)
    saved, before = list(root.handlers), root.level
    mine = logging.NullHandler()
    root.addHandler(mine)
    try:
        first, second = io.StringIO(), io.StringIO()
        log.configure(logging.INFO, first)
        log.configure(logging.DEBUG, second)
        logging.getLogger("gilclone.cloner.prepare").debug("hello %d", 7)
        assert first.getvalue() == ""
        assert log.parse_line(second.getvalue().strip()) == (
            logging.DEBUG, "gilclone.cloner.prepare", "hello 7")
        assert mine in root.handlers
    finally:  # leave the library as it was: quiet, for the tests that follow
        root.handlers[:] = saved
        root.setLevel(before)


def test_a_formatted_line_parses_back():
    assert log.parse_line("gilclone WARNING gilclone.pool.worker: a: b") == (
        logging.WARNING, "gilclone.pool.worker", "a: b")
    assert log.parse_line("Traceback (most recent call last):") is None


# -- the command line -----------------------------------------------------------------


def test_every_command_takes_verbose():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) >= {"locate", "inspect", "prepare", "verify", "doctor"}
    for name, parser in commands.items():
        assert "-v, --verbose" in parser.format_help(), name


def test_locate_quiet_then_verbose():
    quiet = _cli("locate")
    assert quiet.returncode == 0 and quiet.stderr == ""
    for args in (("locate", "-v"), ("-v", "locate")):
        loud = _cli(*args)
        assert loud.returncode == 0, loud.stderr
        assert loud.stdout == quiet.stdout  # logging goes to stderr only
        records, other = _records(loud.stderr)
        assert (logging.INFO, "gilclone.platforms.locate") in records, loud.stderr
        assert other == [] and all(level >= logging.INFO for level, _ in records)


def test_vv_shows_debug_records():
    records, _ = _records(_cli("locate", "--python", sys.executable, "-vv").stderr)
    assert (logging.DEBUG, "gilclone.platforms.locate") in records


def test_gilclone_log_reaches_the_cli():
    result = _cli("locate", env=_environment(GILCLONE_LOG="debug"))
    assert (logging.INFO, "gilclone.platforms.locate") in _records(result.stderr)[0]


@pytest.mark.slow
def test_prepare_verbose_logs_the_build(tmp_path):
    dest = tmp_path / "set"
    result = _cli("prepare", "-v", "--count", "1", "--dest", dest, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["root"] == str(dest)
    records, other = _records(result.stderr)
    assert (logging.INFO, "gilclone.cloner.prepare") in records and other == []
    assert "built clone 0" in result.stderr


# -- the library ---------------------------------------------------------------------

LIBRARY_RUN = textwrap.dedent("""
    import json, sys
    from gilclone.cloner.prepare import prepare
    from gilclone.cloner.verify import verify
    from gilclone.pool import ClonePool

    events = []
    cset = prepare(2, dest=sys.argv[1], progress=lambda *e: events.append(e))
    ok = verify(cset.root)["ok"] if sys.argv[2] == "verify" else None
    with ClonePool(2, clones=cset) as pool:
        total = sum(pool.map(abs, range(-5, 5)))
    print(json.dumps({"events": events, "ok": ok, "total": total}))
""")


def _library_run(dest, verify, env):
    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY_RUN, str(dest), "verify" if verify else "-"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # the script's own line, nothing from the library
    return json.loads(lines[0]), proc.stderr


@pytest.mark.slow
def test_library_is_silent_without_gilclone_log_and_talks_with_it(tmp_path):
    support.require(sys.platform.startswith("linux"), "prepares and loads clones of this Python")
    dest = tmp_path / "set"
    first, stderr = _library_run(dest, True, _environment())
    assert stderr == ""
    assert first["ok"] is True and first["total"] == 25
    # Progress went to the callback: before and after each build, ending at the total.
    assert first["events"] == [
        [0, 2, "building clone 0 (missing)"], [1, 2, "built clone 0"],
        [1, 2, "building clone 1 (missing)"], [2, 2, "built clone 1"],
    ]
    again, stderr = _library_run(dest, False, _environment(GILCLONE_LOG="debug"))
    assert again["events"] == []  # intact clones are reused, nothing to report
    records, other = _records(stderr)
    assert other == [], stderr
    names = {name for _, name in records}
    assert {"gilclone.cloner.prepare", "gilclone.cloner.load", "gilclone.pool.executor",
            "gilclone.pool.worker"} <= names, stderr
    assert "reused" in stderr and "worker on clone 1 started" in stderr


# -- progress drawing (the CLI's part) ---------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_progress_draws_on_a_terminal_only(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    terminal_progress(0, 2, "building clone 0")
    terminal_progress(2, 2, "built clone 1")
    assert terminal.getvalue() == "\r[0/2] building clone 0\x1b[K\r[2/2] built clone 1\x1b[K\n"
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    terminal_progress(1, 2, "building clone 1")
    assert pipe.getvalue() == ""
