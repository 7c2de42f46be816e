"""The files of a clone set on disk: their names, hashing and atomic JSON writes.

The lowest piece of the set layout: store.py (reading sets) and integrity.py
(checking them) both build on it, so neither has to import the other back.
"""

import hashlib
import json
import os

from gilclone.cloner import leftovers, trust

FORMAT_VERSION = 1
SET_FILE = "set.json"
MANIFEST = "manifest.json"
STAMP = ".verified.json"
HASH_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def write_json_atomic(path: str, value) -> None:
    tmp = f"{path}{leftovers.temp_suffix()}"
    with os.fdopen(trust.open_private(tmp), "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def clone_dir_name(index: int) -> str:
    return f"clone-{index:02d}"


def manifest_entry(path: str) -> dict:
    return {"sha256": sha256_file(path), "size": os.path.getsize(path)}
