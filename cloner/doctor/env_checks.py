"""The checks of ``gilclone doctor --env``: each reads the closures of one EnvScan.

Findings are grouped by package (the distribution that installed the files), so
one broken wheel gives one finding naming all of its files.
"""

import os
from collections import defaultdict
from typing import Dict, List, Tuple

from gilclone.cloner.doctor.bundled import bundled_findings
from gilclone.cloner.doctor.env_finding import EnvFinding
from gilclone.cloner.doctor.findings import ERROR, INFO, WARNING, Finding, listed
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_versions import missing_versions

FILES_SHOWN = 8


def _is_libpython(name: str) -> bool:
    """libpython3.X.so, python3X.dll, Python.framework/...: not the stable-ABI python3.dll."""
    return python_version_from_libname(name) not in (None, "abi3")


def all_findings(scan) -> List[Finding]:
    findings: List[Finding] = []
    findings += foreign_libpython_findings(scan)
    findings += other_abi_findings(scan)
    findings += unresolved_findings(scan)
    findings += symbol_version_findings(scan)
    findings += bundled_findings(scan)
    findings += capi_library_findings(scan)
    findings += _capped_and_unreadable(scan)
    return findings


def _by_package(items) -> Dict[str, list]:
    out: Dict[str, list] = defaultdict(list)
    for package, item in items:
        out[package].append(item)
    return dict(sorted(out.items()))


def foreign_libpython_findings(scan) -> List[Finding]:
    """A libpython named in a closure that is not the interpreter's own one."""
    install = scan.install
    host = os.path.realpath(install.libpython) if install.libpython and install.linkage == "shared" else None
    hits = []
    for ext in scan.extensions:
        for edge in ext.closure.edges:
            if not _is_libpython(edge.name):
                continue
            target = os.path.realpath(edge.path) if edge.path else None
            if host is not None and target == host:
                continue
            where = target or "not found"
            hits.append((ext.package, (ext.path, f"{edge.name} ({where})")))
    findings = []
    for package, items in _by_package(hits).items():
        names = sorted({what for _, what in items})
        if install.linkage == "static":
            why = (f"{install.executable} has the C API linked in (no shared libpython); loading "
                   "another libpython maps a second interpreter runtime whose Py* symbols the "
                   "module may bind to: crashes or 'PyThreadState_Get: no current thread'.")
        else:
            why = (f"The interpreter runs libpython {install.short_version} ({install.libpython}); "
                   "a module bound to another libpython calls a runtime that was never "
                   "initialised: crashes or 'PyThreadState_Get: no current thread'.")
        findings.append(EnvFinding(
            "env-foreign-libpython", ERROR,
            f"{len(items)} file(s) of {package} link to a foreign libpython: {listed(names)}",
            why,
            f"Reinstall {package} with this interpreter's pip (`{install.executable} -m pip install "
            f"--force-reinstall {package}`); extension modules should not link libpython at all",
            package, tuple(sorted({p for p, _ in items}))))
    return findings


def other_abi_findings(scan) -> List[Finding]:
    """Extension modules whose names are tagged for another Python: never imported here."""
    findings = []
    install = scan.install
    for package, items in _by_package((o.package, o) for o in scan.other_abi).items():
        tags = sorted({o.tag for o in items})
        findings.append(EnvFinding(
            "env-wrong-abi", WARNING,
            f"{len(items)} extension module(s) of {package} are built for Python {', '.join(tags)}, "
            f"not {install.short_version} (suffix {install.extension_suffix})",
            "The import system only loads files ending in this interpreter's suffixes, so these "
            "are dead files; if the package has no module built for this Python, importing it "
            "fails with ModuleNotFoundError.",
            f"Reinstall {package} with `{install.executable} -m pip install --force-reinstall "
            f"{package}` (it was copied or installed for another interpreter)",
            package, tuple(o.path for o in items)))
    return findings


