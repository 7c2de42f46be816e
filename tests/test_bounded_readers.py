"""The readers stay bounded, whatever file they are pointed at.

- special files (FIFO, device, socket) are refused before they are opened;
- a 10 GiB sparse PE or Mach-O is read in time and memory that follow its headers and
  tables, not its size;
- the Mach-O export trie is walked in linear time;
- in ``gilclone inspect`` a MemoryError, or any failure of a reader, is one line, exit 2.

Anything that could hang or eat the machine runs in a child process with a timeout;
the measured numbers are printed (``-s``) for the record.
"""

import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import pytest
import support
from gilclone.platforms import binary, macho

from gilclone import main as cli
from gilclone.errors import BinaryFormatError

SPARSE_SIZE = 10 << 30
# Targets are 1 s and 100 MB; the time bound is lenient because the test machine is shared.
TIME_LIMIT_S = 5.0
RSS_LIMIT_MB = 100
CHAIN_NODES = 100_000


def _child(code: str, *args, timeout=120, limit_as=None):
    """Run ``code`` in a fresh interpreter; (returncode, stdout, stderr)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if limit_as else None)
    return proc.returncode, proc.stdout, proc.stderr


def _cli(*args, timeout=60, limit_as=None):
    code = "import sys; from gilclone.main import main; sys.exit(main(sys.argv[1:]))"
    return _child(code, *args, timeout=timeout, limit_as=limit_as)


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------
# Special files


def test_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "lib.so"
    os.mkfifo(fifo)
    try:
        rc, _out, err = _cli("inspect", fifo, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("gilclone inspect on a FIFO blocked")
    _one_line_error(rc, err, str(fifo), "FIFO")


def test_each_reader_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "lib.dylib"
    os.mkfifo(fifo)
    code = """
        import sys
        from gilclone.errors import BinaryFormatError
        from gilclone.platforms import binary, macho, pe
        for read in (binary.read_binary, macho.read, macho.read_exports, macho.scan_path, pe.read):
            try:
                read(sys.argv[1])
            except BinaryFormatError as exc:
                assert "FIFO" in str(exc), exc
            else:
                sys.exit(f"{read.__qualname__} read a FIFO")
    """
    try:
        rc, _out, err = _child(code, fifo, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("a reader blocked on a FIFO")
    assert rc == 0, err


def test_devices_and_sockets_are_refused(tmp_path):
    with pytest.raises(BinaryFormatError, match="character device"):
        binary.read_binary("/dev/null")
    # A short directory: socket paths are limited to about 100 bytes.
    short = tempfile.mkdtemp(prefix="gc-")
    try:
        path = os.path.join(short, "s.so")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
            with pytest.raises(BinaryFormatError, match="socket") as info:
                binary.read_binary(path)
            assert path in str(info.value)
    finally:
        shutil.rmtree(short)


# ---------------------------------------------------------------------------
# 10 GiB sparse files


@pytest.fixture
def sparse_files():
    """Removes the 10 GiB files afterwards: they take no blocks, but look huge to tools."""
    made = []
    yield made
    for path in made:
        os.unlink(path)


def _sparse_copy(src, dest, made):
    made.append(dest)
    shutil.copyfile(src, dest)
    os.truncate(dest, SPARSE_SIZE)
    support.require(os.stat(dest).st_blocks * 512 < 1 << 30,
                    "the file system here does not keep sparse files sparse")
    return dest


def _small_pe():
    from support import windows_embed

    return windows_embed.embed_dir("3.10") / "_queue.pyd"


def _thin_macho():
    from support import macos_wheels as mw

    (path,) = [p for p in mw.binaries("numpy-arm64") if p.name.startswith("_operand_flag_tests.")]
    return path


def _elf():
    dynload = sysconfig.get_config_var("DESTSHARED")
    return next(os.path.join(dynload, p) for p in sorted(os.listdir(dynload))
                if p.startswith("_bisect."))


_MEASURE = """
    import json, resource, sys, time
    from gilclone.platforms.binary import read_binary
    best = None
    for _ in range(3):
        start = time.perf_counter()
        info = read_binary(sys.argv[1])
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": best, "rss_mb": rss, "kind": info.kind,
                      "exports": info.exports_count}))
"""


@pytest.mark.parametrize("fmt", ["pe", "macho", "elf"])
def test_sparse_10gib_file_reads_in_bounded_time_and_memory(tmp_path, fmt, capsys, sparse_files):
    src = {"pe": _small_pe, "macho": _thin_macho, "elf": _elf}[fmt]()
    path = _sparse_copy(src, tmp_path / os.path.basename(src), sparse_files)
    rc, out, err = _child(_MEASURE, path, timeout=300)
    assert rc == 0, err
    got = json.loads(out)
    with capsys.disabled():
        print(f"\n10 GiB sparse {fmt}: {got['seconds']:.3f} s, max RSS {got['rss_mb']:.0f} MB")
    assert got["kind"] == "extension" and got["exports"] >= 1
    assert got["rss_mb"] < RSS_LIMIT_MB
    assert got["seconds"] < TIME_LIMIT_S


@pytest.mark.parametrize("fmt", ["pe", "macho"])
def test_sparse_file_under_an_address_space_limit_is_one_line(tmp_path, fmt, sparse_files):
    """The issue's `ulimit -v 4000000`: a MemoryError traceback with exit 1 before."""
    src = _small_pe() if fmt == "pe" else _thin_macho()
    path = _sparse_copy(src, tmp_path / os.path.basename(src), sparse_files)
    rc, out, err = _cli("inspect", path, limit_as=4_000_000 * 1024, timeout=120)
    if rc == 0:
        assert "extension" in out
    else:
        _one_line_error(rc, err, str(path))


