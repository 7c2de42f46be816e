"""MkDocs hook: lay out the source tree as the installed package, for mkdocstrings.

The subpackages live in top-level folders (``pool/`` installs as ``gilclone.pool``, see
``[tool.setuptools] package-dir``), which griffe cannot follow through setuptools' editable
finder. Before the build reads any page, this builds ``build/api-src/gilclone``: links to
``gilclone/``'s entries and to the subpackage folders, which mkdocs.yml names in ``paths``.
Runs when mkdocs loads the hook, so plain ``mkdocs build`` works as well as ``make docs``.
"""

import os
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = {"pool": "pool", "cloner": "cloner", "platforms": "platforms"}


def build_api_src(root: str = ROOT) -> str:
    """Create (or replace) ``root/build/api-src`` and return its path."""
    target = os.path.join(root, "build", "api-src")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Built aside and renamed, so that two builds at once never see half a tree.
    staging = tempfile.mkdtemp(prefix=".api-src-", dir=os.path.dirname(target))
    package = os.path.join(staging, "gilclone")
    os.mkdir(package)
    for name in os.listdir(os.path.join(root, "gilclone")):
        if name != "__pycache__":
            os.symlink(os.path.join(root, "gilclone", name), os.path.join(package, name))
    for name, folder in SUBPACKAGES.items():
        os.symlink(os.path.join(root, folder), os.path.join(package, name))
    old = target + ".old-%d" % os.getpid()
    if os.path.lexists(target):
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


build_api_src()
