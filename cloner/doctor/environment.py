"""``gilclone doctor --env``: loader conflicts among the extension modules of an environment.

Every extension module below the interpreter's extension directories (lib-dynload
and each site-packages) gets its DT_NEEDED closure resolved with ld.so's rules
(``platforms.resolve``), as Python's dlopen would load it into this interpreter:
what the interpreter itself loaded (its executable's closure) is matched by name
first, and the run paths of libpython and the executable are inherited as ld.so
does for a dlopen from libpython. The checks (``env_checks``) then read those
closures: foreign libpython, wrong ABI tags, unresolved names, symbol versions,
libraries bundled twice, C-API helper libraries.

Each ELF file is parsed once: one ``ScanProbe`` for the whole scan reads its
dynamic facts and symbol versions together and remembers them by path.
"""

import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from gilclone.cloner.doctor import env_checks
from gilclone.cloner.doctor.env_packages import PackageIndex
from gilclone.cloner.doctor.findings import ERROR, SEVERITIES, Finding
from gilclone.cloner.doctor.scan import scan_files
from gilclone.platforms import resolve
from gilclone.platforms.classify import python_version_from_filename
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.elf_scan import ScanProbe
from gilclone.platforms.elf_versions import VersionFacts
from gilclone.platforms.model import PythonInstall

from gilclone.errors import LocateError

Progress = Callable[[int, int, str], None]
_SHARED_LIBRARY = re.compile(r"\.so(?:\.\d+)*$")


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
    """Scan ``install``'s extension directories (Linux/ELF) and say what will conflict."""
    if install.platform != "linux":
        raise LocateError(f"{install.executable}: scanning a {install.platform} environment is not "
                          "implemented yet; `doctor --env` reads Linux (ELF) environments")
    start = time.monotonic()
    config = config or resolve.system_config()
    scan = collect(install, config, ScanProbe(), progress)
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


def collect(
    install: PythonInstall,
    config: resolve.LoaderConfig,
    probe: ScanProbe,
    progress: Optional[Progress] = None,
) -> EnvScan:
    dirs = tuple(install.extension_dirs)
    suffixes = tuple(s for s in (install.extension_suffix, ".abi3.so") if s)
    files = scan_files(dirs, lambda name: bool(_SHARED_LIBRARY.search(name)))
    packages = PackageIndex(dirs, [d for d in dirs if d.rstrip("/").endswith("lib-dynload")])
    chain = _dlopen_chain(install, probe)
    loaded = _host_loaded(chain, config, probe)
    resolver = _loaded_first(loaded)
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
            closure = resolve.resolve_closure(facts, config, probe, chain, resolver=resolver)
            extensions.append(ExtensionClosure(path, packages.package_of(path), closure))
        else:
            libraries.append(Library(facts, packages.package_of(path)))
    return EnvScan(install, dirs, tuple(extensions), tuple(libraries), tuple(other),
                   tuple(unreadable), files.capped, loaded, probe.versions)


def _dlopen_chain(install: PythonInstall, probe: resolve.Probe) -> Tuple[DynamicFacts, ...]:
    """Who dlopens an extension module, nearest first: libpython then the executable
    (a static host: the executable alone). Their DT_RPATH is inherited."""
    chain = []
    if install.linkage == "shared" and install.libpython:
        chain.append(probe(install.libpython))
    chain.append(probe(os.path.realpath(install.executable)))
    return tuple(c for c in chain if c is not None)


def _host_loaded(
    chain: Tuple[DynamicFacts, ...], config: resolve.LoaderConfig, probe: resolve.Probe
) -> Dict[str, DynamicFacts]:
    """What is in the process before any import: the executable's closure, by every name
    ld.so would match (sonames, DT_NEEDED names, paths)."""
    if not chain:
        return {}
    closure = resolve.resolve_closure(chain[-1], config, probe)
    loaded: Dict[str, DynamicFacts] = {}
    by_path = closure.by_path()
    for edge in closure.edges:
        if edge.path:
            loaded[edge.name] = by_path[edge.path]
    for obj in closure.objects[1:]:
        if obj.soname:
            loaded[obj.soname] = obj
    return loaded


def _loaded_first(loaded: Mapping[str, DynamicFacts]):
    """ld.so's resolution, but a name already loaded in the process is that object."""

    def resolver(name, loader, chain, config, probe):
        obj = loaded.get(name)
        if obj is not None:
            return obj, "loaded"
        return resolve.resolve_needed(name, loader, chain, config, probe)

    return resolver


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
