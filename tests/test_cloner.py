"""The Linux cloner on real binaries: names, ELF rewriting, prepare/verify on every pyenv Python,
sets broken on purpose, and prepare under concurrency, SIGKILL and bad destinations.

Oracles are independent of the code under test where it matters: binutils ``readelf -d`` for
dynamic tags, pyelftools' DT_STRTAB address translation for the soname's file offset, byte
comparison of whole files, and the ``gilclone`` CLI run as a subprocess.
"""

import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import support
from elftools.elf.elffile import ELFFile
from gilclone.cloner import elf_clone, elf_writer, extensions, integrity, naming, store
from gilclone.platforms import elf as elf_reader
from gilclone.platforms.locate import locate

from gilclone.errors import RewriteError

try:
    from support.pythons import pyenv_pythons, require_enough_pythons
except ImportError:  # the shared helper is not there yet: look in pyenv ourselves

    def pyenv_pythons():
        found = []
        for minor in range(8, 14):
            for exe in sorted(glob.glob(f"/root/.pyenv/versions/3.{minor}.*/bin/python3.{minor}")):
                found.append((f"3.{minor}", exe))
                break
        return found

    def require_enough_pythons(found):
        found = list(found)
        support.require(len(found) >= 4, f"only {len(found)} pyenv CPython 3.8-3.13 found")


PYTHONS = pyenv_pythons()
LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the ELF cloner runs on Linux only")

EXPECTED_CHECKS = {
    "files_intact",
    "distinct_sonames",
    "distinct_images",
    "distinct_runtime_state",
    "independent_initialisation",
    "sentinel_isolation",
    "extension_copies_bound",
    "extension_state_isolation",
    "parallel_gils",
}


# -- helpers ------------------------------------------------------------------------------


def gilclone(*args, timeout=300, **kwargs):
    """Run the CLI the way a user without the console script would."""
    return subprocess.run(
        [sys.executable, "-m", "gilclone", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def verify_json(dest):
    """(exit status, report) of ``gilclone verify --json dest``."""
    out = gilclone("verify", "--json", dest)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"verify printed no JSON (exit {out.returncode}): {out.stdout!r} {out.stderr!r}")
    return out.returncode, report


def check(report, name):
    found = [c for c in report["checks"] if c["name"] == name]
    assert found, f"no check {name!r} in {[c['name'] for c in report['checks']]}"
    return found[0]


def assert_all_ok(code, report):
    failing = [c for c in report["checks"] if not c["ok"]]
    assert code == 0 and report["ok"] is True and not failing, json.dumps(report, indent=1)


def readelf_dynamic(path):
    """[(tag, value)] from binutils ``readelf -d``: an oracle that is not pyelftools."""
    support.require(shutil.which("readelf"), "binutils readelf is not installed")
    out = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True, check=True)
    entries = []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*0x[0-9a-fA-F]+\s+\((\w+)\)\s+(.*)$", line)
        if m:
            bracket = re.search(r"\[(.*)\]", m.group(2))
            entries.append((m.group(1), bracket.group(1) if bracket else m.group(2).strip()))
    return entries


def tag_values(entries, tag):
    return [v for t, v in entries if t == tag]


