"""``gilclone doctor``: what on this machine will stop clones from working, and the fix.

``diagnose`` gathers facts (read the libpython, scan the extension directories,
look at the environment and the cache directory) and hands them to small check
functions. Each check takes facts and returns findings, so it can be tested on
constructed inputs without the machine having the problem.

Checks that only make sense on one OS sit behind ``PLATFORM_CHECKS``; Windows
and macOS checks are added there.
"""

import glob
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile
from gilclone.cloner import elf_writer
from gilclone.platforms import elf as elf_reader
from gilclone.platforms.binary import ELF_MAGIC, read_binary
from gilclone.platforms.classify import python_version_from_filename
from gilclone.platforms.model import BinaryInfo, PythonInstall

from gilclone.errors import BinaryFormatError, ToolMissingError

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

# How many binaries one scan of the extension directories reads at most.
SCAN_CAP = 5000
# How many paths a finding names before it says "and N more".
LIST_MAX = 5
# The cache should hold at least this many libpython copies.
COPIES_OF_SPACE = 3
# glibc releases older than this are untested (manylinux2014's baseline).
MIN_GLIBC = (2, 17)

_LIBPYTHON_NEEDED = re.compile(r"^libpython3\.\d+[a-z]*\.so")
_SHARED_LIBRARY = re.compile(r"\.so(?:\.\d+)*$")
# libasan.so.8, libtsan.so.2, libhwasan.so, libclang_rt.asan-x86_64.so, ...
_SANITIZER = re.compile(r"^lib(?:hw)?(?:asan|tsan|msan|lsan|ubsan)[._-]|^libclang_rt\.")
_ALLOCATOR = re.compile(r"jemalloc|tcmalloc|mimalloc|snmalloc|hoard")
_CACHE_FIX = (
    "choose another directory with `gilclone prepare --dest DIR` or the GILCLONE_CACHE "
    "environment variable (check it with `gilclone doctor --cache DIR`)"
)


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


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


