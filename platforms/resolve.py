"""Resolve an ELF object's DT_NEEDED closure the way glibc's ld.so does.

Pure given its inputs: the facts of each object (``probe``: path -> DynamicFacts
or None when no loadable file is there) and a ``LoaderConfig`` (LD_LIBRARY_PATH,
the ld.so cache, the default directories, $LIB and $PLATFORM). ``system_config``
gathers the config of this machine (``ldconfig -p``, ``ld.so --help``,
``ld.so --list-diagnostics``); parsing their output is pure too.

The search order for a name without a slash, needed by object L (glibc 2.36,
elf/dl-load.c ``_dl_map_object``):

1. DT_RPATH of L, then of the object that loaded L, and on up the chain, then
   of the executable, but only when L has no DT_RUNPATH;
2. LD_LIBRARY_PATH;
3. DT_RUNPATH of L (never inherited);
4. the ld.so cache, unless L has DF_1_NODEFLIB;
5. the default directories, unless L has DF_1_NODEFLIB.

Each directory is tried with its glibc-hwcaps subdirectories first. A name that
matches an object already loaded (its soname, or a name it was loaded by) is not
searched for; dependencies are loaded breadth first, which decides who loads whom.
The legacy hwcaps subdirectories (``tls/``, ``x86_64/``; gone in glibc 2.37)
are not searched.
"""

import functools
import os
import re
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from gilclone.platforms.elf_deps import DynamicFacts, origin_of, read_dynamic_facts

from gilclone.errors import BinaryFormatError

Probe = Callable[[str], Optional[DynamicFacts]]
TOOL_TIMEOUT_S = 30


@dataclass(frozen=True)
class CacheEntry:
    """One line of ``ldconfig -p``: a name, its flags (``libc6,x86-64``) and the file."""

    name: str
    flags: str
    path: str


@dataclass(frozen=True)
class LoaderConfig:
    ld_library_path: Tuple[str, ...] = ()
    cache: Tuple[CacheEntry, ...] = ()
    default_dirs: Tuple[str, ...] = ("/lib", "/usr/lib")
    hwcaps_subdirs: Tuple[str, ...] = ()  # "x86-64-v3", ... best first
    lib: str = "lib"  # what $LIB expands to
    platform: str = ""  # what $PLATFORM expands to


@dataclass(frozen=True)
class Edge:
    """``loader`` needs ``name``; ``path`` is the object it resolved to (None: not found)."""

    loader: str
    name: str
    path: Optional[str]
    via: str  # "RPATH of X", "LD_LIBRARY_PATH", "RUNPATH", "cache", "default", "loaded", "path"


@dataclass(frozen=True)
class Closure:
    """Every object ``root`` brings in, in ld.so's (breadth-first) load order, root first."""

    objects: Tuple[DynamicFacts, ...]
    edges: Tuple[Edge, ...]

    @property
    def missing(self) -> Tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.path is None and e.via != "system")

    def by_path(self) -> Dict[str, DynamicFacts]:
        return {o.path: o for o in self.objects}

    def needs(self, path: str) -> Tuple[str, ...]:
        """Paths of the objects ``path`` names in its DT_NEEDED (resolved ones)."""
        return tuple(e.path for e in self.edges if e.loader == path and e.path)


# ---------------------------------------------------------------------------
# Dynamic string tokens and search directories

_TOKEN = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


def expand_tokens(text: str, origin: str, config: LoaderConfig) -> str:
    """$ORIGIN, $LIB and $PLATFORM (also in ``${...}`` form) replaced as ld.so does."""
    values = {"ORIGIN": origin, "LIB": config.lib, "PLATFORM": config.platform}
    return _TOKEN.sub(lambda m: values[m.group(1) or m.group(2)], text)


def _dirs(entries: Sequence[str], origin: str, config: LoaderConfig) -> List[str]:
    # An empty entry means the current directory, as in LD_LIBRARY_PATH.
    return [expand_tokens(e, origin, config) or "." for e in entries]


def search_order(
    loader: DynamicFacts, chain: Sequence[DynamicFacts], config: LoaderConfig
) -> List[Tuple[str, str]]:
    """(directory, why) in the order ld.so tries them for a name ``loader`` needs.

    ``chain`` is the objects above ``loader`` (whoever loaded it, and so on up),
    nearest first, the executable last.
    """
    order: List[Tuple[str, str]] = []
    if loader.runpath is None:
        for obj in (loader, *chain):
            order += [(d, f"RPATH of {obj.path}") for d in _dirs(obj.rpath, origin_of(obj.path), config)]
    order += [(d, "LD_LIBRARY_PATH") for d in config.ld_library_path]
    if loader.runpath:
        order += [(d, "RUNPATH") for d in _dirs(loader.runpath, origin_of(loader.path), config)]
    return order


