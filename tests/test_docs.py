"""The documentation cannot go stale: its code blocks and examples run, its links resolve,
its site builds without warnings, and the API it documents has docstrings.

Python blocks of README.md and docs/ run as scripts in a subprocess; a block that cannot
run says why in a ``<!-- not run: reason -->`` line just before it. Shell blocks made only
of ``gilclone`` commands run too. All share one fresh clone cache, so clones are prepared
once per test run.
"""

import importlib
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from support import require
from support.markdown import ROOT, anchors, blocks, doc_files, relative_links

ALL_BLOCKS = [b for path in doc_files() for b in blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
# Blocks of pages that other work owns and that cannot run alone, by a line they contain:
# a fragment that needs a live Dask client.
FRAGMENTS = {"client.register_plugin(": "a fragment: needs the client of a running Dask cluster"}
BLOCK_TIMEOUT_S = 180
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")


def is_gilclone_shell(block) -> bool:
    commands = [line for line in block.code.splitlines() if line.strip() and not line.startswith("#")]
    return block.lang in ("sh", "bash", "console") and bool(commands) and all(
        line.split()[0] == "gilclone" for line in commands)


SHELL_BLOCKS = [b for b in ALL_BLOCKS if is_gilclone_shell(b)]


@pytest.fixture(scope="session")
def docs_env(tmp_path_factory):
    """The environment of every docs run: one fresh clone cache for the whole session."""
    env = dict(os.environ)
    env["GILCLONE_CACHE"] = str(tmp_path_factory.mktemp("docs-cache"))
    env.pop("GILCLONE_LOG", None)
    return env


def run_script(path, env, cwd, *args, timeout=BLOCK_TIMEOUT_S):
    return subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def require_modules(proc):
    """A block needing a third-party module that is not installed skips (fails under CI)."""
    m = MISSING_MODULE.search(proc.stderr)
    if proc.returncode and m and not m.group(1).startswith("gilclone"):
        require(False, f"needs {m.group(1)}, not installed")


def skip_not_run(block):
    reason = block.not_run or next((r for k, r in FRAGMENTS.items() if k in block.code), None)
    if reason:
        pytest.skip(f"marked not run: {reason}")


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.name for b in PYTHON_BLOCKS])
def test_python_block_runs(block, docs_env, tmp_path):
    skip_not_run(block)
    script = tmp_path / "block.py"
    script.write_text(block.code)
    proc = run_script(script, docs_env, tmp_path)
    require_modules(proc)
    assert proc.returncode == 0, f"{block.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{block.name} printed nothing: a docs example shows its result"
    expected_outputs(block, proc.stdout)


def expected_outputs(block, stdout):
    """``print(...)  # VALUE`` in a block promises that VALUE is printed: hold it to that.
    A comment with ``...`` elides what varies from run to run (which clone ran a task) and
    is taken as prose."""
    for line in block.code.splitlines():
        m = re.match(r"\s*print\(.*\)\s*#\s*(.+)$", line)
        if m and "..." not in m.group(1):
            # The whole comment, or what comes before its explanation ("True: changed in place").
            promised = {m.group(1).strip(), m.group(1).split(": ")[0].strip()}
            assert any(p in stdout for p in promised), (
                f"{block.name}: {line.strip()!r} did not print {m.group(1)!r}:\n{stdout}")


@pytest.mark.slow
@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.name for b in SHELL_BLOCKS])
def test_shell_block_runs(block, docs_env, tmp_path):
    skip_not_run(block)
    for line in block.code.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        argv = shlex.split(line, comments=True)
        proc = subprocess.run([sys.executable, "-m", "gilclone", *argv[1:]], cwd=tmp_path, env=docs_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=BLOCK_TIMEOUT_S)
        # doctor exits 1 when a finding is an error: the machine's state, not the docs'.
        allowed = (0, 1) if argv[1] == "doctor" else (0,)
        assert proc.returncode in allowed, f"{block.name}: {line}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr


def test_blocks_are_found_and_few_are_not_run():
    """The extraction sees the blocks, and not-run markers stay the exception."""
    assert len(PYTHON_BLOCKS) >= 10, [b.name for b in PYTHON_BLOCKS]
    not_run = [b.name for b in PYTHON_BLOCKS if b.not_run]
    assert len(not_run) <= 3, f"too many python blocks marked not run: {not_run}"
    for b in ALL_BLOCKS:
        assert b.not_run is None or b.not_run, f"{b.name}: a not-run marker needs its reason"


def test_marker_parsing(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not run: needs a cluster -->\n```python\nx = 1\n```\n"
                    "```sh\ngilclone locate\n```\n")
    first, second = blocks(page)
    assert (first.lang, first.line, first.code, first.not_run) == ("python", 4, "x = 1\n", "needs a cluster")
    assert (second.lang, second.not_run) == ("sh", None) and is_gilclone_shell(second)


# -- links -------------------------------------------------------------------------------

LINK_CASES = [(path, n, target) for path in doc_files() for n, target in relative_links(path)]