def unresolved_findings(scan) -> List[Finding]:
    hits = []
    for ext in scan.extensions:
        for edge in ext.closure.missing:
            if not _is_libpython(edge.name):
                needed_by = "" if edge.loader == ext.path else f", needed by {edge.loader}"
                hits.append((ext.package, (ext.path, f"{edge.name}{needed_by}")))
    findings = []
    for package, items in _by_package(hits).items():
        names = sorted({what for _, what in items})
        windows = scan.install.platform == "windows"
        findings.append(EnvFinding(
            "env-unresolved", ERROR,
            f"{len({p for p, _ in items})} extension module(s) of {package} need libraries the "
            f"loader cannot find: {listed(names)}",
            "Importing them fails with " + ("'ImportError: DLL load failed while importing ...: The "
                                            "specified module could not be found'." if windows else
                                            "'ImportError: ...: cannot open shared object file'."),
            "Install what provides " + ", ".join(sorted({n.split(",")[0] for n in names})[:3])
            + (" (a Windows component or the Visual C++ Redistributable, if it is not a DLL of the "
               "package)" if windows else " (a system package)")
            + f", or reinstall {package} from a wheel that bundles it"
            + ("" if windows else "; `ldd FILE` shows the same"),
            package, tuple(sorted({p for p, _ in items}))))
    return findings


def symbol_version_findings(scan) -> List[Finding]:
    """Version needs (GLIBC_2.38, GLIBCXX_3.4.32) the resolved provider does not define."""
    checked: Dict[Tuple[str, str, str], Tuple[str, ...]] = {}
    hits = []
    for ext in scan.extensions:
        for edge in ext.closure.edges:
            if edge.path is None:
                continue
            key = (edge.loader, edge.name, edge.path)
            if key not in checked:
                checked[key] = _missing(scan.versions, edge)
            if checked[key]:
                hits.append((ext.package, (ext.path, edge, checked[key])))
    findings = []
    for package, items in _by_package(hits).items():
        wanted = sorted({f"{', '.join(missing)} of {edge.path} (by {os.path.basename(edge.loader)})"
                         for _, edge, missing in items})
        findings.append(EnvFinding(
            "env-symbol-version", ERROR,
            f"{len({p for p, _, _ in items})} extension module(s) of {package} need symbol versions "
            f"this system lacks: {listed(wanted)}",
            "ld.so refuses to load them: \"version `...' not found\"; the wheel was built on a "
            "newer system (manylinux tag) than this one.",
            f"Install a build of {package} for this system's glibc/libstdc++ (an older version, or "
            "one built from source here), or run on a newer system",
            package, tuple(sorted({p for p, _, _ in items}))))
    return findings


def _missing(versions, edge) -> Tuple[str, ...]:
    needer = versions(edge.loader)
    if needer is None or not any(n.file == edge.name for n in needer.needs):
        return ()
    provider = versions(edge.path)
    if provider is None:
        return ()
    return missing_versions(needer.needs, edge.name, provider)


def capi_library_findings(scan) -> List[Finding]:
    """Libraries that are not extension modules but call the C API (pybind11 helpers, ...)."""
    findings = []
    libs = [(lib.package, lib) for lib in scan.libraries if lib.facts.uses_python_api]
    for package, items in _by_package(libs).items():
        bound = [n for lib in items for n in lib.facts.needed if python_version_from_libname(n)]
        findings.append(EnvFinding(
            "env-capi-library", INFO,
            f"{len(items)} librar{'y' if len(items) == 1 else 'ies'} of {package} that "
            f"{'is not an extension module' if len(items) == 1 else 'are not extension modules'} call"
            f"{'s' if len(items) == 1 else ''} the Python C API"
            + ("" if scan.install.platform == "windows" else
               f" ({sum(i.facts.python_refs for i in items)} undefined Py* symbols)")
            + (f"; linked to {', '.join(sorted(set(bound)))}" if bound else ""),
            "They are loaded once per process as a dependency of the package's extension "
            "modules and resolve Py* in the global scope, i.e. against the first libpython "
            "loaded: each gilclone clone needs its own copy, and a foreign libpython in the "
            "process would capture them.",
            "",
            package, tuple(lib.facts.path for lib in items)))
    return findings


def _capped_and_unreadable(scan) -> List[Finding]:
    out: List[Finding] = []
    if scan.capped:
        out.append(EnvFinding(
            "env-scan-capped", WARNING, "the scan stopped at its file cap",
            "Findings cover only the files read.", "Scan a smaller environment", "", ()))
    if scan.unreadable:
        out.append(EnvFinding(
            "env-unreadable", INFO,
            f"{len(scan.unreadable)} file(s) named like shared libraries are not readable ELF "
            "objects (linker scripts, damaged or foreign files)",
            "ld.so skips them while searching.", "", "", tuple(scan.unreadable)))
    return out