def _with_hwcaps(directory: str, config: LoaderConfig) -> List[str]:
    return [os.path.join(directory, "glibc-hwcaps", s) for s in config.hwcaps_subdirs] + [directory]


def resolve_needed(
    name: str,
    loader: DynamicFacts,
    chain: Sequence[DynamicFacts],
    config: LoaderConfig,
    probe: Probe,
) -> Tuple[Optional[DynamicFacts], str]:
    """The object ``name`` (a DT_NEEDED of ``loader``) resolves to, and how; (None, "") if none."""
    if "/" in name:
        path = expand_tokens(name, origin_of(loader.path), config)
        found = probe(path)
        return (found, "path") if found is not None and found.compatible_with(loader) else (None, "")
    for path, why in _candidates(name, loader, chain, config):
        found = probe(path)
        if found is not None and found.compatible_with(loader):
            return found, why
    return None, ""


def _candidates(name: str, loader: DynamicFacts, chain: Sequence[DynamicFacts], config: LoaderConfig):
    """(path, how) for a bare ``name``, in ld.so's order; lazily, as the first fit ends it."""
    for directory, why in search_order(loader, chain, config):
        for d in _with_hwcaps(directory, config):
            yield os.path.join(d, name), why
    if loader.nodeflib:
        return
    for entry in config.cache:
        if entry.name == name:
            yield entry.path, "cache"
    for directory in config.default_dirs:
        for d in _with_hwcaps(directory, config):
            yield os.path.join(d, name), "default"


# dyld (macOS): names in load commands, checked statically. An image's LC_RPATH entries
# serve @rpath names of the image and of everything it loads, nearest image first.
DYLD_SYSTEM_PREFIXES = ("/usr/lib/", "/System/")


def resolve_dyld_needed(
    name: str,
    loader: DynamicFacts,
    chain: Sequence[DynamicFacts],
    config: LoaderConfig,
    probe: Probe,
) -> Tuple[Optional[DynamicFacts], str]:
    """The image a Mach-O load command ``name`` of ``loader`` finds, and how.

    System libraries (``/usr/lib``, ``/System``; in the shared cache on macOS 11+)
    give ``(None, "system")``; ``@executable_path`` cannot be known statically.
    DYLD_* environment variables are not modelled.
    """
    if name.startswith(DYLD_SYSTEM_PREFIXES):
        return None, "system"
    if name.startswith("@loader_path/"):
        return _dyld_probe(os.path.join(origin_of(loader.path), name[len("@loader_path/"):]), probe, "loader_path")
    if name.startswith("@rpath/"):
        rest = name[len("@rpath/"):]
        for image in (loader, *chain):
            for entry in image.rpath:
                base = entry.replace("@loader_path", origin_of(image.path), 1)
                if base.startswith("@"):
                    continue
                found, via = _dyld_probe(os.path.join(base, rest), probe, f"LC_RPATH of {image.path}")
                if found is not None:
                    return found, via
        return None, ""
    if name.startswith("/"):
        return _dyld_probe(name, probe, "path")
    return None, ""


def _dyld_probe(path: str, probe: Probe, via: str) -> Tuple[Optional[DynamicFacts], str]:
    found = probe(os.path.normpath(path))
    return (found, via) if found is not None else (None, "")


def resolve_closure(
    root: DynamicFacts,
    config: LoaderConfig,
    probe: Probe,
    chain: Sequence[DynamicFacts] = (),
    skip: Callable[[str], bool] = lambda name: False,
    resolver=resolve_needed,
) -> Closure:
    """The closure of ``root`` loaded by ``chain`` (nearest first; () when it is the program).

    Names for which ``skip(name)`` is true are left out, with their dependencies
    (the cloner skips libpython, which a clone replaces by its own copy).
    ``resolver`` is ``resolve_needed`` (ld.so) or ``resolve_dyld_needed`` (dyld).
    """
    objects: List[DynamicFacts] = [root]
    loaders: Dict[str, Tuple[DynamicFacts, ...]] = {root.path: tuple(chain)}
    known: Dict[str, DynamicFacts] = {}  # names and real paths of what is loaded
    _remember(known, root, root.path)
    edges: List[Edge] = []
    queue = deque([root])
    while queue:
        obj = queue.popleft()
        above = (obj, *loaders[obj.path])
        for name in obj.needed:
            if skip(name):
                continue
            found, via = (known[name], "loaded") if name in known else (None, "")
            if found is None:
                found, via = resolver(name, obj, above[1:], config, probe)
                if found is not None and os.path.realpath(found.path) in known:
                    found, via = known[os.path.realpath(found.path)], "loaded"
            edges.append(Edge(obj.path, name, found.path if found else None, via))
            if found is None or found.path in loaders:
                if found is not None:
                    _remember(known, found, name)
                continue
            loaders[found.path] = above
            objects.append(found)
            _remember(known, found, name)
            queue.append(found)
    return Closure(tuple(objects), tuple(edges))


