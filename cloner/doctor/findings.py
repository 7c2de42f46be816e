"""What a doctor check returns (Finding), and what every check is given (Context)."""

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from gilclone.platforms.model import BinaryInfo, PythonInstall

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

# How many paths a finding names before it says "and N more".
LIST_MAX = 5


@dataclass(frozen=True)
class Finding:
    """One thing doctor noticed: what it saw, why it matters, and what to do."""

    code: str
    severity: str  # ERROR, WARNING or INFO
    seen: str
    why: str
    fix: str

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity,
            "seen": self.seen,
            "why": self.why,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Context:
    """Everything an OS's checks may look at; they read nothing else of the caller's."""

    install: PythonInstall
    libpython: Optional[BinaryInfo]  # None when there is none or it cannot be read
    environ: Mapping[str, str]  # the environment the clones would run in
    cache_root: str  # the clone directory (`doctor --cache DIR`, else the default)


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


def listed(items: Sequence[str], total: Optional[int] = None) -> str:
    """Up to LIST_MAX of ``items``, then "and N more"."""
    total = len(items) if total is None else total
    shown = ", ".join(items[:LIST_MAX])
    more = total - min(len(items), LIST_MAX)
    return f"{shown} and {more} more" if more > 0 else shown
