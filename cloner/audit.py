"""The checks ``verify`` runs before loading anything: who could have written the set,
whether it is the set it says, and whether each clone is exactly its manifest.

Each check is ``(name, ok, detail)`` and never raises: a broken set gives failed
checks, not a traceback. The same rules refuse or rebuild sets in ``load_set``,
``ClonePool`` and ``prepare`` (trust.py, integrity.py).
"""

import json
import os
from typing import List, Tuple

from gilclone.cloner import integrity, store, trust

from gilclone.errors import GilcloneError

Check = Tuple[str, bool, str]


def set_checks(root: str) -> List[Check]:
    """trusted_files, set_identity, clone_identity and files_intact for the set at ``root``."""
    checks = [_trusted(root), _set_identity(root)]
    records, unreadable, identity = _clone_identity(root)
    checks.append(identity)
    checks.append(_files_intact(records, unreadable))
    return checks


def _summary(name: str, problems: List[str], fine: str) -> Check:
    if not problems:
        return name, True, fine
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return name, False, "; ".join(problems[:3]) + more


def _trusted(root: str) -> Check:
    try:
        problems = trust.tree_problems(root)
    except OSError as exc:
        problems = [f"{root}: cannot be walked ({exc.strerror})"]
    fine = ("every directory and file is owned by you or root, writable by no one else, "
            "and none is a symbolic link" if trust.ENFORCED else "not checked on this OS")
    return _summary("trusted_files", problems, fine)


def _set_identity(root: str) -> Check:
    try:
        meta = store.read_json(os.path.join(root, store.SET_FILE))
    except (OSError, ValueError):
        meta = None
    problem = integrity.set_problem(root, meta)
    if problem:
        return "set_identity", False, f"{os.path.join(root, store.SET_FILE)}: {problem}"
    return "set_identity", True, f"set {meta['set_id'][:12]} of Python {meta['python']['version']}, consistent with its libpython hash"


def _clone_identity(root: str):
    """(clones whose manifests hold up, messages for those without one, the check)."""
    records, problems, unreadable = [], [], []
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if not name.startswith("clone-"):
            continue
        if os.path.islink(directory):
            problems.append(f"{directory} is a symbolic link")
            continue
        try:
            manifest = integrity.read_manifest(directory)
        except (OSError, ValueError, GilcloneError):
            unreadable.append(f"{name} in {root} has no readable manifest; run `gilclone prepare` to rebuild it")
            continue
        problem = integrity.manifest_problem(directory, manifest)
        if problem:
            problems.append(f"{name}: {problem}")
            continue
        records.append(store.record_from_manifest(directory, manifest))
    if not records and not problems and not unreadable:
        problems.append(f"{root} holds no clone; run `gilclone prepare --dest {root}`")
    duplicate = integrity.clones_problem(records)
    if duplicate:
        problems.append(duplicate)
    fine = f"{len(records)} clones: index, directory and soname agree; sonames distinct"
    return records, unreadable, _summary("clone_identity", problems, fine)


def _files_intact(records, unreadable: List[str]) -> Check:
    """Full hashes of the clones whose identity holds; clones without a manifest fail here."""
    problems = list(unreadable)
    for record in records:
        try:
            problem = store.check_clone(record, full=True)
        except (GilcloneError, OSError, ValueError) as exc:
            problem = str(exc)
        if problem:
            problems.append(f"clone {record.index}: {problem}")
    fine = f"{len(records)} clones hold exactly the files of their manifests (SHA-256)"
    return _summary("files_intact", problems, fine)


def report(checks: List[Check], clones: int) -> dict:
    return {"ok": all(ok for _, ok, _ in checks), "clones": clones,
            "checks": [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in checks]}


def merged(first: List[Check], later: dict) -> dict:
    """``later`` (a report) after ``first``, without repeating a check ``first`` made."""
    names = {n for n, _, _ in first}
    rest = [(c["name"], c["ok"], c["detail"]) for c in later["checks"] if c["name"] not in names]
    return report(first + rest, later.get("clones", 0))


if __name__ == "__main__":  # for debugging: python -m gilclone.cloner.audit DIR
    import sys

    print(json.dumps(report(set_checks(sys.argv[1]), 0), indent=1))
