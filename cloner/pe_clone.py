"""Windows (PE) clones: Sturla Molden's renamed-DLL trick, with what CPython needs around it.

A clone directory holds

- ``gc<id><nn>.dll``: a copy of ``python3X.dll`` under a new name of the same
  length (its export-directory name rewritten too). Windows keys loaded DLLs by
  base name, so a ``.pyd`` copy that imports this name binds to this copy;
- ``g3<id><nn>.dll``: a copy of the stable-ABI ``python3.dll`` whose forwarders
  ("python311.Py_X") point at the clone ("gc<id><nn>.Py_X"), for abi3 modules;
- ``gc<id><nn>._pth``: CPython looks for ``<DLL name>._pth`` next to the DLL, so
  a renamed DLL no longer finds ``python3X._pth``. The clone's lists the home's
  standard-library zip and directories, as paths relative to the clone directory
  when there is one (the set and the home may then move together, and a set
  prepared on Linux resolves under Wine's ``Z:`` drive), else absolute.

An extension twin is a copy of the ``.pyd`` with its imports of ``python3X.dll``
and ``python3.dll`` renamed to the clone's (pe_writer; checksum recomputed,
Authenticode signature removed).
"""

import ntpath
import os
import posixpath
import re
import shutil
from typing import Dict, List, Optional, Tuple

from gilclone.cloner import naming, pe_writer, store
from gilclone.cloner.built_clone import BuiltClone
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.home_windows import read_pth

from gilclone.errors import BinaryFormatError, CloneError

STABLE_ABI_DLL = "python3.dll"
CLONE_PREFIX = "gc"
STABLE_PREFIX = "g3"
_PYTHON_DLL = re.compile(r"^python3\d*[a-z_]*\.dll$", re.IGNORECASE)

Check = Tuple[str, bool, str]


def clone_dll_name(original: str, name_id: str, index: int, prefix: str = CLONE_PREFIX) -> str:
    """``prefix`` + as much of ``name_id`` as fits + two index characters + ".dll",
    exactly as long as ``original`` (so every rename is written in place)."""
    stem = os.path.splitext(original)[0]
    room = len(stem) - len(prefix) - 2
    if room < 1:
        raise CloneError(f"{original}: name too short to hold a clone name")
    return f"{prefix}{name_id[:room]}{naming.index_token(index)}.dll"


def build_libpython(source: str, directory: str, name_id: str, index: int) -> BuiltClone:
    home = os.path.dirname(os.path.abspath(source))
    original = os.path.basename(source)
    clone = clone_dll_name(original, name_id, index)
    clone_stem = os.path.splitext(clone)[0]
    pe_writer.rename_dll(source, os.path.join(directory, clone), clone)
    files = [clone]
    renames = [(original, clone)]

    stable = find_case_blind(home, STABLE_ABI_DLL)
    if stable is not None:
        clone3 = clone_dll_name(STABLE_ABI_DLL, name_id, index, STABLE_PREFIX)
        target = os.path.join(directory, clone3)
        pe_writer.retarget_forwarders(stable, target, os.path.splitext(original)[0], clone_stem)
        pe_writer.rename_dll(target, target, clone3)
        files.append(clone3)
        renames.append((os.path.basename(stable), clone3))

    pth = f"{clone_stem}._pth"
    entries = pth_entries(home, os.path.splitext(original)[0])
    with open(os.path.join(directory, pth), "w", encoding="utf-8", newline="\r\n") as f:
        f.write(pth_text(entries, directory))
    files.append(pth)
    return BuiltClone(libpython=clone, files=tuple(files), renames=tuple(renames))


def find_case_blind(home: str, name: str) -> Optional[str]:
    """``name`` in ``home`` whatever its case (Windows file names are case-blind)."""
    try:
        for entry in os.listdir(home):
            if entry.lower() == name.lower():
                return os.path.join(home, entry)
    except OSError:
        pass
    return None


