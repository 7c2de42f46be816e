"""macOS clone sets prepared from Linux, checked with the LLVM tools. NOT run on a Mac.

No wheel on PyPI carries a real libpython dylib, so the tests build a *stand-in*
macOS Python home from real Mach-O files of macOS wheels:

* ``lib/libpython3.12.dylib`` is a dylib bundled in a wheel (numpy's
  ``libquadmath`` for x86_64; cryptography's universal2 ``_rust.abi3.so`` for the
  universal2 home) with its install name set to that path and an export trie
  that also lists ``_Py_Initialize`` and every ``Py*`` symbol the home's
  extensions bind (all at one existing code address: never run, only read);
* ``lib/python3.12/lib-dynload/`` and ``lib/python3.12/site-packages/`` hold the
  wheels' extension modules, which bind ``Py*`` by flat lookup: exactly what a
  clone's copies must re-point.

Same formats, same load commands and bind opcodes as a real Python's files;
only the code inside is not CPython's.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
from gilclone.cloner import (
    codesign,
    integrity,
    macho_binds,
    macho_clone,
    macho_commands,
    macho_linkedit,
    store,
)
from gilclone.cloner import macho_writer as w
from gilclone.cloner.extensions import TwinFactory
from gilclone.platforms import home_macos, macho, probe
from gilclone.platforms.locate import install_from_probe
from support import macos_wheels as mw

from gilclone.errors import CloneError, LocateError

COUNT = 4
SHORT = "3.12"
VERSION = "3.12.7"
LIB_DYNLOAD_NAMES = ("_multiarray_tests", "_operand_flag_tests", "_rational_tests",
                     "_struct_ufunc_tests", "_umath_tests")


# ---------------------------------------------------------------------------
# Export tries (the stand-in libpython must export the C API's names)




def trie_terminals(buf: bytes) -> dict:
    """{name: raw terminal info} of every export in a trie."""
    out, stack = {}, [(0, b"")]
    while stack:
        node, prefix = stack.pop()
        size, p = macho.read_uleb(buf, node)
        if size:
            out[prefix] = bytes(buf[p : p + size])
        p += size
        children = buf[p]
        p += 1
        for _ in range(children):
            zero = buf.index(b"\0", p)
            child, next_p = macho.read_uleb(buf, zero + 1)
            stack.append((child, prefix + bytes(buf[p:zero])))
            p = next_p
    return out


class _Node:
    def __init__(self):
        self.terminal = None
        self.children = []  # (label, node)


def _radix(items, depth: int) -> _Node:
    node = _Node()
    rest = []
    for name, term in items:
        if len(name) == depth:
            node.terminal = term
        else:
            rest.append((name, term))
    groups = {}
    for name, term in rest:
        groups.setdefault(name[depth], []).append((name, term))
    for _byte, group in sorted(groups.items()):
        common = os.path.commonprefix([n for n, _t in group])
        node.children.append((common[depth:], _radix(group, len(common))))
    return node


def build_trie(exports: dict) -> bytes:
    """A dyld export trie for {name: terminal info bytes}."""
    root = _radix(sorted(exports.items()), 0)
    order, stack = [], [root]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(reversed([c for _l, c in n.children]))
    offsets = {id(n): 0 for n in order}

    def encode(n):
        out = bytearray(macho.write_uleb(len(n.terminal)) + n.terminal if n.terminal is not None else b"\0")
        out.append(len(n.children))
        for label, child in n.children:
            out += label + b"\0" + macho.write_uleb(offsets[id(child)])
        return bytes(out)

    while True:
        pos, changed = 0, False
        for n in order:
            if offsets[id(n)] != pos:
                offsets[id(n)], changed = pos, True
            pos += len(encode(n))
        if not changed:
            return b"".join(encode(n) for n in order)


def _standin_slice(image: bytes, install_name: str, names, path: str) -> bytes:
    image = bytearray(image)
    _f, (sl,) = macho.scan(image)
    page = w.PAGE_SIZES.get(sl.arch, 0x1000)
    image = macho_linkedit.strip_signature(image, sl, page)
    _f, (sl,) = macho.scan(image)
    (info,) = sl.find(macho.LC_DYLD_INFO, macho.LC_DYLD_INFO_ONLY)
    off, size = struct.unpack_from(sl.endian + "II", image, info.offset + 40)
    exports = trie_terminals(bytes(image[off : off + size]))
    address = next(t for t in exports.values() if t[0] == 0)[1:]  # flags 0: a regular export
    for name in names:
        exports.setdefault(name, b"\0" + address)
    image, new_size = macho_linkedit.replace_blob(image, sl, off, size, build_trie(exports), page)
    struct.pack_into(sl.endian + "I", image, info.offset + 44, new_size)
    _f, (sl,) = macho.scan(image)
    image = macho_commands.edit_commands(image, sl, macho_commands.SliceEdits(new_id=install_name, fresh_uuid=False), path)
    return bytes(codesign.sign_slice(image, os.path.basename(install_name), page))


def make_standin_libpython(src, dst, install_name: str, names) -> None:
    data, fat, slices = macho.scan_path(src)
    images = [_standin_slice(data[s.offset : s.offset + s.size], install_name, names, str(src)) for s in slices]
    with open(dst, "wb") as f:
        f.write(w._assemble_fat(data, slices, images) if fat else images[0])


# ---------------------------------------------------------------------------
# Stand-in homes

HOMES = {
    # x86_64: classic numpy with delocated .dylibs (@loader_path loads), MarkupSafe universal2.
    "x86_64": ("numpy-x86_64", "numpy/.dylibs/libquadmath.0.dylib",
               [("numpy-x86_64", None), ("markupsafe-universal2", None)]),
    # universal2 libpython (like python.org's framework), arm64 numpy, abi3 cryptography.
    "universal2": ("cryptography-abi3", "cryptography/hazmat/bindings/_rust.abi3.so",
                   [("numpy-arm64", None), ("markupsafe-universal2", None), ("cryptography-abi3", None)]),
}


def _wheel_root(key):
    files = mw.binaries(key)
    return files, str(files[0]).split(mw.WHEELS[key][3])[0] + mw.WHEELS[key][3]


def build_home(base, which: str) -> str:
    lib_key, lib_rel, ext_keys = HOMES[which]
    home = os.path.join(base, f"home-{which}")
    stdlib = os.path.join(home, "lib", f"python{SHORT}")
    dynload, site = os.path.join(stdlib, "lib-dynload"), os.path.join(stdlib, "site-packages")
    for d in (dynload, site, os.path.join(home, "include", f"python{SHORT}"), os.path.join(home, "bin")):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(home, "include", f"python{SHORT}", "patchlevel.h"), "w") as f:
        f.write(f'#define PY_VERSION              "{VERSION}"\n')
    extensions = []
    for key, _ in ext_keys:
        files, root = _wheel_root(key)
        for path in files:
            rel = os.path.relpath(path, root)
            name = os.path.basename(rel)
            dest = os.path.join(site, rel)
            if name.split(".")[0] in LIB_DYNLOAD_NAMES:
                dest = os.path.join(dynload, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(path, dest)
            if macho.read(dest).kind == "extension":
                extensions.append(dest)
    names = {b"_Py_Initialize", b"_Py_InitializeEx"}
    for ext in extensions:
        data, _fat, slices = macho.scan_path(ext)
        for sl in slices:
            names.update(n.encode() for n, _o in macho_binds.python_binds(data, sl))
    files, root = _wheel_root(lib_key)
    libpython = os.path.join(home, "lib", f"libpython{SHORT}.dylib")
    make_standin_libpython(os.path.join(root, lib_rel), libpython, libpython, sorted(names))
    return home


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    base = tmp_path_factory.mktemp("macos-homes")
    return {which: build_home(str(base), which) for which in HOMES}


def _extensions(home):
    return [os.path.join(d, n) for d, _s, fs in os.walk(home) for n in sorted(fs)
            if n.endswith(".so") and macho.read(os.path.join(d, n)).kind == "extension"]


# ---------------------------------------------------------------------------
# The stand-in itself


def test_trie_round_trip():
    exports = {b"_PyList_New": b"\0\x10", b"_PyLong_FromLong": b"\0\x20", b"_Py_Initialize": b"\0\x30",
               b"_main": b"\0\x40", b"_Py": b"\0\x50"}
    trie = build_trie(exports)
    assert trie_terminals(trie) == exports
    assert sorted(macho.parse_export_trie(trie)) == sorted(n.decode() for n in exports)


@pytest.mark.slow
def test_standin_home_reads_as_a_python(homes):
    for which, home in homes.items():
        install = home_macos.install_from_home(home)
        lib = os.path.join(home, "lib", "libpython3.12.dylib")
        assert install.libpython == lib and install.linkage == "shared" and install.platform == "macos"
        assert install.version == VERSION and install.short_version == SHORT
        assert install.machine == ("x86_64" if which == "x86_64" else "universal")
        assert install.extension_suffix == ".cpython-312-darwin.so"
        assert [os.path.basename(d) for d in install.extension_dirs] == ["lib-dynload", "site-packages"]
        info = macho.read(lib)
        assert info.kind == "libpython" and info.python_version == SHORT and info.name == lib
        assert mw.parse_otool_id(mw.run_tool(mw.OTOOL, "-D", "-arch", info.facts.slices[0].arch, lib)) == lib
        exported = set(mw.parse_exports_trie(mw.run_tool(
            mw.OBJDUMP, "--macho", "--exports-trie", f"--arch={info.facts.slices[-1].arch}", lib)))
        assert "_Py_Initialize" in exported and "_PyLong_FromLong" in exported
        codesign.verify_file(lib)


@pytest.mark.slow
def test_home_layouts(tmp_path, homes):
    src = os.path.join(homes["x86_64"], "lib", "libpython3.12.dylib")
    # Framework build: Versions/3.12/Python; the framework root is accepted too.
    version_dir = tmp_path / "Python.framework" / "Versions" / "3.12"
    (version_dir / "lib" / "python3.12" / "lib-dynload").mkdir(parents=True)
    (version_dir / "bin").mkdir()
    fw_name = str(version_dir / "Python")
    w.clone_libpython(src, fw_name, "/Library/Frameworks/Python.framework/Versions/3.12/Python")
    (tmp_path / "Python.framework" / "Versions" / "Current").symlink_to("3.12")
    for home in (version_dir, tmp_path / "Python.framework"):
        install = home_macos.install_from_home(str(home))
        assert install.libpython == fw_name and install.linkage == "shared"
        assert install.version == "3.12"  # no patchlevel.h, no version string in the stand-in
    # Static host: no dylib, and the executable exports the C API itself.
    static = tmp_path / "static"
    (static / "lib" / "python3.12").mkdir(parents=True)
    (static / "bin").mkdir()
    install = home_macos.install_from_home(str(static))
    assert install.libpython is None and install.linkage == "static"
    assert str(static / "lib" / "libpython3.12.dylib") in install.libpython_searched
    with pytest.raises(LocateError, match="statically"):
        subprocess_prepare(str(static), str(tmp_path / "set"), 1, check=True)
    with pytest.raises(LocateError, match="not a macOS Python"):
        home_macos.install_from_home(str(tmp_path))


def subprocess_prepare(home, dest, count, check=False):
    """prepare in this process (for errors) with the install read from ``home``."""
    from gilclone.cloner.prepare import prepare

    return prepare(count, dest=dest, install=home_macos.install_from_home(home))


# ---------------------------------------------------------------------------
# End to end: the CLI, from Linux


def gilclone(*args):
    proc = subprocess.run([sys.executable, "-m", "gilclone", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    return proc


def _bind_rows(path, arch):
    return mw.parse_bind_tables(mw.run_tool(
        mw.OBJDUMP, "--macho", "--bind", "--lazy-bind", "--weak-bind", f"--arch={arch}", path))


def _is_py(sym):
    return sym.startswith(("_Py", "__Py"))


def llvm_checked_pages(path, arch) -> int:
    """Page hashes checked with LLVM's view of the file (slice offset, LC_CODE_SIGNATURE),
    independently of cloner.codesign's reader; returns how many pages matched."""
    import hashlib

    fat = mw.parse_universal_headers(mw.run_tool(mw.OBJDUMP, "--macho", "--universal-headers", path))
    base = next((a["offset"] for a in fat if a["architecture"] == arch), 0)
    cmds = mw.parse_load_commands(mw.run_tool(mw.OBJDUMP, "--macho", "--private-headers", f"--arch={arch}", path))
    (cs,) = [c for c in cmds if c.get("cmd") == "LC_CODE_SIGNATURE"]
    dataoff, datasize = int(cs["dataoff"]), int(cs["datasize"])
    with open(path, "rb") as f:
        data = f.read()
    sig = data[base + dataoff : base + dataoff + datasize]
    magic, _length, count = struct.unpack_from(">III", sig, 0)
    assert magic == 0xFADE0CC0
    (cd,) = [off for slot, off in (struct.unpack_from(">II", sig, 12 + 8 * i) for i in range(count)) if slot == 0]
    hash_offset, _ident, _special, nslots, code_limit, hash_size, hash_type, _pl, page_shift = \
        struct.unpack_from(">IIIIIBBBB", sig, cd + 16)
    assert (hash_size, hash_type, code_limit) == (32, 2, dataoff)
    page = 1 << page_shift
    for i in range(nslots):
        chunk = data[base + i * page : base + min((i + 1) * page, code_limit)]
        want = sig[cd + hash_offset + 32 * i : cd + hash_offset + 32 * (i + 1)]
        assert hashlib.sha256(chunk).digest() == want, (path, arch, i)
    return nslots


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(HOMES))
def test_prepare_verify_twins_end_to_end(tmp_path, homes, which):
    home = homes[which]
    dest = str(tmp_path / "set")
    proc = gilclone("prepare", "--target", "macos", "--python-home", home, "--count", str(COUNT),
                    "--dest", dest, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["clones"]) == COUNT and doc["version"] == VERSION
    proc = gilclone("verify", "--json", dest)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], report
    names = {c["name"] for c in report["checks"]}
    assert {"runtime_checks", "macos_runtime", "files_intact", "distinct_install_names",
            "distinct_uuids", "signatures_clone_libpythons", "references_resolve"} <= names

    cset = store.load_set(dest)
    source = os.path.join(home, "lib", "libpython3.12.dylib")
    src_info = macho.read(source)
    seen_uuids = {s.uuid for s in src_info.facts.slices}
    install_names = set()
    for rec in cset.clones:
        info = macho.read(rec.libpython)
        assert info.name == rec.libpython and rec.libpython.startswith(dest)
        install_names.add(info.name)
        for s in info.facts.slices:
            assert mw.parse_otool_id(mw.run_tool(mw.OTOOL, "-D", "-arch", s.arch, rec.libpython)) == rec.libpython
            ph = mw.run_tool(mw.OBJDUMP, "--macho", "--private-headers", f"--arch={s.arch}", rec.libpython)
            cmds = mw.parse_load_commands(ph)
            (u,) = [c["uuid"] for c in cmds if c.get("cmd") == "LC_UUID"]
            assert u == s.uuid and u not in seen_uuids
            seen_uuids.add(u)
            rpaths = [c["path"].split(" (offset")[0] for c in cmds if c.get("cmd") == "LC_RPATH"]
            assert all(not p.startswith("@loader_path") for p in rpaths)
            assert llvm_checked_pages(rec.libpython, s.arch) > 0
        assert all(c["pages"] > 0 for c in codesign.verify_file(rec.libpython))
    assert len(install_names) == COUNT

    extensions = _extensions(home)
    assert len(extensions) >= 3
    for rec in cset.clones:
        factory = TwinFactory(rec)
        leaf = os.path.splitext(rec.soname)[0]
        for ext in extensions:
            twin = factory.twin_for(ext)
            original = macho.read(ext)
            info = macho.read(twin)
            codesign.verify_file(twin)
            for s, so in zip(info.facts.slices, original.facts.slices):
                assert s.two_level_namespace and s.uuid != so.uuid and s.uuid not in seen_uuids
                seen_uuids.add(s.uuid)
                libs = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-L", "-arch", s.arch, twin))
                assert rec.libpython in libs, (twin, libs)
                assert not any(n.startswith("@loader_path") for n in libs)
                old_rows, rows = _bind_rows(ext, s.arch), _bind_rows(twin, s.arch)
                assert len(rows) == len(old_rows)
                py = [r for r in rows if _is_py(r["symbol"])]
                assert py and all(r.get("dylib") == leaf for r in py if r["table"] != "Weak bind table"), (twin, s.arch)
                assert not any(r.get("dylib") == "flat-namespace" and _is_py(r["symbol"]) for r in rows)
                for a, b in zip(old_rows, rows):  # nothing else moved
                    if not _is_py(a["symbol"]):
                        assert a == b
                assert llvm_checked_pages(twin, s.arch) > 0
    # With the copies made, verify checks them too.
    proc = gilclone("verify", "--json", dest)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], report
    checks = {c["name"]: c for c in report["checks"]}
    assert f"{len(extensions) * COUNT} extension copies" in checks["extension_copies_bound"]["detail"]
    assert checks["extension_references_resolve"]["ok"]
    assert checks["signatures_extension_copies"]["ok"]


