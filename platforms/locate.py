"""Find the libpython an interpreter uses, and where its extension modules come from.

The facts are gathered by probe.py, in this process or in another interpreter;
``install_from_probe`` turns them into a PythonInstall and is the only place
that knows the per-OS rules (static hosts, framework builds, DLL names).
"""

import json
import logging
import os
import re
import subprocess
from typing import Callable, List, Optional

from gilclone.platforms import probe
from gilclone.platforms.model import PythonInstall

from gilclone.errors import LocateError, PythonVersionError

log = logging.getLogger(__name__)

MIN_VERSION = (3, 8)
PROBE_TIMEOUT_S = 60

_PLATFORMS = {"linux": "linux", "win32": "windows", "cygwin": "windows", "darwin": "macos"}


def locate(python: Optional[str] = None) -> PythonInstall:
    """Locate the libpython of ``python`` (an executable path), default: this interpreter."""
    facts = probe.collect() if python is None else run_probe(python)
    install = install_from_probe(facts)
    log.info("%s (Python %s, %s): libpython %s", install.executable, install.version,
             install.linkage, install.libpython or "not found")
    return install


def run_probe(python: str) -> dict:
    """Run probe.py in another interpreter and return what it found."""
    if not os.path.exists(python):
        raise LocateError(f"{python}: no such interpreter; give the path of a python executable")
    script = os.path.abspath(probe.__file__)
    log.debug("probing %s with %s", python, script)
    try:
        out = subprocess.run(
            [python, script],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            cwd=os.path.dirname(script),
        )
    except OSError as exc:
        raise LocateError(f"{python}: cannot be run ({exc.strerror}); is it a python executable?") from None
    except subprocess.TimeoutExpired:
        raise LocateError(f"{python}: did not answer within {PROBE_TIMEOUT_S} s") from None
    if out.returncode != 0:
        last = (out.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise LocateError(f"{python}: the probe failed ({last}); is it CPython 3.8 or newer?")
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise LocateError(f"{python}: the probe printed no facts; is it CPython 3.8 or newer?") from None


def install_from_probe(facts: dict, exists: Callable[[str], bool] = os.path.exists) -> PythonInstall:
    """Interpret probe facts. ``exists`` is the file test (kept a parameter so per-OS rules
    can be exercised with facts recorded on another OS)."""
    _check_supported(facts)
    platform = _PLATFORMS.get(facts["sys_platform"], facts["sys_platform"])
    config = facts["config"]
    executable = facts["executable"]
    loaded = facts.get("loaded_libpython")
    searched: List[str] = []

    if loaded and not _same_file(loaded, executable, platform):
        libpython, linkage = loaded, "shared"
    else:
        # The C API lives in the executable itself (Debian's python3, pyenv without
        # --enable-shared): copies must come from a separate shared build of the same version.
        linkage = "static"
        searched = _static_candidates(config, platform)
        libpython = next((c for c in searched if exists(c)), None)
    short = ".".join(facts["version"].split(".")[:2])
    found_version = libpython_version(libpython, short) if linkage == "static" and libpython else None

    return PythonInstall(
        executable=executable,
        version=facts["version"],
        platform=platform,
        machine=_normal_machine(facts.get("machine", "")),
        libpython=libpython,
        linkage=linkage,
        libpython_searched=tuple(searched),
        libpython_version=found_version,
        extension_dirs=tuple(_extension_dirs(facts, exists)),
        extension_suffix=config.get("EXT_SUFFIX") or "",
        prefix=facts["prefix"],
        base_prefix=facts["base_prefix"],
        sys_path=tuple(facts["sys_path"]),
    )


def _check_supported(facts: dict) -> None:
    if facts.get("implementation") != "cpython":
        raise PythonVersionError(
            f"{facts.get('executable')}: {facts.get('implementation')} is not CPython; "
            "gilclone clones CPython's libpython only"
        )
    version = tuple(int(p) for p in re.findall(r"\d+", facts["version"])[:2])
    if version < MIN_VERSION:
        raise PythonVersionError(
            f"{facts['executable']}: Python {facts['version']} is too old; "
            "gilclone needs CPython 3.8 or newer"
        )


def _same_file(a: str, b: str, platform: str) -> bool:
    if platform == "windows":
        return os.path.normcase(a) == os.path.normcase(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _static_candidates(config: dict, platform: str) -> List[str]:
    """Where a shared libpython matching a static host is installed, most likely first."""
    soname = config.get("INSTSONAME") or config.get("LDLIBRARY") or ""
    if platform == "macos" and not soname.endswith(".dylib"):
        soname = (config.get("LDLIBRARY") or "").replace(".a", ".dylib")
    if not soname or soname.endswith(".a"):
        return []
    dirs = [config.get("LIBDIR") or ""]
    multiarch = config.get("MULTIARCH")
    if multiarch:
        dirs += [os.path.join(d, multiarch) for d in (config.get("LIBDIR") or "", "/usr/lib")
                 if d and not d.rstrip("/").endswith(multiarch)]
    dirs += ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
    seen, out = set(), []
    for d in dirs:
        if d:
            path = os.path.join(d, soname)
            if path not in seen:
                seen.add(path)
                out.append(path)
    return out


def _extension_dirs(facts: dict, exists: Callable[[str], bool]) -> List[str]:
    config = facts["config"]
    candidates = [config.get("DESTSHARED") or ""]
    candidates += [p for p in facts["sys_path"] if p.rstrip("/\\").endswith("lib-dynload")]
    if facts["sys_platform"] == "win32":
        import ntpath  # Windows facts may be interpreted on another OS

        candidates += [ntpath.join(facts["base_prefix"], "DLLs"), facts["base_prefix"]]
    candidates += facts.get("site_packages", [])
    out: List[str] = []
    for d in candidates:
        if d and d not in out and exists(d):
            out.append(d)
    return out


def _normal_machine(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "aarch64": "arm64", "i686": "x86", "i386": "x86", "x86": "x86"}.get(m, m)


def libpython_version(path: str, short_version: str) -> Optional[str]:
    """The full version a libpython file was built as (its PY_VERSION string), if found."""
    wanted = re.compile(rb"\x00(" + re.escape(short_version.encode()) + rb"\.\d+(?:(?:a|b|rc)\d+)?\+?)\x00")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    m = wanted.search(data)
    return m.group(1).decode() if m else None