def pth_entries(home: str, stem: str) -> List[str]:
    """Absolute paths (host notation) of what the home's ``<stem>._pth`` lists, or of the
    usual layout of a full installation when it has none."""
    pth = find_case_blind(home, f"{stem}._pth")
    entries, _site = read_pth(pth) if pth else (None, False)
    if entries is None:
        entries = [e for e in (f"{stem}.zip", "DLLs", "Lib", ".")
                   if os.path.exists(os.path.join(home, e))]
    out = []
    for e in entries:
        if ntpath.isabs(e) or e.startswith("/"):
            path = e
        else:
            path = os.path.normpath(os.path.join(home, e.replace("\\", os.sep)))
        if path not in out:
            out.append(path)
    return out


def pth_text(entries: List[str], directory: str) -> str:
    """The clone's ._pth. No ``import site`` line: it would make CPython import site
    (and with it extension modules) before gilclone has remapped extension imports."""
    lines = ["# gilclone: the standard library of the Python this clone was made from."]
    for path in entries:
        lines.append(_relative(path, directory))
    return "\n".join(lines) + "\n"


def _relative(path: str, directory: str) -> str:
    """``path`` relative to ``directory`` with Windows separators; absolute if there is no
    relative way (another drive)."""
    try:
        rel = os.path.relpath(path, os.path.abspath(directory))
    except ValueError:
        return path
    return rel.replace("/", "\\")


def build_twin(source: str, target: str, renames: Dict[str, str], libpython: str,
               libraries: Optional[Dict[str, str]] = None) -> None:
    """``libraries``: imported helper DLL names -> the clone's copies (cloner/pe_closure.py)."""
    try:
        info = pe_reader.read(source)
    except BinaryFormatError:
        raise
    lowered = {k.lower(): v for k, v in renames.items()}
    mapping = {}
    for dll in info.needed:
        if not _PYTHON_DLL.match(dll):
            continue
        new = lowered.get(dll.lower())
        if new is None:
            raise CloneError(
                f"{source}: imports {dll}, which is not the Python DLL this clone was made "
                f"from ({', '.join(renames) or libpython}); it belongs to another Python"
            )
        mapping[dll] = new
    mapping.update({n: os.path.basename(p) for n, p in (libraries or {}).items()})
    if not mapping:
        shutil.copy2(source, target)  # no Python import: nothing binds it to a libpython
        return
    pe_writer.retarget_imports(source, target, mapping)


# -- static checks (``gilclone verify`` of a set for Windows, run on another OS) ----------


def static_checks(cset: store.CloneSet) -> List[Check]:
    clones = [c for c in cset.clones if c.binary_format == "PE"]
    if not clones:
        return [("pe_clones", False, "the set has no complete PE clone; run gilclone prepare")]
    out: List[Check] = []
    problems = [p for p in (store.check_clone(c, full=True) for c in clones) if p]
    out.append(("files_intact", not problems,
                 "; ".join(problems) or f"{len(clones)} clones match their manifests (SHA-256)"))
    if problems:
        return out
    source_path = cset.python.get("libpython") or ""
    source = _read_or_none(source_path)
    original = os.path.basename(source_path.replace("\\", "/"))
    out.append(_distinct_names(clones, original))
    out.append(_exports_match(clones, source, source_path))
    out.append(_forwarders(clones))
    out.append(_pth_present(clones))
    out.append(_checksums_and_signatures(clones))
    return out


def _read_or_none(path: str):
    try:
        return pe_reader.read(path)
    except BinaryFormatError:
        return None


