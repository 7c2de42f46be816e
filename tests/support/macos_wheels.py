"""Real Mach-O files for the tests: binaries from pinned macOS wheels on PyPI.

``binaries(key)`` downloads the wheel once (``pip download``), unpacks only its
``.so``/``.dylib`` members into ``support.cache_dir("macos-wheels", <wheel stem>)``
and returns their paths. The extraction happens in a private temporary
directory that is renamed into place with its completion marker already
inside, so two test processes racing for the same wheel both end up with the
same complete directory and nobody ever sees half of one.

The second half of the module turns the output of the LLVM tools
(llvm-otool, llvm-objdump --macho, llvm-lipo) into plain Python values; those
parsers are pure functions so they are tested on captured output.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional

import support

# key -> (project, version, platform tag, expected wheel stem). Pinned so the
# expected values the tests compute never drift under them.
WHEELS = {
    # arm64, macOS 14 target; links Accelerate, no bundled dylibs.
    "numpy-arm64": ("numpy", "2.1.3", "macosx_14_0_arm64",
                    "numpy-2.1.3-cp312-cp312-macosx_14_0_arm64"),
    # x86_64 with delocate's bundled .dylibs (OpenBLAS, gfortran, quadmath,
    # and a one-architecture *fat* libgcc_s) using @loader_path and LC_RPATH.
    "numpy-x86_64": ("numpy", "2.1.3", "macosx_10_13_x86_64",
                     "numpy-2.1.3-cp312-cp312-macosx_10_13_x86_64"),
    # Stable-ABI (abi3) extension, universal2, and an MH_DYLIB with an @rpath id.
    "cryptography-abi3": ("cryptography", "43.0.3", "macosx_10_9_universal2",
                          "cryptography-43.0.3-cp39-abi3-macosx_10_9_universal2"),
    # arm64 pyarrow: libarrow_python.dylib, a C-API helper dylib that is not an
    # extension, beside its companions (libarrow, libarrow_compute, ...), all @rpath.
    "pyarrow-arm64": ("pyarrow", "26.0.1", "macosx_12_0_arm64",
                      "pyarrow-26.0.1-cp312-cp312-macosx_12_0_arm64"),
    # Small universal2 extension (x86_64 unsigned, arm64 ad-hoc signed).
    "markupsafe-universal2": ("markupsafe", "2.1.5", "macosx_10_9_universal2",
                              "MarkupSafe-2.1.5-cp312-cp312-macosx_10_9_universal2"),
}

MARKER = ".complete"
_SUFFIXES = (".so", ".dylib")


def binaries(key: str) -> List[pathlib.Path]:
    """The Mach-O members of wheel ``key``, downloading it on first use.

    Skips the calling test when the download fails (fails it under CI=true).
    """
    project, version, platform, stem = WHEELS[key]
    root = support.cache_dir("macos-wheels")
    final = root / stem
    if not (final / MARKER).exists():
        error = _fetch(project, version, platform, stem, root, final)
        support.require(error is None, f"cannot fetch the {stem} wheel: {error}")
    return _listed(final)


def _listed(final: pathlib.Path) -> List[pathlib.Path]:
    files = (final / MARKER).read_text().splitlines()
    return [final / rel for rel in files if rel]


def _fetch(project, version, platform, stem, root: pathlib.Path, final: pathlib.Path) -> Optional[str]:
    """Download and unpack into ``final``; returns None or why it failed."""
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{stem}-", dir=root))
    try:
        download = work / "download"
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", platform, "--python-version", "3.12", "--implementation", "cp",
            "--disable-pip-version-check", "-q", "-d", str(download), f"{project}=={version}",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download did not finish ({exc})"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            return f"pip download failed: {tail[0]}"
        wheel = download / f"{stem}.whl"
        if not wheel.exists():
            return f"pip fetched {sorted(p.name for p in download.iterdir())}, not {wheel.name}"
        unpacked = work / "unpacked"
        unpacked.mkdir()
        members = extract_binaries(wheel, unpacked)
        if not members:
            return f"{wheel.name} holds no .so or .dylib files"
        # Written last: its presence means everything listed is there.
        (unpacked / MARKER).write_text("".join(m + "\n" for m in members))
        try:
            # rename() replaces an empty directory (cache_dir may have made one) atomically.
            if final.exists() and not any(final.iterdir()):
                final.rmdir()
            os.rename(unpacked, final)
        except OSError:
            # Another process got there first; its copy is as good as ours.
            if not (final / MARKER).exists():
                return f"cannot move the unpacked wheel into {final}"
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def extract_binaries(wheel: pathlib.Path, dest: pathlib.Path) -> List[str]:
    """Unpack only the .so/.dylib members of ``wheel`` under ``dest``; their relative paths."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.endswith(_SUFFIXES):
                continue
            parts = pathlib.PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts:
                continue  # never write outside dest
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append("/".join(parts))
    return sorted(out)


# --------------------------------------------------------------------------
# LLVM oracle: run the tools, parse what they print.

OTOOL = "llvm-otool-14"
OBJDUMP = "llvm-objdump"
LIPO = "llvm-lipo-14"


