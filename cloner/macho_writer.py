"""Write Mach-O edits to a copy: collect them per file, apply them to every slice, re-read, check.

Two jobs, both for the clones of libpython on macOS:

* ``clone_libpython``: a copy with a new LC_ID_DYLIB and a fresh random
  LC_UUID per slice (dyld treats images with equal UUIDs as one image).
* ``rebind_extension``: a copy of an extension module (linked with
  ``-undefined dynamic_lookup``) that loads the clone's libpython by an
  added LC_LOAD_DYLIB, and whose ``_Py*``/``__Py*`` binds that were flat
  lookups name that new dylib's ordinal instead.

``apply`` does either, or both, from collected ``MachoEdits``. The parts:

* ``cloner.macho_commands``: the load commands (install name, UUID, added or
  renamed dylibs, ``@loader_path`` made absolute), within the header padding;
* ``cloner.macho_binds``: the bind streams and chained-fixup imports;
* ``cloner.macho_linkedit``: __LINKEDIT, which moves when a bind stream
  grows, the old signature, and the nlist entries.

An extension that links libpython by name instead (no dynamic lookup) has
that load command renamed (``rename_dylibs``); its Py binds, flat or not,
then go to that command's ordinal.

Every touched slice loses its old code signature and gets a fresh ad-hoc one
(cloner.codesign). The result is written to a temporary name, re-read with the
reader and checked against what was intended; any mismatch is a RewriteError
and nothing is left at ``dst``.
"""

import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from gilclone.cloner import codesign, macho_linkedit
from gilclone.cloner.macho_binds import python_binds
from gilclone.cloner.macho_commands import SliceEdits, edit_commands
from gilclone.platforms import macho
from macholib.mach_o import FAT_MAGIC_64, LC_ID_DYLIB, LC_RPATH, MH_TWOLEVEL

from gilclone.errors import BinaryFormatError, RewriteError

PAGE_SIZES = {"arm64": 0x4000, "arm64e": 0x4000, "arm64_32": 0x4000}


def edit_slice(image: bytearray, e: SliceEdits, path: str) -> bytearray:
    """Apply ``e`` to one thin image and sign it; returns the new image."""
    try:
        _fat, (sl,) = macho.scan(image)
    except macho.MalformedMachO as exc:
        raise BinaryFormatError(path, str(exc)) from None
    page_size = PAGE_SIZES.get(sl.arch, 0x1000)
    image = macho_linkedit.strip_signature(bytearray(image), sl, page_size)
    loads = sl.find(*macho.LOAD_DYLIB_COMMANDS)
    if e.add_dylib is not None:
        e.new_ordinal = len(loads) + 1
    elif e.rename_dylibs:
        renamed = [i for i, c in enumerate(loads) if macho.lc_str(image, sl, c) in e.rename_dylibs]
        e.new_ordinal = renamed[0] + 1 if renamed else None
    if e.rebind_python and e.new_ordinal is None:
        raise RewriteError(f"{path} [{sl.arch}]: no dylib to re-bind the Py symbols to "
                           "(neither added nor renamed)")
    if e.rebind_python:
        image, e.rebound = macho_linkedit.rebind(image, sl, e.new_ordinal, page_size)
        _fat, (sl,) = macho.scan(image)
    image = edit_commands(image, sl, e, path)
    return codesign.sign_slice(image, e.identifier, page_size)


# ---------------------------------------------------------------------------
# Whole files


def _assemble_fat(data: bytes, slices: List[macho.RawSlice], images: List[bytes]) -> bytes:
    (magic,) = struct.unpack_from(">I", data, 0)
    is64 = magic == FAT_MAGIC_64
    entry = 32 if is64 else 20
    header = bytearray(data[: 8 + len(slices) * entry])
    out_pos = len(header)
    body = []
    for i, img in enumerate(images):
        at = 8 + i * entry
        align_field = at + (24 if is64 else 16)
        (align,) = struct.unpack_from(">I", header, align_field)
        boundary = 1 << min(align, 20)
        offset = (out_pos + boundary - 1) // boundary * boundary
        body.append(bytes(offset - out_pos) + img)
        if is64:
            struct.pack_into(">QQ", header, at + 8, offset, len(img))
        else:
            if offset + len(img) >= 1 << 32:
                raise RewriteError("universal file would exceed 4 GiB")
            struct.pack_into(">II", header, at + 8, offset, len(img))
        out_pos = offset + len(img)
    return bytes(header) + b"".join(body)


