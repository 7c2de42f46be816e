"""The Mach-O reader against real macOS wheels, with the LLVM tools as the oracle."""

import pathlib
import struct

import pytest
from gilclone.platforms import binary, macho
from gilclone.platforms.model import FORMAT_MACHO
from support import macos_wheels as mw

from gilclone.errors import BinaryFormatError

# ---------------------------------------------------------------------------
# Oracle parsers, on output captured from llvm-otool-14 / llvm-objdump 14.

OTOOL_L_DYLIB = """\
numpy/.dylibs/libgfortran.5.dylib:
\t/DLC/numpy/.dylibs/libgfortran.5.dylib (compatibility version 6.0.0, current version 6.0.0)
\t@loader_path/libquadmath.0.dylib (compatibility version 1.0.0, current version 1.0.0)
\t/usr/lib/libSystem.B.dylib (compatibility version 1.0.0, current version 1197.1.1)
"""
OTOOL_D_DYLIB = "numpy/.dylibs/libgfortran.5.dylib:\n/DLC/numpy/.dylibs/libgfortran.5.dylib\n"
OTOOL_D_BUNDLE = "numpy/random/_sfc64.cpython-312-darwin.so:\n"

PRIVATE_HEADERS = """\
x/_speedups.cpython-312-darwin.so:
Mach header
      magic cputype cpusubtype  caps    filetype ncmds sizeofcmds      flags
MH_MAGIC_64   ARM64        ALL  0x00      BUNDLE    14       1416   NOUNDEFS DYLDLINK TWOLEVEL
Load command 0
      cmd LC_SEGMENT_64
  cmdsize 232
  segname __TEXT
  fileoff 0
 filesize 16384
   nsects 2
Section
  sectname __text
   segname __TEXT
      size 0x00000000000009dc
    offset 12124
      type S_REGULAR
Section
  sectname __stubs
   segname __TEXT
      size 0x0000000000000010
    offset 14652
      type S_SYMBOL_STUBS
Load command 1
      cmd LC_SEGMENT_64
  cmdsize 152
  segname __DATA
  fileoff 16384
 filesize 16384
   nsects 1
Section
  sectname __bss
   segname __DATA
      size 0x0000000000000010
    offset 0
      type S_ZEROFILL
Load command 2
      cmd LC_SEGMENT_64
  cmdsize 72
  segname __LINKEDIT
  fileoff 49152
 filesize 2732
   nsects 0
Load command 3
     cmd LC_UUID
 cmdsize 24
    uuid 3528E108-8624-3D8F-9AEB-C882DA087646
Load command 4
          cmd LC_RPATH
      cmdsize 32
         path @loader_path/ (offset 12)
Load command 5
      cmd LC_CODE_SIGNATURE
  cmdsize 16
  dataoff 50336
 datasize 556
"""

UNIVERSAL_HEADERS = """\
Fat headers
fat_magic FAT_MAGIC
nfat_arch 2
architecture x86_64
    cputype CPU_TYPE_X86_64
    cpusubtype CPU_SUBTYPE_X86_64_ALL
    capabilities 0x0
    offset 16384
    size 9853248
    align 2^14 (16384)
architecture arm64
    cputype CPU_TYPE_ARM64
    cpusubtype CPU_SUBTYPE_ARM64_ALL
    capabilities 0x0
    offset 9879552
    size 9125720
    align 2^14 (16384)
"""

EXPORTS_TRIE = """\
x/libgfortran.5.dylib:

Exports trie:
0x00003AF0  __gfortran_set_options
0x00003C30  __gfortran_set_convert
0x00000000  _foo [re-export] (_bar from libbar)
"""


def test_parse_otool_libraries_and_id():
    assert mw.parse_otool_libraries(OTOOL_L_DYLIB) == [
        "/DLC/numpy/.dylibs/libgfortran.5.dylib",
        "@loader_path/libquadmath.0.dylib",
        "/usr/lib/libSystem.B.dylib",
    ]
    assert mw.parse_otool_id(OTOOL_D_DYLIB) == "/DLC/numpy/.dylibs/libgfortran.5.dylib"
    assert mw.parse_otool_id(OTOOL_D_BUNDLE) is None


