"""``gilclone doctor --env``: loader conflicts among the extension modules of an environment.

Every extension module below the interpreter's extension directories (lib-dynload
and each site-packages) gets its dependency closure resolved with the platform
loader's rules, given by one ``Rules`` per OS (``env_linux``: ld.so through
``platforms.resolve``; ``env_windows``: the DLL search of a ``.pyd`` import;
``env_macos``: dyld's; the last two from the files alone, for ``--target``). The checks (``env_checks``) then read those closures: foreign
libpython, wrong ABI tags, unresolved names, symbol versions, libraries bundled
twice, C-API helper libraries. Each file is read once per scan.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Tuple

from gilclone.cloner.doctor import env_checks, env_linux, env_macos, env_windows
from gilclone.cloner.doctor.env_packages import PackageIndex
from gilclone.cloner.doctor.env_rules import Rules
from gilclone.cloner.doctor.findings import ERROR, SEVERITIES, Finding
from gilclone.cloner.doctor.scan import scan_files
from gilclone.platforms import resolve
from gilclone.platforms.classify import python_version_from_filename
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.elf_versions import VersionFacts
from gilclone.platforms.model import PythonInstall

from gilclone.errors import LocateError

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExtensionClosure:
    """One extension module, its package, and everything loading it brings in."""

    path: str
    package: str
    closure: resolve.Closure


@dataclass(frozen=True)
class Library:
    """A shared library below the extension directories that is not an extension module."""

    facts: DynamicFacts
    package: str


@dataclass(frozen=True)
class OtherAbi:
    """An extension module whose file name is tagged for another interpreter."""

    path: str
    package: str
    tag: str  # the version its name says, e.g. "3.12"


@dataclass(frozen=True)
class EnvScan:
    """What the scan read, for the checks."""

    install: PythonInstall
    dirs: Tuple[str, ...]
    extensions: Tuple[ExtensionClosure, ...]
    libraries: Tuple[Library, ...]
    other_abi: Tuple[OtherAbi, ...]
    unreadable: Tuple[str, ...]
    capped: bool
    host_loaded: Mapping[str, DynamicFacts] = field(default_factory=dict)  # name -> object
    # The symbol versions of a file (read with its dynamic facts), None if unreadable.
    versions: Callable[[str], Optional[VersionFacts]] = lambda path: None


@dataclass(frozen=True)
class EnvReport:
    python: str
    version: str
    linkage: str
    libpython: Optional[str]
    dirs: Tuple[str, ...]
    extensions: int
    libraries: int
    seconds: float
    findings: Tuple[Finding, ...]
    scan: EnvScan

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    def to_json(self) -> dict:
        return {
            "python": self.python,
            "version": self.version,
            "linkage": self.linkage,
            "libpython": self.libpython,
            "dirs": list(self.dirs),
            "extensions": self.extensions,
            "libraries": self.libraries,
            "seconds": round(self.seconds, 3),
            "findings": [f.to_json() for f in self.findings],
            "ok": self.ok,
        }


def scan_environment(
    install: PythonInstall,
    config: Optional[resolve.LoaderConfig] = None,
    progress: Optional[Progress] = None,
) -> EnvReport:
    """Scan ``install``'s extension directories and say what will conflict.

    Linux environments are read with ld.so's rules (``config``: this machine's by
    default); Windows and macOS ones (``--target``) statically.
    """
    start = time.monotonic()
    if install.platform == "linux":
        rules = env_linux.rules(install, config or resolve.system_config())
    elif install.platform == "windows":
        rules = env_windows.rules(install)
    elif install.platform == "macos":
        rules = env_macos.rules(install)
    else:
        raise LocateError(f"{install.executable}: scanning a {install.platform} environment is not "
                          "implemented; `doctor --env` reads Linux, Windows and macOS environments")
    scan = collect(install, rules, progress)
    findings = env_checks.all_findings(scan)
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.code, getattr(f, "package", "")))
    return EnvReport(
        python=install.executable,
        version=install.version,
        linkage=install.linkage,
        libpython=install.libpython,
        dirs=scan.dirs,
        extensions=len(scan.extensions),
        libraries=len(scan.libraries),
        seconds=time.monotonic() - start,
        findings=tuple(findings),
        scan=scan,
    )


def collect(install: PythonInstall, rules: Rules, progress: Optional[Progress] = None) -> EnvScan:
    dirs = tuple(install.extension_dirs)
    suffixes = rules.suffixes
    files = scan_files(dirs, rules.wanted)
    packages = PackageIndex(dirs, rules.stdlib_dirs)
    probe = rules.probe
    extensions: List[ExtensionClosure] = []
    libraries: List[Library] = []
    other: List[OtherAbi] = []
    unreadable: List[str] = []
    total = len(files.paths)
    for done, path in enumerate(files.paths, 1):
        if progress is not None:
            progress(done, total, os.path.basename(path))
        name = os.path.basename(path)
        tag = python_version_from_filename(name)
        if tag and tag != "abi3" and not name.endswith(suffixes):
            other.append(OtherAbi(path, packages.package_of(path), tag))
            continue
        facts = probe(path)
        if facts is None:
            unreadable.append(path)
        elif name.endswith(suffixes) or facts.python_init:
            closure = resolve.resolve_closure(facts, rules.config, probe, rules.chain, resolver=rules.resolver)
            extensions.append(ExtensionClosure(path, packages.package_of(path), closure))
        else:
            libraries.append(Library(facts, packages.package_of(path)))
    return EnvScan(install, dirs, tuple(extensions), tuple(libraries), tuple(other),
                   tuple(unreadable), files.capped, rules.host_loaded, rules.versions)


def summary_lines(report: EnvReport) -> List[str]:
    """The report as text: a header, then each finding with its package, files, why and fix."""
    lines = [
        f"python      {report.python} ({report.version}, libpython {report.linkage})",
        f"scanned     {report.extensions} extension module(s), {report.libraries} other librar"
        f"{'y' if report.libraries == 1 else 'ies'} in {len(report.dirs)} director"
        f"{'y' if len(report.dirs) == 1 else 'ies'} ({report.seconds:.1f} s)",
        "",
    ]
    for f in report.findings:
        package = getattr(f, "package", "")
        lines.append(f"{f.severity:<7}  {f.code}" + (f"  [{package}]" if package else ""))
        lines.append(f"         {f.seen}")
        for path in getattr(f, "files", ())[:env_checks.FILES_SHOWN]:
            lines.append(f"           {path}")
        hidden = len(getattr(f, "files", ())) - env_checks.FILES_SHOWN
        if hidden > 0:
            lines.append(f"           and {hidden} more")
        lines.append(f"         why: {f.why}")
        if f.fix:
            lines.append(f"         fix: {f.fix}")
        lines.append("")
    counts = [sum(1 for f in report.findings if f.severity == s) for s in SEVERITIES]
    lines.append(f"{counts[0]} error(s), {counts[1]} warning(s), {counts[2]} info")
    return lines
