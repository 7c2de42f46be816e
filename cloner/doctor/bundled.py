"""One library bundled in different builds by different packages (``*.libs/`` of wheels).

auditwheel renames what it bundles (``libgomp-a34b3233.so.1.0.0``), so the
"same library" is the name with the hash and the version removed; OpenBLAS and
the OpenMP runtimes come under several names and are grouped by what they are.

Which copy a module gets follows ld.so: copies with *the same soname* are one
library to ld.so (a DT_NEEDED matching a loaded soname is not searched for), so
the first one loaded serves every package: the interpreter's own if it loaded
one, else whichever package is imported first. Copies with *different sonames*
are all loaded, side by side, each package using its own.
"""

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from gilclone.cloner.doctor.env_finding import EnvFinding
from gilclone.cloner.doctor.findings import WARNING, Finding

# auditwheel adds "-" and 8 hex digits (twice for a library it bundles again); delvewheel 32.
_HASHES = re.compile(r"(?:-(?:[0-9a-f]{8}|[0-9a-f]{32}))+$")
_OTHER_SUFFIX = re.compile(r"\.(?:dll|dylib)$", re.IGNORECASE)
_SO_VERSION = re.compile(r"\.so((?:\.\d+)*)$")
_FAMILIES = (
    (re.compile(r"openblas"), "OpenBLAS"),
    (re.compile(r"^lib(?:gomp|iomp5|omp)$"), "OpenMP runtime (libgomp/libiomp5/libomp)"),
)


@dataclass(frozen=True)
class Copy:
    path: str
    package: str
    soname: str
    version: str  # from the file name, "" if it has none
    content: Tuple[int, str]  # (size, sha256): equal for identical builds


def family_of(filename: str) -> Tuple[str, str]:
    """(library family, version) of a bundled file name."""
    m = _SO_VERSION.search(filename)
    stem = filename[: m.start()] if m else _OTHER_SUFFIX.sub("", filename)
    version = m.group(1).lstrip(".") if m else ""
    stem = _HASHES.sub("", stem)
    for pattern, family in _FAMILIES:
        if pattern.search(stem):
            return family, version
    return stem, version


def bundled_findings(scan) -> List[Finding]:
    groups: Dict[str, List] = defaultdict(list)
    for lib in scan.libraries:
        if lib.package == "stdlib":
            continue
        family, version = family_of(os.path.basename(lib.facts.path))
        groups[family].append((lib, version))
    users = _users(scan)
    findings = []
    for family, members in sorted(groups.items()):
        if len({lib.package for lib, _ in members}) < 2:
            continue
        copies = [Copy(lib.facts.path, lib.package, lib.facts.soname or os.path.basename(lib.facts.path),
                       version, _content(lib.facts.path)) for lib, version in members]
        if len({c.content for c in copies}) < 2:
            continue  # the same build everywhere: whichever loads, nothing differs
        shown = [_describe(c, users) for c in copies]
        findings.append(EnvFinding(
            "env-bundled-twice", WARNING,
            f"{family} is bundled in {len({c.content for c in copies})} different builds by "
            f"{', '.join(sorted({c.package for c in copies}))}: {'; '.join(shown)}",
            _who_wins(copies, scan.host_loaded),
            "Nothing to do if both packages work together; if one crashes or misbehaves after the "
            "other was imported, import it first, or install builds that share one copy",
            ", ".join(sorted({c.package for c in copies})), tuple(c.path for c in copies)))
    return findings


def _who_wins(copies: List[Copy], host_loaded) -> str:
    by_soname: Dict[str, List[Copy]] = defaultdict(list)
    for c in copies:
        by_soname[c.soname].append(c)
    parts = []
    for soname, same in sorted(by_soname.items()):
        builds = {c.content for c in same}
        if len(same) < 2 or len(builds) < 2 and len({c.package for c in same}) < 2:
            continue
        host = host_loaded.get(soname)
        if host is not None:
            parts.append(f"{soname}: the interpreter loads {host.path} first, so it wins for every package.")
        elif len(builds) == 1:
            parts.append(f"{soname} is the same build in {' and '.join(sorted({c.package for c in same}))}: "
                         "the first loaded serves both.")
        else:
            parts.append(f"{soname} is one name for {len(builds)} different builds: the copy of the "
                         f"package imported first ({' or '.join(sorted({c.package for c in same}))}) "
                         "is used by all of them; which one depends on import order.")
    if len(by_soname) > 1:
        parts.append(f"{len(by_soname)} different sonames load side by side: each package uses its own "
                     "copy, so two runtimes (thread pools, global state) run in one process; their "
                     "exported symbols are not shared as extension modules load RTLD_LOCAL.")
    return " ".join(parts)


def _describe(c: Copy, users: Dict[str, Set[str]]) -> str:
    loaded_by = users.get(os.path.realpath(c.path))
    by = f", loaded by {', '.join(sorted(loaded_by))}" if loaded_by else ""
    return f"{c.package}: {os.path.basename(c.path)} (sha256 {c.content[1][:8]}{by})"


def _users(scan) -> Dict[str, Set[str]]:
    """Real path of a library -> packages whose extension modules load it."""
    out: Dict[str, Set[str]] = defaultdict(set)
    for ext in scan.extensions:
        for obj in ext.closure.objects[1:]:
            out[os.path.realpath(obj.path)].add(ext.package)
    return out


def _content(path: str) -> Tuple[int, Optional[str]]:
    try:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return size, digest.hexdigest()
    except OSError:
        return -1, path