def test_parse_private_headers():
    header = mw.parse_mach_header(PRIVATE_HEADERS)
    assert header["magic"] == "MH_MAGIC_64"
    assert header["filetype"] == "BUNDLE"
    assert header["sizeofcmds"] == 1416
    assert header["flags"] == ["NOUNDEFS", "DYLDLINK", "TWOLEVEL"]
    cmds = mw.parse_load_commands(PRIVATE_HEADERS)
    assert [c["cmd"] for c in cmds] == [
        "LC_SEGMENT_64", "LC_SEGMENT_64", "LC_SEGMENT_64", "LC_UUID", "LC_RPATH", "LC_CODE_SIGNATURE",
    ]
    assert [s["sectname"] for s in cmds[0]["sections"]] == ["__text", "__stubs"]
    assert cmds[0]["segname"] == "__TEXT"  # a section's segname does not overwrite it
    assert cmds[3]["uuid"] == "3528E108-8624-3D8F-9AEB-C882DA087646"
    assert cmds[4]["path"] == "@loader_path/ (offset 12)"
    assert cmds[5]["datasize"] == "556"
    # First data: __text at 12124 (the zerofill __bss at 0 does not count).
    assert mw.header_padding_from(header, cmds) == 12124 - 32 - 1416


def test_parse_universal_and_exports():
    archs = mw.parse_universal_headers(UNIVERSAL_HEADERS)
    assert [(a["architecture"], a["offset"], a["size"]) for a in archs] == [
        ("x86_64", 16384, 9853248),
        ("arm64", 9879552, 9125720),
    ]
    assert mw.parse_universal_headers("") == []
    assert mw.parse_exports_trie(EXPORTS_TRIE) == [
        "__gfortran_set_options", "__gfortran_set_convert", "_foo",
    ]
    assert mw.parse_nm_names("0000000000003250 T _PyInit_x\n0000000000000010 S _y\n") == [
        "_PyInit_x", "_y",
    ]


# ---------------------------------------------------------------------------
# The export trie parser on hand-built tries.




def _uleb2(n):
    """A ULEB128 padded to two bytes (dyld and the reader accept non-minimal encodings)."""
    assert n < 1 << 14
    return bytes([0x80 | (n & 0x7F), n >> 7])


def _trie(tree):
    """Serialise {edge: (terminal_payload or None, subtree)} as a dyld export trie."""
    nodes = []

    def collect(payload, children):
        idx = len(nodes)
        nodes.append(None)
        kids = [(edge, collect(p, sub)) for edge, (p, sub) in children.items()]
        nodes[idx] = (payload or b"", kids)
        return idx

    collect(None, tree)
    sizes = [
        len(macho.write_uleb(len(term))) + len(term) + 1 + sum(len(e) + 1 + 2 for e, _ in kids)
        for term, kids in nodes
    ]
    offsets = [sum(sizes[:i]) for i in range(len(nodes))]
    blob = bytearray()
    for term, kids in nodes:
        blob += macho.write_uleb(len(term)) + term + bytes([len(kids)])
        for edge, child in kids:
            blob += edge.encode() + b"\0" + _uleb2(offsets[child])
    return bytes(blob)


def test_export_trie_parser():
    term = macho.write_uleb(0) + macho.write_uleb(0x1000)  # flags regular, address
    tree = {"_Py": (None, {"Init_a": (term, {}), "_Initialize": (term, {"Ex": (term, {})})}),
            "_x": (term, {})}
    names = macho.parse_export_trie(_trie(tree))
    assert names == ["_PyInit_a", "_Py_Initialize", "_Py_InitializeEx", "_x"]
    assert macho.parse_export_trie(b"") == []
    assert macho.read_uleb(b"\xe5\x8e\x26", 0) == (624485, 3)


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00\x01\x00\x00",  # root's only child is the root: a loop
        b"\x00\x01abc",  # edge label without NUL
        b"\x00\x01a\x00\x40",  # child offset past the end
        b"\x05\x00",  # terminal info longer than the trie
        b"\x00",  # cut before the child count
        b"\x00\x01a\x00\x80",  # ULEB cut off
        # two children whose nodes share bytes (at 8 and 9): no linker writes that, and
        # allowing it would let a small trie cost quadratic time
        b"\x00\x02a\x00\x08b\x00\x09\x01\x00\x00",
    ],
)
def test_export_trie_parser_rejects_malformed(blob):
    with pytest.raises(macho.MalformedMachO):
        macho.parse_export_trie(blob)


