"""``gilclone doctor``: what on this machine will stop clones from working, and the fix.

``diagnose`` gathers the facts every check may need into a ``Context`` (the
interpreter, its libpython read once, the environment, the clone directory)
and hands it to the checks of the interpreter's OS:

- ``findings``: the model (Finding, severities, Context);
- ``scan``: the one walk of the extension directories, with its cap;
- ``host`` and ``cache``: checks that hold on every OS;
- ``linux`` (ELF, glibc), ``windows`` (PE), ``macos`` (Mach-O): one module each.

Each check takes facts and returns findings, so it can be tested on
constructed inputs without the machine having the problem.
"""

import os
from typing import Callable, Dict, List, Mapping, Optional

from gilclone.cloner.doctor import linux, macos, windows
from gilclone.cloner.doctor.cache import cache_facts, cache_findings
from gilclone.cloner.doctor.findings import (
    ERROR,
    INFO,
    SEVERITIES,
    WARNING,
    Context,
    Finding,
    has_errors,
)
from gilclone.cloner.doctor.host import libpython_unreadable_finding, static_host_findings
from gilclone.platforms.binary import read_binary
from gilclone.platforms.model import PythonInstall

from gilclone.errors import BinaryFormatError

__all__ = ["ERROR", "INFO", "SEVERITIES", "WARNING", "Context", "Finding", "diagnose", "has_errors"]

# OS-specific checks, by PythonInstall.platform. macOS: static only, not yet run on a Mac.
PLATFORM_CHECKS: Dict[str, Callable[[Context], List[Finding]]] = {
    "linux": linux.checks,
    "macos": macos.checks,
    "windows": windows.checks,
}


def diagnose(install: PythonInstall, cache_root: str, environ: Mapping[str, str] = os.environ) -> List[Finding]:
    """Every finding for ``install`` with clones kept under ``cache_root``, worst first."""
    findings = static_host_findings(install)
    libpython = None
    if install.libpython:
        try:
            libpython = read_binary(install.libpython)
        except BinaryFormatError as exc:
            findings.append(libpython_unreadable_finding(install.libpython, exc.problem))
    check = PLATFORM_CHECKS.get(install.platform)
    if check is not None:
        findings += check(Context(install, libpython, environ, cache_root))
    findings += cache_findings(cache_facts(cache_root), _size_or_none(install.libpython))
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def _size_or_none(path: Optional[str]) -> Optional[int]:
    if not path:
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None
