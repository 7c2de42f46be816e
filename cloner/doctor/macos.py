"""gilclone doctor's macOS checks: header padding, flat lookups, @rpath, DYLD_* variables.

NOT YET RUN ON A MAC (see docs/macos.md): the checks read the Mach-O files by
the rules cloner.macho_writer follows when it makes the copies, so what they
report is what prepare and the first import would run into.
"""

import os
import struct
from typing import Dict, List, Mapping, Optional, Sequence

from gilclone.cloner import macho_binds, macho_clone, macho_commands
from gilclone.cloner.doctor.findings import ERROR, INFO, WARNING, Context, Finding, listed
from gilclone.cloner.doctor.scan import scan_capped_findings, scan_files
from gilclone.platforms import macho
from gilclone.platforms.classify import python_version_from_libname
from gilclone.platforms.model import BinaryInfo
from macholib.mach_o import (
    BIND_SPECIAL_DYLIB_FLAT_LOOKUP,
    LC_CODE_SIGNATURE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_ID_DYLIB,
    LC_RPATH,
    LC_UUID,
    MH_TWOLEVEL,
)

from gilclone.errors import BinaryFormatError, RewriteError

# A clone's install name is <set>/clone-NN/libgc<18 chars>.dylib; the set directory
# is named <version>-<12 hex> under the cache root.
_INSTALL_NAME_TAIL = len("/3.12.10-0123456789ab/clone-00/libgc0123456789abcdef00.dylib")
SIP_PREFIXES = ("/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/System/", "/usr/libexec/")
# A lazy bind's ordinal is patched in place, in a SET_DYLIB_ORDINAL_IMM's 4 bits.
MAX_LAZY_ORDINAL = 15


def checks(ctx: Context) -> List[Finding]:
    """From the files and the environment; clone install names are sized for ctx.cache_root."""
    install = ctx.install
    findings = [Finding(
        "macos-not-run", INFO, "macOS support: " + macho_clone.NOT_RUN_NOTE,
        "Clone sets for macOS are built and proven right from the files (load commands, "
        "binds, signatures checked against the LLVM tools); dyld has not yet loaded one.",
        "Report what `gilclone verify` says on your Mac",
    )]
    clone_name = longest_install_name(ctx.cache_root)
    if ctx.libpython is not None:
        findings += libpython_padding_findings(ctx.libpython, clone_name, ctx.cache_root)
    suffixes = tuple(s for s in (install.extension_suffix, ".abi3.so") if s)
    modules = scan_files(install.extension_dirs, lambda name: name.endswith(suffixes))
    findings += extension_findings(modules.paths, clone_name)
    findings += scan_capped_findings(modules, "extension modules")
    findings += dyld_environment_findings(install.executable, ctx.environ)
    return findings


def longest_install_name(cache_root: str) -> str:
    """A name as long as any clone's install name under ``cache_root`` will be."""
    return os.path.join(cache_root, "x" * (_INSTALL_NAME_TAIL - 1))


def _dylib_cmd_size(name: str) -> int:
    return (24 + len(name.encode()) + 1 + 7) // 8 * 8


def _rpath_cmd_size(name: str) -> int:
    return (12 + len(name.encode()) + 1 + 7) // 8 * 8


def libpython_padding_findings(libpython: BinaryInfo, clone_name: str, cache_root: str) -> List[Finding]:
    findings = []
    data, _fat, slices = macho.scan_path(libpython.path)
    for sl in slices:
        ids = sl.find(LC_ID_DYLIB)
        grow = _dylib_cmd_size(clone_name) - (ids[0].cmdsize if ids else 0)
        grow += 0 if sl.find(LC_CODE_SIGNATURE) else 16
        padding = macho.header_padding(data, sl)
        if grow > padding:
            findings.append(Finding(
                "macos-libpython-header-padding", ERROR,
                f"{libpython.path} [{sl.arch}] has {padding} bytes of header padding; "
                f"the clones' install names under {cache_root} need {grow}",
                "Each copy gets its absolute path as its install name (LC_ID_DYLIB).",
                "Use a shorter cache directory (--dest or GILCLONE_CACHE)",
            ))
    return findings


