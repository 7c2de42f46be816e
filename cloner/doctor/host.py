"""Checks of the interpreter and its libpython that hold on every OS."""

from typing import List

from gilclone.cloner.doctor.findings import ERROR, INFO, WARNING, Finding
from gilclone.platforms.model import PythonInstall


def static_host_findings(install: PythonInstall) -> List[Finding]:
    """A host with libpython linked into the executable needs a separate shared build."""
    if install.linkage != "static":
        return []
    short = install.short_version
    looked = ", ".join(install.libpython_searched) or "nowhere (the build names no shared library)"
    if install.libpython is None:
        return [
            Finding(
                "static-host-no-libpython",
                ERROR,
                f"{install.executable} has libpython linked in statically and no shared "
                f"libpython{short} was found; looked in: {looked}",
                "Clones are copies of the shared libpython; a static executable has none to copy.",
                _install_shared_fix(install),
            )
        ]
    if install.libpython_version != install.version:
        found = install.libpython_version or "an unknown version (no version string found in it)"
        return [
            Finding(
                "static-host-version-mismatch",
                WARNING,
                f"{install.executable} is Python {install.version} with libpython linked in; "
                f"the shared {install.libpython} is {found}",
                "Clones would run a different patch release than the host; the standard library "
                "and extension modules on disk were built for the host's.",
                "Upgrade the shared library and the interpreter together so their versions match"
                + (f" (Debian/Ubuntu: `apt-get install python{short} libpython{short}`)"
                   if install.platform == "linux" else ""),
            )
        ]
    return [
        Finding(
            "static-host-libpython",
            INFO,
            f"{install.executable} has libpython linked in; clones are made from "
            f"{install.libpython} ({install.libpython_version})",
            "A static host exports the C API from its executable; the copies bind to themselves.",
            "",
        )
    ]


def _install_shared_fix(install: PythonInstall) -> str:
    short = install.short_version
    if install.platform == "linux":
        return (
            f"Install the shared library of the same version (Debian/Ubuntu: "
            f"`apt-get install libpython{short}`), or use a Python built with --enable-shared "
            "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install ...)"
        )
    if install.platform == "macos":
        return "Use a framework or --enable-shared build (python.org installers, Homebrew)"
    return f"Use a Python {short} build that ships its shared library"


def libpython_unreadable_finding(path: str, problem: str) -> Finding:
    return Finding(
        "libpython-unreadable",
        ERROR,
        f"{path} cannot be read: {problem}",
        "Clones are copies of this file; gilclone must read it to rewrite the copies.",
        "Reinstall the Python whose library it is, or point --python at another interpreter",
    )
