"""The PE reader against the official Windows embeddable CPython builds 3.10-3.13.

Oracle: LLVM's own COFF readers. ``llvm-readobj --coff-imports --coff-exports``
gives the machine, the imports, the delay imports and the export entries;
``llvm-objdump -p`` gives the export directory's DLL name and the forwarders
(llvm-readobj prints neither).
"""

import re
import shutil
import struct
import subprocess
from typing import Dict, NamedTuple, Tuple

import pefile
import pytest
import support
from gilclone.platforms import binary, pe
from gilclone.platforms.model import (
    FORMAT_PE,
    KIND_EXECUTABLE,
    KIND_EXTENSION,
    KIND_LIBPYTHON,
    PeFacts,
)
from support import windows_embed

from gilclone.errors import BinaryFormatError

VERSIONS = windows_embed.VERSIONS

# llvm-readobj's "Arch:" spelling -> BinaryInfo.machine
_LLVM_ARCH = {"x86_64": "x86_64", "i386": "x86", "aarch64": "arm64", "thumb": "arm"}


class Oracle(NamedTuple):
    machine: str
    imports: Tuple[str, ...]
    delay_imports: Tuple[str, ...]
    exports_count: int


class ExportTable(NamedTuple):
    name: str
    forwards_to: Tuple[str, ...]


# --- oracle parsers (pure functions, unit-tested below on captured output) ---------


def parse_readobj(text: str) -> Dict[str, Oracle]:
    """``llvm-readobj --coff-imports --coff-exports F...`` output -> {file name: Oracle}.

    Top-level blocks start at column 0 ("Import {", "DelayImport {", "Export {");
    the first "Name:" inside an Import/DelayImport block is the DLL name.
    """
    result = {}
    current = None
    block = None

    def flush():
        if current is not None:
            name, arch, imports, delay, exports = current
            result[name] = Oracle(
                _LLVM_ARCH.get(arch, arch), tuple(imports), tuple(delay), exports
            )

    for line in text.splitlines():
        if line.startswith("File: "):
            flush()
            current = [line[len("File: "):].strip(), None, [], [], 0]
            block = None
        elif current is None:
            continue
        elif line.startswith("Arch: "):
            current[1] = line[len("Arch: "):].strip()
        elif line.startswith("Import {"):
            block = "import"
        elif line.startswith("DelayImport {"):
            block = "delay"
        elif line.startswith("Export {"):
            block = None
            current[4] += 1
        elif line.startswith("}"):
            block = None
        elif block and line.startswith("  Name: "):
            dll = line[len("  Name: "):].strip()
            (current[2] if block == "import" else current[3]).append(dll)
            block = None  # later "Name:" lines in the block are not DLL names
    flush()
    return result


_OBJDUMP_FILE = re.compile(r"^(?P<file>\S.*?):\s+file format ", re.MULTILINE)
_FORWARD = re.compile(r"\(forwarded to (?P<target>[^)]+)\)\s*$")