def _remember(known: Dict[str, DynamicFacts], obj: DynamicFacts, name: str) -> None:
    known[name] = obj
    known[os.path.realpath(obj.path)] = obj
    if obj.soname:
        known[obj.soname] = obj


# ---------------------------------------------------------------------------
# This machine's loader configuration

_CACHE_LINE = re.compile(r"^\s+(\S+)\s+\(([^)]*)\)\s+=>\s+(\S.*?)\s*$")


def parse_ldconfig(text: str) -> Tuple[CacheEntry, ...]:
    """The entries of ``ldconfig -p`` output, in its (priority) order."""
    out = []
    for line in text.splitlines():
        m = _CACHE_LINE.match(line)
        if m:
            out.append(CacheEntry(m.group(1), m.group(2), m.group(3)))
    return tuple(out)


def parse_ld_so_help(text: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(default directories, glibc-hwcaps subdirectories searched) from ``ld.so --help``."""
    dirs, subdirs = [], []
    section = None
    for line in text.splitlines():
        if line.startswith("Shared library search path"):
            section = dirs
        elif line.startswith("Subdirectories of glibc-hwcaps"):
            section = subdirs
        elif not line.startswith("  "):
            section = None
        elif section is dirs and "(system search path)" in line:
            dirs.append(line.split()[0])
        elif section is subdirs and "searched" in line:
            subdirs.append(line.split()[0])
    return tuple(dirs), tuple(subdirs)


def parse_ld_so_diagnostics(text: str) -> Dict[str, str]:
    """``key="value"`` lines of ``ld.so --list-diagnostics`` (dl_dst_lib, dl_platform, ...)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and value.startswith('"') and value.endswith('"'):
            out[key] = value[1:-1]
    return out


def config_from_outputs(ldconfig: str, help_text: str, diagnostics: str, ld_library_path: str) -> LoaderConfig:
    dirs, subdirs = parse_ld_so_help(help_text)
    diag = parse_ld_so_diagnostics(diagnostics)
    return LoaderConfig(
        ld_library_path=tuple(p or "." for p in ld_library_path.split(":")) if ld_library_path else (),
        cache=parse_ldconfig(ldconfig),
        default_dirs=dirs or LoaderConfig.default_dirs,
        hwcaps_subdirs=subdirs,
        lib=diag.get("dl_dst_lib", "lib"),
        platform=diag.get("dl_platform", ""),
    )


def system_config(environ: Mapping[str, str] = os.environ) -> LoaderConfig:
    """The loader configuration a process started with ``environ`` gets on this machine."""
    return _system_config(environ.get("LD_LIBRARY_PATH", ""))


@functools.lru_cache(maxsize=4)
def _system_config(ld_library_path: str) -> LoaderConfig:
    ld_so = _program_interpreter()
    return config_from_outputs(
        _run(["ldconfig", "-p"]) or _run(["/sbin/ldconfig", "-p"]),
        _run([ld_so, "--help"]) if ld_so else "",
        _run([ld_so, "--list-diagnostics"]) if ld_so else "",
        ld_library_path,
    )


def _program_interpreter() -> Optional[str]:
    for candidate in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("ld.so")


def _run(cmd: List[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def file_probe(read_facts: Callable[[str], DynamicFacts] = read_dynamic_facts,
               unreadable: Tuple[type, ...] = (BinaryFormatError, OSError)) -> Probe:
    """A probe that reads files with ``read_facts``, remembering each by path and
    modification stamp; a file that raises one of ``unreadable`` is no object (None)."""

    @functools.lru_cache(maxsize=4096)
    def read(path: str, _stamp) -> Optional[DynamicFacts]:
        try:
            return read_facts(path)
        except unreadable:
            return None

    def probe(path: str) -> Optional[DynamicFacts]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not os.path.isfile(path):
            return None
        return read(path, (st.st_size, st.st_mtime_ns, st.st_ino))

    return probe