def relist(record, twin):
    """List an edited twin in its clone's manifest (an attacker-grade edit), so that the
    checks behind files_intact get to see it."""
    rel = os.path.relpath(os.path.dirname(twin), record.directory)
    with integrity.ext_lock(record.directory):
        integrity.list_in_manifest(record.directory, rel + "/", [f"{rel}/{os.path.basename(twin)}", f"{rel}/twin.json"])


@pytest.mark.slow
def test_static_checks_catch_damage(tmp_path, homes):
    home = homes["x86_64"]
    dest = str(tmp_path / "set")
    cset = subprocess_prepare(home, dest, 2)
    ext = [e for e in _extensions(home) if "_multiarray_umath" in e][0]
    twins = [TwinFactory(r).twin_for(ext) for r in cset.clones]
    assert all(ok for _n, ok, _d in macho_clone.static_checks(cset))
    # A twin bound to the other clone's libpython, and one page changed in another twin.
    w.apply(ext, twins[0], w.MachoEdits(add_dylib=cset.clones[1].libpython, rebind_python=True,
                                        loader_path_base=os.path.dirname(ext)))
    relist(cset.clones[0], twins[0])
    checks = {n: (ok, d) for n, ok, d in macho_clone.static_checks(cset)}
    assert not checks["extension_copies_bound"][0]
    assert "not bound to the clone" in checks["extension_copies_bound"][1] or "does not load" in \
        checks["extension_copies_bound"][1]
    data = bytearray(open(twins[1], "rb").read())
    data[5000] ^= 0xFF
    with open(twins[1], "wb") as f:
        f.write(data)
    relist(cset.clones[1], twins[1])
    checks = {n: (ok, d) for n, ok, d in macho_clone.static_checks(cset)}
    assert not checks["signatures_extension_copies"][0] and "page 1" in checks["signatures_extension_copies"][1]
    # A moved set: its install names no longer say where the clones are.
    moved = str(tmp_path / "moved")
    os.rename(dest, moved)
    checks = {n: (ok, d) for n, ok, d in macho_clone.static_checks(store.load_set(moved))}
    assert not checks["distinct_install_names"][0] and "moved" in checks["distinct_install_names"][1]