def parse_objdump_exports(text: str) -> Dict[str, ExportTable]:
    """``llvm-objdump -p F...`` output -> {file name: ExportTable}, only files with exports."""
    result = {}
    starts = list(_OBJDUMP_FILE.finditer(text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        chunk = text[m.end():end]
        at = chunk.find("\nExport Table:")
        if at < 0:
            continue
        name = None
        forwards = set()
        for line in chunk[at:].splitlines()[2:]:
            if line.startswith(" DLL name: "):
                name = line[len(" DLL name: "):].strip()
                continue
            fwd = _FORWARD.search(line)
            if fwd:
                forwards.add(fwd.group("target").rsplit(".", 1)[0])
        result[m.group("file")] = ExportTable(name, tuple(sorted(forwards)))
    return result


READOBJ_SAMPLE = """\

File: _wmi.pyd
Format: COFF-x86-64
Arch: x86_64
AddressSize: 64bit
Import {
  Name: PROPSYS.dll
  ImportLookupTableRVA: 0x5880
  ImportAddressTableRVA: 0x4140
  Symbol: VariantToString (206)
}
Import {
  Name: python313.dll
  ImportLookupTableRVA: 0x5890
  ImportAddressTableRVA: 0x4150
  Symbol: PyModule_Add (565)
}
DelayImport {
  Name: ole32.dll
  Attributes: 0x1
  ModuleHandle: 0x72D0
  ImportAddressTable: 0x72A0
  ImportNameTable: 0x5458
  BoundDelayImportTable: 0x54F0
  UnloadDelayImportTable: 0x0
  Import {
    Symbol: CoInitializeEx (97)
    Address: 0x180001AC7
  }
}
Export {
  Ordinal: 1
  Name: PyInit__wmi
  RVA: 0x1A10
}

File: python3.dll
Format: COFF-i386
Arch: i386
AddressSize: 32bit
Export {
  Ordinal: 1
  Name: PyAIter_Check
  RVA: 0x33DE
}
Export {
  Ordinal: 2
  Name: PyArg_Parse
  RVA: 0x3402
}
"""

OBJDUMP_SAMPLE = """\

_wmi.pyd:\tfile format coff-x86-64

Characteristics 0x2022
\texecutable
\tDLL

Export Table:
 DLL name: _wmi.pyd
 Ordinal base: 1
 Ordinal      RVA  Name
       1   0x1a10  PyInit__wmi

python.exe:\tfile format coff-x86-64

Characteristics 0x22

python3.dll:\tfile format coff-x86-64

Export Table:
 DLL name: python3.dll
 Ordinal base: 1
 Ordinal      RVA  Name
       1           PyAIter_Check (forwarded to python313.PyAIter_Check)
       2           PyArg_Parse (forwarded to python313.PyArg_Parse)
       3           Odd (forwarded to api-ms-win-core-x-l1-1-0.Odd)
"""


def test_parse_readobj_sample():
    got = parse_readobj(READOBJ_SAMPLE)
    assert got == {
        "_wmi.pyd": Oracle("x86_64", ("PROPSYS.dll", "python313.dll"), ("ole32.dll",), 1),
        "python3.dll": Oracle("x86", (), (), 2),
    }


def test_parse_objdump_sample():
    got = parse_objdump_exports(OBJDUMP_SAMPLE)
    assert got == {
        "_wmi.pyd": ExportTable("_wmi.pyd", ()),
        "python3.dll": ExportTable("python3.dll", ("api-ms-win-core-x-l1-1-0", "python313")),
    }


# --- fixtures -----------------------------------------------------------------------


def _tool(name):
    path = shutil.which(name)
    support.require(path, f"{name} not installed (Debian package llvm) ; it is the PE oracle")
    return path


def _run(args):
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout


class Embed(NamedTuple):
    version: str
    dir: object
    files: Tuple[str, ...]  # every .dll, .pyd and .exe, sorted
    readobj: Dict[str, Oracle]
    objdump: Dict[str, ExportTable]

    @property
    def tag(self):
        return self.version.replace(".", "")


_EMBEDS = {}


@pytest.fixture(params=support.fast_once(VERSIONS, VERSIONS[-1]), scope="module")
def embed(request):
    """One embeddable build with the oracle's view of all its binaries (run once)."""
    version = request.param
    if version not in _EMBEDS:
        readobj, objdump = _tool("llvm-readobj"), _tool("llvm-objdump")
        folder = windows_embed.embed_dir(version)
        files = tuple(sorted(
            p.name for p in folder.iterdir() if p.suffix.lower() in (".dll", ".pyd", ".exe")
        ))
        paths = [str(folder / f) for f in files]
        _EMBEDS[version] = Embed(
            version,
            folder,
            files,
            parse_readobj(_run([readobj, "--coff-imports", "--coff-exports", *paths])),
            parse_objdump_exports(_run([objdump, "-p", *paths])),
        )
    return _EMBEDS[version]


def _oracle(embed, name) -> Oracle:
    # llvm-readobj prints the path as given; the fixture passes full paths.
    return embed.readobj[str(embed.dir / name)]


def _exports(embed, name):
    return embed.objdump.get(str(embed.dir / name))


# --- the real files -----------------------------------------------------------------


@pytest.mark.slow
def test_libpython(embed):
    name = f"python{embed.tag}.dll"
    info = pe.read(embed.dir / name)
    assert info.format == FORMAT_PE
    assert info.kind == KIND_LIBPYTHON
    assert info.python_version == embed.version
    assert info.name == name
    assert info.exports_count == _oracle(embed, name).exports_count
    assert info.exports_count > 1000
    assert info.rpaths == ()
    assert isinstance(info.facts, PeFacts)
    assert info.facts.forwards_to == ()


def test_stable_abi_forwarder(embed):
    info = pe.read(embed.dir / "python3.dll")
    assert info.name == "python3.dll"
    # python3.dll forwards Py_Initialize too, so classify() calls it a libpython of
    # the stable ABI.
    assert (info.kind, info.python_version) == (KIND_LIBPYTHON, "abi3")
    assert info.facts.forwards_to == (f"python{embed.tag}",)
    assert info.facts.forwards_to == _exports(embed, "python3.dll").forwards_to
    assert info.exports_count == _oracle(embed, "python3.dll").exports_count
    assert info.needed == ()


@pytest.mark.slow
def test_extension_modules(embed):
    pyds = [f for f in embed.files if f.endswith(".pyd")]
    assert len(pyds) > 10
    for pyd in pyds:
        info = pe.read(embed.dir / pyd)
        assert (info.kind, info.python_version) == (KIND_EXTENSION, embed.version), pyd
        assert f"python{embed.tag}.dll" in [n.lower() for n in info.needed], pyd
        oracle = _oracle(embed, pyd)
        assert info.needed == oracle.imports + oracle.delay_imports, pyd
        assert info.facts.delay_imports == oracle.delay_imports, pyd


def test_executable(embed):
    info = pe.read(embed.dir / "python.exe")
    assert info.kind == KIND_EXECUTABLE
    assert info.python_version == embed.version
    assert info.name is None
    assert info.exports_count == 0
    assert info.needed[0].lower() == f"python{embed.tag}.dll"


@pytest.mark.slow
def test_every_binary_matches_llvm(embed):
    """machine, name, imports, delay imports, export count and forwarders of every
    .dll, .pyd and .exe of the build, all compared before failing."""
    mismatches = []
    for f in embed.files:
        info = pe.read(embed.dir / f)
        oracle = _oracle(embed, f)
        table = _exports(embed, f)
        ours = (info.machine, info.name, info.needed, info.facts.delay_imports,
                info.exports_count, info.facts.forwards_to)
        theirs = (oracle.machine, table.name if table else None,
                  oracle.imports + oracle.delay_imports, oracle.delay_imports,
                  oracle.exports_count, table.forwards_to if table else ())
        if ours != theirs:
            mismatches.append(f"{f}: ours {ours} != llvm {theirs}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.slow
def test_facts_of_signed_release_files(embed):
    """The release files are Authenticode-signed and carry a correct CheckSum."""
    for f in (f"python{embed.tag}.dll", "python3.dll", "python.exe", "select.pyd"):
        facts = pe.read(embed.dir / f).facts
        assert facts.certificate_size > 0, f
        assert facts.checksum == facts.computed_checksum != 0, f
        assert facts.header_slack >= 40, f  # room for one more section header
        assert facts.sections and all(s.raw_size >= 0 for s in facts.sections), f


def test_dispatch_through_read_binary(embed):
    path = embed.dir / "select.pyd"
    assert binary.read_binary(path) == pe.read(str(path))


def test_json_round_trip(embed):
    out = pe.read(embed.dir / "python3.dll").to_json()
    assert out["facts"]["forwards_to"] == [f"python{embed.tag}"]
    assert all("slack" in s for s in out["facts"]["sections"])


# --- damaged files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_bytes():
    """A small real PE image (select.pyd of 3.13) to damage."""
    folder = windows_embed.embed_dir("3.13")
    return (folder / "select.pyd").read_bytes()


@pytest.mark.parametrize("tail", [b"", b"\x01", b"\x01\x02", b"\x01\x02\x03", "hole"])
def test_checksum_matches_pefile(tmp_path, sample_bytes, tail):
    """The reader sums the file in chunks over its data extents; pefile sums it whole.

    Odd lengths, and a 1 MiB hole before a last byte, must give pefile's answer.
    """
    path = tmp_path / "sample.pyd"
    path.write_bytes(sample_bytes + (b"" if tail == "hole" else tail))
    if tail == "hole":
        with open(path, "r+b") as f:
            f.seek(len(sample_bytes) + (1 << 20) + 1)
            f.write(b"\x07")
    want = pefile.PE(str(path), fast_load=True).generate_checksum()
    assert pe.read(path).facts.computed_checksum == want


def _layout(data: bytes):
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    nsections, = struct.unpack_from("<H", data, e_lfanew + 6)
    opt_size, = struct.unpack_from("<H", data, e_lfanew + 20)
    table = e_lfanew + 24 + opt_size
    return e_lfanew, table, table + 40 * nsections


def _expect_error(tmp_path, data: bytes, *words):
    path = tmp_path / "damaged.pyd"
    path.write_bytes(data)
    with pytest.raises(BinaryFormatError) as excinfo:
        pe.read(path)
    message = str(excinfo.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    # The dispatcher gives the same error, not a traceback of its own.
    with pytest.raises(BinaryFormatError):
        binary.read_binary(path)
    return message


def test_truncated_to_half(tmp_path, sample_bytes):
    msg = _expect_error(tmp_path, sample_bytes[: len(sample_bytes) // 2], "truncated")
    assert "past the end of the file" in msg


@pytest.mark.parametrize("where", ["coff", "optional", "section_table", "first_section"])
def test_truncated_inside_headers(tmp_path, sample_bytes, where):
    e_lfanew, table, table_end = _layout(sample_bytes)
    cut = {
        "coff": e_lfanew + 10,
        "optional": e_lfanew + 24 + 1,
        "section_table": table + 50,
        "first_section": table_end + 8,
    }[where]
    _expect_error(tmp_path, sample_bytes[:cut], "truncated")


def test_truncated_to_100_bytes(tmp_path, sample_bytes):
    _expect_error(tmp_path, sample_bytes[:100], "no PE header")


def test_truncated_certificate(tmp_path, sample_bytes):
    _expect_error(tmp_path, sample_bytes[:-100], "certificate")


def test_zeroed_pe_signature(tmp_path, sample_bytes):
    e_lfanew, _, _ = _layout(sample_bytes)
    data = bytearray(sample_bytes)
    data[e_lfanew:e_lfanew + 4] = b"\0\0\0\0"
    _expect_error(tmp_path, bytes(data), "no PE header", "00000000")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_section_table(tmp_path, sample_bytes, seed):
    import random

    _, table, table_end = _layout(sample_bytes)
    data = bytearray(sample_bytes)
    rng = random.Random(seed)
    data[table:table_end] = bytes(rng.randrange(256) for _ in range(table_end - table))
    _expect_error(tmp_path, bytes(data))


def test_section_table_of_ff(tmp_path, sample_bytes):
    _, table, table_end = _layout(sample_bytes)
    data = bytearray(sample_bytes)
    data[table:table_end] = b"\xff" * (table_end - table)
    _expect_error(tmp_path, bytes(data), "section 0")


def test_dos_stub_only(tmp_path, sample_bytes):
    e_lfanew, _, _ = _layout(sample_bytes)
    _expect_error(tmp_path, sample_bytes[:e_lfanew], "no PE header", "MS-DOS")


def test_dos_program_without_pe_header(tmp_path):
    # A 64-byte MZ header whose e_lfanew is 0, followed by a bit of 16-bit code.
    header = bytearray(64)
    header[:2] = b"MZ"
    _expect_error(tmp_path, bytes(header) + b"\xb8\x01\x4c\xcd\x21" * 20, "no PE header")


def test_tiny_mz_file(tmp_path):
    _expect_error(tmp_path, b"MZ\x90\x00", "truncated")


def test_absurd_section_size(tmp_path, sample_bytes):
    _, table, _ = _layout(sample_bytes)
    data = bytearray(sample_bytes)
    struct.pack_into("<I", data, table + 8, 0x7FFFFFFF)  # VirtualSize of section 0
    _expect_error(tmp_path, bytes(data), "SizeOfImage")


def test_import_directory_outside_file(tmp_path, sample_bytes):
    e_lfanew, _, _ = _layout(sample_bytes)
    data = bytearray(sample_bytes)
    # PE32+: the data directories start at optional header + 112; entry 1 is imports.
    struct.pack_into("<II", data, e_lfanew + 24 + 112 + 8, 0x7FFF0000, 0x100)
    _expect_error(tmp_path, bytes(data), "damaged")
