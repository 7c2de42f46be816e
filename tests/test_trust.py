"""Trust and integrity of clone sets (issue 11): the tamper matrix, two users, races.

Every tampering case is checked three ways, each in a subprocess with a timeout
(a tampered set may crash whoever loads it): ``gilclone verify`` must name the
failed check, ``ClonePool`` must refuse (and never run the planted code), and
``gilclone prepare`` must rebuild the clone or refuse with one line. Planted
code is a small library whose constructor writes a marker file: if the marker
appears, someone loaded it.
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import support
from gilclone.cloner import (
    audit,
    extensions,
    filelock,
    integrity,
    leftovers,
    prepare,
    setfiles,
    store,
    trust,
)

from gilclone.errors import CacheTrustError, GilcloneError

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the ELF cloner and the owner checks run on Linux")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- helpers ------------------------------------------------------------------------------


def gilclone(*args, timeout=300, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "gilclone", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def verify_json(dest):
    out = gilclone("verify", "--json", dest)
    try:
        return out.returncode, json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"verify printed no JSON (exit {out.returncode}): {out.stdout!r} {out.stderr[-2000:]!r}")


def failed_checks(report):
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


POOL_SCRIPT = textwrap.dedent("""
    import sys, time
    from gilclone.errors import GilcloneError

    def task(i):
        import decimal, math, json
        time.sleep(0.2)
        return str(decimal.Decimal(i) / 7)

    if __name__ == "__main__":
        from gilclone.pool.executor import ClonePool
        try:
            with ClonePool(2, clones=sys.argv[1]) as pool:
                results = [f.result() for f in [pool.submit(task, i) for i in range(6)]]
            print("RAN", results)
        except GilcloneError as exc:
            print("REFUSED", type(exc).__name__, str(exc).splitlines()[0])
""")


def run_pool(dest, tmp_path, timeout=120):
    """("RAN"|"REFUSED", line) of a ClonePool(2) on ``dest`` in its own process."""
    script = tmp_path / "pool_main.py"
    script.write_text(POOL_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(dest)], capture_output=True, text=True,
                         timeout=timeout, cwd=str(tmp_path))
    assert out.returncode == 0, f"the pool process died (exit {out.returncode}): {out.stderr[-3000:]}"
    line = out.stdout.strip().splitlines()[-1]
    return line.split()[0], line


EVIL_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) close(fd);
}
"""


@pytest.fixture(scope="module")
def evil_lib(tmp_path_factory):
    """make(soname) -> path of a library whose constructor creates ``marker``."""
    support.require(shutil.which("gcc"), "gcc is needed to build the planted library")
    root = tmp_path_factory.mktemp("evil")
    source = root / "evil.c"
    source.write_text(EVIL_C)
    marker = root / "RAN"

    def make(soname):
        out = root / f"build-{soname}"
        subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', f"-Wl,-soname,{soname}",
                        "-o", str(out), str(source)], check=True, capture_output=True)
        return str(out)

    make.marker = marker
    return make


@pytest.fixture(scope="module")
def base_set(tmp_path_factory):
    """A 2-clone set of this Python with twins of _decimal (built by verify), verified intact."""
    dest = tmp_path_factory.mktemp("base") / "set"
    out = gilclone("prepare", "--count", 2, "--dest", dest)
    assert out.returncode == 0, out.stderr
    code, report = verify_json(dest)
    assert failed_checks(report) == {}, json.dumps(report, indent=1)
    return str(dest)


def private_copy(base, target):
    """A copy of the base set; blessed and stamped so the fast path is in use before tampering."""
    shutil.copytree(base, target, symlinks=True)
    for record in store.load_set(str(target)).clones:
        integrity.bless(record)
        assert store.check_clone(record) is None
    return str(target)


def clone_dir(dest, index=0):
    return os.path.join(dest, store.clone_dir_name(index))


def manifest_of(dest, index=0):
    return store.read_json(os.path.join(clone_dir(dest, index), store.MANIFEST))


def write_manifest(dest, manifest, index=0):
    store.write_json_atomic(os.path.join(clone_dir(dest, index), store.MANIFEST), manifest)