# ---------------------------------------------------------------------------
# The twin builder's choices


@pytest.mark.slow
def test_loader_path_base_made_absolute(tmp_path, homes):
    """@loader_path loads and LC_RPATH entries name the original's directory in the copy."""
    site = os.path.join(homes["x86_64"], "lib", "python3.12", "site-packages", "numpy")
    ext = os.path.join(site, "_core", "_multiarray_umath.cpython-312-darwin.so")
    dst = tmp_path / "copy.so"
    w.rebind_extension(ext, dst, "/clones/libpython3.12.dylib", loader_path_base=os.path.dirname(ext))
    libs = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-L", dst))
    want = os.path.join(os.path.dirname(ext), "../.dylibs/libscipy_openblas64_.dylib")
    assert libs[0] == want and os.path.exists(want) and libs[-1] == "/clones/libpython3.12.dylib"
    assert macho_clone.reference_problems(ext, str(dst)) == []
    # Without the base the copy's @loader_path points next to the copy: reported.
    bad = tmp_path / "bad.so"
    w.rebind_extension(ext, bad, "/clones/libpython3.12.dylib")
    assert any("still relative" in p for p in macho_clone.reference_problems(ext, str(bad)))
    # A dylib with LC_RPATH @loader_path/ and @loader_path loads (libgfortran).
    gfortran = os.path.join(site, ".dylibs", "libgfortran.5.dylib")
    out = tmp_path / "libgfortran.5.dylib"
    w.apply(gfortran, out, w.MachoEdits(new_id="/x/libgfortran.5.dylib", loader_path_base=os.path.dirname(gfortran)))
    cmds = mw.parse_load_commands(mw.run_tool(mw.OTOOL, "-l", out))
    rpaths = [c["path"].split(" (offset")[0] for c in cmds if c.get("cmd") == "LC_RPATH"]
    assert rpaths == [os.path.dirname(gfortran) + "/"]  # "@loader_path/" is the directory itself
    libs = mw.parse_otool_libraries(mw.run_tool(mw.OTOOL, "-L", out))
    assert os.path.join(os.path.dirname(gfortran), "libquadmath.0.dylib") in libs
    assert macho_clone.reference_problems(gfortran, str(out)) == []
    codesign.verify_file(out)