def tool(name: str) -> Optional[str]:
    """Path of an LLVM tool (versioned or not), or None."""
    found = shutil.which(name)
    if found:
        return found
    base = re.sub(r"-\d+$", "", name)
    for candidate in (base, base + "-14", base + "-15", base + "-16", base + "-17", base + "-18"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def run_tool(name: str, *args) -> str:
    exe = tool(name)
    support.require(exe is not None, f"{name} is not installed (apt install llvm)")
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} {' '.join(map(str, args))} failed: {proc.stderr.strip()}"
    return proc.stdout


def _body(text: str) -> List[str]:
    """Lines after the "path:" (or "path (architecture x):") banner the tools print first."""
    lines = text.splitlines()
    if lines and lines[0].rstrip().endswith(":") and not lines[0].startswith(("\t", " ")):
        lines = lines[1:]
    return lines


def parse_otool_libraries(text: str) -> List[str]:
    """``otool -L``: the install names listed (for a dylib, its own id comes first)."""
    out = []
    for line in _body(text):
        if not line.startswith("\t"):
            continue
        out.append(re.sub(r" \(compatibility version [^)]*\)$", "", line.strip()))
    return out


def parse_otool_id(text: str) -> Optional[str]:
    """``otool -D``: the image's install name, or None for a bundle/executable."""
    names = [line.strip() for line in _body(text) if line.strip()]
    return names[0] if names else None


def parse_mach_header(text: str) -> Dict[str, object]:
    """The "Mach header" table of ``llvm-objdump --macho --private-headers``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("magic cputype cpusubtype"):
            values = lines[i + 1].split()
            return {
                "magic": values[0],
                "cputype": values[1],
                "cpusubtype": values[2],
                "filetype": values[4],
                "ncmds": int(values[5]),
                "sizeofcmds": int(values[6]),
                "flags": values[7:],
            }
    raise ValueError("no Mach header table in the output")


def parse_load_commands(text: str) -> List[Dict[str, object]]:
    """Load commands of ``otool -l`` / ``objdump --private-headers``.

    Each is a dict of its "key value" lines, with segment sections as a list of
    dicts under "sections"; values are left as strings.
    """
    commands: List[Dict[str, object]] = []
    current: Optional[Dict[str, object]] = None
    target: Optional[Dict[str, object]] = None
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^Load command \d+$", stripped):
            current = {"sections": []}
            commands.append(current)
            target = current
            continue
        if current is None:
            continue
        if stripped == "Section":
            target = {}
            current["sections"].append(target)
            continue
        key, _, value = stripped.partition(" ")
        if key and key not in target:
            target[key] = value.strip()
    return commands


def parse_universal_headers(text: str) -> List[Dict[str, object]]:
    """``objdump --macho --universal-headers``: one dict per architecture (empty if thin)."""
    archs: List[Dict[str, object]] = []
    for line in text.splitlines():
        stripped = line.strip()
        key, _, value = stripped.partition(" ")
        if key == "architecture":
            archs.append({"architecture": value.strip()})
        elif archs and key in ("cputype", "cpusubtype", "offset", "size"):
            archs[-1][key] = int(value) if key in ("offset", "size") else value.strip()
    return archs


def parse_exports_trie(text: str) -> List[str]:
    """``objdump --macho --exports-trie``: the exported names."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^0x[0-9A-Fa-f]+\s+(\S+)", line)
        if m:
            out.append(m.group(1))
    return out


def parse_nm_names(text: str) -> List[str]:
    """``llvm-nm`` (BSD format): the symbol names."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.endswith(":"):
            out.append(parts[-1])
    return out


def header_padding_from(header: Dict[str, object], commands: List[Dict[str, object]]) -> int:
    """Free bytes after the load commands, from parsed private headers (the reader's rule)."""
    size = 32 if header["magic"] == "MH_MAGIC_64" else 28
    low = None
    for c in commands:
        if c.get("cmd") not in ("LC_SEGMENT", "LC_SEGMENT_64"):
            continue
        if not c["sections"]:
            fileoff, filesize = int(c["fileoff"]), int(c["filesize"])
            if fileoff and filesize:
                low = fileoff if low is None else min(low, fileoff)
        for s in c["sections"]:
            if "ZEROFILL" in s.get("type", ""):
                continue
            off, sz = int(s["offset"]), int(s["size"], 0)
            if off and sz:
                low = off if low is None else min(low, off)
    assert low is not None, "no section data"
    return low - (size + header["sizeofcmds"])


def parse_bind_tables(text: str) -> List[Dict[str, str]]:
    """Rows of the Bind / Lazy bind / Weak bind tables of ``objdump --macho --bind ...``.

    Each row is a dict keyed by the table's column names plus "table".
    """
    rows: List[Dict[str, str]] = []
    table = None
    columns: List[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("table:"):
            table = stripped[:-1]
            columns = []
            continue
        if table is None or not stripped:
            continue
        if stripped.startswith("segment "):
            columns = stripped.split()
            continue
        if not columns:
            continue
        values = stripped.split(None, len(columns) - 1)
        if len(values) == len(columns):
            row = dict(zip(columns, values))
            row["table"] = table
            rows.append(row)
    return rows