def flip_byte(path, offset=4096):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def libpython_of(dest, index=0):
    return os.path.join(clone_dir(dest, index), manifest_of(dest, index)["soname"])


# -- the tamper matrix -------------------------------------------------------------------


def forge_stamp(dest, evil):
    """Flip a byte in the libpython copy and rewrite the stamp as if it had been hashed."""
    path = libpython_of(dest)
    flip_byte(path)
    directory = clone_dir(dest)
    with open(os.path.join(directory, store.MANIFEST), "rb") as f:
        manifest_sha = hashlib.sha256(f.read()).hexdigest()
    stamp = store.read_json(os.path.join(directory, store.STAMP))
    st = os.stat(path)
    stamp["files"][os.path.basename(path)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    assert stamp["manifest"] == manifest_sha
    store.write_json_atomic(os.path.join(directory, store.STAMP), stamp)


def empty_manifest(dest, evil):
    manifest = manifest_of(dest)
    manifest["files"] = {}
    write_manifest(dest, manifest)
    flip_byte(libpython_of(dest))


def absolute_soname(dest, evil):
    lib = evil("libevil.so")
    manifest = manifest_of(dest)
    manifest["soname"] = lib
    manifest["files"] = {lib: store.manifest_entry(lib)}
    write_manifest(dest, manifest)


def libpython_replaced(dest, evil):
    path = libpython_of(dest)
    shutil.copyfile(evil("libevil.so"), path)
    manifest = manifest_of(dest)
    manifest["files"][os.path.basename(path)] = store.manifest_entry(path)
    write_manifest(dest, manifest)


def planted_twin(dest, evil):
    import math

    source = os.path.realpath(math.__file__)
    base = os.path.basename(source)
    twin_dir = os.path.join(clone_dir(dest), "ext", f"{base}-{hashlib.sha1(source.encode()).hexdigest()[:10]}")
    os.makedirs(twin_dir)
    shutil.copyfile(evil(manifest_of(dest)["soname"]), os.path.join(twin_dir, base))
    st = os.stat(source)
    store.write_json_atomic(os.path.join(twin_dir, extensions.TWIN_FILE),
                            {"source": source, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns})
    trust.seal(twin_dir)


def chmod_777(dest, evil):
    os.chmod(clone_dir(dest), 0o777)
    os.chmod(libpython_of(dest), 0o777)


def duplicate_copy(dest, evil):
    shutil.rmtree(clone_dir(dest, 0))
    shutil.copytree(clone_dir(dest, 1), clone_dir(dest, 0), symlinks=True)


def duplicate_symlink(dest, evil):
    shutil.rmtree(clone_dir(dest, 0))
    os.symlink(store.clone_dir_name(1), clone_dir(dest, 0))


def symlink_leaving_set(dest, evil):
    path = libpython_of(dest)
    lib = evil(os.path.basename(path))
    os.remove(path)
    os.symlink(lib, path)
    manifest = manifest_of(dest)
    manifest["files"][os.path.basename(path)] = store.manifest_entry(lib)
    write_manifest(dest, manifest)


def path_leaving_clone(dest, evil):
    manifest = manifest_of(dest)
    other = manifest_of(dest, 1)["soname"]
    manifest["files"][f"../clone-01/{other}"] = store.manifest_entry(libpython_of(dest, 1))
    write_manifest(dest, manifest)


def file_missing(dest, evil):
    twin_json = [n for n in manifest_of(dest)["files"] if n.endswith(extensions.TWIN_FILE)]
    assert twin_json, "the base set has no twin"
    os.remove(os.path.join(clone_dir(dest), twin_json[0]))


def extra_file(dest, evil):
    shutil.copyfile(evil("libextra.so"), os.path.join(clone_dir(dest), "libextra.so"))
    os.chmod(os.path.join(clone_dir(dest), "libextra.so"), 0o700)


def set_id_changed(dest, evil):
    meta = store.read_json(os.path.join(dest, store.SET_FILE))
    meta["set_id"] = "f" * 64
    store.write_json_atomic(os.path.join(dest, store.SET_FILE), meta)


def set_dir_misnamed(dest, evil):
    """The set moved into a cache-style directory named after another set id."""
    meta = store.read_json(os.path.join(dest, store.SET_FILE))
    misnamed = os.path.join(os.path.dirname(dest), f"{meta['python']['version']}-{'0' * 12}")
    os.rename(dest, misnamed)
    return misnamed


def lock_symlink(dest, evil):
    os.remove(os.path.join(dest, ".lock"))
    os.symlink(os.path.join(os.path.dirname(dest), "lock-target"), os.path.join(dest, ".lock"))


def owned_by_nobody(dest, evil):
    os.chown(libpython_of(dest), 65534, 65534)


# name: (tamper(dest, evil) -> new dest or None, verify's failed check, prepare's outcome)
MATRIX = {
    "stamp_forged": (forge_stamp, "files_intact", "rebuild"),
    "manifest_files_emptied": (empty_manifest, "clone_identity", "rebuild"),
    "soname_absolute_outside": (absolute_soname, "clone_identity", "rebuild"),
    "libpython_replaced_hash_updated": (libpython_replaced, "files_intact", "rebuild"),
    "extension_copy_planted": (planted_twin, "files_intact", "rebuild"),
    "chmod_777": (chmod_777, "trusted_files", "rebuild"),
    "clone_duplicated_by_copy": (duplicate_copy, "clone_identity", "rebuild"),
    "clone_duplicated_by_symlink": (duplicate_symlink, "clone_identity", "rebuild"),
    "symlink_leaving_set": (symlink_leaving_set, "trusted_files", "rebuild"),
    "manifest_path_leaving_clone": (path_leaving_clone, "clone_identity", "rebuild"),
    "listed_file_missing": (file_missing, "files_intact", "rebuild"),
    "unlisted_file_added": (extra_file, "files_intact", "rebuild"),
    "set_id_changed": (set_id_changed, "set_identity", "refuse"),
    "set_directory_misnamed": (set_dir_misnamed, "set_identity", "refuse"),
    "lock_symlink": (lock_symlink, "trusted_files", "refuse"),
    "file_owned_by_another_user": (owned_by_nobody, "trusted_files", "rebuild"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_tampering_is_caught(case, base_set, evil_lib, tmp_path):
    tamper, check, prepare_outcome = MATRIX[case]
    if case == "file_owned_by_another_user" and not IS_ROOT:
        support.require(False, "only root can give a file to another user")
    if evil_lib.marker.exists():
        evil_lib.marker.unlink()
    dest = private_copy(base_set, tmp_path / "set")
    dest = tamper(dest, evil_lib) or dest

    code, report = verify_json(dest)
    failed = failed_checks(report)
    assert code == 1 and not report["ok"] and check in failed, json.dumps(report, indent=1)

    # The pool refuses the set, or (where prepare would rebuild) rebuilds the damaged clone
    # before loading it: either way the planted code never runs.
    outcome, line = run_pool(dest, tmp_path)
    assert not evil_lib.marker.exists(), "the planted code ran in the pool"
    if outcome == "RAN":
        assert prepare_outcome == "rebuild", line
        checks = audit.set_checks(os.path.realpath(dest))
        assert all(ok for _, ok, _ in checks), checks
        return
    assert outcome == "REFUSED", line

    out = gilclone("prepare", "--count", 2, "--dest", dest)
    assert "Traceback" not in out.stderr, out.stderr
    if prepare_outcome == "rebuild":
        assert out.returncode == 0, out.stderr
        checks = audit.set_checks(os.path.realpath(dest))
        assert all(ok for _, ok, _ in checks), checks
    else:
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert os.path.realpath(dest) in out.stderr or dest in out.stderr, out.stderr
        assert check != "set_identity" or "set.json" in out.stderr, out.stderr  # the file, not "another Python"
    assert not evil_lib.marker.exists(), "the planted code ran"
    assert not (tmp_path / "lock-target").exists(), "a planted .lock link was followed"


BAD_VALUES = [None, 1, -1, "x", "../x", "/abs", [], {}, [["a"]], {"a": 1}, True]


@pytest.fixture(scope="module")
def scratch_set(base_set, tmp_path_factory):
    return private_copy(base_set, tmp_path_factory.mktemp("scratch") / "set")


@pytest.mark.parametrize("field", ["index", "soname", "files", "renames", "binary_format"])
def test_verify_reports_any_malformed_manifest_as_a_failed_check(scratch_set, field):
    """Whatever a manifest holds, the checks before loading name it; none raises."""
    directory = clone_dir(scratch_set)
    path = os.path.join(directory, store.MANIFEST)
    with open(path, "rb") as f:
        original = f.read()
    try:
        for value in BAD_VALUES:
            if field == "renames" and value == []:
                continue  # no renames is valid
            manifest = json.loads(original)
            manifest[field] = value
            write_manifest(scratch_set, manifest)
            checks = {n: (ok, d) for n, ok, d in audit.set_checks(scratch_set)}
            assert not checks["clone_identity"][0] or not checks["files_intact"][0], (field, value, checks)
            with pytest.raises(GilcloneError):
                store.load_set(scratch_set)
                raise AssertionError(f"load_set accepted {field}={value!r}") from None
    finally:
        with open(path, "wb") as f:
            f.write(original)


def test_stamp_cannot_vouch_for_new_content(base_set, tmp_path, monkeypatch):
    """The fast path skips hashing a blessed clone, and hashes again whatever changed after
    the manifest, even when the stamp is rewritten to match (ctime cannot be set back)."""
    dest = private_copy(base_set, tmp_path / "set")
    record = store.load_set(dest).clones[0]
    hashed = []
    real = setfiles.sha256_file
    monkeypatch.setattr(setfiles, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert store.check_clone(record) is None
    assert hashed == [], "a blessed, stamped clone was hashed again"
    time.sleep(0.02)  # past the file system's timestamp granularity
    forge_stamp(dest, None)
    problem = store.check_clone(record)
    assert problem and "SHA-256" in problem and record.libpython in problem, problem
    assert record.libpython in hashed


def test_chmod_by_an_admin_is_blessed_by_prepare(base_set, tmp_path, monkeypatch):
    """Sharing a set (chmod, chown) renews every ctime: the next prepare blesses it again."""
    dest = private_copy(base_set, tmp_path / "set")
    time.sleep(0.02)
    subprocess.run(["chmod", "-R", "a+rX", dest], check=True)
    record = store.load_set(dest).clones[0]
    hashed = []
    real = setfiles.sha256_file
    monkeypatch.setattr(setfiles, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert store.check_clone(record) is None and record.libpython in hashed
    integrity.bless(record)
    hashed.clear()
    assert store.check_clone(record) is None and store.check_clone(record) is None
    assert hashed == []


# -- creation modes ------------------------------------------------------------------------


def modes_with_group_or_other_bits(root):
    loose = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            if stat.S_IMODE(os.lstat(path).st_mode) & 0o077:
                loose.append(f"{stat.S_IMODE(os.lstat(path).st_mode):04o} {path}")
    return loose


@pytest.mark.slow
def test_sets_and_twins_are_private_whatever_the_umask(tmp_path):
    dest = tmp_path / "set"
    env = dict(os.environ, GILCLONE_CACHE=str(tmp_path / "cache"))
    script = (f"umask 000 && {sys.executable} -m gilclone prepare --count 2 --dest {dest} && "
              f"{sys.executable} -m gilclone verify {dest}")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert modes_with_group_or_other_bits(dest) == []
    libs = [p for p in store.read_json(os.path.join(dest, "clone-00", store.MANIFEST))["files"]
            if p.endswith(".so")]
    assert len(libs) >= 2  # the libpython copy and a twin, both listed
    for rel in libs:
        assert stat.S_IMODE(os.stat(os.path.join(dest, "clone-00", rel)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(dest, "set.json")).st_mode) == 0o600


def test_lock_is_never_opened_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    (tmp_path / ".lock").symlink_to(target)
    with pytest.raises(CacheTrustError, match=r"\.lock: is a symbolic link"):
        with filelock.FileLock(str(tmp_path / ".lock")):
            pass
    assert not target.exists()


def test_lock_file_writable_by_others_is_refused(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("")
    lock.chmod(0o666)
    with pytest.raises(CacheTrustError, match="chmod go-w"):
        with filelock.FileLock(str(lock)):
            pass


# -- the cache root ------------------------------------------------------------------------


def test_sources_index_cannot_point_outside_the_cache(base_set, tmp_path, monkeypatch):
    """sources.json only names set ids; a set elsewhere on disk is never used from it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GILCLONE_CACHE", str(cache))
    monkeypatch.setattr(prepare, "_known_sets", {})
    elsewhere = private_copy(base_set, tmp_path / "elsewhere")
    sets = []
    monkeypatch.setattr(prepare, "prepare", lambda count, dest=None, install=None: sets.append(count) or
                        store.load_set(elsewhere))
    install = prepare.locate(None)
    st = os.stat(install.libpython)
    key = f"{install.libpython}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|"
    trust.make_private_dirs(str(cache))
    store.write_json_atomic(str(cache / prepare.INDEX_FILE), {key: elsewhere})  # the old format: a path
    prepare.ensure_set(1)
    assert sets == [1], "a set named by sources.json was used without prepare"
    set_id = store.load_set(elsewhere).set_id
    store.write_json_atomic(str(cache / prepare.INDEX_FILE), {key: {"set_id": set_id, "root": elsewhere}})
    monkeypatch.setattr(prepare, "_known_sets", {})
    prepare.ensure_set(1)
    assert sets == [1, 1], "the index's root was followed"


def test_group_writable_cache_root_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # writable by others, not sticky
    monkeypatch.setenv("GILCLONE_CACHE", str(cache))
    out = gilclone("prepare", "--count", 1)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(cache) in out.stderr and "writable by group or others" in out.stderr, out.stderr
    assert os.listdir(cache) == []


# -- two users -----------------------------------------------------------------------------


def as_nobody(script):
    """Run shell ``script`` as nobody (setpriv), the way another local user would."""
    support.require(IS_ROOT, "two-user tests switch to nobody, which needs root")
    support.require(shutil.which("setpriv"), "setpriv (util-linux) is not installed")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def shared_tmp():
    """A /tmp-like directory (mode 1777) that nobody can reach."""
    path = os.path.realpath(os.path.join("/tmp", f"gc-trust-shared-{os.getpid()}-{time.time_ns()}"))
    os.mkdir(path)
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sticky_cache_gets_a_per_user_directory(shared_tmp, monkeypatch):
    install = prepare.locate(None)
    set_id = prepare.set_id_for(install, store.sha256_file(install.libpython))
    planted = os.path.join(shared_tmp, f"{install.version}-{set_id[:12]}")
    as_nobody(f"mkdir {planted} && echo '{{}}' > {planted}/set.json")
    monkeypatch.setenv("GILCLONE_CACHE", shared_tmp)
    assert store.default_cache_root() == os.path.join(shared_tmp, f"gilclone-{os.geteuid()}")
    assert not prepare.default_set_dir(install, set_id).startswith(planted)


def test_per_user_directory_made_by_another_user_is_refused(shared_tmp, monkeypatch):
    as_nobody(f"mkdir -m 700 {shared_tmp}/gilclone-{os.geteuid()}")
    monkeypatch.setenv("GILCLONE_CACHE", shared_tmp)
    with pytest.raises(CacheTrustError, match="owned by uid 65534"):
        prepare.prepare(1)


def test_cache_root_owned_by_another_user_is_refused(shared_tmp, base_set, monkeypatch):
    cache = os.path.join(shared_tmp, "cache")
    as_nobody(f"mkdir -m 755 {cache}")
    monkeypatch.setenv("GILCLONE_CACHE", cache)
    with pytest.raises(CacheTrustError, match=f"{cache}: owned by uid 65534"):
        prepare.prepare(1)
    # a set inside a root another user owns: that user could swap it at any time
    planted = os.path.join(cache, "set")
    subprocess.run(["cp", "-a", base_set, planted], check=True)
    with pytest.raises(CacheTrustError, match="owned by uid 65534"):
        store.load_set(planted)
    code, report = verify_json(planted)
    assert code == 1 and "trusted_files" in failed_checks(report)


def test_set_planted_by_another_user_is_refused(shared_tmp, base_set, tmp_path):
    planted = os.path.join(shared_tmp, "set")
    subprocess.run(["cp", "-a", base_set, planted], check=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", planted], check=True)
    code, report = verify_json(planted)
    assert code == 1 and "owned by uid 65534" in failed_checks(report)["trusted_files"]
    outcome, line = run_pool(planted, tmp_path)
    assert outcome == "REFUSED" and "CacheTrustError" in line, line


def test_lock_link_planted_by_another_user_is_not_followed(shared_tmp):
    dest = os.path.join(shared_tmp, "set")
    target = os.path.join(shared_tmp, "target")
    os.mkdir(dest)
    os.chmod(dest, 0o1777)  # as an old gilclone left it under umask 000 (0777), or sticky
    as_nobody(f"ln -s {target} {dest}/.lock")
    out = gilclone("prepare", "--count", 1, "--dest", dest)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert dest in out.stderr, out.stderr
    assert not os.path.lexists(target)
    with pytest.raises(CacheTrustError, match="symbolic link"):
        with filelock.FileLock(os.path.join(dest, ".lock")):
            pass
    assert not os.path.lexists(target)


def test_shared_read_only_root_set_is_accepted(base_set, tmp_path):
    """The documented way to share a set: root-owned, readable by all, writable by none else."""
    shared = private_copy(base_set, tmp_path / "shared")
    subprocess.run(["chmod", "-R", "a+rX,go-w", shared], check=True)
    assert all(ok for _, ok, _ in audit.set_checks(shared)), audit.set_checks(shared)
    for record in store.load_set(shared).clones:
        integrity.bless(record)  # what the documented second prepare does
        manifest = os.path.join(record.directory, store.MANIFEST)
        assert stat.S_IMODE(os.stat(manifest).st_mode) == 0o644, "a blessed manifest is no longer readable by all"
        assert store.check_clone(record) is None


# -- leftovers and races -------------------------------------------------------------------


def owner_token_of(pid):
    return f"{leftovers._boot_id()}-{pid}-{leftovers._start_time(pid)}"


def test_leftovers_of_dead_builds_go_and_live_ones_stay(base_set, tmp_path):
    dest = private_copy(base_set, tmp_path / "set")
    ext = os.path.join(clone_dir(dest), "ext")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        live_dir = os.path.join(ext, f".tmp-{owner_token_of(live.pid)}-aaaa")
        dead_dir = os.path.join(ext, f".tmp-{owner_token_of(dead.pid)}-bbbb")
        stamp_tmp = os.path.join(clone_dir(dest), f"{store.STAMP}.tmp-{owner_token_of(dead.pid)}-cccc")
        os.mkdir(live_dir)
        os.mkdir(dead_dir)
        open(stamp_tmp, "w").close()
        dead.send_signal(signal.SIGKILL)  # a twin build killed mid-way
        dead.wait()
        assert store.check_clone(store.load_set(dest).clones[0]) is None  # work in progress is no extra file
        out = gilclone("prepare", "--count", 2, "--dest", dest)
        assert out.returncode == 0, out.stderr
        assert os.path.isdir(live_dir), "a live build's directory was removed"
        assert not os.path.exists(dead_dir) and not os.path.exists(stamp_tmp)
    finally:
        live.kill()
        live.wait()


def test_killed_twin_build_is_cleaned_by_the_next_build(base_set, tmp_path):
    """Twin builds hold ext/.lock; the next build, under it, removes what a killed one left."""
    import array

    dest = private_copy(base_set, tmp_path / "set")
    record = store.load_set(dest).clones[0]
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    leftover = os.path.join(record.ext_dir, f".tmp-{owner_token_of(killed.pid)}-dddd")
    os.mkdir(leftover)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    twin = extensions.TwinFactory(record).twin_for(os.path.realpath(array.__file__))
    assert os.path.isfile(twin) and not os.path.exists(leftover)
    assert store.check_clone(record, full=True) is None  # the new twin is listed


RACE_POOL = textwrap.dedent("""
    import sys
    def task(i):
        import decimal, json, struct, math, array, _random, _bisect, time
        time.sleep(0.05)
        return str(decimal.Decimal(i) / 7)
    if __name__ == "__main__":
        from gilclone.pool.executor import ClonePool
        with ClonePool(2, clones=sys.argv[1] if len(sys.argv) > 1 else None) as pool:
            print(list(pool.map(task, range(int(sys.argv[2]) if len(sys.argv) > 2 else 4))))
""")


@pytest.mark.slow
def test_eight_pools_at_once_on_an_empty_cache(tmp_path):
    script = tmp_path / "race_main.py"
    script.write_text(RACE_POOL)
    env = dict(os.environ, GILCLONE_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=str(tmp_path)) for _ in range(8)]
    results = [p.communicate(timeout=480) for p in procs]
    failed = [(p.returncode, err[-1500:]) for p, (_, err) in zip(procs, results) if p.returncode != 0]
    assert not failed, failed
    sets = [d for d in os.listdir(tmp_path / "cache") if not d.endswith(".json")]
    assert len(sets) == 1
    assert all(ok for _, ok, _ in audit.set_checks(str(tmp_path / "cache" / sets[0])))


@pytest.mark.slow
@pytest.mark.parametrize("tamper", [libpython_replaced, chmod_777], ids=["libpython_replaced", "chmod_777"])
def test_default_cache_pool_rebuilds_a_tampered_clone(tamper, evil_lib, tmp_path):
    """ClonePool() on the default cache goes through ensure_set: a tampered clone is rebuilt."""
    script = tmp_path / "race_main.py"
    script.write_text(RACE_POOL)
    env = dict(os.environ, GILCLONE_CACHE=str(tmp_path / "cache"))

    def pool():
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                             cwd=str(tmp_path), timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]

    pool()
    (dest,) = [str(tmp_path / "cache" / d) for d in os.listdir(tmp_path / "cache") if not d.endswith(".json")]
    if evil_lib.marker.exists():
        evil_lib.marker.unlink()
    tamper(dest, evil_lib)
    pool()
    assert not evil_lib.marker.exists(), "the planted code ran"
    assert all(ok for _, ok, _ in audit.set_checks(dest)), audit.set_checks(dest)


@pytest.mark.slow
def test_prepare_loop_beside_a_running_pool(base_set, tmp_path):
    dest = private_copy(base_set, tmp_path / "set")
    script = tmp_path / "race_main.py"
    script.write_text(RACE_POOL)
    pool = subprocess.Popen([sys.executable, str(script), dest, "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    codes = []
    try:
        while pool.poll() is None and len(codes) < 4:
            codes.append(gilclone("prepare", "--count", 2, "--dest", dest).returncode)
    finally:
        out, err = pool.communicate(timeout=300)
    assert pool.returncode == 0, err[-3000:]
    assert len(codes) >= 2 and set(codes) == {0}, codes
    assert all(ok for _, ok, _ in audit.set_checks(dest)), audit.set_checks(dest)


LEASE_SCRIPT = textwrap.dedent("""
    import sys
    from gilclone.pool import ClonePool

    def index(_):
        import bisect
        return sys._gilclone_index

    if __name__ == "__main__":
        with ClonePool(1) as a, ClonePool(1) as b, ClonePool(1) as c:
            print(sorted({f.result() for f in [p.submit(index, 0) for p in (a, b, c)]}))
""")


def test_a_pool_checks_every_clone_it_leases_not_only_the_first(tmp_path):
    """The default cache is checked for the first clone when a pool starts; a clone leased
    later (other pools hold the first ones) is checked then, and rebuilt when damaged,
    before it is loaded. It used to be loaded unchecked and fail (BrokenClonePool)."""
    env = dict(os.environ, GILCLONE_CACHE=str(tmp_path / "cache"))
    script = tmp_path / "lease.py"
    script.write_text(LEASE_SCRIPT)

    def run():
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=180, cwd=str(tmp_path), env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]

    assert run() == "[0, 1, 2]"
    planted = []
    for twin in glob.glob(str(tmp_path / "cache" / "*" / "clone-0[12]" / "ext" / "_bisect*")):
        shutil.copytree(twin, twin + "-planted")
        planted.append(twin + "-planted")
    assert len(planted) == 2
    assert run() == "[0, 1, 2]"
    assert not any(os.path.exists(p) for p in planted)
