"""gilclone doctor's Windows checks: clone DLL names, ._pth files, abi3 forwarders, signatures.

Run by a Windows CPython (checked under Wine with the official embeddable
builds); the clone sets looked at are those under the context's cache root.
See docs/windows.md for how a Windows clone is made.
"""

import os
from typing import Dict, List, Optional, Sequence

from gilclone.cloner import pe_clone, store
from gilclone.cloner.doctor.findings import ERROR, WARNING, Context, Finding, listed
from gilclone.cloner.doctor.scan import FileScan, scan_capped_findings, scan_files
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.model import BinaryInfo, PythonInstall

from gilclone.errors import BinaryFormatError

STABLE_ABI_DLL = pe_clone.STABLE_ABI_DLL


def checks(ctx: Context) -> List[Finding]:
    sets = clone_sets_under(ctx.cache_root)
    modules = scan_files(ctx.install.extension_dirs, lambda name: name.lower().endswith(".pyd"))
    findings: List[Finding] = []
    findings += name_collision_findings(sets, ctx.install.extension_dirs)
    findings += missing_pth_findings(sets)
    findings += abi3_findings(ctx.install, abi3_modules(modules), sets)
    findings += scan_capped_findings(modules, "extension modules")
    findings += signed_findings(ctx.libpython)
    return findings


def clone_sets_under(root: str) -> List[store.CloneSet]:
    """The readable sets directly under ``root`` that hold Windows (PE) clones."""
    out = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, store.SET_FILE)):
            try:
                cset = store.load_set(path)
            except Exception:  # a damaged set is prepare's and verify's business
                continue
            if any(c.binary_format == "PE" for c in cset.clones):
                out.append(cset)
    return out


def name_collision_findings(sets: Sequence[store.CloneSet], extension_dirs: Sequence[str]) -> List[Finding]:
    """Windows keeps one module per base name: two sets whose clones share a DLL name
    cannot be loaded in one process (the second binds to the first)."""
    owners: Dict[str, List[str]] = {}
    for cset in sets:
        for c in cset.clones:
            for _old, new in c.renames:
                owners.setdefault(new.lower(), []).append(c.directory)
    for d in extension_dirs:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for entry in entries:
            if entry.lower() in owners:
                owners[entry.lower()].append(os.path.join(d, entry))
    clashes = {n: places for n, places in owners.items() if len(places) > 1}
    if not clashes:
        return []
    shown = [f"{n} ({', '.join(p)})" for n, p in sorted(clashes.items())]
    return [Finding(
        "win-dll-name-collision", ERROR,
        f"{len(clashes)} clone DLL name(s) are used twice: {'; '.join(shown[:5])}",
        "Windows keeps one loaded module per base name: a second DLL of the same name is "
        "never loaded, so its extension copies would bind to the first set's clone.",
        "Delete one of the sets and prepare it again (`gilclone prepare --dest DIR`); names "
        "are derived from the set and its directory, so a new directory gives new names",
    )]


def missing_pth_findings(sets: Sequence[store.CloneSet]) -> List[Finding]:
    missing = []
    for cset in sets:
        for c in cset.clones:
            if c.binary_format != "PE":
                continue
            pth = os.path.splitext(c.libpython)[0] + "._pth"
            if not os.path.isfile(pth):
                missing.append(pth)
    if not missing:
        return []
    return [Finding(
        "win-pth-missing", ERROR,
        f"{len(missing)} Windows clone(s) lack their ._pth file: {listed(missing)}",
        "CPython looks for <DLL name>._pth next to the DLL; a renamed DLL without one does "
        "not find its standard library and fails to start ('No module named encodings').",
        "Run `gilclone prepare` again for that set: it rebuilds clones whose files do not "
        "match their manifest",
    )]


def abi3_modules(modules: FileScan) -> List[str]:
    """The extension modules that import python3.dll (the stable ABI)."""
    found = []
    for path in modules.paths:
        try:
            needed = pe_reader.read(path).needed
        except BinaryFormatError:
            continue
        if any(n.lower() == STABLE_ABI_DLL for n in needed):
            found.append(path)
    return found


def abi3_findings(install: PythonInstall, abi3: Sequence[str], sets: Sequence[store.CloneSet]) -> List[Finding]:
    """abi3 modules import python3.dll: a clone needs its own forwarder copy."""
    if not abi3:
        return []
    home = os.path.dirname(install.libpython or "")
    lacking = [c.directory for s in sets for c in s.clones
               if c.binary_format == "PE"
               and not any(old.lower() == STABLE_ABI_DLL for old, _new in c.renames)]
    if pe_clone.find_case_blind(home, STABLE_ABI_DLL) is not None and not lacking:
        return []
    where = (f"clones without a python3.dll copy: {listed(lacking)}" if lacking
             else f"no python3.dll in {home}")
    return [Finding(
        "win-abi3-no-python3-dll", ERROR,
        f"{len(abi3)} abi3 extension module(s) import python3.dll ({listed(list(abi3))}); {where}",
        "A stable-ABI module's copy imports the clone's python3.dll copy, whose exports "
        "forward to the clone; without it the copy binds to the host's Python (or fails).",
        "Use a Python installation that ships python3.dll (every python.org build does), then "
        "delete the set and run `gilclone prepare` again",
    )]


def signed_findings(libpython: Optional[BinaryInfo]) -> List[Finding]:
    size = getattr(getattr(libpython, "facts", None), "certificate_size", 0)
    if not size:
        return []
    return [Finding(
        "win-signed-dll", WARNING,
        f"{os.path.basename(libpython.path)} carries an Authenticode signature ({size} bytes)",
        "The clone copies are rewritten, so their signature is removed (it would no longer "
        "verify). Application control that admits only signed code (WDAC, AppLocker, Smart "
        "App Control) blocks loading the unsigned copies.",
        "Allow the clone directory in your application-control policy, or sign the copies "
        "with your own certificate (signtool) after `gilclone prepare`",
    )]
