"""gilclone doctor's Linux checks: the ELF libpython, the extension modules, glibc and ld.so.

Each check takes facts and returns findings, so it can be tested on constructed
inputs without the machine having the problem; ``checks`` gathers the facts.
"""

import glob
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from gilclone.cloner import elf_writer
from gilclone.cloner.doctor.findings import (
    ERROR,
    INFO,
    WARNING,
    Context,
    Finding,
    listed,
)
from gilclone.cloner.doctor.scan import FileScan, scan_capped_findings, scan_files
from gilclone.platforms import elf as elf_reader
from gilclone.platforms.classify import python_version_from_filename
from gilclone.platforms.model import BinaryInfo

from gilclone.errors import BinaryFormatError, ToolMissingError

# glibc releases older than this are untested (manylinux2014's baseline).
MIN_GLIBC = (2, 17)

_LIBPYTHON_NEEDED = re.compile(r"^libpython3\.\d+[a-z]*\.so")
_SHARED_LIBRARY = re.compile(r"\.so(?:\.\d+)*$")
# libasan.so.8, libtsan.so.2, libhwasan.so, libclang_rt.asan-x86_64.so, ...
_SANITIZER = re.compile(r"^lib(?:hw)?(?:asan|tsan|msan|lsan|ubsan)[._-]|^libclang_rt\.")
_ALLOCATOR = re.compile(r"jemalloc|tcmalloc|mimalloc|snmalloc|hoard")


def checks(ctx: Context) -> List[Finding]:
    findings: List[Finding] = []
    if ctx.libpython is not None:
        findings += interposition_findings(ctx.libpython)
        findings += static_tls_findings(ctx.libpython)
    scan = scan_extension_dirs(ctx.install.extension_dirs, ctx.install.extension_suffix)
    findings += ext_links_libpython_findings(scan.extensions)
    preloaded = preloaded_objects(ctx.environ, _read_text("/etc/ld.so.preload"))
    findings += python_api_library_findings(scan.python_api_libraries, [obj for obj, _ in preloaded])
    findings += origin_rpath_findings(scan.extensions)
    findings += scan_capped_findings(scan.files, "binaries")
    findings += preload_findings(preloaded)
    findings += libc_findings(current_libc())
    findings += patchelf_findings()
    return findings


# ---------------------------------------------------------------------------
# The libpython


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
    files: FileScan  # the files read, and whether the scan stopped at its cap


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
            f"{len(linked)} extension module(s) have a DT_NEEDED on libpython: {listed(linked)}",
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
    refused = [lib for lib in libraries
               if os.path.basename(lib.path) in names or os.path.realpath(lib.path) in names]
    handled = [lib for lib in libraries if lib not in refused]
    findings = []
    if handled:
        counts: Dict[str, int] = {}
        for lib in handled:
            counts[lib.package] = counts.get(lib.package, 0) + 1
        per_package = ", ".join(f"{p}: {n}" for p, n in sorted(counts.items()))
        shown = [f"{lib.path} ({lib.symbols} Py* symbols)" for lib in handled]
        findings.append(Finding(
            "lib-uses-python-api",
            INFO,
            f"{len(handled)} shared librar{'y' if len(handled) == 1 else 'ies'} that are not "
            f"extension modules use the Python C API ({per_package}): {listed(shown)}",
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
            f"every process's global scope: {listed([lib.path for lib in refused])}",
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
            f"{len(users)} extension module(s) use $ORIGIN run paths: {listed(users)}",
            "Copies live in another directory; their $ORIGIN run paths are rewritten to "
            "absolute paths in the copies, so bundled libraries are still found.",
            "",
        )
    ]


def scan_extension_dirs(
    dirs: Sequence[str], extension_suffix: str, cap: Optional[int] = None
) -> ExtensionScan:
    """Read the extension modules and Python-API libraries below ``dirs``."""
    suffixes = tuple(s for s in (extension_suffix, ".abi3.so") if s)

    def wanted(name: str) -> bool:
        if name.endswith(suffixes):
            return True
        # A shared library, but not an extension module of another Python version.
        return bool(_SHARED_LIBRARY.search(name)) and not python_version_from_filename(name)

    files = scan_files(dirs, wanted, cap)
    extensions: List[BinaryInfo] = []
    libraries: List[PythonApiLibrary] = []
    unreadable = 0
    for path in files.paths:
        if path.endswith(suffixes):
            try:
                extensions.append(elf_reader.read(path))
            except (BinaryFormatError, OSError):
                unreadable += 1
            continue
        api = python_api_imports(path)
        if api is None:
            unreadable += 1
        elif api[0] and not api[1]:
            libraries.append(PythonApiLibrary(path, _package_of(path, dirs), api[0]))
    return ExtensionScan(tuple(extensions), tuple(libraries), unreadable, files)


def _package_of(path: str, dirs: Sequence[str]) -> str:
    """The top directory of ``path`` below the scanned directory it was found in."""
    top = next((d for d in dirs if path.startswith(os.path.join(d, ""))), os.path.dirname(path))
    return os.path.relpath(path, top).split(os.sep)[0]


def python_api_imports(path: str) -> Optional[Tuple[int, bool]]:
    """(undefined Py* symbols, defines a PyInit_*) of an ELF shared library; None if unreadable.

    A plain ``foo.so`` may be an extension module; its PyInit_ export tells.
    """
    try:
        symbols = elf_reader.dynamic_symbols(path)
    except BinaryFormatError:
        return None
    undefined = sum(1 for n in symbols.undefined if n.startswith(("Py", "_Py")))
    return undefined, any(n.startswith("PyInit_") for n in symbols.defined)


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


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""
