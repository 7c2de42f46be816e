"""`gilclone doctor --pid`: what a running process has loaded, read from /proc."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from gilclone.cloner.doctor.process import inspect_process, summary_lines
from gilclone.platforms import procmaps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1049 /usr/bin/python3.11
7f0000002000-7f0000003000 r-xp 00001000 fe:01 77 /lib/libpython3.11.so.1.0
7f0000001000-7f0000002000 r--p 00000000 fe:01 77 /lib/libpython3.11.so.1.0
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
7f0000005000-7f0000006000 rw-p 00000000 00:00 0 [heap]
7f0000006000-7f0000007000 r--p 00000000 fe:01 88 /tmp/x/_json.so (deleted)
7f0000008000-7f0000009000 r--p 00000000 fe:01 77 /alias/libpython3.11.so.1.0
"""


def test_parse_maps_keeps_files_once_at_their_lowest_address():
    files = procmaps.parse_maps(MAPS)
    assert [m.path for m in files] == [
        "/usr/bin/python3.11", "/lib/libpython3.11.so.1.0", "/tmp/x/_json.so",
        "/alias/libpython3.11.so.1.0",
    ]
    lib = files[1]
    assert (lib.start, lib.inode, lib.device, lib.deleted) == (0x7F0000001000, 77, "fe:01", False)
    assert files[2].deleted
    groups = procmaps.same_file_groups(files)
    assert [[m.path for m in g] for g in groups] == [
        ["/lib/libpython3.11.so.1.0", "/alias/libpython3.11.so.1.0"]
    ]


def test_missing_process_is_a_clear_error():
    with pytest.raises(procmaps.ProcessReadError, match="no such process"):
        procmaps.mapped_files(2**22 + 12345)


POOL_CHILD = textwrap.dedent("""
    import sys
    from gilclone.pool import ClonePool

    def work(x):
        import decimal, json
        return str(decimal.Decimal(x) / 7), sys._gilclone_index

    if __name__ == "__main__":
        with ClonePool(2) as pool:
            indexes = set()
            while len(indexes) < 2:  # both clones must have imported their twins
                indexes |= {i for _, i in pool.map(work, range(8))}
            print("ready", flush=True)
            sys.stdin.read()
""")

PLAIN_CHILD = "import decimal, json, sys; print('ready', flush=True); sys.stdin.read()"


def _inspect_child(args, tmp_path):
    env = dict(os.environ, GILCLONE_CACHE=str(tmp_path / "cache"))
    child = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", line
        return inspect_process(child.pid)
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.slow
def test_process_with_a_pool_shows_host_and_two_clones_with_their_twins(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(POOL_CHILD)
    report = _inspect_child([str(script)], tmp_path)
    roles = [lp.role for lp in report.libpythons]
    assert roles == ["host", "clone", "clone"], report.libpythons
    host, *clones = report.libpythons
    assert sorted(c.clone_index for c in clones) == [0, 1]
    assert len({c.set_root for c in clones}) == 1 and clones[0].set_id
    assert all(c.version == host.version for c in clones)
    for clone in clones:
        twins = [e for e in report.extensions if e.bound_to == clone.path]
        names = {os.path.basename(e.path).split(".")[0] for e in twins}
        assert "_decimal" in names, names
        assert all(e.clone_index == clone.clone_index for e in twins)
    assert any(e.bound_to == host.path for e in report.extensions)
    # The twins are copies of the host's modules: duplicates, but expected ones.
    assert report.duplicates and all(d.clone_copies for d in report.duplicates)
    text = "\n".join(summary_lines(report))
    assert "libpython images: 3" in text and "clone 1 of set" in text


def test_plain_process_shows_the_host_alone(tmp_path):
    report = _inspect_child(["-c", PLAIN_CHILD], tmp_path)
    assert [lp.role for lp in report.libpythons] == ["host"]
    host = report.libpythons[0]
    assert report.extensions and all(e.bound_to == host.path for e in report.extensions)
    assert all(e.clone_index is None for e in report.extensions)
    assert report.duplicates == ()


def test_cli_reads_a_process_and_refuses_a_missing_one(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", PLAIN_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        run = subprocess.run([sys.executable, "-m", "gilclone", "doctor", "--pid", str(child.pid),
                              "--json"], capture_output=True, text=True, timeout=120)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["ok"] and [lp["role"] for lp in out["libpythons"]] == ["host"]
    gone = subprocess.run([sys.executable, "-m", "gilclone", "doctor", "--pid", str(2**22 + 7)],
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and "no such process" in gone.stderr
    assert "Traceback" not in gone.stderr
