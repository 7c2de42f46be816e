"""Run CPython's own test modules in two clones at once; print a JSON report (last line).

Usage: python cpython_tests_in_clones.py MODULE[,MODULE...]

Every module runs in one of two clones of a ClonePool(2), both busy at once. A test that
fails or errors in a clone is then run again in this (host) interpreter: the report
keeps, per module, the clone's counts and which of its failures pass in the host (the
real differences). The pid is shared by the clones, and test.support names its scratch
files after it, so each clone gets its own names and temporary directory first. The working
directory is one per process too: a module that changes it runs alone, after the others,
so that it cannot move the relative paths of a test running in the other clone.
"""

import json
import os
import re
import sys
import tempfile
import time


def scratch_names(tag, root):
    """Give this interpreter its own test.support scratch names and tempdir."""
    from test.support import os_helper

    if getattr(os_helper, "_scratch_tag", None) == tag:
        return
    old = getattr(os_helper, "_scratch_original", os_helper.TESTFN_ASCII)
    os_helper._scratch_original, os_helper._scratch_tag = old, tag
    new = f"{old}_{tag}"
    for name in dir(os_helper):
        value = getattr(os_helper, name)
        if name.startswith("TESTFN") and isinstance(value, str) and value.startswith(old):
            rest = value[len(old):]
            if rest.startswith("_"):  # tagged before, by another tag
                rest = rest[rest.index("_", 1):] if "_" in rest[1:] else ""
            setattr(os_helper, name, new + rest)
    path = os.path.join(root, tag)
    os.makedirs(path, exist_ok=True)
    tempfile.tempdir = path


def changes_cwd(name):
    """Whether the source of ``test.<name>`` (a module or a package) changes the cwd."""
    import importlib.util
    import pathlib

    origin = pathlib.Path(importlib.util.find_spec(f"test.{name}").origin)
    files = origin.parent.rglob("*.py") if origin.name == "__init__.py" else [origin]
    pattern = re.compile(r"chdir\(|change_cwd|temp_cwd")
    return any(pattern.search(f.read_text(errors="replace")) for f in files)


def run_module(name, root):
    """Run ``test.<name>`` here; return its counts and the ids of what failed."""
    import io
    import unittest

    tag = f"clone{getattr(sys, '_gilclone_index', 'host')}"
    scratch_names(tag, root)
    started = time.time()
    suite = unittest.defaultTestLoader.loadTestsFromName(f"test.{name}")
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    return {
        "where": tag,
        "run": result.testsRun,
        "skipped": len(result.skipped),
        "failed": sorted(t.id() for t, _ in result.failures + result.errors),
        "seconds": round(time.time() - started, 2),
    }


def host_outcome(test_ids, root):
    """Which of ``test_ids`` fail in the host too."""
    import io
    import unittest

    if not test_ids:
        return []
    scratch_names("host", root)
    suite = unittest.TestSuite()
    for test_id in test_ids:
        try:
            suite.addTest(unittest.defaultTestLoader.loadTestsFromName(test_id))
        except Exception:
            continue  # a failure of the module itself (setUpModule): rerun below as a module
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    return sorted(t.id() for t, _ in result.failures + result.errors)


def main():
    from gilclone.pool import ClonePool

    modules = sys.argv[1].split(",")
    root = tempfile.mkdtemp(prefix="gilclone-cpython-tests-")
    os.chdir(root)
    started = time.time()
    alone = [name for name in modules if changes_cwd(name)]
    with ClonePool(2) as pool:
        futures = {name: pool.submit(run_module, name, root) for name in modules
                   if name not in alone}
        report = {name: future.result() for name, future in futures.items()}
        for name in alone:
            report[name] = pool.submit(run_module, name, root).result()
    clones_seconds = round(time.time() - started, 1)
    import unittest

    for name, entry in report.items():
        entry["host_count"] = unittest.defaultTestLoader.loadTestsFromName(
            f"test.{name}").countTestCases()
        entry["fail_in_host_too"] = host_outcome(entry["failed"], root)
        entry["differences"] = sorted(set(entry["failed"]) - set(entry["fail_in_host_too"]))
    print(json.dumps({"modules": report, "clones_seconds": clones_seconds,
                      "version": "%d.%d" % sys.version_info[:2]}))


if __name__ == "__main__":
    main()
