"""Ad-hoc code signatures for Mach-O slices, in pure Python (no codesign needed).

arm64 macOS refuses to map a page whose hash does not match its signature, so
every slice the writer touches is re-signed the way ld64 signs what it links:
an embedded SuperBlob holding one CodeDirectory (version 0x20400, SHA-256,
4 KiB pages, flags adhoc | linker-signed, identifier = the file name) with one
hash per page of everything before the signature. No requirements blob and no
CMS blob: that is exactly what a linker-signed ad-hoc image carries.

``sign_slice`` works on one thin image (bytes in, bytes out); ``verify_file``
re-reads a whole (thin or fat) file and checks every page hash.
"""

import hashlib
import struct
from typing import List, Tuple

from gilclone.platforms import macho

from gilclone.errors import RewriteError

CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
CSMAGIC_CODEDIRECTORY = 0xFADE0C02
CSSLOT_CODEDIRECTORY = 0
CS_ADHOC = 0x2
CS_LINKER_SIGNED = 0x20000
CS_HASHTYPE_SHA256 = 2
CS_EXECSEG_MAIN_BINARY = 0x1
CD_VERSION = 0x20400
CD_HEADER_SIZE = 88
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HASH_SIZE = 32
SIGNATURE_ALIGN = 16


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def signature_size(code_limit: int, identifier: str) -> int:
    """Bytes the embedded signature takes (padded), for ``code_limit`` signed bytes."""
    slots = (code_limit + PAGE_SIZE - 1) // PAGE_SIZE
    cd = CD_HEADER_SIZE + len(identifier.encode()) + 1 + slots * HASH_SIZE
    return _align(12 + 8 + cd, SIGNATURE_ALIGN)


def build_signature(image: bytes, identifier: str, exec_seg: Tuple[int, int, int]) -> bytes:
    """The SuperBlob for ``image`` (the slice's bytes up to the signature), padded."""
    code_limit = len(image)
    ident = identifier.encode() + b"\0"
    slots = (code_limit + PAGE_SIZE - 1) // PAGE_SIZE
    hash_offset = CD_HEADER_SIZE + len(ident)
    cd_len = hash_offset + slots * HASH_SIZE
    base, limit, flags = exec_seg
    header = struct.pack(
        ">IIIIIIIIIBBBBIIIIQQQQ",
        CSMAGIC_CODEDIRECTORY,
        cd_len,
        CD_VERSION,
        CS_ADHOC | CS_LINKER_SIGNED,
        hash_offset,
        CD_HEADER_SIZE,  # identOffset
        0,  # nSpecialSlots
        slots,
        code_limit if code_limit < 1 << 32 else 0,
        HASH_SIZE,
        CS_HASHTYPE_SHA256,
        0,  # platform
        PAGE_SHIFT,
        0,  # spare2
        0,  # scatterOffset
        0,  # teamOffset
        0,  # spare3
        code_limit if code_limit >= 1 << 32 else 0,  # codeLimit64
        base,
        limit,
        flags,
    )
    assert len(header) == CD_HEADER_SIZE
    view = memoryview(image)
    hashes = b"".join(
        hashlib.sha256(view[i : i + PAGE_SIZE]).digest() for i in range(0, code_limit, PAGE_SIZE)
    )
    cd = header + ident + hashes
    blob = struct.pack(">III", CSMAGIC_EMBEDDED_SIGNATURE, 20 + len(cd), 1)
    blob += struct.pack(">II", CSSLOT_CODEDIRECTORY, 20) + cd
    return blob + bytes(_align(len(blob), SIGNATURE_ALIGN) - len(blob))


def _exec_seg(data: bytes, sl: macho.RawSlice) -> Tuple[int, int, int]:
    for _c, name, fileoff, filesize, _s in macho.segments(data, sl):
        if name == "__TEXT":
            flags = CS_EXECSEG_MAIN_BINARY if sl.filetype == macho.MH_EXECUTE else 0
            return fileoff, filesize, flags
    return 0, 0, 0


def sign_slice(image: bytearray, identifier: str, page_size: int) -> bytearray:
    """Sign one thin image whose existing signature (if any) is already stripped.

    The LC_CODE_SIGNATURE command must exist (the writer adds it); its data is
    placed at the 16-byte-aligned end of __LINKEDIT, which grows to hold it.
    """
    _fat, (sl,) = macho.scan(image)
    (cs,) = sl.find(macho.LC_CODE_SIGNATURE)
    linkedit = _linkedit(image, sl)
    c, fileoff, filesize = linkedit
    if fileoff + filesize != len(image):
        raise RewriteError("__LINKEDIT does not end the image; cannot place a signature")
    dataoff = _align(len(image), SIGNATURE_ALIGN)
    size = signature_size(dataoff, identifier)
    image = bytearray(image) + bytes(dataoff - len(image))
    struct.pack_into(sl.endian + "II", image, cs.offset + 8, dataoff, size)
    set_linkedit_size(image, sl, c, dataoff + size - fileoff, page_size)
    return image + build_signature(bytes(image), identifier, _exec_seg(image, sl))