def test_export_names_cut_for_classification():
    term = macho.write_uleb(0) + macho.write_uleb(0x1000)
    long_name = "Init_" + "x" * 300
    tree = {"_Py": (None, {long_name: (term, {}), "_Initialize": (term, {})})}
    assert macho.parse_export_trie(_trie(tree), max_name=10) == ["_PyInit_xx", "_Py_Initia"]
    assert macho.parse_export_trie(_trie(tree))[0] == "_Py" + long_name


# ---------------------------------------------------------------------------
# Real files against the LLVM tools.

_CACHE = {}


def wheel_files(key):
    if key not in _CACHE:
        _CACHE[key] = mw.binaries(key)
    return _CACHE[key]


def _oracle(path, arch):
    """What the LLVM tools say about one slice."""
    dashl = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-arch", arch, "-L", path))
    own_id = mw.parse_otool_id(mw.run_tool(mw.OTOOL, "-arch", arch, "-D", path))
    if own_id is not None:
        assert dashl[0] == own_id, "otool -L lists a dylib's own id first"
        dashl = dashl[1:]
    ph = mw.run_tool(mw.OBJDUMP, "--macho", "--private-headers", f"--arch={arch}", path)
    header = mw.parse_mach_header(ph)
    cmds = mw.parse_load_commands(ph)
    exports = mw.parse_exports_trie(
        mw.run_tool(mw.OBJDUMP, "--macho", "--exports-trie", f"--arch={arch}", path)
    )
    uuids = [c["uuid"] for c in cmds if c.get("cmd") == "LC_UUID"]
    sigs = [int(c["datasize"]) for c in cmds if c.get("cmd") == "LC_CODE_SIGNATURE"]
    return {
        "name": own_id,
        "needed": tuple(dashl),
        "rpaths": tuple(
            c["path"].rsplit(" (offset", 1)[0] for c in cmds if c.get("cmd") == "LC_RPATH"
        ),
        "uuid": uuids[0] if uuids else None,
        "filetype": header["filetype"].lower(),
        "two_level": "TWOLEVEL" in header["flags"],
        "padding": mw.header_padding_from(header, cmds),
        "signature": sigs[0] if sigs else 0,
        "exports": exports,
    }


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(mw.WHEELS))
def test_reader_matches_llvm_tools(key):
    files = wheel_files(key)
    checked = 0
    for path in files:
        info = macho.read(str(path))
        assert info.format == FORMAT_MACHO
        assert info.path == str(path)
        archs = mw.run_tool(mw.LIPO, "-archs", path).split()
        fat = mw.parse_universal_headers(
            mw.run_tool(mw.OBJDUMP, "--macho", "--universal-headers", path)
        )
        assert info.facts.fat == bool(fat), path
        assert list(info.facts.architectures) == archs, path
        assert info.machine == ("universal" if fat else archs[0]), path
        data = path.read_bytes()
        _fat, raw = macho.scan(data)
        if fat:
            assert [(a["architecture"], a["offset"], a["size"]) for a in fat] == [
                (s.arch, s.offset, s.size) for s in raw
            ], path
        for i, (sl, rs) in enumerate(zip(info.facts.slices, raw)):
            want = _oracle(path, sl.arch)
            where = f"{path} [{sl.arch}]"
            assert sl.filetype == want["filetype"], where
            assert sl.uuid == want["uuid"], where
            assert sl.two_level_namespace == want["two_level"], where
            assert sl.header_padding == want["padding"], where
            assert sl.code_signature_size == want["signature"], where
            assert sorted(macho.export_names(data, rs)) == sorted(want["exports"]), where
            if i == 0:  # the BinaryInfo fields describe the first slice
                assert info.name == want["name"], where
                assert info.needed == want["needed"], where
                assert info.rpaths == want["rpaths"], where
                assert info.exports_count == len(want["exports"]), where
            checked += 1
    assert checked >= len(files)


