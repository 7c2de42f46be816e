"""``gilclone prepare``: build (or reuse) a cached set of self-bound clones of a Python."""

import sys

from gilclone.cloner.naming import MAX_CLONES
from gilclone.cloner.prepare import prepare
from gilclone.commands.output import print_fields, print_json
from gilclone.commands.progress import terminal_progress
from gilclone.errors import CloneError, LocateError
from gilclone.platforms.home import TARGETS, install_from_home


def this_target() -> str:
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="prepare N clones of a Python")
    p.add_argument("--count", type=int, default=2, metavar="N", help="number of clones (default 2)")
    p.add_argument("--dest", metavar="DIR", help="set directory (default: the per-user cache)")
    p.add_argument("--python", metavar="EXE", help="interpreter to clone (default: this one)")
    p.add_argument("--target", choices=TARGETS, help="operating system of the Python to clone "
                   "(default: this one); another one needs --python-home")
    p.add_argument("--python-home", metavar="DIR",
                   help="installation directory of a Python for --target windows|macos")
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
    if not 1 <= args.count <= MAX_CLONES:
        raise CloneError(f"--count must be between 1 and {MAX_CLONES}, not {args.count}")
    install = None
    if args.python_home or (args.target and args.target != this_target()):
        if not args.python_home:
            raise LocateError(f"--target {args.target} needs --python-home DIR: that Python cannot run here")
        install = install_from_home(args.target or this_target(), args.python_home)
    cset = prepare(args.count, dest=args.dest, python=args.python, install=install,
                   progress=terminal_progress)
    if args.json:
        print_json(set_json(cset))
        return 0
    rows = [("set", cset.root), ("python", f"{cset.python['executable']} ({cset.version})"),
            ("from", cset.python["libpython"])]
    rows += [(f"clone {c.index}", c.soname) for c in cset.clones]
    print_fields(rows)
    return 0