def soname_file_offset(path):
    """(soname, file offset of its string), found the way the loader does: DT_STRTAB is a
    virtual address, translated to a file offset through the program headers."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynamic = next(s for s in elf.iter_segments() if s["p_type"] == "PT_DYNAMIC")
        tags = {t.entry.d_tag: t.entry.d_val for t in dynamic.iter_tags()}
        strtab = next(iter(elf.address_offsets(tags["DT_STRTAB"])))
        offset = strtab + tags["DT_SONAME"]
        f.seek(offset)
        raw = f.read(256).split(b"\0", 1)[0]
    return raw.decode(), offset


def host_extension(name="_decimal"):
    spec = importlib.util.find_spec(name)
    assert spec and spec.origin and spec.origin.endswith(".so"), f"{name} is not an extension here"
    return os.path.realpath(spec.origin)


def clone_dirs(root):
    return sorted(n for n in os.listdir(root) if n.startswith("clone-"))


def leftovers(root):
    return sorted(n for n in os.listdir(root) if n.startswith((".tmp-", ".trash-")))


def record_of(root, name):
    manifest = store.read_json(os.path.join(root, name, store.MANIFEST))
    return store.CloneRecord(manifest["index"], os.path.join(root, name), manifest["soname"])


def refresh_manifest(clone_dir):
    """Make the manifest describe the files as they are now (an attacker-grade edit)."""
    path = os.path.join(clone_dir, store.MANIFEST)
    manifest = store.read_json(path)
    for name in manifest["files"]:
        manifest["files"][name] = store.manifest_entry(os.path.join(clone_dir, name))
    store.write_json_atomic(path, manifest)
    stamp = os.path.join(clone_dir, store.STAMP)
    if os.path.exists(stamp):
        os.remove(stamp)


def one_line_error(out, *needles):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("gilclone prepare: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- 1. names -----------------------------------------------------------------------------

SET_ID = "7074e47405e5f35e3410db84995196d7aea51d8b3ba2d3b759a24f1e34948330"
ORIGINALS = [f"libpython3.{m}.so.1.0" for m in range(8, 14)]


@pytest.mark.parametrize("original", ORIGINALS)
def test_clone_soname_has_the_original_length_and_is_unique_per_index(original):
    names = [naming.clone_soname(original, SET_ID, i) for i in range(36 * 36)]
    assert {len(n) for n in names} == {len(original)}
    assert len(set(names)) == 36 * 36
    assert all(n.startswith(naming.PREFIX) and n.endswith(naming.SUFFIX) for n in names)
    assert all(re.fullmatch(r"[0-9a-z.]+", n[len(naming.PREFIX):]) for n in names)
    assert original not in names


@pytest.mark.parametrize("original", ORIGINALS)
def test_clone_soname_differs_per_set(original):
    other = "8" + SET_ID[1:]
    for i in (0, 1, 35, 36, 1295):
        assert naming.clone_soname(original, SET_ID, i) != naming.clone_soname(original, other, i)


@pytest.mark.parametrize("index", [36 * 36, 10**6, -1])
def test_clone_index_out_of_range_raises(index):
    with pytest.raises(ValueError, match="out of range"):
        naming.clone_soname("libpython3.11.so.1.0", SET_ID, index)


def test_resolve_origin():
    d = "/opt/site-packages/numpy/core"
    assert elf_clone.resolve_origin(["$ORIGIN/../lib"], d) == [d + "/../lib"]
    assert elf_clone.resolve_origin(["${ORIGIN}"], d) == [d]
    # ld.so expands $ORIGIN only as a whole name: $ORIGINAL is someone else's variable.
    assert elf_clone.resolve_origin(["$ORIGINAL/lib"], d) == ["$ORIGINAL/lib"]
    assert elf_clone.resolve_origin(["${ORIGIN}/../../numpy.libs"], d) == [d + "/../../numpy.libs"]
    assert elf_clone.resolve_origin(["/usr/lib", "relative/dir"], d) == ["/usr/lib", "relative/dir"]
    assert elf_clone.resolve_origin(["$ORIGIN", "/usr/lib", "$ORIGIN/x"], d) == [d, "/usr/lib", d + "/x"]
    assert elf_clone.resolve_origin([], d) == []


# -- 2. ELF rewriting on real files --------------------------------------------------------


@pytest.fixture(scope="module")
def host_libpython():
    install = locate()
    support.require(install.libpython, f"{sys.executable} has no shared libpython")
    return install.libpython


@pytest.mark.slow
def test_soname_rewrite_in_place_changes_only_the_soname(tmp_path, host_libpython, monkeypatch):
    original, offset = soname_file_offset(host_libpython)
    new = naming.clone_soname(original, SET_ID, 7)
    assert len(new) == len(original)

    def no_patchelf(args):
        raise AssertionError(f"a same-length soname must not need patchelf: {args}")

    monkeypatch.setattr(elf_writer, "run_patchelf", no_patchelf)
    dst = tmp_path / new
    elf_writer.apply(host_libpython, str(dst), elf_writer.ElfEdits(soname=new))

    with open(host_libpython, "rb") as f:
        before = f.read()
    after = dst.read_bytes()
    assert len(after) == len(before)
    end = offset + len(original)
    assert after[:offset] == before[:offset]
    assert after[offset:end] == new.encode()
    assert after[end] == 0
    assert after[end:] == before[end:]
    assert tag_values(readelf_dynamic(dst), "SONAME") == [new]
    assert soname_file_offset(str(dst)) == (new, offset)


@pytest.fixture
def module_copy(tmp_path):
    """A copy of the host's _decimal (needs libm and libc) in tmp/mod/, its run path removed."""
    src = host_extension("_decimal")
    (tmp_path / "mod").mkdir()
    dst = tmp_path / "mod" / os.path.basename(src)
    shutil.copyfile(src, dst)
    subprocess.run([elf_writer.patchelf_path(), "--remove-rpath", str(dst)], check=True, capture_output=True)
    entries = readelf_dynamic(dst)
    assert tag_values(entries, "RPATH") == tag_values(entries, "RUNPATH") == []
    return dst


