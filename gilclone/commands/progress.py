"""Progress of long steps, drawn on the terminal: the library only reports it."""

import sys


def terminal_progress(done: int, total: int, what: str) -> None:
    """A ``Progress`` callback (see gilclone.cloner.prepare) that redraws one stderr line.

    Draws only on a terminal: piped or captured stderr gets nothing, so that
    the output of scripts and of ``--json`` stays clean.
    """
    if not sys.stderr.isatty():
        return
    sys.stderr.write(f"\r[{done}/{total}] {what}\x1b[K")  # \x1b[K: clear the rest of the line
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