@pytest.mark.slow
def test_twin_of_a_module_that_links_libpython(tmp_path, homes):
    """A module linked against libpython by name: that load is renamed, no second one added."""
    ext = [e for e in _extensions(homes["x86_64"]) if "_sfc64" in e][0]
    linked = tmp_path / "linked.so"
    framework = "/Library/Frameworks/Python.framework/Versions/3.12/Python"
    w.rebind_extension(ext, linked, framework)  # now its Py binds are two-level, on the framework
    clone = "/set/clone-00/libgc0123456789abcdef00.dylib"
    twin = tmp_path / "twin.so"
    macho_clone.build_twin(str(linked), str(twin), {framework: clone}, os.path.basename(clone))
    before, after = macho.read(linked), macho.read(twin)
    assert after.needed == tuple(clone if n == framework else n for n in before.needed)
    rows = _bind_rows(twin, "x86_64")
    assert all(r["dylib"] == "libgc0123456789abcdef00" for r in rows if _is_py(r["symbol"]))
    with pytest.raises(CloneError, match="no install name"):
        macho_clone.build_twin(str(linked), str(tmp_path / "t2.so"), {framework: clone}, "other.dylib")


# ---------------------------------------------------------------------------
# Runtime path pieces, with fakes (not run on a Mac)


