"""The Mach-O writer and signer on real macOS wheels, checked with the LLVM tools."""

import struct

import pytest
from gilclone.cloner import codesign, macho_commands
from gilclone.cloner import macho_binds as binds
from gilclone.cloner import macho_writer as w
from gilclone.platforms import macho
from support import macos_wheels as mw

from gilclone.errors import RewriteError

N_CLONES = 4
_CACHE = {}


def wheel_files(key):
    if key not in _CACHE:
        _CACHE[key] = mw.binaries(key)
    return _CACHE[key]


def _uuids(path, arch):
    ph = mw.run_tool(mw.OBJDUMP, "--macho", "--private-headers", f"--arch={arch}", path)
    return [c["uuid"] for c in mw.parse_load_commands(ph) if c.get("cmd") == "LC_UUID"]


def _binds(path, arch):
    out = mw.run_tool(mw.OBJDUMP, "--macho", "--bind", "--lazy-bind", "--weak-bind", f"--arch={arch}", path)
    return mw.parse_bind_tables(out)


def _rebase(path, arch):
    return mw.run_tool(mw.OBJDUMP, "--macho", "--rebase", f"--arch={arch}", path).splitlines()[1:]


# ---------------------------------------------------------------------------
# Pure parts


def test_bind_stream_rewrite_retargets_only_python_flat_binds():
    sym = lambda n: bytes([0x40]) + n + b"\0"  # noqa: E731
    stream = (
        b"\x72\x10"  # segment 2, offset 16
        + b"\x3e" + sym(b"_PyList_New") + b"\x90"  # flat lookup, bind
        + sym(b"_malloc_flat") + b"\x90"  # still flat: not a Py symbol
        + b"\x11" + sym(b"_free") + b"\x90"  # ordinal 1
        + b"\x3e" + sym(b"__Py_NoneStruct") + b"\x90"
        + b"\x00\x00"
    )
    new, changed = binds.rewrite_bind_stream(stream, 3, flat_image=False)
    assert changed == 2
    assert binds.bind_records(new) == [
        (b"_PyList_New", 3), (b"_malloc_flat", -2), (b"_free", 1), (b"__Py_NoneStruct", 3),
    ]
    # A flat image: every other bind becomes an explicit flat lookup.
    new, _ = binds.rewrite_bind_stream(stream, 3, flat_image=True)
    assert [o for _s, o in binds.bind_records(new)] == [3, -2, -2, 3]
    # Nothing to change: the stream comes back byte for byte.
    plain = b"\x72\x10\x11" + sym(b"_free") + b"\x90\x00"
    assert binds.rewrite_bind_stream(plain, 3, flat_image=False) == (plain, 0)
    assert binds.encode_ordinal(20) == b"\x20\x14" and binds.encode_ordinal(-2) == b"\x3e"


def test_lazy_stream_is_patched_in_place():
    entry = lambda ordinal, name: b"\x72\x08" + ordinal + b"\x40" + name + b"\0\x90\x00"  # noqa: E731
    stream = entry(b"\x3e", b"_PyErr_Occurred") + entry(b"\x11", b"_strlen") + entry(b"\x3e", b"_foo")
    new, changed = binds.rewrite_lazy_stream(stream, 2, flat_image=False)
    assert changed == 1 and len(new) == len(stream)
    assert binds.bind_records(new, lazy=True) == [(b"_PyErr_Occurred", 2), (b"_strlen", 1), (b"_foo", -2)]
    with pytest.raises(RewriteError, match="in place"):
        binds.rewrite_lazy_stream(stream, 16, flat_image=False)


def test_chained_imports_rewrite():
    names = b"\0_PyLong_FromLong\0_memcpy\0"
    imports = struct.pack("<III", 0xFE | (1 << 9), 1 | (18 << 9), 0xFE | (1 << 9))  # format 1
    header_size = 28
    blob = struct.pack("<7I", 0, 0, header_size, header_size + len(imports), 3, 1, 0) + imports + names
    _fmt, before = binds.chained_imports(blob)
    assert [(o, n) for _a, o, n in before] == [(-2, b"_PyLong_FromLong"), (1, b"_memcpy"), (-2, b"_PyLong_FromLong")]
    new, changed = binds.rewrite_chained_imports(blob, 4, flat_image=False)
    assert changed == 2
    assert [(o, n) for _a, o, n in binds.chained_imports(new)[1]] == [
        (4, b"_PyLong_FromLong"), (1, b"_memcpy"), (4, b"_PyLong_FromLong"),
    ]


# ---------------------------------------------------------------------------
# Real files


