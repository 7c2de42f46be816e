"""macOS (Mach-O) clones: how a libpython copy and an extension twin are made and checked.

NOT YET RUN ON A MAC. Everything here is built from, and checked against, the
file formats (real Mach-O files from macOS wheels, read back by this project's
reader and by the LLVM tools); dyld itself has never loaded a set made here.

The libpython copy (``build_libpython``) gets

* an LC_ID_DYLIB that is its absolute path in the set
  (``<set>/clone-NN/libgc<id><NN>.dylib``), so two clones never share an
  install name. A set prepared natively is where that path says; a set
  cross-prepared from Linux (``prepare --target macos --python-home``) must be
  copied to the same absolute path on the Mac (or prepared again there);
* a fresh random LC_UUID per slice (dyld takes images with equal UUIDs for one);
* ``@loader_path`` in its LC_LOAD_* / LC_RPATH made absolute (the original's
  directory), since the copy lives elsewhere;
* a new ad-hoc signature (arm64 macOS maps no page whose hash does not match).

An extension twin (``build_twin``) gets an LC_LOAD_DYLIB of the clone's
install name, and every ``Py*`` bind that was a flat lookup (the module was
linked with ``-undefined dynamic_lookup``) pointed at that ordinal; a module
that links libpython by name has that load command renamed to the clone
instead. Its ``@loader_path`` references are made absolute (the original's
directory), so bundled libraries (numpy's ``.dylibs``) are still found; it gets
a fresh UUID and an ad-hoc signature too. The byte-level work is
``cloner.macho_writer``; this module decides what to write and checks sets
(``static_checks``, run by ``gilclone verify`` for a set that cannot be
loaded here). gilclone doctor's macOS checks are ``cloner.doctor.macos``.
"""

import os
import struct
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from gilclone.cloner import codesign, macho_binds, macho_commands, macho_writer, naming, store
from gilclone.cloner.built_clone import BuiltClone
from gilclone.platforms import macho
from gilclone.platforms.classify import python_version_from_libname
from macholib.mach_o import LC_RPATH, MH_TWOLEVEL

from gilclone.errors import BinaryFormatError, CloneError, RewriteError

NOT_RUN_NOTE = "not yet run on a Mac: macOS sets are checked statically only"
# Names a copy may keep pointing at without the file being here: dyld finds these
# in the shared cache (macOS 11+ has no such files on disk).
SYSTEM_PREFIXES = ("/usr/lib/", "/System/")
TWIN_FILE = "twin.json"  # written by cloner.extensions next to each twin

Check = Tuple[str, bool, str]


def clone_file_name(name_id: str, index: int) -> str:
    """``libgc<16 hex of the set/root id><2-char index>.dylib``: unique per set directory and clone."""
    return f"{naming.PREFIX}{name_id[:16]}{naming.index_token(index)}.dylib"


def clone_install_name(directory: str, index: int, file_name: str) -> str:
    """Where the clone will be: ``directory`` is the temporary build directory inside the set,
    renamed to ``clone-NN`` next to it when complete (cloner.prepare)."""
    root = os.path.dirname(os.path.abspath(directory))
    return os.path.join(root, store.clone_dir_name(index), file_name)


def build_libpython(source: str, directory: str, name_id: str, index: int) -> BuiltClone:
    original = macho.read(source).name
    if not original:
        raise CloneError(f"{source}: has no LC_ID_DYLIB (install name) to rewrite")
    file_name = clone_file_name(name_id, index)
    install_name = clone_install_name(directory, index, file_name)
    macho_writer.apply(source, os.path.join(directory, file_name), macho_writer.MachoEdits(
        new_id=install_name,
        loader_path_base=os.path.dirname(os.path.realpath(source)),
    ))
    return BuiltClone(libpython=file_name, files=(file_name,), renames=((original, install_name),))


