"""``gilclone inspect``: what a binary is to CPython, in any of the three formats."""

import dataclasses

from gilclone.commands.output import print_fields, print_json
from gilclone.errors import BinaryFormatError, GilcloneError
from gilclone.platforms.binary import read_binary


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="read ELF, PE or Mach-O binaries")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one object for one path, a list for several")
    p.set_defaults(execute=execute)


def execute(args) -> int:
    # Read everything first: a bad file fails the command before anything is printed.
    infos = [_read(path) for path in args.paths]
    if args.json:
        docs = [info.to_json() for info in infos]
        print_json(docs[0] if len(docs) == 1 else docs)
        return 0
    for i, info in enumerate(infos):
        if i:
            print()
        _print_human(info)
    return 0


def _read(path):
    """read_binary, with any failure it did not foresee still one line naming the file."""
    try:
        return read_binary(path)
    except GilcloneError:
        raise
    except Exception as exc:  # a reader bug: the user still gets the file and the cause
        raise BinaryFormatError(
            path, f"could not be read ({type(exc).__name__}: {exc}); please report this"
        ) from None


def _print_human(info) -> None:
    rows = [
        ("path", info.path),
        ("format", f"{info.format} {info.machine}"),
        ("kind", info.kind + (f" (Python {info.python_version})" if info.python_version else "")),
        ("name", info.name),
        ("needed", info.needed),
        ("rpaths", info.rpaths),
        ("exports", info.exports_count),
    ]
    if info.facts is not None:
        for field in dataclasses.fields(info.facts):
            value = getattr(info.facts, field.name)
            if field.name == "slices":
                for s in value:
                    rows.append((f"slice {s.arch}", f"{s.filetype}, uuid {s.uuid}, "
                                 f"header padding {s.header_padding}, signed {bool(s.code_signature_size)}"))
                continue
            if field.name == "sections":
                value = [f"{s.name}(+{s.slack})" for s in value]
            rows.append((field.name.replace("_", " "), value))
    print_fields(rows)
