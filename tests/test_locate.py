"""Locating libpython: this interpreter, every pyenv CPython, Debian's static python3.11,
hand-written probe facts for Windows and macOS, and interpreters that must be refused."""

import json
import os
import platform
import subprocess
import sys
import sysconfig

import pytest
import support
from gilclone.platforms import locate as locate_mod
from gilclone.platforms.binary import read_binary
from gilclone.platforms.locate import install_from_probe, locate
from gilclone.platforms.model import KIND_LIBPYTHON
from support import pythons

from gilclone.errors import GilcloneError, LocateError, PythonVersionError

PYTHONS = pythons.pyenv_pythons()
HOST = "%d.%d" % sys.version_info[:2]  # the version `make test-fast` runs the per-Python tests on
DEBIAN_PYTHON = "/usr/bin/python3.11"
DEBIAN_LIBPYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"

# Py_ENABLE_SHARED cannot tell shared from static: Debian sets it although its python3
# links the C API in statically. What the process has mapped can.
_ASK = (
    "import json, os, platform, sys, sysconfig\n"
    "maps = [l.split(None, 5)[5].strip() for l in open('/proc/self/maps') if len(l.split(None, 5)) == 6]\n"
    "lib = sorted({m for m in maps if os.path.basename(m).startswith('libpython')})\n"
    "print(json.dumps({'version': platform.python_version(), "
    "'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'mapped_libpython': lib, "
    "'prefix': sys.prefix}))\n"
)