def build_twin(source: str, target: str, renames: Dict[str, str], libpython: str,
               libraries: Optional[Dict[str, str]] = None) -> None:
    """``libraries``: load-command names of helper dylibs -> the clone's copies (cloner/closure.py)."""
    clone = _clone_name(renames, libpython)
    info = macho.read(source)
    linked = {n: clone for n in info.needed
              if n in renames or (python_version_from_libname(n) or "").startswith("3")}
    helpers = {n: new for n, new in (libraries or {}).items() if n in info.needed}
    macho_writer.apply(source, target, macho_writer.MachoEdits(
        add_dylib=None if linked else clone,
        rename_dylibs={**linked, **helpers},
        rebind_python=True,
        loader_path_base=os.path.dirname(os.path.realpath(source)),
    ))


def _clone_name(renames: Dict[str, str], libpython: str) -> str:
    """The clone's install name: the rename whose file name is the clone's libpython."""
    names = sorted({new for new in renames.values() if os.path.basename(new) == libpython})
    if len(names) != 1:
        raise CloneError(f"the clone's manifest names no install name for {libpython} (renames: {renames})")
    return names[0]


# ---------------------------------------------------------------------------
# What a copy refers to


def load_names(data: bytes, sl: macho.RawSlice) -> List[str]:
    return [macho.lc_str(data, sl, c) for c in sl.find(*macho.LOAD_DYLIB_COMMANDS)]


def rpath_names(data: bytes, sl: macho.RawSlice) -> List[str]:
    return [macho.lc_str(data, sl, c) for c in sl.find(LC_RPATH)]


def resolve_rpath(name: str, rpaths: Sequence[str], loader_dir: str,
                  exists: Callable[[str], bool] = os.path.exists) -> Optional[str]:
    """The file an ``@rpath/`` name finds through ``rpaths`` of an image in ``loader_dir``."""
    rest = name[len("@rpath/"):]
    for rp in rpaths:
        base = macho_commands.resolve_loader_path(rp, loader_dir) or rp
        if base.startswith("@"):
            continue  # @executable_path: depends on the program, not on where the image is
        path = os.path.join(base, rest)
        if exists(path):
            return path
    return None


def reference_problems(source: str, copy: str, exists: Callable[[str], bool] = os.path.exists) -> List[str]:
    """What the copy at ``copy`` finds differently from the original at ``source``.

    Every ``@loader_path`` reference of the original must be absolute in the
    copy and name the file the original finds; an ``@rpath/`` name the
    original resolves through its own run paths must resolve from the copy.
    """
    src_data, _f, src_slices = macho.scan_path(source)
    data, _f, slices = macho.scan_path(copy)
    src_dir = os.path.dirname(os.path.realpath(source))
    copy_dir = os.path.dirname(os.path.abspath(copy))
    problems = []
    for ssl, sl in zip(src_slices, slices):
        old_loads, new_loads = load_names(src_data, ssl), load_names(data, sl)
        old_rp, new_rp = rpath_names(src_data, ssl), rpath_names(data, sl)
        for old, new in list(zip(old_loads, new_loads)) + list(zip(old_rp, new_rp)):
            want = macho_commands.resolve_loader_path(old, src_dir)
            if want is None:
                continue
            if new != want:
                problems.append(f"{sl.arch}: {old} is {new} in the copy, not {want}")
            elif not exists(want):
                problems.append(f"{sl.arch}: {old} ({want}) does not exist")
        for name in new_loads:
            if not name.startswith("@rpath/"):
                continue
            if resolve_rpath(name, old_rp, src_dir, exists) is None:
                continue  # the original relies on its loaders' run paths; so does the copy
            if resolve_rpath(name, new_rp, copy_dir, exists) is None:
                problems.append(f"{sl.arch}: {name} does not resolve from the copy (run paths {new_rp})")
        left = [n for n in new_loads + new_rp if n.startswith("@loader_path")]
        problems += [f"{sl.arch}: {n} is still relative to the copy's directory" for n in left]
    return problems


