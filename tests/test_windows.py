"""Windows clones, with the official embeddable CPython 3.10-3.13 builds.

Without Wine: ``prepare --target windows --python-home`` on Linux, its files
checked with LLVM's readers (llvm-readobj --coff-imports/--coff-exports,
llvm-objdump -p for forwarders), ``verify``'s static report, and the doctor's
Windows checks on constructed sets.

Under Wine (wine64): gilclone staged as a package tree for the embeddable Python,
then ``prepare`` + ``verify`` natively, ``verify`` of the set prepared on Linux,
and a ClonePool of two clones computing with _decimal and pure Python (each
importing its own _decimal/_sqlite3/_ctypes copies).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import support
from gilclone.cloner import doctor, pe_clone, store
from gilclone.platforms import pe as pe_reader
from gilclone.platforms.home_windows import install_from_home
from support import windows_embed, wine

VERSIONS = windows_embed.VERSIONS
ROOT = pathlib.Path(__file__).resolve().parents[1]


def gilclone(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gilclone", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))


def llvm(tool, *args):
    exe = shutil.which(tool)
    support.require(exe is not None, f"{tool} is not installed (Debian: apt-get install llvm)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, check=True).stdout


def export_names(path):
    return re.findall(r"^\s+Name: (\S+)$", llvm("llvm-readobj", "--coff-exports", path), re.M)


def import_names(path):
    out = llvm("llvm-readobj", "--coff-imports", path)
    return re.findall(r"^\s+Name: (\S+\.dll)$", out, re.M | re.I)


def forwarders(path):
    return set(re.findall(r"\(forwarded to ([^.]+)\.", llvm("llvm-objdump", "-p", path)))


def dll_name(path):
    return re.search(r"^ DLL name: (\S+)$", llvm("llvm-objdump", "-p", path), re.M).group(1)


@pytest.fixture(scope="module")
def cross_sets(tmp_path_factory):
    """Sets prepared on Linux for each version, made once (the Wine test loads them too)."""
    base = tmp_path_factory.mktemp("cross")
    made = {}

    def get(version):
        if version not in made:
            home = windows_embed.embed_dir(version)
            dest = base / version
            proc = gilclone("prepare", "--target", "windows", "--python-home", str(home),
                            "--dest", str(dest), "--count", "2", "--json")
            assert proc.returncode == 0, proc.stderr
            made[version] = (home, dest, json.loads(proc.stdout))
        return made[version]

    return get


# -- on Linux ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_install_from_home(version):
    home = windows_embed.embed_dir(version)
    inst = install_from_home(str(home))
    tag = version.replace(".", "")
    assert inst.platform == "windows" and inst.linkage == "shared"
    assert inst.machine == "x86_64"
    assert inst.version.startswith(version + ".")  # from the DLL's version resource
    assert os.path.basename(inst.libpython) == f"python{tag}.dll"
    assert inst.sys_path == (f"{home}/python{tag}.zip", str(home))  # python3X._pth, absolute
    assert inst.extension_dirs == (str(home),)
    assert inst.extension_suffix == f".cp{tag}-win_amd64.pyd"


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_cross_prepared_set_agrees_with_llvm(version, cross_sets, tmp_path):
    home, dest, out = cross_sets(version)
    tag = version.replace(".", "")
    original = home / f"python{tag}.dll"
    original_exports = export_names(original)
    assert len(original_exports) > 1000
    cset = store.load_set(str(dest))
    names = set()
    for c in cset.clones:
        clone = pathlib.Path(c.libpython)
        assert len(clone.name) == len(original.name) and clone.name.startswith("gc")
        assert export_names(clone) == original_exports
        assert dll_name(clone) == clone.name
        assert import_names(clone) == import_names(original)
        renames = dict(c.renames)
        stable = pathlib.Path(c.directory, renames["python3.dll"])
        assert len(stable.name) == len("python3.dll")
        assert export_names(stable) == export_names(home / "python3.dll")
        assert forwarders(home / "python3.dll") == {f"python{tag}"}
        assert forwarders(stable) == {clone.stem}
        pth = (clone.parent / f"{clone.stem}._pth").read_text().splitlines()
        assert "import site" not in pth
        resolved = [os.path.normpath(os.path.join(c.directory, p.replace("\\", "/")))
                    for p in pth if p and not p.startswith("#")]
        assert resolved == [str(home / f"python{tag}.zip"), str(home)]
        for path in (clone, stable):
            info = pe_reader.read(path)
            assert info.facts.certificate_size == 0
            assert info.facts.checksum == info.facts.computed_checksum
        names |= {clone.name.lower(), stable.name.lower()}
    assert len(names) == 4

    # An extension twin: its python3X.dll import renamed, nothing else changed.
    c = cset.clones[0]
    for module in ("_decimal.pyd", "_sqlite3.pyd", "_ctypes.pyd"):
        twin = tmp_path / module
        pe_clone.build_twin(str(home / module), str(twin), c.rename_map, c.soname)
        want = [c.soname if n.lower() == f"python{tag}.dll" else n
                for n in import_names(home / module)]
        assert import_names(twin) == want
        assert export_names(twin) == export_names(home / module)

    proc = gilclone("verify", "--json", str(dest))
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], report
    checks = {ch["name"] for ch in report["checks"]}
    assert {"distinct_dll_names", "exports_match", "stable_abi_forwarders", "pth_present",
            "checksums_and_signatures"} <= checks


@pytest.mark.slow
def test_static_checks_catch_damage(cross_sets, tmp_path):
    _home, dest, _out = cross_sets("3.12")
    copy = tmp_path / "set"
    shutil.copytree(dest, copy)
    cset = store.load_set(str(copy))
    pth = pathlib.Path(os.path.splitext(cset.clones[0].libpython)[0] + "._pth")
    pth.unlink()
    checks = {n: ok for n, ok, _d in pe_clone.static_checks(cset)}
    assert checks == {"files_intact": False}  # the manifest lists the ._pth


@pytest.mark.slow
def test_doctor_windows_findings(cross_sets, tmp_path):
    home, dest, _out = cross_sets("3.13")
    cache = tmp_path / "cache"
    shutil.copytree(dest, cache / "a")
    shutil.copytree(dest, cache / "b")  # the same names twice: a collision
    os.remove(os.path.splitext(store.load_set(str(cache / "b")).clones[1].libpython)[0] + "._pth")
    inst = install_from_home(str(home))
    found = doctor.diagnose(inst, str(cache), environ={})  # --cache, not GILCLONE_CACHE
    codes = {f.code: f for f in found}
    assert codes["win-dll-name-collision"].severity == "error"
    assert "win-pth-missing" in codes and "clone-01" in codes["win-pth-missing"].seen
    assert codes["win-signed-dll"].severity == "warning"  # the official builds are signed
    assert "win-abi3-no-python3-dll" not in codes  # no abi3 module in the embeddable zip

    # abi3 module present, but the clones have no python3.dll copy.
    sets = [store.load_set(str(cache / "a"))]
    bare = [store.CloneSet(s.root, s.set_id, s.python, tuple(
        store.CloneRecord(c.index, c.directory, c.soname, "PE", c.renames[:1]) for c in s.clones))
        for s in sets]
    f = doctor.windows.abi3_findings(inst, ["x.abi3.pyd"], bare)
    assert [x.code for x in f] == ["win-abi3-no-python3-dll"]


def test_windows_doctor_codes_are_documented():
    source = (ROOT / "cloner" / "doctor" / "windows.py").read_text()
    codes = set(re.findall(r'Finding\(\s*"([a-z0-9-]+)"', source))
    assert len(codes) == 4
    docs = (ROOT / "docs" / "doctor.md").read_text()
    assert [c for c in sorted(codes) if f"| `{c}` |" not in docs] == []


# -- under Wine -------------------------------------------------------------------------

POOL_SCRIPT = textwrap.dedent('''
    """A ClonePool of 2 clones computing with _decimal and pure Python (run under Wine)."""
    import ctypes
    import json
    import os
    import sys
    import time


    def work(n):
        import decimal

        ctx = decimal.Context(prec=60)
        one = decimal.Decimal(1)
        total = decimal.Decimal(0)
        for i in range(1, n):
            total = ctx.add(total, ctx.divide(one, decimal.Decimal(i)))
        acc = 0
        for i in range(n * 12):
            acc = (acc * 31 + i) % 1000003
        return str(total), acc


    def probe(delay):
        import _ctypes
        import _decimal
        import _sqlite3
        import sqlite3

        time.sleep(delay)  # keep this worker busy so the other takes the next probe
        twins = sys._gilclone_twins
        mods = {"_decimal": _decimal, "_sqlite3": _sqlite3, "_ctypes": _ctypes}
        (value,) = sqlite3.connect(":memory:").execute("select 6 * 7").fetchone()
        return {"index": sys._gilclone_index, "sqlite": value,
                "twins": {k: twins.get(m.__spec__.origin) for k, m in mods.items()}}


    if __name__ == "__main__":
        from gilclone.pool import ClonePool

        root, n, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        sys.path.insert(0, sys.argv[4])  # tests/support, before the pool copies sys.path
        from scenario_checks import gil_held_while_other_runs
        t0 = time.perf_counter()
        pool = ClonePool(2, clones=root)
        pool.submit(work, 10).result()
        started = time.perf_counter() - t0
        # Workers start as work arrives: start the second one and wait until it is up.
        list(pool.map(time.sleep, [0.1, 0.1]))
        deadline = time.perf_counter() + 120
        while len(pool.stats()) < 2 and time.perf_counter() < deadline:
            time.sleep(0.01)
        probes = [f.result() for f in [pool.submit(probe, 0.4), pool.submit(probe, 0.4)]]
        # python3.dll copies forward to their own clone (no abi3 .pyd in the embed zip).
        forwarding = []
        for rec in pool._records:
            stable = dict(rec.renames).get("python3.dll")
            a = ctypes.WinDLL(os.path.join(rec.directory, stable)).Py_IsInitialized
            b = ctypes.WinDLL(rec.libpython).Py_IsInitialized
            host = ctypes.pythonapi.Py_IsInitialized
            forwarding.append([ctypes.cast(x, ctypes.c_void_p).value for x in (a, b, host)])
        gils = list(gil_held_while_other_runs(pool))
        s0 = time.perf_counter()
        expected = [work(n) for _ in range(tasks)]
        serial = time.perf_counter() - s0
        parallel = []
        for _ in range(3):
            p0 = time.perf_counter()
            got = list(pool.map(work, [n] * tasks))
            parallel.append(time.perf_counter() - p0)
            if got != expected or serial / parallel[-1] > 1.5:
                break
        pool.shutdown()
        print(json.dumps({"started_s": started, "probes": probes, "serial_s": serial,
                          "parallel_s": parallel, "same": got == expected,
                          "forwarding": forwarding, "gils": gils}))
''')


@pytest.fixture(scope="module")
def wine_pythons(tmp_path_factory):
    """version -> python.exe of a copy of the embed folder that sees staged gilclone."""
    wine.require_wine()
    base = tmp_path_factory.mktemp("wine")
    stage = wine.stage_packages(base / "stage")
    made = {}

    def get(version):
        if version not in made:
            made[version] = wine.embed_copy(windows_embed.embed_dir(version),
                                            base / f"py{version}", stage)
        return made[version]

    get.base = base
    return get


def _verify_under_wine(python, root):
    proc = wine.run(python, ["-m", "gilclone", "verify", "--json", wine.windows_path(root)])
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(wine.describe(proc))
    failed = [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and report["ok"], failed or wine.describe(proc)
    names = {c["name"] for c in report["checks"]}
    assert {"independent_initialisation", "distinct_images", "distinct_runtime_state",
            "sentinel_isolation", "extension_copies_bound", "extension_state_isolation",
            "parallel_gils"} <= names
    return report


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_wine_native_prepare_verify_and_pool(version, wine_pythons):
    python = wine_pythons(version)
    dest = wine_pythons.base / f"set{version}"
    proc = wine.run(python, ["-m", "gilclone", "prepare", "--count", "2", "--json",
                             "--dest", wine.windows_path(dest)])
    assert proc.returncode == 0, wine.describe(proc)
    out = json.loads(proc.stdout)
    assert [c["soname"][:2] for c in out["clones"]] == ["gc", "gc"]
    assert out["libpython"].lower().endswith(f"python{version.replace('.', '')}.dll")
    _verify_under_wine(python, dest)

    script = wine_pythons.base / "pool_script.py"
    script.write_text(POOL_SCRIPT)
    support = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
    proc = wine.run(python, [wine.windows_path(script), wine.windows_path(dest), "60000", "4",
                             wine.windows_path(support)])
    assert proc.returncode == 0, wine.describe(proc)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["same"]
    assert sorted(p["index"] for p in r["probes"]) == [0, 1]
    for p in r["probes"]:
        assert p["sqlite"] == 42
        for module, twin in p["twins"].items():
            assert twin and f"clone-0{p['index']}" in twin, (module, twin)
    twins = [t for p in r["probes"] for t in p["twins"].values()]
    assert len(set(twins)) == 6  # each clone its own _decimal, _sqlite3 and _ctypes copy
    for via_stable, direct, host in r["forwarding"]:
        assert via_stable == direct != host
    # Independent GILs, shown without timing: one clone spins holding its GIL while
    # the other runs. The speed-up is printed for the record, not asserted (load).
    assert r["gils"][0] == "released" and r["gils"][1] in (0, 1), r
    speedup = r["serial_s"] / min(r["parallel_s"])
    print(f"{version}: clone pool start {r['started_s']:.3f} s, serial {r['serial_s']:.3f} s, "
          f"2 workers {min(r['parallel_s']):.3f} s, speed-up {speedup:.2f}x")


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_wine_loads_set_prepared_on_linux(version, wine_pythons, cross_sets):
    _home, dest, _out = cross_sets(version)
    _verify_under_wine(wine_pythons(version), dest)


@pytest.mark.slow
def test_wine_filelock_stamp_and_doctor(wine_pythons, tmp_path):
    """msvcrt locking between two Windows processes; st_ino as Wine reports it; doctor."""
    python = wine_pythons("3.13")
    script = tmp_path / "lock.py"
    script.write_text(textwrap.dedent('''
        import json, os, subprocess, sys
        from gilclone.cloner.filelock import FileLock
        from gilclone.errors import CloneError
        path = sys.argv[1]
        if len(sys.argv) > 2:
            try:
                with FileLock(path, timeout_s=0.3):
                    print("acquired")
            except CloneError:
                print("busy")
            sys.exit(0)
        def other():
            return subprocess.run([sys.executable, __file__, path, "x"], capture_output=True,
                                  text=True).stdout.strip()
        with FileLock(path):
            held = other()
        free = other()
        print(json.dumps({"held": held, "free": free, "ino": os.stat(__file__).st_ino}))
    '''))
    proc = wine.run(python, [wine.windows_path(script), wine.windows_path(tmp_path / ".lock")])
    assert proc.returncode == 0, wine.describe(proc)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["held"], r["free"]) == ("busy", "acquired")
    print(f"st_ino under Wine: {r['ino']}")

    proc = wine.run(python, ["-m", "gilclone", "doctor", "--json"],
                    env_extra={"GILCLONE_CACHE": wine.windows_path(tmp_path / "cache")})
    found = json.loads(proc.stdout)
    codes = {f["code"] for f in (found["findings"] if isinstance(found, dict) else found)}
    assert "win-signed-dll" in codes, found