def _linkedit(data: bytes, sl: macho.RawSlice):
    for c, name, fileoff, filesize, _s in macho.segments(data, sl):
        if name == "__LINKEDIT":
            return c, fileoff, filesize
    raise RewriteError("the image has no __LINKEDIT segment")


def set_linkedit_size(image: bytearray, sl: macho.RawSlice, c: macho.RawCommand, filesize: int,
                      page_size: int) -> None:
    """Set __LINKEDIT's filesize, growing its vmsize (page-rounded) when needed."""
    if c.cmd == macho.LC_SEGMENT_64:
        (vmsize,) = struct.unpack_from(sl.endian + "Q", image, c.offset + 32)
        struct.pack_into(sl.endian + "Q", image, c.offset + 48, filesize)
        if filesize > vmsize:
            struct.pack_into(sl.endian + "Q", image, c.offset + 32, _align(filesize, page_size))
    else:
        (vmsize,) = struct.unpack_from(sl.endian + "I", image, c.offset + 28)
        struct.pack_into(sl.endian + "I", image, c.offset + 36, filesize)
        if filesize > vmsize:
            struct.pack_into(sl.endian + "I", image, c.offset + 28, _align(filesize, page_size))


class SignatureError(RewriteError):
    """A signature is missing, malformed, or a page hash does not match."""


def verify_slice(data: bytes, sl: macho.RawSlice) -> dict:
    """Check the embedded signature of one slice page by page; returns what it found."""
    cmds = sl.find(macho.LC_CODE_SIGNATURE)
    if not cmds:
        raise SignatureError(f"{sl.arch}: no LC_CODE_SIGNATURE")
    dataoff, datasize = struct.unpack_from(sl.endian + "II", data, sl.offset + cmds[0].offset + 8)
    sig = bytes(data[sl.offset + dataoff : sl.offset + dataoff + datasize])
    magic, length, count = struct.unpack_from(">III", sig, 0)
    if magic != CSMAGIC_EMBEDDED_SIGNATURE or length > len(sig):
        raise SignatureError(f"{sl.arch}: not an embedded signature SuperBlob")
    cd_off = None
    for i in range(count):
        slot, off = struct.unpack_from(">II", sig, 12 + 8 * i)
        if slot == CSSLOT_CODEDIRECTORY:
            cd_off = off
    if cd_off is None:
        raise SignatureError(f"{sl.arch}: signature has no CodeDirectory")
    (cd_magic, cd_len, version, flags, hash_offset, ident_offset, _nspecial, nslots,
     code_limit, hash_size, hash_type, _platform, page_shift) = struct.unpack_from(
        ">IIIIIIIIIBBBB", sig, cd_off)
    if cd_magic != CSMAGIC_CODEDIRECTORY or hash_type != CS_HASHTYPE_SHA256 or hash_size != 32:
        raise SignatureError(f"{sl.arch}: unsupported CodeDirectory (hash type {hash_type})")
    if code_limit != dataoff:
        raise SignatureError(f"{sl.arch}: signature covers {code_limit} bytes, signature is at {dataoff}")
    page = 1 << page_shift
    if nslots != (code_limit + page - 1) // page:
        raise SignatureError(f"{sl.arch}: {nslots} page hashes for {code_limit} bytes")
    image = memoryview(data)[sl.offset : sl.offset + code_limit]
    for i in range(nslots):
        want = sig[cd_off + hash_offset + i * 32 : cd_off + hash_offset + (i + 1) * 32]
        if hashlib.sha256(image[i * page : (i + 1) * page]).digest() != want:
            raise SignatureError(f"{sl.arch}: page {i} (file offset {i * page}) does not match its hash")
    ident = sig[cd_off + ident_offset :].split(b"\0", 1)[0].decode()
    return {"arch": sl.arch, "identifier": ident, "pages": nslots, "flags": flags,
            "version": version, "length": cd_len}


def verify_file(path) -> List[dict]:
    """Verify every slice of ``path``; raises SignatureError on the first bad page."""
    with open(path, "rb") as f:
        data = f.read()
    _fat, slices = macho.scan(data)
    return [verify_slice(data, sl) for sl in slices]