class _FakeDyld:
    def __init__(self, names):
        self.names = [n.encode() for n in names]

        def count():
            return len(self.names)

        def name(i):
            return self.names[i]

        self._dyld_image_count = count
        self._dyld_get_image_name = name


def test_dyld_image_fallback():
    framework = "/Library/Frameworks/Python.framework/Versions/3.12/Python"
    fake = _FakeDyld(["/Library/Frameworks/Python.framework/Versions/3.12/Resources/Python.app/"
                      "Contents/MacOS/Python", "/usr/lib/libSystem.B.dylib", framework])
    assert probe._dyld_images_path(fake) == framework
    shared = "/opt/homebrew/opt/python@3.12/lib/libpython3.12.dylib"
    assert probe._dyld_images_path(_FakeDyld(["/opt/homebrew/bin/python3.12", shared])) == shared
    # A static host: only the executable and system libraries are loaded.
    assert probe._dyld_images_path(_FakeDyld(["/Users/me/.pyenv/versions/3.12.7/bin/python3.12",
                                              "/usr/lib/libSystem.B.dylib"])) is None


def test_locate_rules_for_macos_facts():
    """Probe facts as a Mac would report them, interpreted here."""
    base = {
        "executable": "/Library/Frameworks/Python.framework/Versions/3.12/bin/python3.12",
        "implementation": "cpython", "version": "3.12.7", "sys_platform": "darwin", "machine": "arm64",
        "prefix": "/Library/Frameworks/Python.framework/Versions/3.12",
        "base_prefix": "/Library/Frameworks/Python.framework/Versions/3.12", "sys_path": [],
        "config": {"LIBDIR": "/Library/Frameworks/Python.framework/Versions/3.12/lib",
                   "LDLIBRARY": "Python.framework/Versions/3.12/Python", "EXT_SUFFIX": ".cpython-312-darwin.so"},
        "loaded_libpython": "/Library/Frameworks/Python.framework/Versions/3.12/Python",
    }
    install = install_from_probe(base, exists=lambda p: False)
    assert install.platform == "macos" and install.linkage == "shared"
    assert install.libpython.endswith("Versions/3.12/Python")
    static = dict(base, executable="/u/.pyenv/versions/3.12.7/bin/python3.12",
                  loaded_libpython="/u/.pyenv/versions/3.12.7/bin/python3.12",
                  config={"LIBDIR": "/u/.pyenv/versions/3.12.7/lib", "LDLIBRARY": "libpython3.12.a"})
    install = install_from_probe(static, exists=lambda p: False)
    assert install.linkage == "static" and install.libpython is None
    assert "/u/.pyenv/versions/3.12.7/lib/libpython3.12.dylib" in install.libpython_searched


