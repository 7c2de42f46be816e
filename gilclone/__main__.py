"""``python -m gilclone``: the CLI where no console script is on PATH."""

import sys

from gilclone.main import main

if __name__ == "__main__":
    sys.exit(main())