@pytest.mark.slow
@pytest.mark.parametrize("key", ["numpy-x86_64", "cryptography-abi3"])
def test_clone_dylib_four_times(tmp_path, key):
    """Stand-ins for libpython: dylibs with an install name, thin and universal."""
    sources = [p for p in wheel_files(key) if macho.read(p).name]
    assert sources
    for src in sources:
        original = macho.read(src)
        seen_uuids = {s.uuid for s in original.facts.slices}
        names = set()
        for i in range(N_CLONES):
            dst = tmp_path / f"c{i}-{src.name}"
            new_name = f"@rpath/clone{i}/{src.name}"
            w.clone_libpython(src, dst, new_name)
            info = macho.read(dst)
            assert info.facts.architectures == original.facts.architectures
            assert info.exports_count == original.exports_count
            assert info.needed == original.needed
            for s in info.facts.slices:
                assert mw.parse_otool_id(mw.run_tool(mw.OTOOL, "-arch", s.arch, "-D", dst)) == new_name
                (u,) = _uuids(dst, s.arch)
                assert u == s.uuid and u not in seen_uuids
                seen_uuids.add(u)
            names.add(info.name)
            checked = codesign.verify_file(dst)
            assert [c["arch"] for c in checked] == list(original.facts.architectures)
            assert all(c["identifier"] == dst.name for c in checked)
        assert len(names) == N_CLONES


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(mw.WHEELS))
def test_rebind_extensions(tmp_path, key):
    extensions = [p for p in wheel_files(key) if macho.read(p).kind == "extension"]
    assert extensions
    for n, src in enumerate(extensions):
        original = macho.read(src)
        uuids = {s.uuid for s in original.facts.slices}
        clones = N_CLONES if n < 3 else 1  # four copies of a few, one of every other
        for i in range(clones):
            lib = f"@loader_path/../clone{i}/libpython3.12.dylib"
            dst = tmp_path / f"c{i}-{src.name}"
            edits = w.rebind_extension(src, dst, lib)
            info = macho.read(dst)
            assert info.needed == original.needed + (lib,), dst
            assert info.kind == "extension" and info.exports_count == original.exports_count
            assert all(e.rebound > 0 for e in edits), src
            codesign.verify_file(dst)
            for s in info.facts.slices:
                assert s.two_level_namespace and s.uuid not in uuids
                uuids.add(s.uuid)
                libs = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-arch", s.arch, "-L", dst))
                assert libs[-1] == lib or lib in libs
                if i:
                    continue
                # The oracle: every bind row the same, except Py flat lookups now on the clone.
                old_rows, new_rows = _binds(src, s.arch), _binds(dst, s.arch)
                assert len(old_rows) == len(new_rows), (dst, s.arch)
                leaf = "libpython3.12"
                moved = 0
                for a, b in zip(old_rows, new_rows):
                    if a.get("dylib") == "flat-namespace" and a["symbol"].startswith(("_Py", "__Py")):
                        assert b["dylib"] == leaf, (dst, s.arch, b)
                        b = dict(b, dylib="flat-namespace")
                        moved += 1
                    assert a == b, (dst, s.arch)
                assert moved > 0, (dst, s.arch)
                assert not any(r.get("dylib") == "flat-namespace" and r["symbol"].startswith(("_Py", "__Py"))
                               for r in new_rows)
                assert _rebase(src, s.arch) == _rebase(dst, s.arch)
                assert sorted(mw.parse_exports_trie(mw.run_tool(
                    mw.OBJDUMP, "--macho", "--exports-trie", f"--arch={s.arch}", dst))) == sorted(
                    mw.parse_exports_trie(mw.run_tool(
                        mw.OBJDUMP, "--macho", "--exports-trie", f"--arch={s.arch}", src)))


def test_signature_catches_a_changed_page(tmp_path):
    (src,) = wheel_files("markupsafe-universal2")
    dst = tmp_path / src.name
    w.rebind_extension(src, dst, "@rpath/libpython3.12.dylib")
    data = bytearray(dst.read_bytes())
    _fat, slices = macho.scan(data)
    data[slices[1].offset + 5000] ^= 0xFF
    bad = tmp_path / "bad.so"
    bad.write_bytes(data)
    with pytest.raises(codesign.SignatureError, match="page 1"):
        codesign.verify_file(bad)


def test_too_little_header_padding(tmp_path):
    src = [p for p in wheel_files("numpy-arm64") if p.name.startswith("_sfc64")][0]
    dst = tmp_path / src.name
    with pytest.raises(macho_commands.HeaderPaddingError, match="headerpad_max_install_names") as info:
        w.rebind_extension(src, dst, "/" + "x" * 40000 + "/libpython3.12.dylib")
    assert str(src) in str(info.value)
    assert not dst.exists() and list(tmp_path.iterdir()) == []