def test_load_flags_on_macos(monkeypatch):
    from gilclone.cloner import load as clone

    monkeypatch.setattr(sys, "platform", "darwin")
    assert clone.load_flags() == os.RTLD_NOW | os.RTLD_LOCAL


# ---------------------------------------------------------------------------
# doctor on macOS, with the real files


@pytest.mark.slow
def test_doctor_macos_findings(homes, tmp_path):
    from gilclone.cloner import doctor

    install = home_macos.install_from_home(homes["x86_64"])
    deep_cache = "/" + "d" * 5000
    # The cache asked for (--cache) is what counts, not GILCLONE_CACHE.
    findings = doctor.diagnose(install, str(tmp_path / "cache"), environ={"GILCLONE_CACHE": deep_cache})
    codes = {f.code: f for f in findings}
    assert "macos-not-run" in codes and "not yet run on a Mac" in codes["macos-not-run"].seen
    assert "macos-flat-extensions" in codes
    assert "macos-header-padding" not in codes and not doctor.has_errors(findings)
    # A cache directory (--cache) so deep that the clone's path does not fit the padding of some modules.
    deep = doctor.diagnose(install, deep_cache, environ={})
    deep_codes = {f.code: f for f in deep}
    assert deep_codes["macos-header-padding"].severity == doctor.ERROR
    assert "_sfc64" in deep_codes["macos-header-padding"].seen
    assert deep_codes["macos-libpython-header-padding"].severity == doctor.ERROR
    env = {"DYLD_FORCE_FLAT_NAMESPACE": "1", "DYLD_INSERT_LIBRARIES": "/tmp/x.dylib"}
    codes = {f.code: f for f in doctor.macos.dyld_environment_findings("/usr/bin/python3", env)}
    assert codes["dyld-force-flat-namespace"].severity == doctor.ERROR
    assert codes["dyld-insert-libraries"].severity == doctor.WARNING
    assert codes["dyld-sip-stripped"].severity == doctor.WARNING
    assert "DYLD_FORCE_FLAT_NAMESPACE" in codes["dyld-sip-stripped"].seen
    codes = {f.code for f in doctor.macos.dyld_environment_findings("/opt/homebrew/bin/python3", {})}
    assert codes == set()


