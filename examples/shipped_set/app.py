"""An application that ships its own prepared clone set.

The set is made once, at build or install time, into the application's directory:

    gilclone prepare --count 2 --dest examples/shipped_set/clones

and the application passes that directory to the pool, so that it never writes to a cache
at run time (a read-only install, a container image). The set must be of the Python that
runs the application (same version and build: prepare it with that interpreter) and owned by
the user running it or by root, not writable by others (docs/security.md).
"""

import os
import sys

from gilclone.pool import ClonePool

from gilclone.errors import GilcloneError

CLONES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clones")


def word_count(text):
    return len(text.split())


def main():
    if not os.path.isdir(CLONES):
        print(f"no clone set at {CLONES}: run `gilclone prepare --count 2 --dest {CLONES}` "
              "with this Python first", file=sys.stderr)
        return 2
    texts = ["one clone per worker", "prepared at install time", "loaded from the app's folder"]
    try:
        with ClonePool(2, clones=CLONES) as pool:
            counts = list(pool.map(word_count, texts))
    except GilcloneError as err:  # a set of another Python, or one that fails its checks
        print(f"cannot use the clone set: {err}", file=sys.stderr)
        return 2
    print(f"word counts {counts} from the set in {CLONES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
