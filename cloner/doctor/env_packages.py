"""Which installed distribution a file of an environment belongs to.

pip writes every file it installs into ``<name>-<version>.dist-info/RECORD``;
a file no RECORD names (a package copied in by hand, lib-dynload) is named by
its top directory below the scanned directory.
"""

import csv
import glob
import os
from typing import Dict, Sequence


class PackageIndex:
    """File path (real path) -> distribution name, for the site directories given."""

    def __init__(self, dirs: Sequence[str], stdlib_dirs: Sequence[str] = ()):
        self._dirs = tuple(dirs)
        self._stdlib = tuple(os.path.realpath(d) for d in stdlib_dirs)
        self._owner: Dict[str, str] = {}
        for d in dirs:
            for info in sorted(glob.glob(os.path.join(glob.escape(d), "*.dist-info"))):
                self._read_record(d, info)

    def _read_record(self, site: str, info: str) -> None:
        name = os.path.basename(info)[: -len(".dist-info")].split("-")[0]
        try:
            with open(os.path.join(info, "RECORD"), newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return
        for row in rows:
            if row and row[0]:
                self._owner[os.path.realpath(os.path.join(site, row[0]))] = name

    def package_of(self, path: str) -> str:
        real = os.path.realpath(path)
        owner = self._owner.get(real)
        if owner:
            return owner
        tops = [d for d in self._dirs if path.startswith(os.path.join(d, ""))]
        if not tops:
            return os.path.basename(os.path.dirname(path))
        top = max(tops, key=len)  # the deepest: site-packages inside a Windows home
        if os.path.realpath(top) in self._stdlib:
            return "stdlib"
        first = os.path.relpath(path, top).split(os.sep)[0]
        # numpy.libs/ belongs to numpy; a module at the top is its own package.
        return first[: -len(".libs")] if first.endswith(".libs") else first.split(".")[0]