def _distinct_names(clones, original: str) -> Check:
    names = []
    for c in clones:
        names.extend(clone for _orig, clone in c.renames)
    lowered = [n.lower() for n in names]
    bad = [n for n in names if _PYTHON_DLL.match(n) or n.lower() == original.lower()]
    ok = len(set(lowered)) == len(lowered) and not bad
    detail = f"{len(names)} DLL names, distinct and none a Python DLL name: {', '.join(names)}"
    if bad:
        detail = f"clone DLLs keep a Python DLL's name (taken for the host's): {bad}"
    elif not ok:
        detail = f"DLL names repeat: {names}"
    return "distinct_dll_names", ok, detail


def _exports_match(clones, source, source_path: str) -> Check:
    if source is None:
        return ("exports_match", True,
                f"skipped: the original {source_path} cannot be read here to compare")
    problems, counts = [], []
    for c in clones:
        info = pe_reader.read(c.libpython)
        counts.append(info.exports_count)
        if info.exports_count != source.exports_count:
            problems.append(f"clone {c.index} exports {info.exports_count}, "
                            f"the original {source.exports_count}")
        if (info.name or "").lower() != c.soname.lower():
            problems.append(f"clone {c.index}'s export name is {info.name}, not {c.soname}")
        if info.needed != source.needed:
            problems.append(f"clone {c.index} imports {info.needed}, the original {source.needed}")
    return ("exports_match", not problems, "; ".join(problems) or
            f"every clone DLL exports the original's {source.exports_count} symbols under its "
            f"own name, with the original's imports")


def _forwarders(clones) -> Check:
    problems, seen = [], 0
    for c in clones:
        stable = [new for old, new in c.renames if old.lower() == STABLE_ABI_DLL]
        if not stable:
            continue
        info = pe_reader.read(os.path.join(c.directory, stable[0]))
        want = (os.path.splitext(c.soname)[0],)
        seen += 1
        if tuple(f.lower() for f in info.facts.forwards_to) != tuple(w.lower() for w in want):
            problems.append(f"clone {c.index}'s {stable[0]} forwards to "
                            f"{list(info.facts.forwards_to)}, not {want[0]}")
    if not seen:
        return "stable_abi_forwarders", True, "no python3.dll in the home: abi3 modules unsupported"
    return ("stable_abi_forwarders", not problems, "; ".join(problems) or
            f"{seen} python3.dll copies, each forwarding only to its own clone DLL")


def _pth_present(clones) -> Check:
    problems = []
    for c in clones:
        stem = os.path.splitext(c.soname)[0]
        path = os.path.join(c.directory, f"{stem}._pth")
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = [ln.strip() for ln in f.read().splitlines()]
        except OSError:
            problems.append(f"clone {c.index} has no {stem}._pth: CPython would not find "
                            "its standard library")
            continue
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if "import site" in entries:
            problems.append(f"{path}: 'import site' would import extensions before remapping")
        missing = []
        for e in entries:
            if ntpath.isabs(e) and not e.startswith(("/", "\\")):
                continue  # a drive path; only Windows can check it
            where = e.replace("\\", "/")
            if not posixpath.isabs(where):
                where = os.path.join(c.directory, where)
            if not os.path.exists(where):
                missing.append(e)
        if not entries:
            problems.append(f"{path} lists no path")
        elif missing:
            problems.append(f"{path} lists paths that do not exist: {missing}")
    return ("pth_present", not problems, "; ".join(problems) or
            f"{len(clones)} clones each have <clone DLL name>._pth naming existing stdlib paths")


def _checksums_and_signatures(clones) -> Check:
    problems, n = [], 0
    for c in clones:
        for _old, new in c.renames:
            info = pe_reader.read(os.path.join(c.directory, new))
            n += 1
            if info.facts.checksum != info.facts.computed_checksum:
                problems.append(f"{new}: checksum {info.facts.checksum:#x}, computed "
                                f"{info.facts.computed_checksum:#x}")
            if info.facts.certificate_size:
                problems.append(f"{new}: still carries an (invalid) Authenticode signature")
    return ("checksums_and_signatures", not problems, "; ".join(problems) or
            f"{n} rewritten DLLs: valid PE checksums, no signature left")
