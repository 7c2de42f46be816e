"""The ``gilclone`` command: one small module per subcommand, errors become one line + exit 2."""

import argparse
import importlib
import sys

from gilclone import __version__, log
from gilclone.errors import GilcloneError

# Subcommand name -> module under gilclone.commands with configure_parser / execute.
SUBCOMMANDS = ("locate", "inspect", "prepare", "verify", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gilclone",
        description="Clone CPython's libpython so several interpreters, each with its own GIL, "
        "run in one process.",
    )
    parser.add_argument("--version", action="version", version=f"gilclone {__version__}")
    # Before or after the command name; two dests, or the subcommand's default would hide
    # a count given before it.
    add_verbose(parser, dest="verbose_before")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"gilclone.commands.{name}")
        module.configure_parser(sub)
    for command_parser in sub.choices.values():
        add_verbose(command_parser, dest="verbose")
    return parser


def add_verbose(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, dest=dest,
        help="say what is being done on stderr (-v: steps, -vv: details)",
    )


def set_up_logging(args) -> None:
    """-v/-vv, or GILCLONE_LOG when it asks for more; warnings are always shown."""
    level = log.level_for_verbosity(args.verbose_before + getattr(args, "verbose", 0))
    asked = log.environment_level()
    log.configure(min(level, asked) if asked is not None else level)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_up_logging(args)
    try:
        return args.execute(args)
    except GilcloneError as exc:
        print(f"gilclone {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gilclone {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`gilclone ... | head`): nothing left to say to it.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
