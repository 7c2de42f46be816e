"""Build small C shared libraries and extension modules in a test with the system compiler."""

import shutil
import subprocess
import sysconfig

import support

TIMEOUT_S = 120


def require_cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    support.require(cc, "a C compiler (cc) is needed to build test libraries")
    return cc


def shared(out, source: str, libs=(), python: bool = False) -> str:
    """Compile ``source`` into the shared object ``out``; ``python`` adds the Python headers.

    Undefined Py* symbols are left for the loader, as in real extension modules.
    """
    cc = require_cc()
    src = str(out) + ".c"
    with open(src, "w") as f:
        f.write(source)
    cmd = [cc, "-shared", "-fPIC", "-O1", "-o", str(out), src]
    if python:
        cmd[1:1] = ["-I", sysconfig.get_paths()["include"]]
    cmd += list(libs)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return str(out)
