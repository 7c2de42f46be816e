"""Load commands of one Mach-O slice: new install name, fresh UUID, added or renamed dylibs.

The load command area is rebuilt whole and must fit between the Mach-O header
and the first section (the header padding); if it does not, HeaderPaddingError
says how to make room. Every command not edited is kept byte for byte, so an
``@loader_path`` reference in a copy would resolve against the *copy's*
directory: ``loader_path_base`` replaces such prefixes in LC_LOAD_* and
LC_RPATH by an absolute directory (the original's). ``@rpath`` references
are left as they are: they resolve through LC_RPATH entries, which
``loader_path_base`` makes absolute, or through the loading executable's,
which do not move.

Constants are macholib's (macholib.mach_o).
"""

import os
import struct
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Dict, Optional

from gilclone.platforms import macho
from macholib.mach_o import LC_CODE_SIGNATURE, LC_ID_DYLIB, LC_LOAD_DYLIB, LC_RPATH, LC_UUID

from gilclone.errors import RewriteError


class HeaderPaddingError(RewriteError):
    """New load commands do not fit between the existing ones and the first section."""


@dataclass
class SliceEdits:
    """What to change in one slice; the writer fills in what it did (uuid, ordinal, rebound)."""

    new_id: Optional[str] = None
    fresh_uuid: bool = True
    add_dylib: Optional[str] = None
    rebind_python: bool = False
    loader_path_base: Optional[str] = None
    # LC_LOAD_* names to replace (an extension that links libpython by name: its
    # load command is pointed at the clone, and Py binds go to that ordinal).
    rename_dylibs: Dict[str, str] = field(default_factory=dict)
    identifier: str = ""
    # Filled in while applying: what the checks compare against.
    uuid: Optional[str] = None
    new_ordinal: Optional[int] = None
    rebound: int = 0


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _dylib_command(cmd: int, name: str, endian: str, timestamp=2, current=0, compat=0) -> bytes:
    raw = name.encode() + b"\0"
    size = _align(24 + len(raw), 8)
    return struct.pack(endian + "IIIIII", cmd, size, 24, timestamp, current, compat) + raw + bytes(
        size - 24 - len(raw))


def resolve_loader_path(name: str, base: str) -> Optional[str]:
    """``name`` with a leading ``@loader_path`` replaced by the directory ``base``; None if it has none."""
    if name == "@loader_path":
        return base
    if name.startswith("@loader_path/"):
        return os.path.join(base, name[len("@loader_path/"):])
    return None


def _rpath_command(path: str, endian: str) -> bytes:
    raw = path.encode() + b"\0"
    size = _align(12 + len(raw), 8)
    return struct.pack(endian + "III", LC_RPATH, size, 12) + raw + bytes(size - 12 - len(raw))


def edit_commands(image: bytearray, sl: macho.RawSlice, e: SliceEdits, path: str) -> bytearray:
    """Rebuild the load command area with the id, UUID, new dylib and signature command."""
    new_cmds = []
    last_dylib = -1
    for c in sl.commands:
        raw = bytes(image[c.offset : c.offset + c.cmdsize])
        if c.cmd == LC_ID_DYLIB and e.new_id is not None:
            _n, ts, cur, compat = struct.unpack_from(sl.endian + "IIII", raw, 8)
            raw = _dylib_command(c.cmd, e.new_id, sl.endian, ts, cur, compat)
        elif c.cmd == LC_UUID and e.fresh_uuid:
            fresh = _uuid.uuid4()
            e.uuid = str(fresh).upper()
            raw = raw[:8] + fresh.bytes
        elif c.cmd in macho.LOAD_DYLIB_COMMANDS + (LC_RPATH,):
            old = macho.lc_str(image, sl, c)
            name = e.rename_dylibs.get(old) if c.cmd != LC_RPATH else None
            if name is None and e.loader_path_base:
                name = resolve_loader_path(old, e.loader_path_base)
            if name is not None and name != old:
                if c.cmd == LC_RPATH:
                    raw = _rpath_command(name, sl.endian)
                else:
                    ts, cur, compat = struct.unpack_from(sl.endian + "III", raw, 12)
                    raw = _dylib_command(c.cmd, name, sl.endian, ts, cur, compat)
        new_cmds.append(raw)
        if c.cmd in macho.LOAD_DYLIB_COMMANDS:
            last_dylib = len(new_cmds) - 1
    if e.add_dylib is not None:
        new_cmds.insert(last_dylib + 1, _dylib_command(LC_LOAD_DYLIB, e.add_dylib, sl.endian))
    if e.fresh_uuid and not sl.find(LC_UUID):
        fresh = _uuid.uuid4()
        e.uuid = str(fresh).upper()
        new_cmds.append(struct.pack(sl.endian + "II", LC_UUID, 24) + fresh.bytes)
    if not sl.find(LC_CODE_SIGNATURE):
        new_cmds.append(struct.pack(sl.endian + "IIII", LC_CODE_SIGNATURE, 16, 0, 0))
    blob = b"".join(new_cmds)
    room = sl.sizeofcmds + macho.header_padding(image, sl)
    if len(blob) > room:
        raise HeaderPaddingError(
            f"{path} [{sl.arch}]: the edited load commands need {len(blob)} bytes but only {room} "
            f"fit before the first section ({room - sl.sizeofcmds} bytes of header padding); "
            "rebuild it linked with -Wl,-headerpad_max_install_names, or use a shorter install name"
        )
    start = sl.header_size
    image[start : start + room] = blob + bytes(room - len(blob))
    struct.pack_into(sl.endian + "II", image, 16, len(new_cmds), len(blob))
    return image