# ---------------------------------------------------------------------------
# Static checks of a whole set (gilclone verify of a set made for macOS)


def static_checks(cset: store.CloneSet) -> List[Check]:
    """Checks of a macOS set that need no Mac: files, names, UUIDs, signatures, binds."""
    checks: List[Check] = [("macos_runtime", True, NOT_RUN_NOTE)]
    if not cset.clones:
        return checks + [("clones_present", False, "the set has no complete clone; run gilclone prepare")]
    damaged = [f"clone {r.index}: {p}" for r in cset.clones for p in [store.check_clone(r, full=True)] if p]
    checks.append(("files_intact", not damaged,
                   "; ".join(damaged) or f"{len(cset.clones)} clones match their manifests"))
    if damaged:
        return checks
    try:
        infos = {r.index: macho.read(r.libpython) for r in cset.clones}
    except BinaryFormatError as exc:
        return checks + [("clones_readable", False, str(exc))]
    source = cset.python.get("libpython") or ""
    src_info = _read_or_none(source)
    checks.append(_install_names(cset, infos))
    checks.append(_uuids(cset, infos, src_info))
    checks.append(_signatures([r.libpython for r in cset.clones], "clone libpythons"))
    checks.append(_guard("references_resolve", lambda: _clone_references(cset, source)))
    twins = {r.index: list(twin_paths(r)) for r in cset.clones}
    if any(twins.values()):
        checks.append(_signatures([t for ts in twins.values() for t, _s in ts], "extension copies"))
        checks.append(_guard("extension_copies_bound", lambda: _twins_bound(cset, infos, twins)))
        checks.append(_guard("extension_references_resolve", lambda: _twin_references(twins)))
    else:
        checks.append(("extension_copies_bound", True, "no extension copies yet (they are made on first import)"))
    return checks


def _read_or_none(path: str):
    try:
        return macho.read(path) if path else None
    except BinaryFormatError:
        return None


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except (BinaryFormatError, RewriteError, OSError, ValueError) as exc:
        return (name, False, f"{type(exc).__name__}: {exc}")


def _install_names(cset: store.CloneSet, infos) -> Check:
    problems = []
    names = [infos[r.index].name for r in cset.clones]
    for r in cset.clones:
        if infos[r.index].name != r.libpython:
            problems.append(f"clone {r.index} is named {infos[r.index].name} but is at {r.libpython} "
                            "(the set was moved: prepare it again where it is used)")
    if len(set(names)) != len(names):
        problems.append(f"install names repeat: {names}")
    detail = "; ".join(problems) or f"{len(names)} distinct install names, each the clone's own path"
    return ("distinct_install_names", not problems, detail)


def _uuids(cset: store.CloneSet, infos, src_info) -> Check:
    seen: Dict[str, str] = {}
    if src_info is not None:
        seen.update({s.uuid: "the original" for s in src_info.facts.slices if s.uuid})
    problems = []
    count = 0
    for r in cset.clones:
        for s in infos[r.index].facts.slices:
            count += 1
            where = f"clone {r.index} [{s.arch}]"
            if not s.uuid:
                problems.append(f"{where} has no LC_UUID")
            elif s.uuid in seen:
                problems.append(f"{where} has the UUID of {seen[s.uuid]}")
            else:
                seen[s.uuid] = where
    detail = "; ".join(problems) or f"{count} slice UUIDs, pairwise distinct and unlike the original's"
    return ("distinct_uuids", not problems, detail)


def _signatures(paths: Iterable[str], what: str) -> Check:
    problems, pages, files = [], 0, 0
    for path in paths:
        files += 1
        try:
            pages += sum(s["pages"] for s in codesign.verify_file(path))
        except (RewriteError, BinaryFormatError, OSError, struct.error) as exc:
            problems.append(f"{path}: {exc}")
    name = "signatures_" + what.replace(" ", "_")
    detail = "; ".join(problems[:5]) or f"{files} {what}: ad-hoc signatures match all {pages} page hashes"
    return (name, not problems, detail)


