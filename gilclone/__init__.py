"""gilclone: several independent CPython interpreters, each with its own GIL, in one process.

The root package holds what the three layers share (the error types) and the
command line; the work lives in ``gilclone.platforms`` (reading binaries and
locating Python), ``gilclone.cloner`` (making self-bound copies) and
``gilclone.pool`` (running tasks on them).
"""

import sys

from gilclone.errors import GilcloneError

# Inside a clone (its bootstrap sets sys._gilclone_index) only the task runner is imported
# and it never logs: leaving logging out saves every clone ~9 ms and ~1.8 MiB.
if not hasattr(sys, "_gilclone_index"):
    from gilclone.log import configure_from_environment

    configure_from_environment()  # nothing is printed unless GILCLONE_LOG asks (see gilclone.log)

__version__ = "0.1.0"
__all__ = ["GilcloneError", "__version__"]