def set_rpath(path, value, force_rpath):
    cmd = [elf_writer.patchelf_path(), "--set-rpath", value, str(path)]
    if force_rpath:
        cmd.insert(1, "--force-rpath")
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.mark.parametrize("kind", ["RPATH", "RUNPATH"])
def test_add_needed_and_rpaths_keep_the_tag_kind(tmp_path, module_copy, kind):
    set_rpath(module_copy, "$ORIGIN/../lib:/opt/elsewhere", force_rpath=(kind == "RPATH"))
    entries = readelf_dynamic(module_copy)
    assert tag_values(entries, kind) == ["$ORIGIN/../lib:/opt/elsewhere"]
    info = elf_reader.read(str(module_copy))
    assert info.facts.rpath_tag == kind

    origin = str(module_copy.parent)
    rpaths = tuple(elf_clone.resolve_origin(info.rpaths, origin))
    dst = tmp_path / "twin.so"
    elf_writer.apply(str(module_copy), str(dst), elf_writer.ElfEdits(add_needed=["libgcTESTTEST00.so"], rpaths=rpaths))

    after = readelf_dynamic(dst)
    needed = tag_values(after, "NEEDED")
    assert "libgcTESTTEST00.so" in needed
    assert set(tag_values(entries, "NEEDED")) <= set(needed)
    other = "RUNPATH" if kind == "RPATH" else "RPATH"
    assert tag_values(after, kind) == [f"{origin}/../lib:/opt/elsewhere"]
    assert tag_values(after, other) == []
    assert all(os.path.isabs(p) for p in tag_values(after, kind)[0].split(":"))
    assert elf_reader.read(str(dst)).exports_count == info.exports_count


def test_add_needed_without_run_path_adds_none(tmp_path, module_copy):
    dst = tmp_path / "twin.so"
    elf_writer.apply(str(module_copy), str(dst), elf_writer.ElfEdits(add_needed=["libgcX.so"], rpaths=()))
    after = readelf_dynamic(dst)
    assert "libgcX.so" in tag_values(after, "NEEDED")
    assert tag_values(after, "RPATH") == tag_values(after, "RUNPATH") == []


def test_longer_soname_goes_to_patchelf(tmp_path, module_copy):
    dst = tmp_path / "named.so"
    elf_writer.apply(str(module_copy), str(dst), elf_writer.ElfEdits(soname="libgc-a-rather-long-name.so"))
    assert tag_values(readelf_dynamic(dst), "SONAME") == ["libgc-a-rather-long-name.so"]


def test_patchelf_failure_is_a_rewrite_error(tmp_path, module_copy, monkeypatch):
    text = tmp_path / "not-elf.so"
    text.write_text("this is not an ELF file\n")
    with pytest.raises(RewriteError, match="patchelf failed on .*not-elf.so"):
        elf_writer.run_patchelf(["--add-needed", "libx.so", str(text)])

    monkeypatch.setattr(elf_writer, "patchelf_path", lambda: "/bin/false")
    with pytest.raises(RewriteError, match="patchelf failed"):
        elf_writer.apply(str(module_copy), str(tmp_path / "a.so"), elf_writer.ElfEdits(add_needed=["libx.so"]))


def test_patchelf_doing_nothing_is_caught_by_the_reread(tmp_path, module_copy, monkeypatch):
    monkeypatch.setattr(elf_writer, "patchelf_path", lambda: "/bin/true")
    with pytest.raises(RewriteError, match="DT_NEEDED lacks"):
        elf_writer.apply(str(module_copy), str(tmp_path / "a.so"), elf_writer.ElfEdits(add_needed=["libx.so"]))
    with pytest.raises(RewriteError, match="run path"):
        elf_writer.apply(str(module_copy), str(tmp_path / "b.so"), elf_writer.ElfEdits(rpaths=("/opt/x",)))


