"""``gilclone doctor``: what on this machine will stop clones from working, and the fix.

Exit status: 0 when nothing is an error, 1 when a finding is an error, 2 when
the interpreter itself cannot be looked at (a GilcloneError, via main).
With ``--pid`` it reads a running process instead: 1 when that process holds a
foreign libpython or a library mapped from two paths that is not a clone's copy.
With ``--env`` it scans the extension modules of the environment: 1 when a finding is an error.
"""

from gilclone.cloner import store
from gilclone.cloner.doctor import SEVERITIES, diagnose, environment, has_errors, process
from gilclone.commands.output import print_json
from gilclone.commands.prepare import this_target
from gilclone.commands.progress import terminal_progress
from gilclone.errors import LocateError
from gilclone.platforms.home import TARGETS, install_from_home
from gilclone.platforms.locate import locate


def configure_parser(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check that clones can work here, and say how to fix what cannot")
    p.add_argument("--python", metavar="EXE", help="interpreter to check (default: this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="clone directory to check (default: $GILCLONE_CACHE or the user cache directory)",
    )
    p.add_argument(
        "--pid",
        type=int,
        metavar="PID",
        help="report what a running process has loaded: libpython images (host and clones), "
        "the libpython each extension module is bound to, libraries mapped twice (Linux)",
    )
    p.add_argument(
        "--env",
        action="store_true",
        help="scan every extension module of the interpreter's environment (lib-dynload, "
        "site-packages) for loader conflicts: foreign libpython, wrong ABI tag, unresolved "
        "libraries, missing symbol versions, libraries bundled twice, C-API helper libraries (Linux)",
    )
    p.add_argument("--target", choices=TARGETS,
                   help="with --env: operating system of the environment (default: this one); "
                   "another one needs --python-home")
    p.add_argument("--python-home", metavar="DIR",
                   help="with --env: installation directory of a Python for --target windows|macos")
    p.set_defaults(execute=execute)


def execute(args) -> int:
    if args.pid is not None:
        return execute_pid(args)
    if args.env:
        return execute_env(args)
    install = locate(args.python)
    findings = diagnose(install, args.cache or store.default_cache_root())
    ok = not has_errors(findings)
    if args.json:
        print_json(
            {
                "python": install.executable,
                "findings": [f.to_json() for f in findings],
                "ok": ok,
            }
        )
    else:
        print(format_report(install, findings))
    return 0 if ok else 1


def execute_pid(args) -> int:
    report = process.inspect_process(args.pid)
    if args.json:
        print_json(dict(report.to_json(), ok=not process.has_conflicts(report)))
    else:
        print("\n".join(process.summary_lines(report)))
    return 1 if process.has_conflicts(report) else 0


def execute_env(args) -> int:
    if args.python_home or (args.target and args.target != this_target()):
        if not args.python_home:
            raise LocateError(f"--target {args.target} needs --python-home DIR: that Python cannot run here")
        install = install_from_home(args.target or this_target(), args.python_home)
    else:
        install = locate(args.python)
    report = environment.scan_environment(install, progress=None if args.json else terminal_progress)
    if args.json:
        print_json(report.to_json())
    else:
        print("\n".join(environment.summary_lines(report)))
    return 0 if report.ok else 1


def format_report(install, findings) -> str:
    """Findings grouped by severity, worst first, in aligned columns; why/fix indented below."""
    lines = [
        f"python     {install.executable} ({install.version}, libpython {install.linkage})",
        f"libpython  {install.libpython or 'NOT FOUND'}",
        "",
    ]
    sev_w = max(len(s) for s in SEVERITIES)
    code_w = max((len(f.code) for f in findings), default=0)
    indent = " " * (sev_w + 2 + code_w + 2)
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        for f in group:
            lines.append(f"{f.severity:<{sev_w}}  {f.code:<{code_w}}  {f.seen}")
            lines.append(f"{indent}why: {f.why}")
            if f.fix:
                lines.append(f"{indent}fix: {f.fix}")
        if group:
            lines.append("")
    counts = [sum(1 for f in findings if f.severity == s) for s in SEVERITIES]
    lines.append(
        f"{counts[0]} error(s), {counts[1]} warning(s), {counts[2]} info: "
        + ("clones should work here" if counts[0] == 0 else "fix the errors before cloning")
    )
    return "\n".join(lines)
