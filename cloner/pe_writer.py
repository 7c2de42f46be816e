"""Rewrite DLL names inside a copy of a PE image (the Windows half of cloning).

Like auditwheel's patcher: the edits for one file are collected first, applied
to the copy at once, and the copy is then re-read with gilclone's own PE reader
to check that every edit took; anything else raises RewriteError and leaves no
file at ``dst``.

Three operations, each on a copy ``src`` -> ``dst``:

- ``rename_dll``: the DLL name in the export directory (python313.dll ->
  pyclone00.dll). Windows looks up ``<name>._pth`` from the file name, but the
  export name is what tools and the loader's "already loaded?" check show.
- ``retarget_imports``: DLL names of the import and delay-import directories.
  A new name no longer than the old one is written over it, NUL padded; a longer
  one goes into the file padding after a section's data (the section's
  VirtualSize is extended to map it) and the descriptor's name RVA is re-pointed.
- ``retarget_forwarders``: the "python313.Py_X" strings of python3.dll's
  forwarded exports. A forwarder must stay inside the export directory, so the
  new DLL name may not be longer than the old one.

Every rewritten file gets a recomputed optional-header CheckSum, and an
Authenticode signature (now invalid) is removed: the security directory entry
is zeroed and the certificate table cut off the end of the file.
"""

import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import pefile
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.model import BinaryInfo
from gilclone.platforms.pe import (  # data-directory indexes, shared with the reader
    _BOUND_IMPORT,
    _DELAY_IMPORT,
    _EXPORT,
    _IMPORT,
    _SECURITY,
)

from gilclone.errors import BinaryFormatError, RewriteError

_SCN_MEM_READ = 0x40000000
_SCN_MEM_WRITE = 0x80000000
_SCN_MEM_EXECUTE = 0x20000000
_SCN_MEM_DISCARDABLE = 0x02000000
_SCN_CNT_UNINITIALIZED = 0x00000080

# Offsets inside the structures that are edited.
_CHECKSUM_IN_OPTIONAL = 64
_VIRTUAL_SIZE_IN_SECTION = 8
_NAME_IN_EXPORT_DIR = 12
_NAME_IN_IMPORT_DESC = 12
_NAME_IN_DELAY_DESC = 4


def rename_dll(src, dst, new_name: str) -> BinaryInfo:
    """Copy ``src`` to ``dst`` with its export-directory DLL name set to ``new_name``.

    The name is written in place, so it may not be longer than the old one.
    Returns the re-read result.
    """
    p = _Patcher(src)
    exp = getattr(p.pe, "DIRECTORY_ENTRY_EXPORT", None)
    if exp is None or not exp.name:
        raise RewriteError(f"{p.src}: has no export directory name to rename")
    old = bytes(exp.name)
    new = _ascii(p.src, new_name)
    name_offset = p.pe.get_offset_from_rva(exp.struct.Name)
    if len(new) > len(old):
        raise RewriteError(
            f"{p.src}: new DLL name {new_name!r} is longer than {old.decode('latin-1')!r}; "
            f"choose a name of at most {len(old)} characters"
        )
    p.write(name_offset, new.ljust(len(old), b"\0"), f"export name {new_name}")
    p.expect(f"export name is {new_name!r}", lambda info: info.name == new_name)
    p.expect("exports unchanged", lambda info: info.exports_count == p.before.exports_count)
    p.expect("imports unchanged", lambda info: info.needed == p.before.needed)
    return p.commit(dst)