@pytest.mark.parametrize("key", ["numpy-arm64", "numpy-x86_64"])
def test_numpy_kinds(key):
    files = wheel_files(key)
    extensions = [p for p in files if p.name.endswith(".cpython-312-darwin.so")]
    dylibs = [p for p in files if p.parent.name == ".dylibs"]
    assert len(extensions) >= 15
    for p in extensions:
        info = binary.read_binary(p)
        assert (info.kind, info.python_version) == ("extension", "3.12"), p
        assert info.name is None and info.facts.slices[0].filetype == "bundle", p
    if key == "numpy-x86_64":
        assert len(dylibs) == 4
    for p in dylibs:
        info = binary.read_binary(p)
        assert info.kind == "library", p
        assert info.name and info.name.endswith(p.name), p


def test_abi3_and_universal2_kinds():
    (rust,) = wheel_files("cryptography-abi3")
    info = binary.read_binary(rust)
    assert (info.kind, info.python_version) == ("extension", "abi3")
    assert info.machine == "universal" and info.facts.architectures == ("x86_64", "arm64")
    assert info.name == "@rpath/cryptography.hazmat.bindings._rust.abi3.so"
    (speedups,) = wheel_files("markupsafe-universal2")
    info = binary.read_binary(speedups)
    assert (info.kind, info.python_version) == ("extension", "3.12")
    assert [s.code_signature_size > 0 for s in info.facts.slices] == [False, True]
    assert info.to_json()["facts"]["architectures"] == ["x86_64", "arm64"]


def test_nlist_fallback_matches_llvm_nm(tmp_path):
    """Without dyld info the reader counts external defined nlist symbols, as llvm-nm does."""
    src = _pick("numpy-x86_64", "_generator.cpython-312-darwin.so")
    data = bytearray(src.read_bytes())
    _fat, (sl,) = macho.scan(data)
    (cmd,) = sl.find(macho.LC_DYLD_INFO_ONLY)
    struct.pack_into(sl.endian + "I", data, cmd.offset, 0x7E)  # an unknown command now
    path = tmp_path / src.name
    path.write_bytes(data)
    want = mw.parse_nm_names(mw.run_tool("llvm-nm", "--extern-only", "--defined-only", path))
    info = macho.read(path)
    assert info.exports_count == len(want) > 50
    assert sorted(macho.read_exports(path)) == sorted(want)
    assert info.kind == "extension"


# ---------------------------------------------------------------------------
# Broken files: every one a BinaryFormatError naming the file, never a traceback.


def _pick(key, name) -> pathlib.Path:
    for p in wheel_files(key):
        if p.name == name:
            return p
    raise AssertionError(f"{name} not in {key}")


def _thin():
    return _pick("numpy-arm64", "_sfc64.cpython-312-darwin.so")


def _fat():
    return _pick("markupsafe-universal2", "_speedups.cpython-312-darwin.so")


def _expect_error(path, *needles):
    with pytest.raises(BinaryFormatError) as info:
        macho.read(str(path))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("which", ["thin", "fat"])
@pytest.mark.parametrize("cut", [0, 3, 20, 31, 100, "cmds-1", "half", "end-1"])
def test_truncated(tmp_path, which, cut):
    src = _thin() if which == "thin" else _fat()
    data = src.read_bytes()
    _f, slices = macho.scan(data)
    first = slices[0]
    if cut == "cmds-1":
        cut = first.offset + first.commands_end - 1
    elif cut == "half":
        cut = len(data) // 2
    elif cut == "end-1":
        cut = len(data) - 1
    path = tmp_path / src.name
    path.write_bytes(data[:cut])
    _expect_error(path)
    if cut:
        with pytest.raises(BinaryFormatError):
            binary.read_binary(path)