def _clone_references(cset: store.CloneSet, source: str) -> Check:
    if not source or not os.path.exists(source):
        return ("references_resolve", True, f"original {source or '?'} not here; references not compared")
    problems = [f"clone {r.index}: {p}" for r in cset.clones for p in reference_problems(source, r.libpython)]
    return ("references_resolve", not problems,
            "; ".join(problems[:5]) or "every @loader_path / @rpath reference resolves as in the original")


def twin_paths(record: store.CloneRecord):
    """(twin path, source path) of every complete extension copy of a clone."""
    if not os.path.isdir(record.ext_dir):
        return
    for key in sorted(os.listdir(record.ext_dir)):
        meta_path = os.path.join(record.ext_dir, key, TWIN_FILE)
        if key.startswith(".") or not os.path.isfile(meta_path):
            continue
        try:
            source = store.read_json(meta_path)["source"]
        except (OSError, ValueError, KeyError):
            continue
        yield os.path.join(record.ext_dir, key, os.path.basename(source)), source


def twin_bind_problems(twin: str, clone_name: str, clone_exports: Mapping[str, set]) -> Tuple[int, List[str]]:
    """(Py binds checked, problems) of one extension copy: every Py bind on the clone's ordinal,
    the image two-level, and every Py symbol bound exported by the clone (same architecture)."""
    data, _fat, slices = macho.scan_path(twin)
    problems, count = [], 0
    for sl in slices:
        loads = load_names(data, sl)
        if not sl.flags & MH_TWOLEVEL:
            problems.append(f"{sl.arch}: not a two-level namespace image")
        if clone_name not in loads:
            problems.append(f"{sl.arch}: does not load {clone_name}")
            continue
        ordinal = loads.index(clone_name) + 1
        binds = macho_binds.python_binds(data, sl)
        count += len(binds)
        wrong = sorted({n for n, o in binds if o != ordinal})
        if wrong:
            problems.append(f"{sl.arch}: {len(wrong)} Py symbols not bound to the clone (ordinal "
                            f"{ordinal}): {', '.join(wrong[:3])}")
        exports = clone_exports.get(sl.arch)
        if exports is not None:
            missing = sorted({n for n, _o in binds} - exports)
            if missing:
                problems.append(f"{sl.arch}: the clone does not export {len(missing)} Py symbols "
                                f"bound: {', '.join(missing[:3])}")
    return count, problems


def _exports_by_arch(path: str) -> Dict[str, set]:
    data, _fat, slices = macho.scan_path(path)
    try:
        return {sl.arch: set(macho.export_names(data, sl)) for sl in slices}
    except macho.MalformedMachO as exc:
        raise BinaryFormatError(path, str(exc)) from None


def _twins_bound(cset: store.CloneSet, infos, twins) -> Check:
    problems, files, binds = [], 0, 0
    for r in cset.clones:
        exports = _exports_by_arch(r.libpython)
        for twin, _source in twins[r.index]:
            files += 1
            n, found = twin_bind_problems(twin, infos[r.index].name, exports)
            binds += n
            problems += [f"{twin}: {p}" for p in found]
    detail = "; ".join(problems[:5]) or (
        f"{files} extension copies: all {binds} Py binds go to their clone's libpython "
        "(none left to flat lookup), each symbol exported there")
    return ("extension_copies_bound", not problems, detail)


def _twin_references(twins) -> Check:
    problems = []
    for ts in twins.values():
        for twin, source in ts:
            if os.path.exists(source):
                problems += [f"{twin}: {p}" for p in reference_problems(source, twin)]
    return ("extension_references_resolve", not problems,
            "; ".join(problems[:5]) or "the copies find every library the originals find")
