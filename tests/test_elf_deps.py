"""platforms.elf_deps: the struct reader gives what pyelftools reads, and damaged files fail cleanly.

pyelftools is the oracle here (and only here): the reader must give the same facts on
every real object at hand and on built objects of the classes, byte orders and machines
this machine has none of, and must never import it (issue #14: ~16 ms of every fresh
process's time to first result).
"""

import glob
import os
import random
import site
import struct
import subprocess
import sys
import sysconfig

import pytest
import support
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from gilclone.platforms import elf_deps
from gilclone.platforms.elf_deps import DynamicFacts, read_dynamic_facts
from support import elf_build

from gilclone.errors import BinaryFormatError

DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FLAGS_1 = 1, 14, 15, 29, 0x6FFFFFFB
STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3


# -- the oracle: pyelftools' own tags and symbols ------------------------------------


def reference(path: str, sample: int = 8) -> DynamicFacts:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynamic = next((s for s in elf.iter_sections() if isinstance(s, DynamicSection)), None)
        tags = list(dynamic.iter_tags()) if dynamic is not None else []

        def values(kind):
            return [getattr(t, kind[3:].lower()) for t in tags if t.entry.d_tag == kind]

        def entries(kind):
            return tuple(p for v in values(kind) for p in v.split(":") if p)

        has_runpath = bool(values("DT_RUNPATH"))
        flags_1 = next((t.entry.d_val for t in tags if t.entry.d_tag == "DT_FLAGS_1"), 0)
        return DynamicFacts(
            path=path, soname=next(iter(values("DT_SONAME")), None), needed=tuple(values("DT_NEEDED")),
            rpath=() if has_runpath else entries("DT_RPATH"),
            runpath=entries("DT_RUNPATH") if has_runpath else None,
            nodeflib=bool(flags_1 & 0x800), elf_class=elf.elfclass,
            machine=expected_machine(elf.header["e_machine"]), **reference_symbols(elf, sample))


def expected_machine(name) -> str:
    """pyelftools' name where elf_deps' table has it, else "EM_<number>" (int: unknown to both)."""
    if isinstance(name, str) and name in elf_deps._MACHINES.values():
        return name
    return f"EM_{ENUM_E_MACHINE[name] if isinstance(name, str) else name}"


def reference_symbols(elf: ELFFile, sample: int) -> dict:
    dynsym = elf.get_section_by_name(".dynsym")
    refs, init, defines, exports = 0, False, [], 0
    for sym in dynsym.iter_symbols() if dynsym is not None else ():
        if not sym["st_name"]:
            continue
        name, bind, kind = sym.name, sym["st_info"]["bind"], sym["st_info"]["type"]
        if sym["st_shndx"] == "SHN_UNDEF":
            refs += name.startswith(("Py", "_Py"))
            continue
        init = init or name.startswith("PyInit_")
        exports += bind in ("STB_GLOBAL", "STB_WEAK", "STB_LOOS") and kind not in ("STT_SECTION", "STT_FILE")
        linker = name in ("_init", "_fini", "_edata", "_end", "__bss_start")
        if bind == "STB_GLOBAL" and kind in ("STT_OBJECT", "STT_FUNC") and len(defines) < sample and not linker:
            defines.append(name)
    return dict(python_refs=refs, python_init=init, defines=tuple(defines), exports=exports)


# -- real objects ----------------------------------------------------------------------


def libpython() -> str:
    name = sysconfig.get_config_var("INSTSONAME") or ""
    path = os.path.join(sysconfig.get_config_var("LIBDIR") or "", name)
    support.require(sysconfig.get_config_var("Py_ENABLE_SHARED") and os.path.isfile(path),
                    "this Python is built with a shared libpython")
    return path


def extension_modules() -> list:
    dynload = sysconfig.get_config_var("DESTSHARED") or ""
    found = sorted(glob.glob(os.path.join(dynload, "*.so")))
    for folder in site.getsitepackages():
        found += sorted(glob.glob(os.path.join(folder, "**", "*.so"), recursive=True))
    return found