def retarget_imports(src, dst, mapping: Dict[str, str], missing_ok: bool = False) -> BinaryInfo:
    """Copy ``src`` to ``dst`` with imported DLL names replaced per ``mapping``.

    ``mapping`` maps old DLL names (matched case-insensitively) to new ones, for
    both the import and the delay-import directory. Unless ``missing_ok``, a
    mapping that matches no import is an error (the caller expected a dependency
    that is not there). Returns the re-read result.
    """
    p = _Patcher(src)
    lowered = {k.lower(): v for k, v in mapping.items()}
    found = set()
    entries = []  # (descriptor's name field offset, field holds a VA, old name, new name)
    base = p.pe.OPTIONAL_HEADER.ImageBase
    for imp in getattr(p.pe, "DIRECTORY_ENTRY_IMPORT", ()):
        entries.append((imp.struct.get_file_offset() + _NAME_IN_IMPORT_DESC, False, imp.dll))
    for imp in getattr(p.pe, "DIRECTORY_ENTRY_DELAY_IMPORT", ()):
        # Attributes bit 0 clear: an old-style descriptor that holds VAs, not RVAs.
        is_va = not (imp.struct.grAttrs & 1)
        entries.append((imp.struct.get_file_offset() + _NAME_IN_DELAY_DESC, is_va, imp.dll))

    done = {}  # string offset -> new bytes, for names shared by several descriptors
    for field_offset, is_va, raw in entries:
        old = bytes(raw).decode("latin-1")
        target = lowered.get(old.lower())
        if target is None:
            continue
        found.add(old.lower())
        new = _ascii(p.src, target)
        value = int.from_bytes(p.data[field_offset:field_offset + 4], "little")
        rva = value - base if is_va else value
        string_offset = p.pe.get_offset_from_rva(rva)
        if done.get(string_offset) == new:
            continue
        if len(new) <= len(raw) and string_offset not in done:
            p.write(string_offset, new.ljust(len(raw), b"\0"), f"import {old} -> {target}")
            done[string_offset] = new
        else:
            new_rva = p.place_string(new, f"import {old} -> {target}")
            field = (new_rva + base) if is_va else new_rva
            p.write(field_offset, field.to_bytes(4, "little"), f"name RVA of import {old}")

    missing = sorted(set(lowered) - found)
    if missing and not missing_ok:
        raise RewriteError(
            f"{p.src}: does not import {', '.join(missing)} "
            f"(imports: {', '.join(p.before.needed) or 'nothing'})"
        )
    if found:
        p.clear_bound_imports()

    def renamed(names):
        return tuple(lowered.get(n.lower(), n) for n in names)

    want_needed = renamed(p.before.needed)
    want_delay = renamed(p.before.facts.delay_imports)
    p.expect(f"imports are {want_needed}", lambda info: info.needed == want_needed)
    p.expect(f"delay imports are {want_delay}",
             lambda info: info.facts.delay_imports == want_delay)
    p.expect("export name unchanged", lambda info: info.name == p.before.name)
    p.expect("exports unchanged", lambda info: info.exports_count == p.before.exports_count)
    return p.commit(dst)


def retarget_forwarders(src, dst, old: str, new: str) -> BinaryInfo:
    """Copy ``src`` to ``dst`` with forwarders "old.X" rewritten to "new.X".

    ``old`` and ``new`` are DLL names as forwarder strings spell them (no ".dll"):
    ``retarget_forwarders(p3, out, "python313", "pyclone00")``. Written in place,
    so ``new`` may not be longer than ``old``. Returns the re-read result.
    """
    p = _Patcher(src)
    exp = getattr(p.pe, "DIRECTORY_ENTRY_EXPORT", None)
    old_b, new_b = _ascii(p.src, old), _ascii(p.src, new)
    if len(new_b) > len(old_b):
        raise RewriteError(
            f"{p.src}: forwarder target {new!r} is longer than {old!r}; a forwarder string "
            f"must stay inside the export directory, so use at most {len(old_b)} characters"
        )
    count = 0
    for sym in getattr(exp, "symbols", ()):
        if not sym.forwarder:
            continue
        dll, sep, rest = bytes(sym.forwarder).rpartition(b".")
        if not sep or dll.lower() != old_b.lower():
            continue
        offset = p.pe.get_offset_from_rva(sym.address)
        text = new_b + b"." + rest
        p.write(offset, text.ljust(len(sym.forwarder), b"\0"), f"forwarder {rest!r}")
        count += 1
    if not count:
        raise RewriteError(
            f"{p.src}: no export forwards to {old!r} "
            f"(forwards to: {', '.join(p.before.facts.forwards_to) or 'nothing'})"
        )
    want = tuple(sorted(
        {new if f.lower() == old.lower() else f for f in p.before.facts.forwards_to}
    ))
    p.expect(f"forwards to {want}", lambda info: info.facts.forwards_to == want)
    p.expect("exports unchanged", lambda info: info.exports_count == p.before.exports_count)
    p.expect("export name unchanged", lambda info: info.name == p.before.name)
    return p.commit(dst)


def _ascii(path: str, name: str) -> bytes:
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise RewriteError(f"{path}: DLL name {name!r} is not ASCII") from None
    if not raw or b"\0" in raw:
        raise RewriteError(f"{path}: DLL name {name!r} is empty or contains NUL")
    return raw