def test_replace_needed_not_done_is_caught_by_the_reread(tmp_path, module_copy, monkeypatch):
    assert "libm.so.6" in elf_reader.read(str(module_copy)).needed
    monkeypatch.setattr(elf_writer, "patchelf_path", lambda: "/bin/true")
    with pytest.raises(RewriteError, match="DT_NEEDED lacks .*libgcY.so"):
        elf_writer.apply(
            str(module_copy), str(tmp_path / "a.so"), elf_writer.ElfEdits(replace_needed={"libm.so.6": "libgcY.so"})
        )


def bare_clone(directory, index, soname):
    """A clone directory whose manifest lists a stand-in libpython (twins join its manifest)."""
    os.makedirs(directory)
    with open(os.path.join(directory, soname), "wb") as f:
        f.write(b"stand-in")
    store.write_json_atomic(
        os.path.join(directory, store.MANIFEST),
        {"index": index, "soname": soname, "files": {soname: store.manifest_entry(os.path.join(directory, soname))}},
    )
    return store.CloneRecord(index, str(directory), soname)


def test_twin_factory_binds_the_copy_and_rebuilds_when_altered(tmp_path, module_copy):
    set_rpath(module_copy, "$ORIGIN/../lib", force_rpath=False)
    record = bare_clone(str(tmp_path / "clone-03"), 3, "libgc7074e4740503.so")
    factory = extensions.TwinFactory(record)
    twin = factory.twin_for(str(module_copy))
    assert twin.startswith(record.ext_dir + os.sep)
    entries = readelf_dynamic(twin)
    assert record.soname in tag_values(entries, "NEEDED")
    assert tag_values(entries, "RUNPATH") == [f"{module_copy.parent}/../lib"]
    meta = store.read_json(os.path.join(os.path.dirname(twin), extensions.TWIN_FILE))
    assert meta["source"] == str(module_copy) and meta["sha256"] == store.sha256_file(twin)

    # a fresh factory (another process) finds it current and does not rebuild it
    ino = os.stat(twin).st_ino
    assert extensions.TwinFactory(record).twin_for(str(module_copy)) == twin
    assert os.stat(twin).st_ino == ino

    # altered twin: rebuilt
    with open(twin, "ab") as f:
        f.write(b"\0")
    assert extensions.TwinFactory(record).twin_for(str(module_copy)) == twin
    assert store.sha256_file(twin) == meta["sha256"]

    # changed source: rebuilt from the new source
    set_rpath(module_copy, "/opt/newer", force_rpath=False)
    assert extensions.TwinFactory(record).twin_for(str(module_copy)) == twin
    assert tag_values(readelf_dynamic(twin), "RUNPATH") == ["/opt/newer"]
    assert [n for n in os.listdir(record.ext_dir) if n.startswith((".tmp-", ".trash-"))] == []
    listed = store.read_json(os.path.join(record.directory, store.MANIFEST))["files"]
    rel = os.path.relpath(twin, record.directory)
    assert listed[rel]["sha256"] == store.sha256_file(twin)  # the manifest lists the twin
    assert sorted(listed) == sorted([record.soname, rel, os.path.join(os.path.dirname(rel), extensions.TWIN_FILE)])


# -- 3. prepare + verify on every pyenv Python ----------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """prepared(exe) -> (set dir, prepare's JSON): one 3-clone set per interpreter, made once."""
    made = {}

    def get(exe):
        key = os.path.realpath(exe)
        if key not in made:
            dest = tmp_path_factory.mktemp("set") / "set"
            out = gilclone("prepare", "--count", 3, "--dest", dest, "--json", "--python", exe)
            assert out.returncode == 0, out.stderr
            made[key] = (str(dest), json.loads(out.stdout))
        return made[key]

    return get


def test_enough_pythons_found():
    require_enough_pythons(PYTHONS)


