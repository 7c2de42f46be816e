"""gilclone.dask on a real LocalCluster with a worker process (no mocks).

One worker process with two threads gets the preload, so it has a two-clone
executor; tasks opt in with ``dask.annotate(executor="clones")``.
"""

import importlib.util
import os
import sys
import traceback

import pytest
import support
from support import scale_tasks, tasks

if sys.version_info < (3, 10):
    pytest.skip("gilclone.dask needs dask >= 2024.12, which needs Python >= 3.10",
                allow_module_level=True)

HAVE_DASK = all(importlib.util.find_spec(m) for m in ("distributed", "cloudpickle", "numpy"))
if HAVE_DASK:
    import dask
    import numpy
    from distributed import Client, LocalCluster, get_task_stream

pytestmark = pytest.mark.slow
TIMEOUT = 180


@pytest.fixture(scope="module")
def client():
    support.require(HAVE_DASK, "dask, distributed, cloudpickle or numpy missing: pip install -e '.[test]'")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      preload=["gilclone.dask"]) as cluster, Client(cluster) as client:
        yield client


def on_clones(client, fn, *iterables):
    with dask.annotate(executor="clones"):
        futures = client.map(fn, *iterables, pure=False)
    return [f.result(timeout=TIMEOUT) for f in futures]


def test_mapped_cpu_task_runs_on_clones_with_serial_results(client):
    sizes = [20_000 + 1000 * i for i in range(8)]
    with get_task_stream(client) as stream:
        results = on_clones(client, scale_tasks.spin_where, sizes)
    assert [r[0] for r in results] == [scale_tasks.spin(n) for n in sizes]
    clones = {r[1] for r in results}
    assert None not in clones and clones <= {0, 1, 2, 3}
    # Dask's metrics still describe the run: a compute span and the thread that ran it.
    for record in stream.data:
        (span,) = [s for s in record["startstops"] if s["action"] == "compute"]
        assert span["start"] <= span["stop"]
        assert isinstance(record["thread"], int)


def test_tasks_without_the_annotation_stay_on_threads(client):
    assert client.submit(scale_tasks.clone_index, pure=False).result(timeout=TIMEOUT) is None


def test_worker_process_holds_one_clone_per_thread(client):
    def executors(dask_worker):
        ex = dask_worker.executors["clones"]
        return type(ex).__name__, ex.workers, os.getpid()

    ((name, workers, pid),) = client.run(executors).values()
    assert (name, workers) == ("CloneExecutor", 2) and pid != os.getpid()


def test_an_exception_keeps_its_type_and_the_clone_traceback(client):
    with dask.annotate(executor="clones"):
        future = client.submit(scale_tasks.fail_with, 7, pure=False)
    with pytest.raises(tasks.CustomError) as info:
        future.result(timeout=TIMEOUT)
    assert info.value.code == 7
    names = [frame.name for frame in traceback.extract_tb(info.tb)]
    assert "fail_with" in names  # the clone's frame, rebuilt from its traceback
    assert "run" not in names  # the runner inside the clone is not the user's business


def test_lambda_shipped_by_dask_runs_on_a_clone(client):
    results = on_clones(client, lambda x: (x + 1, scale_tasks.clone_index()), [1, 2])
    assert [r[0] for r in results] == [2, 3] and None not in {r[1] for r in results}


def test_dask_array_and_bag_pipelines_on_clones(client):
    import dask.array as da
    import dask.bag as db

    with dask.annotate(executor="clones"):
        x = da.arange(400, chunks=100).reshape(20, 20).rechunk(10)
        tagged = x.map_blocks(lambda b: numpy.stack([b, numpy.full(b.shape, scale_tasks.clone_number())]),
                              new_axis=0, chunks=((2,), (10, 10), (10, 10)))
        bag = db.from_sequence(range(20), npartitions=4).map(scale_tasks.spin_where).pluck(0)
    # Graph optimisation can drop annotations; these graphs are run as written.
    values, where = tagged.compute(optimize_graph=False)
    assert (values == numpy.arange(400).reshape(20, 20)).all()
    assert (where >= 0).all()
    assert bag.sum().compute(optimize_graph=False) == sum(scale_tasks.spin(n) for n in range(20))


def test_plugin_as_default_executor_and_its_teardown(client):
    import dask.array as da

    from gilclone.dask import ClonesPlugin

    client.register_plugin(ClonesPlugin(executor="plugged", default=True))
    try:
        x = da.ones(40, chunks=10).map_blocks(lambda b: b * 0 + scale_tasks.clone_number(),
                                              dtype=float)
        assert (x.compute() >= 0).all()  # unannotated and optimised: the default runs it
    finally:
        client.unregister_worker_plugin(ClonesPlugin.name)
    assert client.submit(scale_tasks.clone_index, pure=False).result(timeout=TIMEOUT) is None


def test_main_script_function_as_in_the_issue(tmp_path):
    """The reported failure: `fib` from the client's __main__, which Dask rebuilds by value."""
    support.require(HAVE_DASK, "dask, distributed, cloudpickle or numpy missing")
    import subprocess
    import textwrap

    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent("""
        import sys
        import dask
        from distributed import Client, LocalCluster

        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        def fib_where(n):
            return fib(n), getattr(sys, "_gilclone_index", None)

        if __name__ == "__main__":
            with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                              dashboard_address=None, preload=["gilclone.dask"]) as cluster, \\
                    Client(cluster) as client:
                with dask.annotate(executor="clones"):
                    futures = client.map(fib_where, range(15, 19))
                print([f.result(timeout=120) for f in futures])
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    results = eval(out.stdout.strip().splitlines()[-1])
    assert [r[0] for r in results] == [610, 987, 1597, 2584]
    assert None not in {r[1] for r in results}


def test_preload_on_something_else_than_a_worker_says_so():
    from gilclone.dask import install
    from gilclone.errors import GilcloneError

    with pytest.raises(GilcloneError, match="runs on Dask workers"):
        install(object())