class _Patcher:
    """Edits collected for one file; ``commit`` writes them all to the copy."""

    def __init__(self, src):
        self.src = os.fspath(src)
        self.before = pe_reader.read(self.src)  # refuses damaged input up front
        with open(self.src, "rb") as f:
            self.data = bytearray(f.read())
        self.pe = pefile.PE(data=bytes(self.data), fast_load=True)
        self.pe.parse_data_directories(directories=[_IMPORT, _DELAY_IMPORT, _EXPORT])
        self._edits: List[Tuple[int, bytes, str]] = []
        self._checks: List[Tuple[str, Callable[[BinaryInfo], bool]]] = []
        # Per section index: VirtualSize after the strings placed so far.
        self._grown: Dict[int, int] = {}

    def write(self, offset: int, new: bytes, what: str) -> None:
        for other, old_bytes, other_what in self._edits:
            if offset < other + len(old_bytes) and other < offset + len(new):
                raise RewriteError(f"{self.src}: edits overlap: {what} and {other_what}")
        self._edits.append((offset, bytes(new), what))

    def expect(self, what: str, check: Callable[[BinaryInfo], bool]) -> None:
        self._checks.append((what, check))

    def place_string(self, text: bytes, what: str) -> int:
        """Room for ``text`` + NUL in a section's file padding; returns its RVA."""
        need = len(text) + 1
        sections = list(self.pe.sections)
        usable = [i for i in range(len(sections)) if _preference(sections[i]) is not None]
        for i in sorted(usable, key=lambda i: _preference(sections[i])):
            s = sections[i]
            vsize = self._grown.get(i, s.Misc_VirtualSize)
            start = (vsize + 1) & ~1  # keep strings 2-aligned, as import names are
            end = start + need
            if end > s.SizeOfRawData:
                continue
            next_va = min(
                [t.VirtualAddress for t in sections if t.VirtualAddress > s.VirtualAddress]
                + [self.pe.OPTIONAL_HEADER.SizeOfImage]
            )
            if s.VirtualAddress + end > next_va:
                continue
            offset = s.PointerToRawData + start
            if any(self.data[offset:offset + need]):
                continue  # padding in use by something we do not know about
            self._grown[i] = end
            self.write(offset, text + b"\0", what)
            return s.VirtualAddress + start
        raise RewriteError(
            f"{self.src}: no room for the {len(text)}-byte name {text.decode('ascii')!r}: "
            f"no mapped, non-executable section has {need} free bytes of file padding; "
            f"choose a name no longer than the one it replaces"
        )

    def clear_bound_imports(self) -> None:
        """Bound imports cache addresses per DLL name; renamed DLLs invalidate them."""
        dirs = self.pe.OPTIONAL_HEADER.DATA_DIRECTORY
        if _BOUND_IMPORT < len(dirs) and dirs[_BOUND_IMPORT].VirtualAddress:
            at = dirs[_BOUND_IMPORT].get_file_offset()
            self.write(at, b"\0" * 8, "clear bound imports")

    def commit(self, dst) -> BinaryInfo:
        dst = os.fspath(dst)
        data = self.data
        for offset, new, _what in self._edits:
            data[offset:offset + len(new)] = new
        for i, vsize in self._grown.items():
            header = self.pe.sections[i].get_file_offset()
            at = header + _VIRTUAL_SIZE_IN_SECTION
            data[at:at + 4] = vsize.to_bytes(4, "little")
        data = self._strip_certificate(data)
        checksum_at = self.pe.OPTIONAL_HEADER.get_file_offset() + _CHECKSUM_IN_OPTIONAL
        data[checksum_at:checksum_at + 4] = b"\0\0\0\0"
        checksum = pefile.PE(data=bytes(data), fast_load=True).generate_checksum()
        data[checksum_at:checksum_at + 4] = checksum.to_bytes(4, "little")

        folder = os.path.dirname(os.path.abspath(dst))
        fd, tmp = tempfile.mkstemp(prefix=".pe-writer-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            shutil.copymode(self.src, tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            _unlink(tmp)
            raise RewriteError(f"{dst}: cannot write the rewritten copy ({exc})") from None
        return self._verify(dst)

    def _strip_certificate(self, data: bytearray) -> bytearray:
        dirs = self.pe.OPTIONAL_HEADER.DATA_DIRECTORY
        if _SECURITY >= len(dirs) or not dirs[_SECURITY].VirtualAddress:
            return data
        entry = dirs[_SECURITY]
        start, size = entry.VirtualAddress, entry.Size
        at = entry.get_file_offset()
        data[at:at + 8] = b"\0" * 8
        if start + size >= len(data) - 8:  # the table ends the file (maybe 8-byte padded)
            return data[:start]
        data[start:start + size] = b"\0" * size
        return data

    def _verify(self, dst: str) -> BinaryInfo:
        try:
            after = pe_reader.read(dst)
        except BinaryFormatError as exc:
            _unlink(dst)
            raise RewriteError(f"{dst}: the rewritten copy is unreadable: {exc.problem}") from None
        failed = [what for what, check in self._checks if not check(after)]
        if after.facts.certificate_size:
            failed.append("certificate removed")
        if after.facts.checksum != after.facts.computed_checksum:
            failed.append("checksum recomputed")
        if failed:
            _unlink(dst)
            raise RewriteError(
                f"{dst}: rewriting {self.src} did not take: expected {'; '.join(failed)}"
            )
        return after


def _preference(section) -> Optional[Tuple[int, int]]:
    """Sort key for sections that may take new strings; None for unusable ones.

    Read-only data first, then writable data; never code, uninitialised or
    discardable sections, and never a section that is not mapped readable.
    """
    chars = section.Characteristics
    if not chars & _SCN_MEM_READ:
        return None
    if chars & (_SCN_MEM_EXECUTE | _SCN_MEM_DISCARDABLE | _SCN_CNT_UNINITIALIZED):
        return None
    if not section.Misc_VirtualSize or section.SizeOfRawData <= section.Misc_VirtualSize:
        return None
    return (1 if chars & _SCN_MEM_WRITE else 0, section.VirtualAddress)


def _unlink(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