@pytest.mark.slow
@pytest.mark.parametrize("version,exe", PYTHONS, ids=[v for v, _ in PYTHONS])
def test_prepare_and_verify(prepared, version, exe):
    dest, info = prepared(exe)
    assert info["version"].startswith(version + ".")
    assert [c["index"] for c in info["clones"]] == [0, 1, 2]
    sonames = [c["soname"] for c in info["clones"]]
    original = os.path.basename(info["libpython"])
    assert len(set(sonames)) == 3 and original not in sonames
    for c in info["clones"]:
        assert tag_values(readelf_dynamic(c["libpython"]), "SONAME") == [c["soname"]]
        assert len(c["soname"]) == len(elf_reader.read(info["libpython"]).name)

    code, report = verify_json(dest)
    assert_all_ok(code, report)
    assert report["clones"] == 3
    assert EXPECTED_CHECKS <= {c["name"] for c in report["checks"]}
    assert "[[1, 0, 0], [1, 1, 0], [1, 1, 1]]" in check(report, "independent_initialisation")["detail"]


def other_version_python():
    running = "%d.%d" % sys.version_info[:2]
    return next(((v, exe) for v, exe in PYTHONS if v != running), None)


@pytest.mark.slow
def test_verify_checks_the_sets_own_extension(prepared):
    other = other_version_python()
    support.require(other, "no pyenv Python of a version other than the running one")
    dest, info = prepared(other[1])
    code, report = verify_json(dest)
    assert_all_ok(code, report)
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(info["libpython"])))
    sources = [
        store.read_json(path)["source"]
        for path in glob.glob(os.path.join(dest, "clone-*", "ext", "*", extensions.TWIN_FILE))
    ]
    assert sources
    foreign = [s for s in sources if not s.startswith(prefix + os.sep)]
    assert not foreign, f"twins of another Python in a {other[0]} set: {foreign}"


# -- 4. sets broken on purpose ---------------------------------------------------------------


@pytest.fixture
def broken(prepared, tmp_path):
    """A private copy of the running interpreter's set, free to damage."""
    dest, _ = prepared(sys.executable)
    copy = tmp_path / "set"
    shutil.copytree(dest, copy, symlinks=True)
    return str(copy)


@pytest.mark.slow
def test_original_soname_is_caught(broken):
    clone = os.path.join(broken, "clone-01")
    record = record_of(broken, "clone-01")
    original = elf_reader.read(store.read_json(os.path.join(broken, store.SET_FILE))["libpython"]).name
    name, offset = soname_file_offset(record.libpython)
    assert name == record.soname and len(original) == len(name)
    with open(record.libpython, "r+b") as f:
        f.seek(offset)
        f.write(original.encode())
    assert tag_values(readelf_dynamic(record.libpython), "SONAME") == [original]
    refresh_manifest(clone)

    # The copy's own soname no longer is the one its manifest names: caught before loading.
    code, report = verify_json(broken)
    assert code == 1 and report["ok"] is False
    intact = check(report, "files_intact")
    assert intact["ok"] is False
    assert "clone 1" in intact["detail"] and original in intact["detail"], intact["detail"]
    assert "independent_initialisation" not in {c["name"] for c in report["checks"]}