def _apply(src: str, dst: str, make_edits: Callable[[macho.RawSlice], SliceEdits]):
    src, dst = os.fspath(src), os.fspath(dst)
    data, fat, slices = macho.scan_path(src)
    edits = []
    images = []
    for sl in slices:
        e = make_edits(sl)
        e.identifier = e.identifier or os.path.basename(dst)
        edits.append(e)
        images.append(bytes(edit_slice(bytearray(data[sl.offset : sl.offset + sl.size]), e, src)))
    out = _assemble_fat(data, slices, images) if fat else images[0]
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(out)
        os.chmod(tmp, 0o755)
        _check(tmp, src, edits)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return edits


def _check(path: str, src: str, edits: List[SliceEdits]) -> None:
    """Re-read the result and compare it with what the edits intended."""
    problems = []
    try:
        info = macho.read(path)
        before = macho.read(src)
        data, _fat, slices = macho.scan_path(path)
        codesign.verify_file(path)
    except (BinaryFormatError, RewriteError) as exc:
        raise RewriteError(f"{src}: rewritten copy does not read back: {exc}") from None
    if info.facts.architectures != before.facts.architectures:
        problems.append("architectures changed")
    for sl, s, e in zip(slices, info.facts.slices, edits):
        if e.fresh_uuid and s.uuid != e.uuid:
            problems.append(f"{s.arch}: UUID is {s.uuid}, wanted {e.uuid}")
        names = {c.cmd: macho.lc_str(data, sl, c) for c in sl.find(LC_ID_DYLIB)}
        if e.new_id is not None and names.get(LC_ID_DYLIB) != e.new_id:
            problems.append(f"{s.arch}: install name is {names.get(LC_ID_DYLIB)}")
        loads = [macho.lc_str(data, sl, c) for c in sl.find(*macho.LOAD_DYLIB_COMMANDS)]
        if e.add_dylib is not None:
            if len(loads) < e.new_ordinal or loads[e.new_ordinal - 1] != e.add_dylib:
                problems.append(f"{s.arch}: {e.add_dylib} is not load ordinal {e.new_ordinal}")
        left = [n for n in loads if n in e.rename_dylibs]
        if left:
            problems.append(f"{s.arch}: still loads {left[0]}")
        if e.loader_path_base:
            rpaths = [macho.lc_str(data, sl, c) for c in sl.find(LC_RPATH)]
            stale = [n for n in loads + rpaths if n.startswith("@loader_path")]
            if stale:
                problems.append(f"{s.arch}: {stale[0]} was not made absolute")
        if e.rebind_python:
            if not sl.flags & MH_TWOLEVEL:
                problems.append(f"{s.arch}: MH_TWOLEVEL not set")
            left = [n for n, o in python_binds(data, sl) if o != e.new_ordinal]
            if left:
                problems.append(f"{s.arch}: Py binds not on the clone's ordinal: {left[:3]}")
    if problems:
        raise RewriteError(f"{src}: rewritten copy does not check out: " + "; ".join(problems))


def clone_libpython(src, dst, new_install_name: str) -> List[SliceEdits]:
    """Copy libpython with LC_ID_DYLIB = ``new_install_name`` and a fresh UUID per slice."""
    return _apply(src, dst, lambda sl: SliceEdits(new_id=new_install_name))


def rebind_extension(src, dst, new_libpython_install_name: str, *,
                     loader_path_base: Optional[str] = None) -> List[SliceEdits]:
    """Copy an extension so its Py* flat binds go to ``new_libpython_install_name``."""
    return _apply(src, dst, lambda sl: SliceEdits(
        add_dylib=new_libpython_install_name, rebind_python=True, loader_path_base=loader_path_base,
    ))


@dataclass
class MachoEdits:
    """Edits for one file, collected and applied together (the writer's plan)."""

    new_id: Optional[str] = None
    add_dylib: Optional[str] = None
    rebind_python: bool = False
    loader_path_base: Optional[str] = None
    rename_dylibs: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def apply(src, dst, edits: MachoEdits) -> List[SliceEdits]:
    """Apply collected edits to every slice of ``src``, writing ``dst``."""
    return _apply(src, dst, lambda sl: SliceEdits(
        new_id=edits.new_id, add_dylib=edits.add_dylib, rebind_python=edits.rebind_python,
        loader_path_base=edits.loader_path_base, rename_dylibs=dict(edits.rename_dylibs),
    ))
