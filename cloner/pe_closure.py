"""Windows (PE) side of closure cloning: C-API DLLs that are not ``.pyd`` files.

pywin32's ``win32api.pyd`` imports ``pywintypes311.dll`` by name, a DLL that
imports ``python311.dll`` itself. Windows keys loaded modules by base name, so
every clone's ``win32api`` copy would bind to whichever ``pywintypes311.dll``
the process loaded first (the host's). A clone gets its own copy under a new name
of the same length (``gl<key><nn>.dll``, written over the import name in place),
with its Python imports pointed at the clone's DLLs; the clone's twins import that
name, and the clone's ``lib`` directory is added to the DLL search path. The
module ``pywintypes`` itself, loaded from that DLL by path, is the same copy.

Search order modelled for a twin's imports (LoadLibraryEx with
LOAD_LIBRARY_SEARCH_DEFAULT_DIRS | LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR, as CPython
loads extension modules): the original module's directory, the executable's
directory, then the DLL directories: the extension directories (load.py adds
them) and every directory a clone added with ``os.add_dll_directory`` (the clone
reports them: pywin32's ``pywin32_bootstrap`` adds ``pywin32_system32``). On
Windows a name that is found nowhere else but already loaded in the process is
taken from there. System DLLs (System32, API sets) are not looked for: none
calls the C API.
"""

import ntpath
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

from gilclone.cloner import naming, pe_writer
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.elf_deps import DynamicFacts
from gilclone.platforms.resolve import LoaderConfig, Probe, file_probe

from gilclone.errors import CloneError

PREFIX = "gl"


def is_python_dll(name: str) -> bool:
    return python_version_from_libname(name) is not None


def _read_facts(path: str) -> DynamicFacts:
    info = pe_reader.read(path)
    needed = tuple(dict.fromkeys(info.needed + info.facts.delay_imports))
    return DynamicFacts(
        path=path,
        soname=os.path.basename(path),
        needed=needed,
        rpath=(),
        runpath=None,
        nodeflib=False,
        elf_class=64,
        machine=f"PE:{info.machine}",
        python_refs=sum(1 for n in needed if is_python_dll(n)),
        python_init=info.kind == "extension",
    )


probe = file_probe(_read_facts)  # the resolver's facts of a DLL, None if unreadable

_DLL_DIRECTORIES: List[str] = []  # added by clones with os.add_dll_directory, in order


def note_dll_directory(path: str) -> str:
    """Host operation "dlldir": a clone added ``path`` to the process's DLL search."""
    if path not in _DLL_DIRECTORIES:
        _DLL_DIRECTORIES.append(path)
    return ""


def config_for(python: dict) -> LoaderConfig:
    """The installation's DLL directories; the companion rule leaves them shared."""
    dirs = [os.path.dirname(python.get("executable") or "") or python.get("prefix", "")]
    dirs += list(python.get("extension_dirs", ())) + _DLL_DIRECTORIES
    return LoaderConfig(default_dirs=tuple(d for d in dirs if d))


def resolve_needed(name: str, loader: DynamicFacts, chain: Sequence[DynamicFacts],
                   config: LoaderConfig, probe_: Probe) -> Tuple[Optional[DynamicFacts], str]:
    if is_python_dll(name) or name.lower().startswith(("api-ms-win-", "ext-ms-")):
        return None, "system"
    for directory in (os.path.dirname(loader.path), *config.default_dirs):
        found = probe_(os.path.join(directory, name)) or _case_insensitive(directory, name, probe_)
        if found is not None:
            return found, directory
    loaded = _loaded_module(name)
    if loaded and probe_(loaded) is not None:
        return probe_(loaded), "loaded"
    return None, "system"  # System32 and the known DLLs: no C-API users there


def _loaded_module(name: str) -> Optional[str]:
    """Windows: the file of an already loaded module of that name (imports bind to it)."""
    if os.name != "nt":
        return None
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.GetModuleHandleW.restype = ctypes.c_void_p
    handle = kernel32.GetModuleHandleW(name)
    if not handle:
        return None
    buf = ctypes.create_unicode_buffer(32768)
    n = kernel32.GetModuleFileNameW(ctypes.c_void_p(handle), buf, len(buf))
    return buf.value if n else None


def _case_insensitive(directory: str, name: str, probe_: Probe) -> Optional[DynamicFacts]:
    """Windows names are case-insensitive; a set checked on Linux needs the file's real case."""
    try:
        for entry in os.listdir(directory):
            if entry.lower() == name.lower():
                return probe_(os.path.join(directory, entry))
    except OSError:
        pass
    return None


def copy_name(original: str, key: str, index: int) -> str:
    """``gl`` + hex key + the clone index + ``.dll``, exactly as long as ``original``."""
    room = len(ntpath.splitext(original)[0]) - len(PREFIX) - 2
    if room < 4:
        raise CloneError(f"{original}: name too short for a per-clone copy of the same length")
    return f"{PREFIX}{key[:room]}{naming.index_token(index)}.dll"


def build_library(source: str, target: str, name: str, renames: Dict[str, str],
                  libpython: Optional[str], libraries: Dict[str, str]) -> None:
    """A copy of DLL ``source`` importing the clone's Python DLLs and the clone's copies of
    other helper DLLs (``libraries``: import name -> the copy's path)."""
    info = pe_reader.read(source)
    lowered = {k.lower(): v for k, v in renames.items()}
    mapping = {n: lowered[n.lower()] for n in info.needed if is_python_dll(n) and n.lower() in lowered}
    mapping.update({n: os.path.basename(p) for n, p in libraries.items()})
    if any(is_python_dll(n) for n in info.needed) and not mapping:
        raise CloneError(f"{source}: imports a Python DLL that is not the one this clone was made from")
    step = target + ".imports"
    try:
        if mapping:
            pe_writer.retarget_imports(source, step, mapping)
        else:
            shutil.copy2(source, step)
        if info.name and len(name) <= len(info.name):  # the loader goes by file name; kept tidy
            pe_writer.rename_dll(step, target, name)
        else:
            os.replace(step, target)
    finally:
        if os.path.exists(step):
            os.remove(step)