@pytest.mark.parametrize("size", [0, 4, 6, 0xFFFFFFF0, "plus8", "minus8"])
def test_garbage_load_command_size(tmp_path, size):
    src = _thin()
    data = bytearray(src.read_bytes())
    _f, (sl,) = macho.scan(data)
    for c in sl.commands:
        if c.cmd == macho.LC_UUID:
            break
    if size == "plus8":
        size = c.cmdsize + 8
    elif size == "minus8":
        size = c.cmdsize - 8
    struct.pack_into("<I", data, c.offset + 4, size)
    path = tmp_path / src.name
    path.write_bytes(data)
    _expect_error(path)


def test_absurd_header_counts(tmp_path):
    src = _thin()
    data = bytearray(src.read_bytes())
    for field, value in ((16, 0x7FFFFFFF), (20, 0x7FFFFFF0), (16, 0)):  # ncmds, sizeofcmds
        bad = bytearray(data)
        struct.pack_into("<I", bad, field, value)
        path = tmp_path / f"{field}-{value}-{src.name}"
        path.write_bytes(bad)
        _expect_error(path)


def test_zeroed_header(tmp_path):
    src = _thin()
    data = bytearray(src.read_bytes())
    data[0:32] = bytes(32)
    path = tmp_path / src.name
    path.write_bytes(data)
    _expect_error(path, "not a Mach-O")
    keep_magic = bytearray(src.read_bytes())
    keep_magic[4:32] = bytes(28)
    path2 = tmp_path / ("magic-" + src.name)
    path2.write_bytes(keep_magic)
    _expect_error(path2)


def test_segment_and_linkedit_past_eof(tmp_path):
    src = _thin()
    data = bytearray(src.read_bytes())
    _f, (sl,) = macho.scan(data)
    (sym,) = sl.find(macho.LC_SYMTAB)
    bad = bytearray(data)
    struct.pack_into("<I", bad, sym.offset + 16, len(data) + 64)  # stroff
    path = tmp_path / ("symtab-" + src.name)
    path.write_bytes(bad)
    _expect_error(path, "string table")
    for c, name, _off, _size, _s in macho.segments(data, sl):
        if name == "__LINKEDIT":
            bad = bytearray(data)
            struct.pack_into("<Q", bad, c.offset + 48, len(data))  # filesize
            path = tmp_path / ("linkedit-" + src.name)
            path.write_bytes(bad)
            _expect_error(path, "__LINKEDIT", "past the end")


def test_corrupt_export_trie(tmp_path):
    src = _thin()
    data = bytearray(src.read_bytes())
    _f, (sl,) = macho.scan(data)
    (dyld,) = sl.find(macho.LC_DYLD_INFO_ONLY)
    off, size = struct.unpack_from("<II", data, dyld.offset + 40)
    data[off : off + 4] = b"\x00\x01\x00\x00"  # root points back at itself
    path = tmp_path / src.name
    path.write_bytes(data)
    _expect_error(path, "export trie")


def test_fat_header_past_eof(tmp_path):
    src = _fat()
    data = bytearray(src.read_bytes())
    # Second architecture's offset beyond the end of the file.
    struct.pack_into(">I", data, 8 + 20 + 8, len(data) + 4096)
    path = tmp_path / src.name
    path.write_bytes(data)
    _expect_error(path, "past the", "slice 1")
    bad = bytearray(src.read_bytes())
    struct.pack_into(">I", bad, 8 + 12, len(bad))  # first slice's size
    path2 = tmp_path / ("size-" + src.name)
    path2.write_bytes(bad)
    _expect_error(path2, "slice 0")
    many = bytearray(src.read_bytes())
    struct.pack_into(">I", many, 4, 1000)
    path3 = tmp_path / ("many-" + src.name)
    path3.write_bytes(many)
    _expect_error(path3, "1000 architectures")


def test_unreadable_paths(tmp_path):
    with pytest.raises(BinaryFormatError) as info:
        macho.read(str(tmp_path / "missing.so"))
    assert "missing.so" in str(info.value)
