"""PE rewriting on copies of the official embeddable CPython DLLs, checked by LLVM.

``llvm-readobj --coff-imports --coff-exports`` and ``llvm-objdump -p`` read the
rewritten files independently of pefile and of gilclone's reader.
"""

import re
import shutil
import subprocess

import pytest
import support
from gilclone.cloner import pe_writer
from gilclone.platforms import pe
from support import windows_embed
from test_pe_reader import parse_objdump_exports, parse_readobj

from gilclone.errors import BinaryFormatError, RewriteError

CLONE = "pyclone00"  # same length as python3XY


@pytest.fixture(params=support.fast_once(windows_embed.VERSIONS, windows_embed.VERSIONS[-1]), scope="module")
def build(request):
    support.require(shutil.which("llvm-readobj"), "llvm-readobj not installed (the oracle)")
    support.require(shutil.which("llvm-objdump"), "llvm-objdump not installed (the oracle)")
    return request.param, windows_embed.embed_dir(request.param)


def _tag(version):
    return "python" + version.replace(".", "")


def _readobj(path):
    out = subprocess.run(
        ["llvm-readobj", "--coff-imports", "--coff-exports", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    return parse_readobj(out)[str(path)]


def _objdump(path):
    out = subprocess.run(
        ["llvm-objdump", "-p", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out, parse_objdump_exports(out).get(str(path))


def _unsigned_with_good_checksum(path):
    """llvm-objdump's view: no security directory, CheckSum equals a fresh computation."""
    text, _ = _objdump(path)
    security = re.search(r"^Entry 4 (\S+) (\S+)\s+Security Directory", text, re.MULTILINE)
    assert security and int(security.group(1), 16) == 0 and int(security.group(2), 16) == 0
    stored = int(re.search(r"^CheckSum\s+([0-9a-f]+)", text, re.MULTILINE).group(1), 16)
    info = pe.read(path)
    assert stored == info.facts.checksum == info.facts.computed_checksum != 0
    assert info.facts.certificate_size == 0


@pytest.mark.slow
def test_rename_libpython(build, tmp_path):
    version, folder = build
    src = folder / f"{_tag(version)}.dll"
    dst = tmp_path / f"{CLONE}.dll"
    info = pe_writer.rename_dll(src, dst, f"{CLONE}.dll")
    assert info.name == f"{CLONE}.dll"
    # Neither "pyclone00.dll" nor the file name says a version: classify() gives None.
    assert (info.kind, info.python_version) == ("libpython", None)
    _, table = _objdump(dst)
    assert table.name == f"{CLONE}.dll"
    before, after = _readobj(src), _readobj(dst)
    assert after.exports_count == before.exports_count
    assert after.imports == before.imports
    _unsigned_with_good_checksum(dst)
    assert dst.stat().st_size < src.stat().st_size  # the certificate is gone


@pytest.mark.slow
def test_retarget_every_extension(build, tmp_path):
    version, folder = build
    old = f"{_tag(version)}.dll"
    done = 0
    for src in sorted(folder.glob("*.pyd")):
        before = _readobj(src)
        if old not in [n.lower() for n in before.imports + before.delay_imports]:
            continue
        dst = tmp_path / src.name
        info = pe_writer.retarget_imports(src, dst, {old: f"{CLONE}.dll"})
        after = _readobj(dst)
        swap = [f"{CLONE}.dll" if n.lower() == old else n for n in before.imports]
        assert list(after.imports) == swap, src.name
        assert after.delay_imports == before.delay_imports, src.name
        assert after.exports_count == before.exports_count, src.name
        assert info.needed == after.imports + after.delay_imports
        done += 1
    assert done > 10
    _unsigned_with_good_checksum(dst)


@pytest.mark.slow
def test_retarget_longer_names_into_section_padding(build, tmp_path):
    version, folder = build
    src = folder / "_decimal.pyd"
    long_name = f"{CLONE}-a-much-longer-clone-name.dll"
    mapping = {f"{_tag(version)}.dll": long_name, "kernel32.dll": "KERNEL32-long-alias.dll"}
    dst = tmp_path / "_decimal.pyd"
    info = pe_writer.retarget_imports(src, dst, mapping)
    after = _readobj(dst)
    assert long_name in after.imports
    assert "KERNEL32-long-alias.dll" in after.imports
    assert info.needed == after.imports
    grown = [
        (a, b) for a, b in zip(pe.read(src).facts.sections, info.facts.sections)
        if a.virtual_size != b.virtual_size
    ]
    assert grown and all(b.virtual_size > a.virtual_size for a, b in grown)
    assert all(b.virtual_size <= b.raw_size for _, b in grown)
    _unsigned_with_good_checksum(dst)


def test_retarget_shorter_name_in_place(build, tmp_path):
    version, folder = build
    dst = tmp_path / "select.pyd"
    pe_writer.retarget_imports(folder / "select.pyd", dst, {f"{_tag(version)}.dll": "pc0.dll"})
    assert "pc0.dll" in _readobj(dst).imports
    before, after = (folder / "select.pyd").read_bytes(), dst.read_bytes()
    assert len(after) == len(before) - pe.read(folder / "select.pyd").facts.certificate_size


@pytest.mark.slow
def test_retarget_forwarders(build, tmp_path):
    version, folder = build
    dst = tmp_path / "python3.dll"
    info = pe_writer.retarget_forwarders(folder / "python3.dll", dst, _tag(version), CLONE)
    assert info.facts.forwards_to == (CLONE,)
    text, table = _objdump(dst)
    assert table.forwards_to == (CLONE,)
    assert f"(forwarded to {_tag(version)}." not in text
    assert "(forwarded to pyclone00.Py_Initialize)" in text
    assert _readobj(dst).exports_count == _readobj(folder / "python3.dll").exports_count
    _unsigned_with_good_checksum(dst)


# --- refusals ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files313():
    return windows_embed.embed_dir("3.13")


def test_rename_longer_is_refused(files313, tmp_path):
    dst = tmp_path / "x.dll"
    with pytest.raises(RewriteError, match="longer"):
        pe_writer.rename_dll(files313 / "python313.dll", dst, "pyclone-long-00.dll")
    assert not dst.exists()


def test_forwarder_longer_is_refused(files313, tmp_path):
    with pytest.raises(RewriteError, match="inside the export directory"):
        pe_writer.retarget_forwarders(
            files313 / "python3.dll", tmp_path / "p3.dll", "python313", "pyclone0000"
        )


def test_forwarder_unknown_target_is_refused(files313, tmp_path):
    with pytest.raises(RewriteError, match="no export forwards to"):
        pe_writer.retarget_forwarders(
            files313 / "python3.dll", tmp_path / "p3.dll", "python312", "pyclone00"
        )


def test_missing_import_is_refused_unless_allowed(files313, tmp_path):
    src = files313 / "winsound.pyd"
    with pytest.raises(RewriteError, match="does not import python312.dll"):
        pe_writer.retarget_imports(src, tmp_path / "w.pyd", {"python312.dll": "x.dll"})
    info = pe_writer.retarget_imports(
        src, tmp_path / "w.pyd", {"python312.dll": "x.dll"}, missing_ok=True
    )
    assert info.needed == pe.read(src).needed


def test_no_room_for_huge_name(files313, tmp_path):
    dst = tmp_path / "select.pyd"
    with pytest.raises(RewriteError, match="no room"):
        pe_writer.retarget_imports(
            files313 / "select.pyd", dst, {"python313.dll": "p" * 5000 + ".dll"}
        )
    assert not dst.exists()


def test_non_ascii_name_is_refused(files313, tmp_path):
    with pytest.raises(RewriteError, match="not ASCII"):
        pe_writer.rename_dll(files313 / "python313.dll", tmp_path / "x.dll", "pyclöne00.dll")


def test_edit_that_does_not_take_is_caught(files313, tmp_path, monkeypatch):
    """If an edit is lost on the way, the re-read catches it and no file is left."""
    monkeypatch.setattr(pe_writer._Patcher, "write", lambda self, offset, new, what: None)
    dst = tmp_path / "select.pyd"
    with pytest.raises(RewriteError, match="did not take"):
        pe_writer.retarget_imports(files313 / "select.pyd", dst, {"python313.dll": "pc0.dll"})
    assert not dst.exists()


def test_damaged_input_is_a_format_error(files313, tmp_path):
    bad = tmp_path / "bad.pyd"
    bad.write_bytes((files313 / "select.pyd").read_bytes()[:5000])
    with pytest.raises(BinaryFormatError):
        pe_writer.retarget_imports(bad, tmp_path / "out.pyd", {"python313.dll": "pc0.dll"})
