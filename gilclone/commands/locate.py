"""``gilclone locate``: which libpython an interpreter uses and where its extensions live."""

from gilclone.commands.output import print_fields, print_json
from gilclone.platforms.locate import locate


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("locate", help="find the libpython of an interpreter")
    p.add_argument("--python", metavar="EXE", help="interpreter to inspect (default: this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(execute=execute)


def execute(args) -> int:
    install = locate(args.python)
    if args.json:
        print_json(install.to_json())
        return 0
    rows = [
        ("python", install.executable),
        ("version", install.version),
        ("platform", f"{install.platform} {install.machine}"),
        ("linkage", install.linkage),
        ("libpython", install.libpython or "NOT FOUND (see `gilclone doctor`)"),
    ]
    if install.linkage == "static":
        rows.append(("searched", install.libpython_searched))
        rows.append(("libpython version", install.libpython_version))
    rows += [("extension suffix", install.extension_suffix)]
    rows += [("extension dir" if i == 0 else "", d) for i, d in enumerate(install.extension_dirs)]
    print_fields(rows)
    return 0