def test_memory_error_in_a_reader_is_one_line(tmp_path, sparse_files):
    """A string table of 4 GiB inside a sparse file, read under a 7 GiB address-space limit."""
    data = bytearray(_thin_macho().read_bytes())
    _fat, (sl,) = macho.scan(data)
    (dyld,) = sl.find(macho.LC_DYLD_INFO_ONLY)
    struct.pack_into("<I", data, dyld.offset, 0x7E)  # no trie: exports come from the nlist table
    (symtab,) = sl.find(macho.LC_SYMTAB)
    struct.pack_into("<II", data, symtab.offset + 16, 1 << 20, 0xFFFF0000)  # stroff, strsize
    path = tmp_path / "huge-strtab.so"
    sparse_files.append(path)
    path.write_bytes(data)
    os.truncate(path, (1 << 20) + 0xFFFF0000 + 4096)
    rc, _out, err = _cli("inspect", path, limit_as=7 << 30, timeout=120)
    _one_line_error(rc, err, str(path), "memory")


def test_unforeseen_reader_failure_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "lib.so"
    shutil.copyfile(_thin_macho(), path)

    def broken(_path):
        raise RuntimeError("reader bug")

    monkeypatch.setattr(macho, "read", broken)
    assert cli.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "RuntimeError: reader bug" in err[0]


# ---------------------------------------------------------------------------
# The export trie


def _uleb3(n):
    """ULEB128 padded to three bytes (the reader, like dyld, takes non-minimal encodings)."""
    return bytes([0x80 | (n & 0x7F), 0x80 | ((n >> 7) & 0x7F), n >> 14])


def chain_trie(nodes: int) -> bytes:
    """A trie of nested names "_", "_a", "_aa", ...: every node terminal with one child."""
    node = 9  # ULEB terminal size, 2 bytes of flags and address, child count, "a\\0", child
    out = bytearray()
    for i in range(nodes):
        label = b"_" if i == 0 else b"a"
        out += b"\x02\x00\x10"
        if i + 1 < nodes:
            out += b"\x01" + label + b"\x00" + _uleb3((i + 1) * node)
        else:
            out += b"\x00"
    return bytes(out)


def test_chain_trie_builder():
    names = macho.parse_export_trie(chain_trie(5))
    assert names == ["", "_", "_a", "_aa", "_aaa"]


_READ_ONCE = """
    import json, resource, sys, time
    from gilclone.platforms.binary import read_binary
    start = time.perf_counter()
    info = read_binary(sys.argv[1])
    took = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": took, "rss_mb": rss, "exports": info.exports_count}))
"""


def _macho_with_trie(trie: bytes, dest):
    """A real thin Mach-O whose LC_DYLD_INFO_ONLY export trie is ``trie`` (appended)."""
    data = bytearray(_thin_macho().read_bytes())
    _fat, (sl,) = macho.scan(data)
    (dyld,) = sl.find(macho.LC_DYLD_INFO_ONLY)
    struct.pack_into("<II", data, dyld.offset + 40, len(data), len(trie))
    dest.write_bytes(bytes(data) + trie)
    return dest


def test_export_trie_chain_is_linear(tmp_path, capsys):
    """The issue's 1 MB file whose trie is a chain of 100k terminal nodes: 14 s and 5.5 GB before."""
    trie = chain_trie(CHAIN_NODES)
    path = _macho_with_trie(trie, tmp_path / "chain.so")
    try:
        # The address-space cap keeps a regression from taking the shared machine's memory.
        rc, out, err = _child(_READ_ONCE, path, timeout=120, limit_as=2 << 30)
    except subprocess.TimeoutExpired:
        pytest.fail("reading the export trie chain took over 2 minutes")
    assert rc == 0, err
    got = json.loads(out)
    with capsys.disabled():
        print(f"\ntrie chain of {CHAIN_NODES} nodes in a {os.path.getsize(path)}-byte file: "
              f"{got['seconds']:.2f} s, max RSS {got['rss_mb']:.0f} MB")
    assert got["exports"] == CHAIN_NODES
    assert got["rss_mb"] < 200
    assert got["seconds"] < TIME_LIMIT_S


def test_export_trie_time_grows_linearly():
    """Ten times the nodes may not take much more than ten times as long (best of three)."""
    import time

    def best(nodes):
        trie = chain_trie(nodes)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            macho.parse_export_trie(trie, max_name=65)
            times.append(time.perf_counter() - start)
        return min(times)

    small, large = best(2_000), best(20_000)
    assert large < 30 * small + 0.05, (small, large)