def extension_problems(path: str, clone_name: str) -> Dict[str, object]:
    """What making a twin of the extension at ``path`` would run into, per the writer's rules."""
    out: Dict[str, object] = {"flat_py": 0, "flat_image": False, "padding": [], "lazy_ordinal": [],
                              "rpath": [], "links_libpython": []}
    data, _fat, slices = macho.scan_path(path)
    src_dir = os.path.dirname(os.path.realpath(path))
    for sl in slices:
        loads = macho_clone.load_names(data, sl)
        if not sl.flags & MH_TWOLEVEL:
            out["flat_image"] = True
        binds = macho_binds.python_binds(data, sl)
        out["flat_py"] += sum(1 for _n, o in binds if o == BIND_SPECIAL_DYLIB_FLAT_LOOKUP)
        linked = [n for n in loads if (python_version_from_libname(n) or "").startswith("3")]
        out["links_libpython"] += linked
        need = _header_growth(data, sl, src_dir, None if linked else clone_name)
        padding = macho.header_padding(data, sl)
        if need > padding:
            out["padding"].append(f"{sl.arch}: needs {need} bytes, has {padding}")
        if not linked and len(loads) + 1 > MAX_LAZY_ORDINAL and _binds_lazily(data, sl):
            out["lazy_ordinal"].append(f"{sl.arch}: {len(loads)} dylibs loaded")
        rpaths = macho_clone.rpath_names(data, sl)
        for name in loads:
            if name.startswith("@rpath/") and macho_clone.resolve_rpath(name, rpaths, src_dir) is None:
                out["rpath"].append(name)
    return out


def _header_growth(data: bytes, sl: macho.RawSlice, src_dir: str, added: Optional[str]) -> int:
    """Bytes the copy's load commands grow by: the clone's LC_LOAD_DYLIB (``added``),
    a signature and UUID command where missing, @loader_path names made absolute."""
    need = _dylib_cmd_size(added) if added else 0
    need += 0 if sl.find(LC_CODE_SIGNATURE) else 16
    need += 0 if sl.find(LC_UUID) else 24
    for c in sl.find(*macho.LOAD_DYLIB_COMMANDS, LC_RPATH):
        new = macho_commands.resolve_loader_path(macho.lc_str(data, sl, c), src_dir)
        if new is not None:
            size = _rpath_cmd_size(new) if c.cmd == LC_RPATH else _dylib_cmd_size(new)
            need += max(0, size - c.cmdsize)
    return need


def _binds_lazily(data: bytes, sl: macho.RawSlice) -> bool:
    """Whether a dyld info command of the slice has a non-empty lazy bind stream."""
    return any(struct.unpack_from(sl.endian + "I", data, sl.offset + c.offset + 36)[0]
               for c in sl.find(LC_DYLD_INFO, LC_DYLD_INFO_ONLY))


