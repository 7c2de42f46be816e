"""``gilclone prepare``: build (or reuse) a cached set of self-bound clones of a Python."""

from gilclone.cloner.prepare import prepare, terminal_progress
from gilclone.commands.output import print_fields, print_json


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="prepare N clones of a Python")
    p.add_argument("--count", type=int, default=2, metavar="N", help="number of clones (default 2)")
    p.add_argument("--dest", metavar="DIR", help="set directory (default: the per-user cache)")
    p.add_argument("--python", metavar="EXE", help="interpreter to clone (default: this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(execute=execute)


def set_json(cset) -> dict:
    return {
        "root": cset.root,
        "set_id": cset.set_id,
        "version": cset.version,
        "python": cset.python["executable"],
        "libpython": cset.python["libpython"],
        "clones": [
            {"index": c.index, "directory": c.directory, "soname": c.soname, "libpython": c.libpython}
            for c in cset.clones
        ],
    }


def execute(args) -> int:
    cset = prepare(args.count, dest=args.dest, python=args.python, progress=terminal_progress)
    if args.json:
        print_json(set_json(cset))
        return 0
    rows = [("set", cset.root), ("python", f"{cset.python['executable']} ({cset.version})"),
            ("from", cset.python["libpython"])]
    rows += [(f"clone {c.index}", c.soname) for c in cset.clones]
    print_fields(rows)
    return 0