def test_relative_links_resolve():
    broken = []
    for path, n, target in LINK_CASES:
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{path.relative_to(ROOT)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{path.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert len(LINK_CASES) > 20  # the links are being read at all


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A `code` heading: yes\n\n[ok](#a-code-heading-yes) [bad](nowhere.md) "
                    "`[not a link](x.md)`\n")
    assert relative_links(page) == [(3, "#a-code-heading-yes"), (3, "nowhere.md")]
    assert anchors(page) == ["a-code-heading-yes"]


# -- the site ----------------------------------------------------------------------------

@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    require(mkdocs is not None, "mkdocs is not installed (pip install -e '.[docs]')")
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert "WARNING" not in proc.stdout, proc.stdout
    api = (tmp_path / "site" / "reference" / "pool" / "index.html").read_text()
    assert "Like the builtin" in api  # ClonePool.map's own docstring, rendered


# -- docstrings --------------------------------------------------------------------------

def documented_objects():
    """Every ``::: dotted.name`` of the API reference pages."""
    names = []
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        names += re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M)
    return names


def resolve(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def own_docstring(obj):
    return (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""


def test_public_api_has_docstrings():
    missing = []
    for dotted in documented_objects():
        obj = resolve(dotted)
        if not own_docstring(obj).strip():
            missing.append(dotted)
        if inspect.isclass(obj):
            for key, value in vars(obj).items():
                member = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if not key.startswith("_") and callable(member) and not (member.__doc__ or "").strip():
                    missing.append(f"{dotted}.{key}")
    assert not missing, f"public names without a docstring: {missing}"


def test_reference_covers_the_public_api():
    import gilclone.pool

    documented = {d.rpartition(".")[2] for d in documented_objects()}
    assert set(gilclone.pool.__all__) <= documented, set(gilclone.pool.__all__) - documented
    from concurrent.futures import Executor

    from gilclone.pool import ClonePool

    assert ClonePool.map.__doc__ != Executor.map.__doc__  # help(ClonePool.map) is its own


# -- examples ----------------------------------------------------------------------------

EXAMPLES = ROOT / "examples"


@pytest.mark.slow
def test_example_asyncio_service(docs_env):
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "asyncio_service.py"), "--port", "0",
                             "--workers", "2"], env=docs_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        m = re.match(r"serving on (127\.0\.0\.1):(\d+)", first)
        assert m, (first, proc.stderr.read() if proc.poll() is not None else "")
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=BLOCK_TIMEOUT_S) as conn:
            conn.sendall(b"primes 100000\ncollatz 10000\nstats\nprimes many\n")
            conn.shutdown(socket.SHUT_WR)  # the server answers, then closes at end of input
            reply = conn.makefile().read().splitlines()
        assert reply[:2] == ["9592", "6171"], reply
        assert reply[2].startswith("clone") and reply[3].startswith("error:"), reply
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the service stops and the pool with it
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped" in out, (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_example_numpy_shared(docs_env):
    require(importlib.util.find_spec("numpy") is not None, "numpy is not installed")
    proc = run_script(EXAMPLES / "numpy_shared.py", docs_env, ROOT, "--size", "300", "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "equal: True" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_example_shipped_set(docs_env, tmp_path):
    # A cache of its own, which must stay empty: the application uses only the shipped set.
    env = dict(docs_env, GILCLONE_CACHE=str(tmp_path / "cache"))
    # The application's folder as an install makes it: writable by its owner only (a set under
    # a group-writable folder is refused, whatever mode the checkout gave examples/).
    app = tmp_path / "app"
    app.mkdir(mode=0o755)
    shutil.copy(EXAMPLES / "shipped_set" / "app.py", app)
    before = run_script(app / "app.py", env, tmp_path)
    assert before.returncode == 2 and "gilclone prepare" in before.stderr, before.stderr
    prep = subprocess.run([sys.executable, "-m", "gilclone", "prepare", "--count", "2", "--dest",
                           str(app / "clones")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=BLOCK_TIMEOUT_S)
    assert prep.returncode == 0, prep.stderr
    after = run_script(app / "app.py", env, tmp_path)
    assert after.returncode == 0, after.stderr
    assert "word counts [4, 4, 5]" in after.stdout and str(app / "clones") in after.stdout
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


def test_pool_synopsis_shows_the_real_defaults():
    """pool.md's synopsis once showed ``chunksize=16``; its defaults must be the code's."""
    import ast

    from gilclone.pool import ClonePool

    synopsis = blocks(ROOT / "docs" / "pool.md")[0]
    methods = {"ClonePool": ClonePool, "map": ClonePool.map, "shutdown": ClonePool.shutdown,
               "options": ClonePool.options}
    checked = 0
    for call in ast.walk(ast.parse(synopsis.code)):
        if not isinstance(call, ast.Call):
            continue
        name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
        if name not in methods:
            continue
        params = inspect.signature(methods[name]).parameters
        for kw in call.keywords:
            # Where the synopsis shows an example value rather than the default.
            if (name, kw.arg) in {("ClonePool", "max_workers"), ("options", "timeout")}:
                continue
            if isinstance(kw.value, ast.Constant) and kw.arg in params:
                default = params[kw.arg].default
                assert kw.value.value == default, f"pool.md: {name}({kw.arg}={kw.value.value!r}), default {default!r}"
                checked += 1
    assert checked >= 4