def extension_findings(paths: Sequence[str], clone_name: str) -> List[Finding]:
    flat, flat_images, padding, lazy, rpath, unreadable = [], [], [], [], [], 0
    for path in paths:
        try:
            p = extension_problems(path, clone_name)
        except (BinaryFormatError, RewriteError, struct.error):
            unreadable += 1
            continue
        if p["flat_py"]:
            flat.append(path)
        if p["flat_image"]:
            flat_images.append(path)
        if p["padding"]:
            padding.append(f"{path} ({'; '.join(p['padding'])})")
        if p["lazy_ordinal"]:
            lazy.append(path)
        rpath += [f"{path} ({n})" for n in p["rpath"]]
    findings = []
    if flat:
        findings.append(Finding(
            "macos-flat-extensions", INFO,
            f"{len(flat)} of {len(paths)} extension modules look up Py* symbols in the flat "
            f"namespace (-undefined dynamic_lookup): {listed(flat)}",
            "A flat lookup finds the host's libpython first. Each clone's copy of a module "
            "loads the clone's libpython and binds its Py* symbols to it (two-level).", ""))
    if flat_images:
        findings.append(Finding(
            "macos-flat-namespace-images", WARNING,
            f"{len(flat_images)} extension modules are flat-namespace images (no "
            f"MH_TWOLEVEL): {listed(flat_images)}",
            "Their copies are switched to two-level binds; every non-Python symbol stays an "
            "explicit flat lookup, as before.", "Nothing to do unless such a copy fails to import"))
    if padding:
        findings.append(Finding(
            "macos-header-padding", ERROR,
            f"{len(padding)} extension modules have too little header padding for the clone's "
            f"load command: {listed(padding)}",
            "A copy needs one more LC_LOAD_DYLIB (the clone's path) and a code signature "
            "command in the space before the first section; these cannot be copied.",
            "Rebuild them linked with -Wl,-headerpad_max_install_names, or use a shorter "
            "cache directory (--dest or GILCLONE_CACHE)"))
    if lazy:
        findings.append(Finding(
            "macos-lazy-ordinal", ERROR,
            f"{len(lazy)} extension modules load 15 or more dylibs and bind lazily: {listed(lazy)}",
            "Their lazy binds are patched in place, where a dylib ordinal above 15 does not fit.",
            "Rebuild them with -Wl,-bind_at_load or fewer dylibs"))
    if rpath:
        findings.append(Finding(
            "macos-rpath-unresolved", WARNING,
            f"{len(rpath)} @rpath references resolve through none of the module's own run "
            f"paths: {listed(rpath)}",
            "dyld then searches the run paths of the images that load it (the executable); "
            "copies keep that behaviour, so they fail where the original fails.",
            "Check that the original imports; add an LC_RPATH (install_name_tool -add_rpath)"))
    if unreadable:
        findings.append(Finding(
            "macos-ext-unreadable", WARNING,
            f"{unreadable} extension modules could not be read as Mach-O",
            "Copies cannot be made of them.", "Reinstall the packages they belong to"))
    return findings


def dyld_environment_findings(executable: str, environ: Mapping[str, str]) -> List[Finding]:
    findings = []
    set_vars = sorted(k for k in environ if k.startswith("DYLD_"))
    if environ.get("DYLD_FORCE_FLAT_NAMESPACE"):
        findings.append(Finding(
            "dyld-force-flat-namespace", ERROR, "DYLD_FORCE_FLAT_NAMESPACE is set",
            "It makes every image flat: the copies' binds to their own libpython are "
            "ignored and they bind to the host's.", "Unset DYLD_FORCE_FLAT_NAMESPACE"))
    if environ.get("DYLD_INSERT_LIBRARIES"):
        findings.append(Finding(
            "dyld-insert-libraries", WARNING,
            f"DYLD_INSERT_LIBRARIES names {environ['DYLD_INSERT_LIBRARIES']}",
            "Inserted libraries interpose symbols by flat lookup; if one defines Py* symbols "
            "the copies may reach it instead of their clone.", "Run without it"))
    if executable.startswith(SIP_PREFIXES):
        findings.append(Finding(
            "dyld-sip-stripped", WARNING if set_vars else INFO,
            f"{executable} is protected by System Integrity Protection"
            + (f"; {', '.join(set_vars)} will not reach it" if set_vars else ""),
            "macOS removes every DYLD_* variable when it starts a protected executable, "
            "so nothing may rely on them (gilclone does not).",
            "Use a Python outside /usr/bin and /System (python.org, Homebrew) if you need them"))
    elif set_vars:
        findings.append(Finding(
            "dyld-variables", INFO, f"set: {', '.join(set_vars)}",
            "They apply to this process; SIP strips them from any child started through a "
            "protected program (/bin/sh, /usr/bin/env).", ""))
    return findings
