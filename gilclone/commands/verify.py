"""``gilclone verify``: prove that the clones of a set have independent global state."""

from gilclone.cloner.prepare import prepare
from gilclone.cloner.verify import verify
from gilclone.commands.output import print_json
from gilclone.commands.progress import terminal_progress


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="load a clone set in a child process and check it")
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="set directory (default: the cached set of this Python, prepared if needed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(execute=execute)


def execute(args) -> int:
    root = args.dir or prepare(2, progress=terminal_progress).root
    report = verify(root)
    if args.json:
        print_json(report)
    else:
        width = max(len(c["name"]) for c in report["checks"])
        for c in report["checks"]:
            mark = "ok  " if c["ok"] else "FAIL"
            print(f"{mark}  {c['name']:<{width}}  {c['detail']}")
        print(f"{'all checks hold' if report['ok'] else 'verification FAILED'} "
              f"({report['clones']} clones in {root})")
    return 0 if report["ok"] else 1
