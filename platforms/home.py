"""A Python installation described from its directory alone, for another operating system.

``gilclone prepare --target windows|macos --python-home DIR`` prepares clones of
a Python that cannot run here; its facts are read from the files (DLL names and
version resources, dylib install names), one module per target OS.
"""

import importlib
import os

from gilclone.platforms.model import PythonInstall

from gilclone.errors import LocateError

_MODULES = {"windows": "gilclone.platforms.home_windows", "macos": "gilclone.platforms.home_macos"}
TARGETS = ("linux", "windows", "macos")


def install_from_home(target: str, home: str) -> PythonInstall:
    if not os.path.isdir(home):
        raise LocateError(f"{home}: no such directory; --python-home names the Python's installation directory")
    name = _MODULES.get(target)
    if name is None:
        raise LocateError(f"--python-home is for --target windows or macos, not {target!r}")
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise LocateError(f"preparing clones for {target} from its files is not implemented yet") from None
    return module.install_from_home(os.path.abspath(home))