def small_extension() -> str:
    dynload = sysconfig.get_config_var("DESTSHARED") or ""
    found = sorted(glob.glob(os.path.join(dynload, "_bisect.*.so")))
    support.require(found, "the stdlib's _bisect extension module is in lib-dynload")
    return found[0]


def test_matches_pyelftools_on_libpython_and_every_extension_module():
    paths = [libpython()] + extension_modules()
    support.require(len(paths) > 50, "at least 50 extension modules in lib-dynload and site-packages")
    for path in paths:
        assert read_dynamic_facts(path) == reference(path), path
    # Not vacuous: the set exercises the fields that matter.
    facts = [read_dynamic_facts(p) for p in paths]
    assert facts[0].soname and facts[0].exports > 1000 and not facts[0].uses_python_api
    assert sum(f.python_init for f in facts) > 50 and any(f.needed for f in facts)


# -- built objects: 32-bit, big-endian, other machines ---------------------------------

SYMBOLS = [
    ("PyList_New", STB_GLOBAL, STT_FUNC, 0), ("_Py_Dealloc", STB_GLOBAL, STT_FUNC, 0),
    ("malloc", STB_GLOBAL, STT_FUNC, 0), ("PyInit_demo", STB_GLOBAL, STT_FUNC, 1),
    ("demo_table", STB_GLOBAL, STT_OBJECT, 1), ("demo_weak", STB_WEAK, STT_FUNC, 1),
    ("demo_local", STB_LOCAL, STT_FUNC, 1), ("demo_unique", STB_GNU_UNIQUE, STT_OBJECT, 1),
    ("_init", STB_GLOBAL, STT_FUNC, 1), ("demo_section", STB_GLOBAL, STT_SECTION, 1),
]
WITH_RUNPATH = [(DT_NEEDED, "libdemo.so.1"), (DT_SONAME, "libself.so.2"), (DT_RPATH, "/ignored"),
                (DT_NEEDED, "libc.so.6"), (DT_RUNPATH, "$ORIGIN/lib::/opt/a"), (DT_RUNPATH, "/opt/b"),
                (DT_FLAGS_1, 0x800 | 0x1)]
RPATH_ONLY = [(DT_NEEDED, "libdemo.so.1"), (DT_RPATH, "/r1:/r2"), (DT_RPATH, "/r3")]
FLAVOURS = [  # (class, big endian, e_machine)
    (32, False, 3), (32, True, 20), (32, False, 40), (64, True, 21), (64, True, 22),
    (64, False, 183), (64, False, 62), (64, True, 75), (32, True, 0x1234),
]


@pytest.mark.parametrize("elf_class,big,machine", FLAVOURS)
def test_matches_pyelftools_in_every_class_byte_order_and_machine(tmp_path, elf_class, big, machine):
    path = str(tmp_path / "libdemo.so")
    for tags in (WITH_RUNPATH, RPATH_ONLY):
        with open(path, "wb") as f:
            f.write(elf_build.build(elf_class, big, machine, tags, SYMBOLS))
        assert read_dynamic_facts(path) == reference(path)
    facts = read_dynamic_facts(path)  # RPATH_ONLY: the RPATH entries are in effect
    assert (facts.rpath, facts.runpath, facts.rpath_tag) == (("/r1", "/r2", "/r3"), None, "RPATH")


def test_built_object_facts_are_the_ones_written(tmp_path):
    """The oracle could share a mistake with the reader; the written values cannot."""
    path = str(tmp_path / "libdemo.so")
    with open(path, "wb") as f:
        f.write(elf_build.build(32, True, 20, WITH_RUNPATH, SYMBOLS))
    assert read_dynamic_facts(path) == DynamicFacts(
        path=path, soname="libself.so.2", needed=("libdemo.so.1", "libc.so.6"), rpath=(),
        runpath=("$ORIGIN/lib", "/opt/a", "/opt/b"), nodeflib=True, elf_class=32, machine="EM_PPC",
        python_refs=2, python_init=True, defines=("PyInit_demo", "demo_table"), exports=5)