@pytest.mark.slow
def test_doctor_rpath_and_static_host(tmp_path, homes):
    from gilclone.cloner import doctor

    # An extension loading @rpath/ with run paths that find nothing.
    ext = [e for e in _extensions(homes["x86_64"]) if "lapack_lite" in e][0]
    odd = tmp_path / "lib" / "python3.12" / "site-packages" / "odd.cpython-312-darwin.so"
    odd.parent.mkdir(parents=True)
    w.apply(ext, odd, w.MachoEdits(rename_dylibs={
        "@loader_path/../.dylibs/libscipy_openblas64_.dylib": "@rpath/libscipy_openblas64_.dylib"}))
    problems = doctor.macos.extension_problems(str(odd), "/c/libgc.dylib")
    assert problems["rpath"] == ["@rpath/libscipy_openblas64_.dylib"] and problems["flat_py"] > 0
    (tmp_path / "bin").mkdir()
    install = home_macos.install_from_home(str(tmp_path))
    assert install.linkage == "static"
    codes = {f.code: f for f in doctor.diagnose(install, str(tmp_path / "cache"), environ={})}
    assert codes["static-host-no-libpython"].severity == doctor.ERROR
    assert "framework" in codes["static-host-no-libpython"].fix
    assert codes["macos-rpath-unresolved"].severity == doctor.WARNING
