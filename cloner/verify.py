"""``verify``: load a clone set in a child process and collect its report.

The child is this interpreter; the clones it loads may be of another Python
version, since each clone is a complete interpreter with its own standard library.
"""

import json
import logging
import os
import signal
import subprocess
import sys

from gilclone.cloner import audit, store
from gilclone.cloner.builders import builder_for

from gilclone.log import parse_line

VERIFY_TIMEOUT_S = 300

log = logging.getLogger(__name__)

def verify(root: str) -> dict:
    """Return ``{"ok", "clones", "checks": [{"name", "ok", "detail"}]}`` for the set at ``root``.

    Nothing is loaded unless the set passes audit's checks (owners and modes,
    identities, complete manifests); a set that fails them gives their report.
    """
    root = os.path.abspath(root)
    if not os.path.lexists(os.path.join(root, store.SET_FILE)):
        store.load_set(root)  # raises the one-line "not a clone set" error
    first = audit.set_checks(root)
    if not all(ok for _, ok, _ in first):
        return audit.report(first, len([n for n in os.listdir(root) if n.startswith("clone-")]))
    return audit.merged(first, _runtime_report(store.load_set(root)))


def _runtime_report(cset: store.CloneSet) -> dict:
    if cset.python.get("platform", "linux") != _this_platform():
        log.info("%s is a %s set: static checks only", cset.root, cset.python.get("platform"))
        return _static_report(cset)
    # This interpreter hosts the clones whatever their version: a clone is a whole
    # interpreter of its own, started with the sys.path its Python reported.
    cmd = [sys.executable, "-m", "gilclone.cloner.verify_child", cset.root]
    log.info("verifying %s in a child process: %s", cset.root, " ".join(cmd))
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=VERIFY_TIMEOUT_S, check=False,
                             env=_child_environment())
    except subprocess.TimeoutExpired:
        return _failed(cset, f"the verifying process did not finish within {VERIFY_TIMEOUT_S} s (a clone hung)")
    lines = out.stdout.decode(errors="replace").strip().splitlines()
    _relay_child_log(out.stderr)
    log.debug("verifying process exited %d", out.returncode)
    if out.returncode != 0 or not lines:
        return _failed(cset, _describe_exit(out.returncode, out.stderr))
    try:
        return json.loads(lines[-1])
    except ValueError:
        return _failed(cset, f"the verifying process printed no report: {lines[-1][:200]}")


def _child_environment() -> dict:
    """The child logs its steps at the level this process logs at (set by -v or
    GILCLONE_LOG); its stderr is captured and relayed by _relay_child_log."""
    env = dict(os.environ)
    if log.isEnabledFor(logging.DEBUG):
        env["GILCLONE_LOG"] = "debug"
    elif log.isEnabledFor(logging.INFO):
        env["GILCLONE_LOG"] = "info"
    return env


def _relay_child_log(stderr: bytes) -> None:
    """Log the child's records again here, under their own logger names."""
    if not log.isEnabledFor(logging.INFO):
        return
    for line in stderr.decode(errors="replace").splitlines():
        record = parse_line(line)
        if record:
            level, name, message = record
            logging.getLogger(name).log(level, "(verifying process) %s", message)
        else:
            log.debug("verifying process stderr: %s", line)


def _this_platform() -> str:
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")


def _static_report(cset: store.CloneSet) -> dict:
    """A set for another OS cannot be loaded here; check what its files show.

    The format's builder provides ``static_checks(cset) -> [(name, ok, detail)]``.
    """
    formats = {c.binary_format for c in cset.clones} or {"?"}
    checks = [{"name": "runtime_checks", "ok": True,
               "detail": f"skipped: a {cset.python.get('platform')} set cannot be loaded on "
                         f"{_this_platform()}; run `gilclone verify` there for the runtime proof"}]
    for fmt in sorted(formats):
        builder = builder_for(fmt)
        static = getattr(builder, "static_checks", None)
        if static is None:
            checks.append({"name": "static_checks", "ok": False, "detail": f"no static checks for {fmt} sets"})
            continue
        checks += [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in static(cset)]
    return {"ok": all(c["ok"] for c in checks), "clones": len(cset.clones), "checks": checks}


def _failed(cset: store.CloneSet, detail: str) -> dict:
    return {"ok": False, "clones": len(cset.clones), "checks": [{"name": "child_process", "ok": False, "detail": detail}]}


def _describe_exit(code: int, stderr: bytes) -> str:
    tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-3:])
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the verifying process was killed by {name} (a clone crashed): {tail}"
    return f"the verifying process exited with status {code}: {tail}"