def test_tags_after_dt_null_are_not_read(tmp_path):
    """ld.so stops at the first DT_NULL; linkers pad the section with more of them."""
    path = str(tmp_path / "libdemo.so")
    tags = [(DT_NEEDED, "libseen.so"), (0, 0), (DT_NEEDED, "libhidden.so"), (DT_RUNPATH, "/hidden")]
    with open(path, "wb") as f:
        f.write(elf_build.build(64, False, 62, tags))
    facts = read_dynamic_facts(path)
    assert facts == reference(path)
    assert (facts.needed, facts.runpath) == (("libseen.so",), None)


def test_machine_names_are_pyelftools_names():
    for number, name in elf_deps._MACHINES.items():
        assert ENUM_E_MACHINE[name] == number, name


# -- damaged files -----------------------------------------------------------------------


def test_every_truncated_copy_of_a_real_module_is_a_binary_format_error(tmp_path):
    data = open(small_extension(), "rb").read()
    shoff, shentsize, shnum = struct.unpack_from("<Q", data, 40)[0], *struct.unpack_from("<HH", data, 58)
    assert shoff + shentsize * shnum == len(data)  # section headers last: every cut damages them
    copy = str(tmp_path / "cut.so")
    cuts = sorted(set([0, 1, 3, 4, 5, 15, 16, 63, 64, len(data) - 1] + list(range(0, len(data), 97))))
    for cut in cuts:
        with open(copy, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(BinaryFormatError) as caught:
            read_dynamic_facts(copy)
        problem = caught.value.problem
        assert caught.value.path == copy, cut
        # Short of the magic: not ELF; else the first part that does not fit is named.
        assert (problem == "not an ELF file" if cut < 4 else
                "shorter than its identification" in problem or "past the end of the file" in problem), cut


def _edit(data: bytearray, at: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, data, at, value)


SH = 64  # a 64-bit section header; the built object's sections: 1 dynstr, 2 dynsym, 3 dynamic


def _section_field(data, index, field_at):
    return struct.unpack_from("<Q", data, 40)[0] + index * SH + field_at


GARBLED = {
    "magic": (lambda d: _edit(d, 0, "I", 0x464C457E), "not an ELF file"),
    "class": (lambda d: _edit(d, 4, "B", 3), "unknown ELF class 3"),
    "byte order": (lambda d: _edit(d, 5, "B", 0), "unknown ELF byte order 0"),
    "e_shoff past the end": (lambda d: _edit(d, 40, "Q", 1 << 40), "section header table"),
    "e_shentsize too small": (lambda d: _edit(d, 58, "H", 12), "section header size 12"),
    "e_shnum too large": (lambda d: _edit(d, 60, "H", 5000), "section header table"),
    "dynamic past the end": (lambda d: _edit(d, _section_field(d, 3, 24), "Q", 1 << 62), "dynamic section"),
    "dynamic size too large": (lambda d: _edit(d, _section_field(d, 3, 32), "Q", 1 << 63), "dynamic section"),
    "dynamic link just out of range": (lambda d: _edit(d, _section_field(d, 3, 40), "I", 5), "links to section 5 of 5"),
    "dynamic strings not a string table": (lambda d: _edit(d, _section_field(d, 3, 40), "I", 2), "section type"),
    "dynsym past the end": (lambda d: _edit(d, _section_field(d, 2, 32), "Q", 1 << 20), ".dynsym"),
    "dynsym link out of range": (lambda d: _edit(d, _section_field(d, 2, 40), "I", 7), "links to section 7"),
    "dynstr past the end": (lambda d: _edit(d, _section_field(d, 1, 24), "Q", 1 << 33), "string"),
}


@pytest.mark.parametrize("damage", sorted(GARBLED))
def test_garbled_headers_name_the_cause(tmp_path, damage):
    data = bytearray(elf_build.build(64, False, 62, WITH_RUNPATH, SYMBOLS))
    edit, problem = GARBLED[damage]
    edit(data)
    path = tmp_path / "garbled.so"
    path.write_bytes(bytes(data))
    with pytest.raises(BinaryFormatError) as caught:
        read_dynamic_facts(str(path))
    assert problem in caught.value.problem


@pytest.mark.parametrize("past", [0, 1 << 30])
def test_string_offset_past_the_string_table_is_a_binary_format_error(tmp_path, past):
    data = bytearray(elf_build.build(64, False, 62, [(DT_NEEDED, "libdemo.so.1")]))
    dynamic_at = struct.unpack_from("<Q", data, _section_field(data, 3, 24))[0]
    dynstr_size = struct.unpack_from("<Q", data, _section_field(data, 1, 32))[0]
    _edit(data, dynamic_at + 8, "Q", dynstr_size + past)  # DT_NEEDED's d_val: just past, far past
    path = tmp_path / "garbled.so"
    path.write_bytes(bytes(data))
    with pytest.raises(BinaryFormatError, match=f"string offset {dynstr_size + past} "):
        read_dynamic_facts(str(path))


def test_missing_file_and_directory_are_binary_format_errors(tmp_path):
    for path, problem in ((tmp_path / "absent.so", "no such file"), (tmp_path, "is a directory")):
        with pytest.raises(BinaryFormatError, match=problem):
            read_dynamic_facts(str(path))


def test_a_fifo_in_a_search_path_is_refused_not_waited_on(tmp_path):
    """The resolver probes every candidate name; reading a FIFO would block forever (child: may hang)."""
    fifo = tmp_path / "libz.so.1"
    os.mkfifo(fifo)
    code = ("import sys; from gilclone.platforms.elf_deps import read_dynamic_facts\n"
            "try: read_dynamic_facts(sys.argv[1])\n"
            "except Exception as e: print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("BinaryFormatError") and "FIFO" in out.stdout, out.stdout + out.stderr


EDGE_WORDS = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip bits, set words to edge values or cut the end; mostly in the headers at both ends."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(min(len(out), 256)) if rng.random() < 0.5 else rng.randrange(len(out))
        if rng.random() < 0.5 and len(out) > 1 and rng.random() < 0.5:
            at = rng.randrange(max(0, len(out) - 2048), len(out))  # the section header table
        kind = rng.random()
        if kind < 0.45:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.9 and at + 4 <= len(out):
            out[at:at + 4] = rng.choice(EDGE_WORDS).to_bytes(4, rng.choice(("little", "big")))
        elif len(out) > 1:
            del out[rng.randrange(1, len(out)):]
    return bytes(out)


def test_random_damage_ends_in_facts_or_a_binary_format_error(tmp_path):
    """The reader's loops are bounded by the file's size, so this runs in the test process."""
    rng = random.Random(20261130)
    seeds = [open(small_extension(), "rb").read(),
             elf_build.build(32, True, 20, WITH_RUNPATH, SYMBOLS)]
    path = str(tmp_path / "mutant.so")
    outcomes = {"facts": 0, "error": 0}
    for case in range(1200):
        with open(path, "wb") as f:
            f.write(_mutate(seeds[case % 2], rng))
        try:
            read_dynamic_facts(path)
            outcomes["facts"] += 1
        except BinaryFormatError:
            outcomes["error"] += 1
    assert min(outcomes.values()) > 50, outcomes  # both outcomes happen: the damage is real


# -- the point of it all -------------------------------------------------------------


@pytest.mark.parametrize("module", ["gilclone.platforms.elf_deps", "gilclone.cloner.load"])
def test_importing_does_not_import_pyelftools(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('elftools')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
