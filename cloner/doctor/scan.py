"""The one walk of the extension directories that every OS's checks share.

It is sorted (the same tree gives the same findings, and the same part of it
when capped), reads each real file once however many links lead to it, and
says when it stopped at the cap, so a finding about "the extension modules"
never silently covers only some of them.
"""

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from gilclone.cloner.doctor.findings import INFO, Finding

# How many files one scan of the extension directories hands to the checks at most.
SCAN_CAP = 5000


@dataclass(frozen=True)
class FileScan:
    """The files a scan found, in walk order, and whether it stopped at ``cap``."""

    paths: Tuple[str, ...]
    capped: bool
    cap: int


def scan_files(
    dirs: Sequence[str], wanted: Callable[[str], bool], cap: Optional[int] = None
) -> FileScan:
    """Files below ``dirs`` whose base name ``wanted`` accepts (``__pycache__`` skipped),
    at most ``cap`` (default SCAN_CAP, read when called)."""
    cap = SCAN_CAP if cap is None else cap
    found: List[str] = []
    seen = set()
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if not wanted(name):
                    continue
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in seen or not os.path.isfile(real):
                    continue
                if len(found) >= cap:
                    return FileScan(tuple(found), True, cap)
                seen.add(real)
                found.append(path)
    return FileScan(tuple(found), False, cap)


def scan_capped_findings(scan: FileScan, what: str) -> List[Finding]:
    """Say that findings about ``what`` cover only the part of the tree read."""
    if not scan.capped:
        return []
    return [
        Finding(
            "ext-scan-capped",
            INFO,
            f"stopped after reading {scan.cap} {what} in the extension directories",
            f"The findings about {what} cover only the part read.",
            "",
        )
    ]
