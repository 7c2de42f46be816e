"""Callables that cannot be pickled by reference travel by value (cloudpickle), or fail clearly.

The lambdas, closures and ``exec`` functions live in the ``__main__`` of a child
script, as they do for users; the child runs with a timeout. cloudpickle's
absence is simulated in the child by a ``sys.meta_path`` finder that refuses it.
"""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import support
from gilclone.pool import serialize
from support import tasks

HAVE_CLOUDPICKLE = importlib.util.find_spec("cloudpickle") is not None


def needs_cloudpickle():
    support.require(HAVE_CLOUDPICKLE, "cloudpickle is not installed: pip install -e '.[test]'")

TESTS = os.path.dirname(os.path.abspath(__file__))

BLOCK_CLOUDPICKLE = """
import sys
class _NoCloudpickle:
    def find_spec(self, name, path=None, target=None):
        if name == "cloudpickle" or name.startswith("cloudpickle."):
            raise ImportError("cloudpickle is blocked by the test")
        return None
sys.meta_path.insert(0, _NoCloudpickle())
"""

# Each case is sent on its own; the child prints one JSON line of outcomes.
CHILD = """
import json, sys
from gilclone.pool import ClonePool, TaskPicklingError, shared

def scaler(k):
    def scale(x):
        return (k * x, sys._gilclone_index)
    return scale

def defined_in_file(x):
    return (x + 1, sys._gilclone_index)

def view_len(view):
    return (len(view), sys._gilclone_index)

def make_adder(k):
    return lambda x: x + k

if __name__ == "__main__":
    exec("def tripled(x):\\n    return (3 * x, sys._gilclone_index)\\n", globals())
    cases = {
        "lambda": (lambda x: (x * x, sys._gilclone_index), 7),
        "closure": (scaler(10), 4),
        "exec": (tripled, 5),
        "file": (defined_in_file, 1),
        "shared": (lambda v: (bytes(v), sys._gilclone_index), shared(bytearray(b"ab"))),
        "file_shared": (view_len, shared(bytearray(b"abc"))),
    }
    out = {}
    with ClonePool(2) as pool:
        for name, (fn, arg) in cases.items():
            try:
                value, where = pool.submit(fn, arg).result()
                out[name] = ["ok", value if not isinstance(value, bytes) else value.decode(), where]
            except TaskPicklingError as exc:
                out[name] = ["error", str(exc), None]
        try:
            out["result"] = ["ok", pool.submit(make_adder, 2).result()(40), None]
        except TaskPicklingError as exc:
            out["result"] = ["error", str(exc), None]
    print(json.dumps(out))
"""


def run_child(tmp_path, source, *args):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=TESTS)
    out = subprocess.run([sys.executable, *args, str(script)], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_lambda_closure_and_exec_functions_run_in_clones_by_value(tmp_path):
    needs_cloudpickle()
    out = run_child(tmp_path, CHILD)
    assert out["lambda"][:2] == ["ok", 49]
    assert out["closure"][:2] == ["ok", 40]
    assert out["exec"][:2] == ["ok", 15]
    assert out["file"][:2] == ["ok", 2]
    assert out["shared"][:2] == ["ok", "ab"]  # shared() still works after the by-value retry
    assert out["file_shared"][:2] == ["ok", 3]  # ... and after the __main__ check
    assert all(out[k][2] is not None for k in ("lambda", "closure", "exec", "file", "shared"))
    assert out["result"] == ["ok", 42, None]  # a closure returned by a task comes back by value


@pytest.mark.slow
def test_without_cloudpickle_the_error_says_how_to_get_it(tmp_path):
    out = run_child(tmp_path, BLOCK_CLOUDPICKLE + CHILD)
    for case in ("lambda", "closure", "exec", "shared"):
        status, message, _ = out[case]
        assert status == "error", case
        assert "pip install 'gilclone[dask]'" in message, (case, message)
    assert out["file"][:2] == ["ok", 2]  # by reference needs no cloudpickle
    assert out["file_shared"][:2] == ["ok", 3]
    assert out["result"][0] == "error" and "gilclone[dask]" in out["result"][1]


@pytest.mark.slow
def test_functions_of_python_c_run_by_value(tmp_path):
    """``python -c`` has no main file for clones to re-run, like an interactive session."""
    needs_cloudpickle()
    code = textwrap.dedent("""
        import sys
        from gilclone.pool import ClonePool
        def where(x):
            return (x, sys._gilclone_index)
        with ClonePool(1) as pool:
            print(pool.submit(where, 3).result())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    value, index = eval(out.stdout.strip())
    assert value == 3 and isinstance(index, int)


def test_by_reference_stays_the_fast_path():
    task = (tasks.add, (1,), {"b": 2})
    assert serialize.dumps(task, 5) == pickle.dumps(task, 5)
    assert b"cloudpickle" not in serialize.dumps(task, 5)


def test_a_lambda_goes_by_value_only_when_reference_fails():
    needs_cloudpickle()
    data = serialize.dumps((lambda x: x + 1, (1,), {}), 5)
    fn, args, _ = pickle.loads(data)
    assert fn(*args) == 2
    assert b"cloudpickle" in data


def test_what_cloudpickle_cannot_send_keeps_its_own_error():
    with pytest.raises(TypeError, match="refuses to be pickled"):
        serialize.dumps((tasks.echo, (tasks.Unpicklable(),), {}), 5)