@pytest.mark.slow
def test_unbound_extension_copy_is_caught(broken):
    record = record_of(broken, "clone-01")
    source = host_extension("_decimal")
    base = os.path.basename(source)
    twin_dir = os.path.join(record.ext_dir, f"{base}-{__import__('hashlib').sha1(source.encode()).hexdigest()[:10]}")
    shutil.rmtree(twin_dir, ignore_errors=True)
    os.makedirs(twin_dir)
    twin = os.path.join(twin_dir, base)
    shutil.copyfile(source, twin)  # an unmodified copy: no DT_NEEDED on the clone
    src = os.stat(source)
    store.write_json_atomic(
        os.path.join(twin_dir, extensions.TWIN_FILE),
        {
            "source": source,
            "source_size": src.st_size,
            "source_mtime_ns": src.st_mtime_ns,
            "sha256": store.sha256_file(twin),
        },
    )
    assert extensions.TwinFactory(record).twin_for(source) == twin
    assert store.sha256_file(twin) != store.sha256_file(source), "an unlisted copy was accepted"
    shutil.copyfile(source, twin)  # planted again, and listed in the manifest (an attacker-grade edit)
    rel = os.path.relpath(twin_dir, record.directory)
    with integrity.ext_lock(record.directory):
        integrity.list_in_manifest(record.directory, rel + "/", [f"{rel}/{base}", f"{rel}/{extensions.TWIN_FILE}"])
    assert extensions.TwinFactory(record).twin_for(source) == twin  # accepted as current
    assert store.sha256_file(twin) == store.sha256_file(source)

    code, report = verify_json(broken)
    assert code == 1 and report["ok"] is False
    bound = check(report, "extension_copies_bound")
    assert bound["ok"] is False
    assert "clone 1" in bound["detail"] and record.soname in bound["detail"], bound["detail"]
    assert "extension_state_isolation" not in {c["name"] for c in report["checks"]}


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["append", "truncate"])
def test_damaged_libpython_is_caught_and_rebuilt(broken, damage):
    record = record_of(broken, "clone-00")
    size = os.path.getsize(record.libpython)
    if damage == "append":
        with open(record.libpython, "ab") as f:
            f.write(b"\0")
    else:
        os.truncate(record.libpython, size // 2)

    code, report = verify_json(broken)
    assert code == 1 and report["ok"] is False
    intact = check(report, "files_intact")
    assert intact["ok"] is False
    assert record.libpython in intact["detail"], intact["detail"]
    assert store.check_clone(record, full=True) is not None

    out = gilclone("prepare", "--count", 3, "--dest", broken)
    assert out.returncode == 0, out.stderr
    rebuilt = record_of(broken, "clone-00")  # sonames depend on the set's directory
    assert os.path.getsize(rebuilt.libpython) == size
    assert store.check_clone(rebuilt, full=True) is None
    assert_all_ok(*verify_json(broken))


# -- 5. prepare under concurrency, SIGKILL and bad input -------------------------------------


@pytest.mark.slow
def test_concurrent_prepares_share_one_set(tmp_path):
    dest = tmp_path / "set"
    cmd = [sys.executable, "-m", "gilclone", "prepare", "--count", "4", "--dest", str(dest), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    sonames = [[c["soname"] for c in json.loads(stdout)["clones"]] for stdout, _ in results]
    assert sonames[0] == sonames[1] and len(set(sonames[0])) == 4
    assert clone_dirs(dest) == ["clone-00", "clone-01", "clone-02", "clone-03"]
    assert leftovers(dest) == []
    code, report = verify_json(dest)
    assert_all_ok(code, report)
    assert report["clones"] == 4


def start_and_kill(dest, count, ready):
    """Start ``prepare --count``, SIGKILL it once ``ready(names)`` holds; True if it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gilclone", "prepare", "--count", str(count), "--dest", str(dest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            names = os.listdir(dest) if os.path.isdir(dest) else []
            if ready(names):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def assert_complete_clones_only(dest):
    for name in clone_dirs(dest):
        assert os.path.isfile(os.path.join(dest, name, store.MANIFEST)), f"{name} lacks its manifest"
        problem = store.check_clone(record_of(dest, name), full=True)
        assert problem is None, f"{name}: {problem}"


@pytest.mark.slow
def test_killed_prepare_leaves_only_complete_clones(tmp_path):
    dest = tmp_path / "set"
    stages = [
        lambda names: any(n.startswith(".tmp-") for n in names) or "clone-00" in names,
        lambda names: "clone-02" in names,
        lambda names: "clone-04" in names and any(n.startswith(".tmp-") for n in names),
    ]
    killed = 0
    for ready in stages:
        killed += start_and_kill(dest, 6, ready)
        assert_complete_clones_only(dest)
    assert killed >= 1, "prepare finished before it could be killed"

    out = gilclone("prepare", "--count", 6, "--dest", dest)
    assert out.returncode == 0, out.stderr
    assert clone_dirs(dest) == [f"clone-{i:02d}" for i in range(6)]
    assert leftovers(dest) == []
    assert_complete_clones_only(dest)
    code, report = verify_json(dest)
    assert_all_ok(code, report)
    assert report["clones"] == 6


def test_dest_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file\n")
    dest = blocker / "sub"
    out = gilclone("prepare", "--count", 1, "--dest", dest)
    one_line_error(out, str(dest))
    assert blocker.read_text() == "a regular file\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_dest_in_read_only_directory(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = gilclone("prepare", "--count", 1, "--dest", parent / "sub")
        one_line_error(out, str(parent / "sub"))
        out = gilclone("prepare", "--count", 1, "--dest", parent)
        one_line_error(out, str(parent))
    finally:
        parent.chmod(0o755)


def test_python_that_is_not_python(tmp_path):
    out = gilclone("prepare", "--count", 1, "--dest", tmp_path / "set", "--python", "/bin/true")
    one_line_error(out, "/bin/true")
    assert not (tmp_path / "set").exists()


def test_missing_python(tmp_path):
    out = gilclone("prepare", "--count", 1, "--dest", tmp_path / "set", "--python", tmp_path / "nope")
    one_line_error(out, str(tmp_path / "nope"))


@pytest.mark.slow
def test_dest_holding_another_pythons_set(tmp_path, prepared):
    fake = tmp_path / "fake"
    fake.mkdir()
    store.write_json_atomic(
        str(fake / store.SET_FILE),
        {"format": 1, "set_id": "0" * 64, "python": {"executable": "/opt/py/bin/python3.9", "version": "3.9.1"}},
    )
    candidates = [str(fake)]
    other = other_version_python()
    if other:
        candidates.append(prepared(other[1])[0])
    for dest in candidates:
        before = sorted(os.listdir(dest))
        out = gilclone("prepare", "--count", 1, "--dest", dest)
        line = one_line_error(out, dest, "another Python")
        assert "empty --dest" in line
        assert [n for n in sorted(os.listdir(dest)) if n != ".lock"] == [n for n in before if n != ".lock"]


@pytest.mark.parametrize("count", [0, -3])
def test_count_below_one(tmp_path, count):
    out = gilclone("prepare", "--count", count, "--dest", tmp_path / "set")
    one_line_error(out, "--count")
    assert not (tmp_path / "set").exists()


TWO_SETS_IN_ONE_PROCESS = """
import os, sys, threading
from gilclone.cloner import store
from gilclone.cloner.load import clone_for
clones = []
for root in sys.argv[1:]:
    cset = store.load_set(root)
    clones.append(clone_for(cset.clones[0], cset.python))
for c in clones:
    t = threading.Thread(target=c.open)
    t.start()
    t.join()
for i, c in enumerate(clones):
    c.run_source(f"import _decimal\\n_decimal.DefaultContext.prec = {21 + i}")
print([c.run_source("import _decimal\\n_r = str(_decimal.DefaultContext.prec)", "_r") for c in clones])
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_two_sets_of_one_python_in_one_process(prepared, tmp_path):
    dest, _ = prepared(sys.executable)
    second = tmp_path / "second"
    out = gilclone("prepare", "--count", 1, "--dest", second, "--json")
    assert out.returncode == 0, out.stderr
    run = subprocess.run(
        [sys.executable, "-c", TWO_SETS_IN_ONE_PROCESS, dest, str(second)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip().splitlines()[-1] == "['21', '22']"


@pytest.mark.slow
def test_clone_without_manifest_is_reported_not_dropped(broken):
    os.remove(os.path.join(broken, "clone-01", "manifest.json"))
    code, report = verify_json(broken)
    assert code == 1 and report["ok"] is False
    intact = check(report, "files_intact")
    assert intact["ok"] is False and "clone-01" in intact["detail"], intact["detail"]


ONE_GIL_SCRIPT = """
import json, sys
from gilclone.cloner import store, verify_child

verify_child.HOLD_SECONDS = 2
cset = store.load_set(sys.argv[1])
verifier = verify_child.Verifier(cset)
verifier.clones[0].open()
verifier.clones[1].open()
two = verifier.parallel_gils()
verifier.clones = [verifier.clones[0], verifier.clones[0]]  # one interpreter, so one GIL
one = verifier.parallel_gils()
print(json.dumps([two, one]))
"""


@pytest.mark.slow
def test_parallel_gils_check_fails_when_both_sides_share_one_gil(prepared):
    """verify proves separate GILs by behaviour (one clone runs while the other holds its
    GIL), so a loaded machine cannot fail it, and a shared GIL cannot pass it."""
    root, _ = prepared(sys.executable)
    out = subprocess.run([sys.executable, "-c", ONE_GIL_SCRIPT, root], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (two_ok, two_detail), (one_ok, one_detail) = json.loads(out.stdout.strip().splitlines()[-1])
    assert two_ok and "released" in two_detail, two_detail
    assert not one_ok and "timed out" in one_detail, one_detail
