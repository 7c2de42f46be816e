"""Small helpers shared by the subcommands for printing."""

import json
import sys
from typing import Iterable, Sequence, Tuple


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_fields(rows: Iterable[Tuple[str, object]]) -> None:
    """Print ``label  value`` lines with the values aligned."""
    rows = [(label, _text(value)) for label, value in rows]
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    return str(value)


def join(values: Sequence[str]) -> str:
    return _text(list(values))
