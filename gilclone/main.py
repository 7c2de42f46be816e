"""The ``gilclone`` command: one small module per subcommand, errors become one line + exit 2."""

import argparse
import importlib
import sys

from gilclone import __version__
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"gilclone.commands.{name}")
        module.configure_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
