"""The ``gilclone`` command as users run it: a subprocess, ``python -m gilclone`` and the
console script, on real binaries and on files that are not binaries."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import support
from support import pythons

import gilclone

INSPECT_KEYS = {
    "path", "format", "machine", "name", "needed", "rpaths", "exports_count", "kind", "python_version",
}
LOCATE_KEYS = {"libpython", "version", "linkage", "extension_dirs", "extension_suffix"}


def gilclone_cli(*args, cwd=None, command=None):
    command = command or [sys.executable, "-m", "gilclone"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def _libpython():
    path = os.path.join(
        sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
    )
    support.require(
        ".so" in os.path.basename(path) and os.path.isfile(path),
        f"the running interpreter has no shared libpython (looked at {path})",
    )
    return path


def _extension():
    path = os.path.join(
        sysconfig.get_config_var("DESTSHARED") or "", "_json" + sysconfig.get_config_var("EXT_SUFFIX")
    )
    support.require(os.path.isfile(path), f"no _json extension module at {path}")
    return path


def _assert_one_line_error(result, name):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(name) in lines[0]
    assert lines[0].startswith("gilclone ")
    assert result.stdout == ""


# --- locate --------------------------------------------------------------------------


def test_locate_json():
    result = gilclone_cli("locate", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert LOCATE_KEYS <= set(doc)
    assert doc["version"].startswith("%d.%d." % sys.version_info[:2])
    assert doc["extension_suffix"] == sysconfig.get_config_var("EXT_SUFFIX")
    assert doc["linkage"] in ("shared", "static")
    assert isinstance(doc["extension_dirs"], list) and doc["extension_dirs"]
    assert sysconfig.get_config_var("DESTSHARED") in doc["extension_dirs"]
    if doc["linkage"] == "shared":
        assert os.path.isfile(doc["libpython"])


def test_locate_human():
    result = gilclone_cli("locate")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^linkage\s+(shared|static)$", result.stdout, re.M)
    assert re.search(r"^extension suffix\s+" + re.escape(sysconfig.get_config_var("EXT_SUFFIX")) + "$",
                     result.stdout, re.M)


def test_locate_other_python():
    found = pythons.pyenv_pythons()
    support.require(found, f"no CPython 3.8-3.13 found in {pythons.where_searched()}")
    version, exe = found[0]
    result = gilclone_cli("locate", "--json", "--python", exe)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["short_version"] == version
    assert doc["executable"] == exe


@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/true"])
def test_locate_bad_python(python):
    _assert_one_line_error(gilclone_cli("locate", "--python", python), python)


def test_locate_too_old_python():
    old = [exe for v, exe in pythons.unsupported_pythons() if v.startswith("3.")]
    if not old:
        pytest.skip("no Python 3.6 or 3.7 installed under pyenv")
    result = gilclone_cli("locate", "--python", old[0])
    _assert_one_line_error(result, old[0])
    assert "3.8" in result.stderr


# --- inspect -------------------------------------------------------------------------


def test_inspect_json_one_path():
    path = _libpython()
    result = gilclone_cli("inspect", "--json", path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    assert INSPECT_KEYS <= set(doc)
    assert doc["path"] == path
    assert doc["format"] == "ELF"
    assert doc["kind"] == "libpython"
    assert doc["python_version"] == "%d.%d" % sys.version_info[:2]
    assert isinstance(doc["needed"], list) and "libc.so.6" in doc["needed"]
    assert doc["exports_count"] > 1000


def test_inspect_json_several_paths():
    paths = [_libpython(), _extension(), os.path.realpath(sys.executable)]
    result = gilclone_cli("inspect", "--json", *paths)
    assert result.returncode == 0, result.stderr
    docs = json.loads(result.stdout)
    assert isinstance(docs, list) and len(docs) == 3
    assert [d["path"] for d in docs] == paths
    assert [d["kind"] for d in docs] == ["libpython", "extension", "executable"]
    for doc in docs:
        assert INSPECT_KEYS <= set(doc)


def test_inspect_human_is_aligned():
    path = _libpython()
    result = gilclone_cli("inspect", path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("path ")
    column = lines[0].index(path)
    for line in lines:
        assert line[column - 2 : column] == "  " and line[column] != " ", f"misaligned: {line!r}"
    version = "%d.%d" % sys.version_info[:2]
    assert "kind".ljust(column) + f"libpython (Python {version})" in lines


def test_inspect_human_several_paths_are_separated():
    result = gilclone_cli("inspect", _libpython(), _extension())
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    assert re.search(r"^kind\s+extension \(Python \d+\.\d+\)$", blocks[1], re.M)


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a binary\n")
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    truncated = tmp_path / "libpython-truncated.so"
    with open(_libpython(), "rb") as f:
        truncated.write_bytes(f.read(1_000_000))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
    return {
        "missing": tmp_path / "does-not-exist.so",
        "directory": tmp_path,
        "text": text,
        "empty": empty,
        "truncated": truncated,
        "zip": wheel,
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty", "truncated", "zip"])
def test_inspect_bad_input(tmp_path, kind):
    path = _bad_inputs(tmp_path)[kind]
    _assert_one_line_error(gilclone_cli("inspect", path), path)
    _assert_one_line_error(gilclone_cli("inspect", "--json", path), path)


def test_inspect_bad_input_among_good_prints_nothing(tmp_path):
    bad = _bad_inputs(tmp_path)["truncated"]
    _assert_one_line_error(gilclone_cli("inspect", "--json", _libpython(), bad), bad)


# --- the program itself ------------------------------------------------------------


def test_version():
    result = gilclone_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gilclone {gilclone.__version__}"


def test_no_command_is_a_usage_error():
    result = gilclone_cli()
    assert result.returncode == 2
    assert "usage: gilclone" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "gilclone")
    support.require(
        os.access(script, os.X_OK),
        f"no console script at {script}; install the package into this environment (make setup)",
    )
    result = gilclone_cli("--version", command=[script])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gilclone {gilclone.__version__}"
    result = gilclone_cli("inspect", "--json", _extension(), command=[script])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "extension"