def _listed(items: Sequence[str], total: Optional[int] = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(items[:LIST_MAX])
    more = total - min(len(items), LIST_MAX)
    return f"{shown} and {more} more" if more > 0 else shown


# ---------------------------------------------------------------------------
# Static hosts and the libpython itself (any OS)


def static_host_findings(install: PythonInstall) -> List[Finding]:
    """A host with libpython linked into the executable needs a separate shared build."""
    if install.linkage != "static":
        return []
    short = install.short_version
    looked = ", ".join(install.libpython_searched) or "nowhere (the build names no shared library)"
    if install.libpython is None:
        return [
            Finding(
                "static-host-no-libpython",
                ERROR,
                f"{install.executable} has libpython linked in statically and no shared "
                f"libpython{short} was found; looked in: {looked}",
                "Clones are copies of the shared libpython; a static executable has none to copy.",
                _install_shared_fix(install),
            )
        ]
    if install.libpython_version != install.version:
        found = install.libpython_version or "an unknown version (no version string found in it)"
        return [
            Finding(
                "static-host-version-mismatch",
                WARNING,
                f"{install.executable} is Python {install.version} with libpython linked in; "
                f"the shared {install.libpython} is {found}",
                "Clones would run a different patch release than the host; the standard library "
                "and extension modules on disk were built for the host's.",
                "Upgrade the shared library and the interpreter together so their versions match"
                + (f" (Debian/Ubuntu: `apt-get install python{short} libpython{short}`)"
                   if install.platform == "linux" else ""),
            )
        ]
    return [
        Finding(
            "static-host-libpython",
            INFO,
            f"{install.executable} has libpython linked in; clones are made from "
            f"{install.libpython} ({install.libpython_version})",
            "A static host exports the C API from its executable; the copies bind to themselves.",
            "",
        )
    ]


def _install_shared_fix(install: PythonInstall) -> str:
    short = install.short_version
    if install.platform == "linux":
        return (
            f"Install the shared library of the same version (Debian/Ubuntu: "
            f"`apt-get install libpython{short}`), or use a Python built with --enable-shared "
            "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install ...)"
        )
    if install.platform == "macos":
        return "Use a framework or --enable-shared build (python.org installers, Homebrew)"
    return f"Use a Python {short} build that ships its shared library"


def libpython_unreadable_finding(path: str, problem: str) -> Finding:
    return Finding(
        "libpython-unreadable",
        ERROR,
        f"{path} cannot be read: {problem}",
        "Clones are copies of this file; gilclone must read it to rewrite the copies.",
        "Reinstall the Python whose library it is, or point --python at another interpreter",
    )


def interposition_findings(libpython: BinaryInfo) -> List[Finding]:
    """PLT relocations against its own exports mean a copy must be loaded with DEEPBIND."""
    count = getattr(libpython.facts, "self_plt_relocations", None)
    if count is None:
        return []
    name = os.path.basename(libpython.path)
    if count > 0:
        return [
            Finding(
                "interposition",
                INFO,
                f"{name} has {count} PLT relocations against its own exports",
                "Semantic interposition: loaded plainly, a copy's internal calls would go to the "
                "host's libpython. Copies must be loaded with RTLD_DEEPBIND (gilclone does).",
                "",
            )
        ]
    return [
        Finding(
            "no-interposition",
            INFO,
            f"{name} has no PLT relocations against its own exports",
            "It was built without semantic interposition: copies bind to themselves even "
            "without RTLD_DEEPBIND (gilclone still uses it, for the extension-module copies).",
            "",
        )
    ]


def static_tls_findings(libpython: BinaryInfo) -> List[Finding]:
    """An initial-exec TLS libpython takes a slice of glibc's small static TLS reserve per copy."""
    facts = libpython.facts
    if not getattr(facts, "static_tls", False):
        return []
    size = getattr(facts, "tls_size", 0)
    return [
        Finding(
            "static-tls",
            WARNING,
            f"{os.path.basename(libpython.path)} uses static TLS (DF_STATIC_TLS, "
            f"{size} bytes of thread-local storage)",
            "Each copy takes static TLS from glibc's reserve for dlopen'ed libraries, which fits "
            "only a few; a further copy fails with 'cannot allocate memory in static TLS block'.",
            "Start the process with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=<bytes> "
            f"(at least {size} x the number of clones), or use fewer clones",
        )
    ]


# ---------------------------------------------------------------------------
# Extension modules and shared libraries in the extension directories (ELF)


@dataclass(frozen=True)
class PythonApiLibrary:
    """A shared library, not an extension module, with undefined ``Py*`` symbols."""

    path: str
    package: str  # top directory below the scanned directory, e.g. "torch"
    symbols: int  # how many undefined Py* symbols


@dataclass(frozen=True)
class ExtensionScan:
    """What a scan of the extension directories read."""

    extensions: Tuple[BinaryInfo, ...]
    python_api_libraries: Tuple[PythonApiLibrary, ...]
    unreadable: int
    capped: bool


def ext_links_libpython_findings(extensions: Sequence[BinaryInfo]) -> List[Finding]:
    linked = []
    for ext in extensions:
        names = [n for n in ext.needed if _LIBPYTHON_NEEDED.match(n)]
        if names:
            linked.append(f"{ext.path} ({', '.join(names)})")
    if not linked:
        return []
    return [
        Finding(
            "ext-links-libpython",
            WARNING,
            f"{len(linked)} extension module(s) have a DT_NEEDED on libpython: {_listed(linked)}",
            "Unlike CPython's own, these load libpython by name. In each clone's copy that "
            "DT_NEEDED is replaced by the clone's libpython, so the copy binds to the clone; "
            "the original, imported by the host, still loads the shared libpython named.",
            "Nothing to do if they import in clones; if one fails, check it with "
            "`gilclone inspect PATH`",
        )
    ]


def python_api_library_findings(
    libraries: Sequence[PythonApiLibrary], global_scope: Sequence[str] = ()
) -> List[Finding]:
    """Helper libraries that call the C API: handled (each clone copies them, see
    cloner/closure.py), except those in every process's global scope (``global_scope``:
    LD_PRELOAD and /etc/ld.so.preload entries), which a clone refuses to import."""
    if not libraries:
        return []
    names = {os.path.basename(g) for g in global_scope} | {os.path.realpath(g) for g in global_scope}
    refused = [lib for lib in libraries if os.path.basename(lib.path) in names or os.path.realpath(lib.path) in names]
    handled = [lib for lib in libraries if lib not in refused]
    findings = []
    if handled:
        counts: Dict[str, int] = {}
        for lib in handled:
            counts[lib.package] = counts.get(lib.package, 0) + 1
        per_package = ", ".join(f"{p}: {n}" for p, n in sorted(counts.items()))
        listed = [f"{lib.path} ({lib.symbols} Py* symbols)" for lib in handled]
        findings.append(Finding(
            "lib-uses-python-api",
            INFO,
            f"{len(handled)} shared librar{'y' if len(handled) == 1 else 'ies'} that are not "
            f"extension modules use the Python C API ({per_package}): {_listed(listed)}",
            "Handled: when a clone imports an extension module that loads one of them, the "
            "clone gets its own copy of it (and of the libraries it loads from its own "
            "directory, whose registries Python code fills), bound to the clone's libpython.",
            "",
        ))
    if refused:
        findings.append(Finding(
            "lib-python-api-global",
            ERROR,
            f"{len(refused)} C-API librar{'y is' if len(refused) == 1 else 'ies are'} preloaded into "
            f"every process's global scope: {_listed([lib.path for lib in refused])}",
            "A library in the global scope cannot get a per-clone copy safely: lookups there "
            "reach the host's. Importing a module that loads it in a clone raises ImportError.",
            "Remove it from LD_PRELOAD and /etc/ld.so.preload, or import its package in the host only",
        ))
    return findings


def origin_rpath_findings(extensions: Sequence[BinaryInfo]) -> List[Finding]:
    users = [
        os.path.basename(e.path)
        for e in extensions
        if any("$ORIGIN" in p or "${ORIGIN}" in p for p in e.rpaths)
    ]
    if not users:
        return []
    return [
        Finding(
            "origin-rpath",
            INFO,
            f"{len(users)} extension module(s) use $ORIGIN run paths: {_listed(users)}",
            "Copies live in another directory; their $ORIGIN run paths are rewritten to "
            "absolute paths in the copies, so bundled libraries are still found.",
            "",
        )
    ]


def scan_capped_findings(scan: ExtensionScan) -> List[Finding]:
    if not scan.capped:
        return []
    return [
        Finding(
            "ext-scan-capped",
            INFO,
            f"stopped after reading {SCAN_CAP} binaries in the extension directories",
            "The findings about extension modules and libraries cover only the part read.",
            "",
        )
    ]


def scan_extension_dirs(
    dirs: Sequence[str], extension_suffix: str, cap: int = SCAN_CAP
) -> ExtensionScan:
    """Read the extension modules and Python-API libraries below ``dirs`` (at most ``cap``)."""
    suffixes = tuple(s for s in (extension_suffix, ".abi3.so") if s)
    extensions: List[BinaryInfo] = []
    libraries: List[PythonApiLibrary] = []
    seen = set()
    unreadable = 0
    read = 0
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                is_extension = name.endswith(suffixes)
                if not is_extension and not _SHARED_LIBRARY.search(name):
                    continue
                if not is_extension and python_version_from_filename(name):
                    continue  # an extension module of another Python version
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in seen or not os.path.isfile(real):
                    continue
                seen.add(real)
                if read >= cap:
                    return ExtensionScan(tuple(extensions), tuple(libraries), unreadable, True)
                read += 1
                if is_extension:
                    try:
                        extensions.append(elf_reader.read(path))
                    except (BinaryFormatError, OSError):
                        unreadable += 1
                    continue
                api = python_api_imports(path)
                if api is None:
                    unreadable += 1
                elif api[0] and not api[1]:
                    package = os.path.relpath(path, top).split(os.sep)[0]
                    libraries.append(PythonApiLibrary(path, package, api[0]))
    return ExtensionScan(tuple(extensions), tuple(libraries), unreadable, False)


def python_api_imports(path: str) -> Optional[Tuple[int, bool]]:
    """(undefined Py* symbols, defines a PyInit_*) of an ELF shared library; None if unreadable.

    A plain ``foo.so`` may be an extension module; its PyInit_ export tells.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
            f.seek(0)
            dynsym = ELFFile(f).get_section_by_name(".dynsym")
            if dynsym is None:
                return (0, False)
            undefined = 0
            init = False
            for sym in dynsym.iter_symbols():
                name = sym.name
                if not name.startswith(("Py", "_Py")):
                    continue
                if sym["st_shndx"] == "SHN_UNDEF":
                    undefined += 1
                elif name.startswith("PyInit_"):
                    init = True
            return (undefined, init)
    except Exception:  # pyelftools raises many types on damaged files; unreadable is enough
        return None


# ---------------------------------------------------------------------------
# The process environment (ELF / glibc)


def preloaded_objects(environ: Mapping[str, str], etc_preload: str = "") -> List[Tuple[str, str]]:
    """(object, where it was named) for LD_PRELOAD and /etc/ld.so.preload entries."""
    out = [(p, "LD_PRELOAD") for p in re.split(r"[\s:]+", environ.get("LD_PRELOAD", "")) if p]
    lines = [line.split("#", 1)[0] for line in etc_preload.splitlines()]
    out += [(p, "/etc/ld.so.preload") for line in lines for p in line.split() if p]
    return out


def preload_findings(
    objects: Sequence[Tuple[str, str]], exists: Callable[[str], bool] = os.path.exists
) -> List[Finding]:
    findings = []
    for obj, source in objects:
        base = os.path.basename(obj).lower()
        missing = " (no such file: ld.so ignores it)" if "/" in obj and not exists(obj) else ""
        seen = f"{source} names {obj}{missing}"
        if _SANITIZER.search(base):
            findings.append(
                Finding(
                    "ld-preload-sanitizer",
                    ERROR,
                    seen,
                    "Sanitizer runtimes do not support RTLD_DEEPBIND (AddressSanitizer aborts the "
                    "dlopen of a copy); clones cannot be loaded under them.",
                    f"Run without it (unset LD_PRELOAD{' and edit /etc/ld.so.preload' if source != 'LD_PRELOAD' else ''})",
                )
            )
        elif _ALLOCATOR.search(base):
            findings.append(
                Finding(
                    "ld-preload-allocator",
                    WARNING,
                    seen,
                    "Copies loaded with RTLD_DEEPBIND call libc's malloc directly while the host "
                    "uses the preloaded allocator; memory allocated on one side and freed on the "
                    "other mixes allocators and crashes ('free(): invalid pointer').",
                    "Run without it (unset LD_PRELOAD), or never pass raw allocations between "
                    "host and clones",
                )
            )
        else:
            findings.append(
                Finding(
                    "ld-preload",
                    WARNING,
                    seen,
                    "Preloaded objects interpose symbols for the host only: copies loaded with "
                    "RTLD_DEEPBIND look in their own dependencies first and bypass it.",
                    "Run without it if clones must see what it replaces",
                )
            )
    return findings


def libc_findings(libc: Optional[str]) -> List[Finding]:
    """``libc`` as os.confstr('CS_GNU_LIBC_VERSION') says ("glibc 2.36"), "musl", or None."""
    if libc == "musl":
        return [
            Finding(
                "libc-musl",
                ERROR,
                "the C library is musl",
                "musl's dlopen has no RTLD_DEEPBIND, so copies would bind to the host's libpython.",
                "Use a glibc-based system or container (Debian, Ubuntu, Fedora, manylinux)",
            )
        ]
    m = re.match(r"glibc (\d+)\.(\d+)", libc or "")
    if not m:
        return [
            Finding(
                "libc-unknown",
                WARNING,
                f"the C library is {libc or 'not glibc (os.confstr has no CS_GNU_LIBC_VERSION)'}",
                "gilclone relies on glibc's RTLD_DEEPBIND; other C libraries are untested.",
                "Use a glibc-based system if clones fail to load",
            )
        ]
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_GLIBC:
        return [
            Finding(
                "glibc-old",
                WARNING,
                f"the C library is {libc}",
                f"glibc older than {MIN_GLIBC[0]}.{MIN_GLIBC[1]} is untested with RTLD_DEEPBIND "
                "copies and patchelf-rewritten modules.",
                "Use a newer system (glibc 2.17 or later) if clones fail to load",
            )
        ]
    return [Finding("glibc", INFO, f"the C library is {libc}", "RTLD_DEEPBIND is available.", "")]


def current_libc() -> Optional[str]:
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        value = None
    if value:
        return value
    if glob.glob("/lib/ld-musl-*.so.1"):
        return "musl"
    return None


def patchelf_findings(find: Callable[[], str] = elf_writer.patchelf_path) -> List[Finding]:
    try:
        path = find()
    except ToolMissingError as exc:
        return [
            Finding(
                "patchelf-missing",
                ERROR,
                "patchelf not found (on PATH or next to this Python)",
                "Copies of extension modules need a DT_NEEDED on their clone, which patchelf adds.",
                str(exc).split("; ", 1)[-1],
            )
        ]
    return [Finding("patchelf", INFO, f"patchelf is {path}", "It rewrites the extension-module copies.", "")]


# ---------------------------------------------------------------------------
# The cache directory (any OS; noexec where statvfs tells)


@dataclass(frozen=True)
class CacheFacts:
    """The cache directory as found, without creating it."""

    root: str
    existing: Optional[str]  # root itself, or the nearest ancestor that exists
    problem: Optional[str]  # why root can never be a directory here, if so
    writable: bool  # a directory can be created / written there
    noexec: bool
    read_only: bool
    free_bytes: Optional[int]


def cache_facts(root: str) -> CacheFacts:
    """Look at ``root`` the way store.check_writable_location does, but create nothing."""
    root = os.path.abspath(root)
    existing = root
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a directory"
    writable = problem is None and os.access(existing, os.W_OK | os.X_OK)
    noexec = read_only = False
    free = None
    if problem is None and hasattr(os, "statvfs"):
        try:
            st = os.statvfs(existing)
        except OSError as exc:
            problem = f"{existing}: {exc.strerror}"
        else:
            noexec = bool(st.f_flag & getattr(os, "ST_NOEXEC", 8))
            read_only = bool(st.f_flag & getattr(os, "ST_RDONLY", 1))
            free = st.f_bavail * st.f_frsize
    return CacheFacts(root, existing, problem, writable and not read_only, noexec, read_only, free)


def cache_findings(facts: CacheFacts, libpython_size: Optional[int]) -> List[Finding]:
    root = facts.root
    if facts.problem is not None:
        return [
            Finding(
                "cache-unusable",
                ERROR,
                f"cache directory {root} cannot be created: {facts.problem}",
                "Clones are written there before they are loaded.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    where = root if facts.existing == root else f"{root} (would be created in {facts.existing})"
    if not facts.writable:
        why = "read-only file system" if facts.read_only else "no write permission"
        return [
            Finding(
                "cache-not-writable",
                ERROR,
                f"cache directory {where} is not writable ({why})",
                "Clones are written there before they are loaded.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    if facts.noexec:
        return [
            Finding(
                "cache-noexec",
                ERROR,
                f"cache directory {where} is on a noexec mount",
                "Shared libraries on a noexec mount cannot be mapped executable, so dlopen of "
                "the copies fails.",
                _CACHE_FIX[0].upper() + _CACHE_FIX[1:],
            )
        ]
    if facts.free_bytes is not None and libpython_size:
        needed = COPIES_OF_SPACE * libpython_size
        if facts.free_bytes < needed:
            return [
                Finding(
                    "cache-low-space",
                    WARNING,
                    f"cache directory {where} has {_mib(facts.free_bytes)} free, less than "
                    f"{COPIES_OF_SPACE} copies of libpython ({_mib(needed)})",
                    "Each clone is a full copy of libpython plus copies of its extension modules.",
                    "Free some space, or " + _CACHE_FIX,
                )
            ]
    free = f", {_mib(facts.free_bytes)} free" if facts.free_bytes is not None else ""
    return [Finding("cache", INFO, f"cache directory {where}{free}", "Clones are written there.", "")]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


# ---------------------------------------------------------------------------
# Putting it together


@dataclass(frozen=True)
class _Context:
    install: PythonInstall
    libpython: Optional[BinaryInfo]
    environ: Mapping[str, str]


def _linux_checks(ctx: _Context) -> List[Finding]:
    findings: List[Finding] = []
    if ctx.libpython is not None:
        findings += interposition_findings(ctx.libpython)
        findings += static_tls_findings(ctx.libpython)
    scan = scan_extension_dirs(ctx.install.extension_dirs, ctx.install.extension_suffix)
    findings += ext_links_libpython_findings(scan.extensions)
    preloaded = [obj for obj, _ in preloaded_objects(ctx.environ, _read_text("/etc/ld.so.preload"))]
    findings += python_api_library_findings(scan.python_api_libraries, preloaded)
    findings += origin_rpath_findings(scan.extensions)
    findings += scan_capped_findings(scan)
    findings += preload_findings(preloaded_objects(ctx.environ, _read_text("/etc/ld.so.preload")))
    findings += libc_findings(current_libc())
    findings += patchelf_findings()
    return findings


# OS-specific checks, by PythonInstall.platform. Windows and macOS add theirs here.
PLATFORM_CHECKS: Dict[str, Callable[[_Context], List[Finding]]] = {"linux": _linux_checks}

def _builder_checks(binary_format: str) -> Callable[[_Context], List[Finding]]:
    """Checks for an OS whose clones another format's builder makes (Windows: PE,
    macOS: Mach-O); they live beside that builder (docs/windows.md, docs/macos.md)."""

    def checks(ctx: _Context) -> List[Finding]:
        from gilclone.cloner.builders import builder_for

        return builder_for(binary_format).doctor_findings(ctx.install, ctx.libpython, ctx.environ)

    return checks


PLATFORM_CHECKS["macos"] = _builder_checks("Mach-O")  # static only: not yet run on a Mac
PLATFORM_CHECKS["windows"] = _builder_checks("PE")


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
        findings += check(_Context(install, libpython, environ))
    size = None
    if install.libpython:
        try:
            size = os.path.getsize(install.libpython)
        except OSError:
            pass
    findings += cache_findings(cache_facts(cache_root), size)
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""