def ask(python: str) -> dict:
    """What an interpreter says about itself, asked directly (the oracle for locate)."""
    out = subprocess.run([python, "-c", _ASK], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _mapped_files() -> set:
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def _mapped_libpython() -> list:
    return sorted(m for m in _mapped_files() if os.path.basename(m).startswith("libpython"))


# --- the running interpreter --------------------------------------------------------


@pytest.fixture
def linux():
    support.require(os.path.exists("/proc/self/maps"), "needs Linux /proc/self/maps as the oracle")


def test_running_interpreter(linux):
    install = locate()
    assert install.executable == sys.executable
    assert install.version == platform.python_version()
    assert install.extension_suffix == sysconfig.get_config_var("EXT_SUFFIX")
    dynload = sysconfig.get_config_var("DESTSHARED")
    assert dynload in install.extension_dirs
    assert any(d.rstrip("/").endswith("lib-dynload") for d in install.extension_dirs)
    assert install.libpython is not None and os.path.isfile(install.libpython)
    assert read_binary(install.libpython).kind == KIND_LIBPYTHON
    mapped = _mapped_libpython()
    if mapped:
        # pyenv's --enable-shared builds: the executable loads libpython, and locate
        # names the very file mapped into this process
        assert install.linkage == "shared"
        assert [install.libpython] == mapped
        libdir = sysconfig.get_config_var("LIBDIR")
        soname = sysconfig.get_config_var("INSTSONAME")
        assert os.path.realpath(install.libpython) == os.path.realpath(os.path.join(libdir, soname))
    else:
        # Debian's python3: the C API is in the executable
        assert install.linkage == "static"
        assert install.libpython in install.libpython_searched


def test_running_interpreter_is_pyenv_shared_build():
    """The suite's own interpreter, when it comes from pyenv, must be a shared build."""
    root = pythons.pyenv_root()
    if not (root and os.path.realpath(sys.base_prefix).startswith(os.path.realpath(root) + os.sep)):
        # not a missing prerequisite: a Debian python3 venv is as valid a runner
        pytest.skip(f"the tests run on {sys.base_prefix}, not a pyenv build")
    assert locate().linkage == "shared"


# --- other interpreters ------------------------------------------------------------


def test_enough_pythons():
    pythons.require_enough_pythons(PYTHONS)


@pytest.mark.parametrize("version,exe", support.fast_once(PYTHONS, HOST, [v for v, _ in PYTHONS]))
def test_pyenv_python(linux, version, exe):
    truth = ask(exe)
    install = locate(python=exe)
    assert install.short_version == version
    assert install.version == truth["version"]
    assert install.extension_suffix == truth["ext_suffix"]
    assert install.platform == "linux"
    prefix = os.path.realpath(truth["prefix"])
    assert install.prefix == truth["prefix"]
    dynload = os.path.join(truth["prefix"], "lib", f"python{version}", "lib-dynload")
    assert dynload in install.extension_dirs
    if truth["mapped_libpython"]:
        assert install.linkage == "shared"
        assert [install.libpython] == truth["mapped_libpython"]
        libdir = os.path.join(prefix, "lib") + os.sep
        assert os.path.realpath(install.libpython).startswith(libdir), install.libpython
        assert os.path.basename(install.libpython) == f"libpython{version}.so.1.0"
        info = read_binary(install.libpython)
        assert (info.kind, info.python_version) == (KIND_LIBPYTHON, version)
    else:
        assert install.linkage == "static"


def test_debian_static_python(linux):
    support.require(os.path.exists(DEBIAN_PYTHON), f"{DEBIAN_PYTHON} not installed")
    support.require(
        os.path.exists(DEBIAN_LIBPYTHON), f"{DEBIAN_LIBPYTHON} not installed (apt install libpython3.11)"
    )
    truth = ask(DEBIAN_PYTHON)
    install = locate(python=DEBIAN_PYTHON)
    assert truth["mapped_libpython"] == []
    # Debian links the interpreter statically; the shared library is a separate package.
    assert install.linkage == "static"
    assert install.libpython == DEBIAN_LIBPYTHON
    assert DEBIAN_LIBPYTHON in install.libpython_searched
    assert install.libpython_version == truth["version"]
    assert install.version == truth["version"]
    assert install.extension_suffix == truth["ext_suffix"]
    assert "/usr/lib/python3.11/lib-dynload" in install.extension_dirs


# --- per-OS rules, from hand-written probe facts -------------------------------------


def _config(**values):
    keys = (
        "LIBDIR", "LDLIBRARY", "INSTSONAME", "Py_ENABLE_SHARED", "EXT_SUFFIX", "MULTIARCH",
        "DESTSHARED", "PYTHONFRAMEWORK", "PYTHONFRAMEWORKPREFIX", "SOABI",
    )
    return {k: values.get(k) for k in keys}


WINDOWS = {
    "executable": "C:\\Python311\\python.exe",
    "implementation": "cpython",
    "version": "3.11.7",
    "sys_platform": "win32",
    "machine": "AMD64",
    "prefix": "C:\\Python311",
    "base_prefix": "C:\\Python311",
    "sys_path": [
        "C:\\Python311\\python311.zip",
        "C:\\Python311\\DLLs",
        "C:\\Python311\\Lib",
        "C:\\Python311",
        "C:\\Python311\\Lib\\site-packages",
    ],
    "config": _config(EXT_SUFFIX=".cp311-win_amd64.pyd"),
    "site_packages": ["C:\\Python311", "C:\\Python311\\Lib\\site-packages"],
    "loaded_libpython": "C:\\Python311\\python311.dll",
}
WINDOWS_FILES = {
    "C:\\Python311",
    "C:\\Python311\\DLLs",
    "C:\\Python311\\Lib\\site-packages",
    "C:\\Python311\\python311.dll",
}

FRAMEWORK = "/Library/Frameworks/Python.framework/Versions/3.11"
MACOS_FRAMEWORK = {
    "executable": f"{FRAMEWORK}/bin/python3.11",
    "implementation": "cpython",
    "version": "3.11.7",
    "sys_platform": "darwin",
    "machine": "arm64",
    "prefix": FRAMEWORK,
    "base_prefix": FRAMEWORK,
    "sys_path": [
        f"{FRAMEWORK}/lib/python311.zip",
        f"{FRAMEWORK}/lib/python3.11",
        f"{FRAMEWORK}/lib/python3.11/lib-dynload",
        f"{FRAMEWORK}/lib/python3.11/site-packages",
    ],
    "config": _config(
        LIBDIR=f"{FRAMEWORK}/lib",
        LDLIBRARY="Python.framework/Versions/3.11/Python",
        INSTSONAME="Python.framework/Versions/3.11/Python",
        Py_ENABLE_SHARED=0,
        EXT_SUFFIX=".cpython-311-darwin.so",
        MULTIARCH="darwin",
        DESTSHARED=f"{FRAMEWORK}/lib/python3.11/lib-dynload",
        PYTHONFRAMEWORK="Python",
        PYTHONFRAMEWORKPREFIX="/Library/Frameworks",
        SOABI="cpython-311-darwin",
    ),
    "site_packages": [f"{FRAMEWORK}/lib/python3.11/site-packages"],
    # dladdr(Py_Initialize) names the framework's shared library, not the executable
    "loaded_libpython": f"{FRAMEWORK}/Python",
}
MACOS_FRAMEWORK_FILES = {
    f"{FRAMEWORK}/Python",
    f"{FRAMEWORK}/lib/python3.11/lib-dynload",
    f"{FRAMEWORK}/lib/python3.11/site-packages",
}

PYENV_MAC = "/Users/dev/.pyenv/versions/3.12.1"
MACOS_STATIC = {
    "executable": f"{PYENV_MAC}/bin/python3.12",
    "implementation": "cpython",
    "version": "3.12.1",
    "sys_platform": "darwin",
    "machine": "x86_64",
    "prefix": PYENV_MAC,
    "base_prefix": PYENV_MAC,
    "sys_path": [f"{PYENV_MAC}/lib/python3.12", f"{PYENV_MAC}/lib/python3.12/lib-dynload"],
    "config": _config(
        LIBDIR=f"{PYENV_MAC}/lib",
        LDLIBRARY="libpython3.12.a",
        INSTSONAME="libpython3.12.a",
        Py_ENABLE_SHARED=0,
        EXT_SUFFIX=".cpython-312-darwin.so",
        MULTIARCH="darwin",
        DESTSHARED=f"{PYENV_MAC}/lib/python3.12/lib-dynload",
        SOABI="cpython-312-darwin",
    ),
    "site_packages": [f"{PYENV_MAC}/lib/python3.12/site-packages"],
    # without --enable-shared the C API lives in the executable itself
    "loaded_libpython": f"{PYENV_MAC}/bin/python3.12",
}
MACOS_STATIC_FILES = {
    f"{PYENV_MAC}/bin/python3.12",
    f"{PYENV_MAC}/lib/python3.12/lib-dynload",
    f"{PYENV_MAC}/lib/python3.12/site-packages",
}


def _exists_in(files):
    asked = []

    def exists(path):
        asked.append(path)
        return path in files

    exists.asked = asked
    return exists


def test_windows_install():
    install = install_from_probe(WINDOWS, exists=_exists_in(WINDOWS_FILES))
    assert install.platform == "windows"
    assert install.machine == "x86_64"
    assert install.linkage == "shared"
    assert install.libpython == "C:\\Python311\\python311.dll"
    assert install.libpython_searched == ()
    assert install.short_version == "3.11"
    assert install.extension_suffix == ".cp311-win_amd64.pyd"
    assert "C:\\Python311\\Lib\\site-packages" in install.extension_dirs


def test_windows_dlls_dir_from_probe_on_another_os():
    install = install_from_probe(WINDOWS, exists=_exists_in(WINDOWS_FILES))
    assert "C:\\Python311\\DLLs" in install.extension_dirs


def test_macos_framework_build():
    install = install_from_probe(MACOS_FRAMEWORK, exists=_exists_in(MACOS_FRAMEWORK_FILES))
    assert install.platform == "macos"
    assert install.machine == "arm64"
    assert install.linkage == "shared"
    assert install.libpython == f"{FRAMEWORK}/Python"
    assert install.libpython_searched == ()
    assert install.extension_suffix == ".cpython-311-darwin.so"
    assert install.extension_dirs[0] == f"{FRAMEWORK}/lib/python3.11/lib-dynload"
    assert f"{FRAMEWORK}/lib/python3.11/site-packages" in install.extension_dirs


def test_macos_static_build_without_dylib():
    exists = _exists_in(MACOS_STATIC_FILES)
    install = install_from_probe(MACOS_STATIC, exists=exists)
    assert install.platform == "macos"
    assert install.linkage == "static"
    assert install.libpython is None
    assert install.libpython_version is None
    # the .a name is turned into the shared library's name, looked for next to it first
    assert install.libpython_searched[0] == f"{PYENV_MAC}/lib/libpython3.12.dylib"
    assert all(p.endswith("libpython3.12.dylib") for p in install.libpython_searched)
    assert set(install.libpython_searched) <= set(exists.asked)
    assert install.extension_dirs[0] == f"{PYENV_MAC}/lib/python3.12/lib-dynload"


def test_macos_static_build_with_matching_dylib():
    dylib = f"{PYENV_MAC}/lib/libpython3.12.dylib"
    install = install_from_probe(MACOS_STATIC, exists=_exists_in(MACOS_STATIC_FILES | {dylib}))
    assert install.linkage == "static"
    assert install.libpython == dylib


def test_probe_without_loaded_libpython_is_static():
    facts = dict(MACOS_FRAMEWORK, loaded_libpython=None)
    install = install_from_probe(facts, exists=_exists_in(MACOS_FRAMEWORK_FILES))
    assert install.linkage == "static"


# --- interpreters that cannot be used ------------------------------------------------


def _assert_clear(exc: GilcloneError, path: str):
    message = str(exc)
    assert path in message
    assert "Traceback" not in message
    assert "\n" not in message


def test_nonexistent_python(tmp_path):
    path = str(tmp_path / "no-such-python")
    with pytest.raises(LocateError) as caught:
        locate(python=path)
    _assert_clear(caught.value, path)
    assert "no such" in str(caught.value)


@pytest.mark.parametrize("program", ["/bin/true", "/bin/echo"])
def test_not_a_python(program):
    support.require(os.path.exists(program), f"{program} not present")
    with pytest.raises(LocateError) as caught:
        locate(python=program)
    _assert_clear(caught.value, program)
    assert "3.8" in str(caught.value)


def test_directory_is_not_a_python(tmp_path):
    with pytest.raises(LocateError) as caught:
        locate(python=str(tmp_path))
    _assert_clear(caught.value, str(tmp_path))


def test_failing_program(tmp_path):
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\necho 'python3: broken install' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(LocateError) as caught:
        locate(python=str(script))
    _assert_clear(caught.value, str(script))
    assert "broken install" in str(caught.value)


def test_probe_timeout(tmp_path, monkeypatch):
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(locate_mod, "PROBE_TIMEOUT_S", 1)
    with pytest.raises(LocateError) as caught:
        locate(python=str(script))
    _assert_clear(caught.value, str(script))


@pytest.mark.parametrize("version,exe", pythons.unsupported_pythons() or [("none", "")],
                         ids=[v for v, _ in pythons.unsupported_pythons()] or ["none"])
def test_too_old_python(version, exe):
    if not exe:
        # optional: test_too_old_from_facts covers the rule everywhere
        pytest.skip("no Python 2.7, 3.6 or 3.7 installed under pyenv to refuse")
    with pytest.raises((PythonVersionError, LocateError)) as caught:
        locate(python=exe)
    _assert_clear(caught.value, exe)
    message = str(caught.value)
    assert "3.8" in message
    if version.startswith("3."):
        # the probe runs on 3.6/3.7; the version check names the actual version
        assert isinstance(caught.value, PythonVersionError)
        assert "too old" in message


def test_not_cpython():
    facts = dict(MACOS_FRAMEWORK, implementation="pypy")
    with pytest.raises(PythonVersionError, match="not CPython"):
        install_from_probe(facts, exists=_exists_in(MACOS_FRAMEWORK_FILES))


def test_too_old_from_facts():
    facts = dict(MACOS_FRAMEWORK, version="3.7.17")
    with pytest.raises(PythonVersionError, match="3.7.17 is too old"):
        install_from_probe(facts, exists=_exists_in(MACOS_FRAMEWORK_FILES))
