"""The training step on a real Dask cluster (mlops_core.cluster): a ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, started once for the module and stopped by pid.

- the chain with MLOPS_DASK_SCHEDULER set compares on the workers (the scheduler's task stream shows a task a
  model there) and registers the same version with the same decision as an in-process run of the same batch;
- a LightGBM winner on more than MLOPS_DASK_FIT_ROWS rows fits through lightgbm.dask on the workers and is still
  a plain pipeline that registers, compiles and answers like any other;
- faults: an unreachable scheduler fails the run naming it (the watcher's run child reports it "failed", which
  is retried) with no alias moved; workers lacking a package get one error naming it; a worker killed while
  the comparison runs costs time only: the scheduler runs its task again on the other worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST

from mlops_core import cluster
from mlops_core.cluster import ClusterError
from mlops_core.config import Settings
from mlops_core.data import load_titanic, make_datasets, validate_frame
from mlops_core.pipeline import run
from mlops_core.processes import terminate
from mlops_core.registry import COMPILED_TAG, Registry

distributed = pytest.importorskip("distributed", reason="the [dask] extra (make install includes it)")

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).with_name("dask")
START_SECONDS = 90.0  # the scheduler and both workers up (about 10 s on 2 cores)
NO_WORKERS_TIMEOUT = 5.0


def _wait_for(path: Path, what: str, procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.stat().st_size:
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds:g} s (exited: {dead})")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """``(address, {worker address: Popen})``: a scheduler on a free port of 127.0.0.1 and two one-thread workers
    without nannies (a killed worker stays dead), each process started here and stopped here by its pid."""
    folder = tmp_path_factory.mktemp("dask")
    # a task no worker can run fails after 5 s (Dask's no-workers-timeout; by default it waits for a worker)
    env = {**os.environ, "PYCARET_CUSTOM_LOGGING_PATH": str(folder / "pycaret.log"),
           "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": f"{NO_WORKERS_TIMEOUT:g}s"}
    procs: list[subprocess.Popen] = []
    logs = []

    def start(*args: str, log: str) -> subprocess.Popen:
        out = open(folder / log, "wb")  # noqa: SIM115 - closed in the teardown
        logs.append(out)
        proc = subprocess.Popen([str(DASK), *args], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc

    scheduler_file = folder / "scheduler.json"
    try:
        # its HTTP server (health, metrics) listens even with no dashboard: on a free port, like the scheduler
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(scheduler_file), log="scheduler.log")
        _wait_for(scheduler_file, "the Dask scheduler", procs, START_SECONDS)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            start("worker", address, "--name", name, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--host", "127.0.0.1", "--local-directory", str(folder / name), log=f"{name}.log")
        with distributed.Client(address, timeout=START_SECONDS, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_SECONDS)
            pids = client.run(os.getpid)
        by_pid = {p.pid: p for p in procs}
        yield address, {addr: by_pid[pid] for addr, pid in pids.items()}
    finally:
        terminate(reversed(procs), grace=10.0)
        for out in logs:
            out.close()


@pytest.fixture
def client(dask_cluster):
    with distributed.Client(dask_cluster[0], timeout=30, set_as_default=False) as c:
        yield c


def _model_tasks(stream) -> list[dict]:
    return [r for r in stream.data if cluster._is_model_task(r["key"])]


def _copy(settings: Settings, to: Path, **changes) -> Settings:
    shutil.copytree(settings.home, to)
    return Settings(home=to, **{**FAST, **changes})


def _drifted_batch(settings: Settings) -> None:
    make_datasets(settings, seed=5, drift=0.5, write_train=False)


def test_the_chain_compares_on_the_workers_and_registers_what_an_in_process_run_does(bootstrapped, dask_cluster,
                                                                                     client, tmp_path):
    address, workers = dask_cluster
    here = _copy(bootstrapped, tmp_path / "here")
    there = _copy(bootstrapped, tmp_path / "there", dask_scheduler=address)
    for s in (here, there):
        _drifted_batch(s)
    local = run(here)
    with distributed.get_task_stream(client) as stream:
        remote = run(there)
    tasks = _model_tasks(stream)
    assert len(tasks) == len(FAST["models"])  # a task a model, each on a worker of the cluster
    assert {r["worker"] for r in tasks} <= set(workers)
    # the workers ran PyCaret and Fugue, never this project's code: they need the [dask] extra's packages only
    imported = client.run(lambda: ("pycaret" in sys.modules, "mlops_core" in sys.modules))
    assert all(imported[r["worker"]][0] for r in tasks) and not any(ours for _, ours in imported.values())
    assert local.version == remote.version == "2"
    assert (remote.status, remote.production, remote.staging) == (local.status, local.production, local.staging)
    tags = [Registry(s).describe("2")["tags"] for s in (here, there)]
    for key in ("mlops.model", "cv_accuracy", "holdout_accuracy_candidate", "holdout_p_value", "decision"):
        assert tags[0][key] == tags[1][key], key
    tables = [pd.read_csv(s.models_dir / "pycaret_compare_results.csv", index_col=0) for s in (here, there)]
    assert list(tables[0].index) == list(tables[1].index)
    assert (tables[0]["Accuracy"] == tables[1]["Accuracy"]).all()


def test_a_lightgbm_winner_on_a_large_batch_fits_through_lightgbm_dask_and_serves_like_any_other(
        bootstrapped, dask_cluster, client, tmp_path):
    from lightgbm import LGBMClassifier

    from mlops_core.inference import artifact
    from mlops_core.inference.compile import rows_of
    from mlops_core.inference.predictors import PipelinePredictor

    address, workers = dask_cluster
    s = _copy(bootstrapped, tmp_path / "lgbm", dask_scheduler=address, models=("lightgbm",), select_rows=200,
              dask_fit_rows=300)
    _drifted_batch(s)
    with distributed.get_task_stream(client) as stream:
        result = run(s)
    assert result.version == "2"
    trained = [r["worker"] for r in stream.data if str(r["key"]).startswith("_train_part")]
    assert trained and set(trained) <= set(workers)  # LightGBM's own distributed training ran on the workers
    registry = Registry(s)
    info = registry.describe("2")
    assert int(info["tags"]["rows_fit"]) > s.dask_fit_rows and int(info["tags"]["rows_select"]) == 200
    model = registry.load_model("2")
    assert type(model.model.steps[-1][1]) is LGBMClassifier  # the plain local estimator (to_local())
    assert info["tags"][COMPILED_TAG] == "true"
    data, manifest, _ = registry.load_compiled("2")
    rows = rows_of(pd.read_csv(s.current_csv).sample(200, random_state=1), model)
    assert artifact.load(data, manifest)(rows) == PipelinePredictor(model)(rows)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once it is closed


@pytest.mark.timeout(120)
def test_an_unreachable_scheduler_fails_the_run_naming_it_the_watcher_retries_and_no_alias_moves(fresh):
    from mlops_watcher.child import ChildRunner

    address = f"tcp://127.0.0.1:{_closed_port()}"
    s = fresh.replace(dask_scheduler=address)
    _drifted_batch(s)
    registry = Registry(s)
    before = registry.aliases(), [v["version"] for v in registry.versions()]
    runner = ChildRunner(spare=False, grace=2.0)
    try:
        started = time.monotonic()
        outcome = runner(s, threading.Event(), s.current_csv)
        took = time.monotonic() - started
    finally:
        runner.close()
    assert outcome.outcome == "failed" and outcome.error == "ClusterError", outcome  # retried, not rejected
    assert address in outcome.reason and "MLOPS_DASK_SCHEDULER" in outcome.reason
    assert took < cluster.CONNECT_TIMEOUT + 60  # bounded by the connect timeout, not a hang
    assert (registry.aliases(), [v["version"] for v in registry.versions()]) == before


def test_workers_lacking_a_package_get_one_error_naming_it(dask_cluster, tmp_path):
    import importlib.util

    absent = next((m for m in ("xgboost", "catboost") if importlib.util.find_spec(m) is None), None)
    if absent is None:
        pytest.skip("xgboost and catboost are both installed: no model library the workers lack")
    address, workers = dask_cluster
    settings = Settings(home=tmp_path, models=("lr", absent), fold=2, dask_scheduler=address)
    frame = validate_frame(load_titanic()[[*settings.features, settings.target]].head(300), settings)
    from mlops_core.training import train

    with pytest.raises(ClusterError, match=f"{absent} is not installed on") as caught:
        train(frame, settings)
    assert all(addr in str(caught.value) for addr in workers)
    assert not (settings.models_dir / "best_model.pkl").exists()


class _Versions:
    """A client whose workers answer the given package versions (what ``Client.get_versions`` returns)."""

    def __init__(self, **workers):
        self.workers = workers

    def get_versions(self, packages):
        return {"workers": {addr: {"packages": versions} for addr, versions in self.workers.items()}}


def test_a_worker_holding_another_version_is_named_with_both_versions():
    from importlib.metadata import version

    ours = version("scikit-learn")
    same = {p: version(p) for p in cluster.needed_packages(["lr"])}
    client = _Versions(**{"tcp://a:1": same, "tcp://b:1": {**same, "scikit-learn": "0.1"}})
    with pytest.raises(ClusterError, match=rf"scikit-learn is 0.1 on tcp://b:1 where the trainer has {ours}"):
        cluster.check_workers(client, cluster.needed_packages(["lr"]))
    assert cluster.check_workers(_Versions(**{"tcp://a:1": same}), cluster.needed_packages(["lr"]))


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_comparison_costs_time_only_and_the_last_one_fails_the_run(dask_cluster, client,
                                                                                      tmp_path):
    """A worker killed while others live: its task runs again on another, the result is the same. The last
    worker killed: the run fails with ClusterError once the scheduler's no-workers-timeout passes. Runs last:
    the killed workers stay dead (no nanny)."""
    from mlops_core.training import train

    address, workers = dask_cluster
    settings = Settings(home=tmp_path / "a", **FAST)
    frame = validate_frame(load_titanic()[[*settings.features, settings.target]].head(600), settings)
    expected = train(frame, settings).comparison["Accuracy"]

    def compare_and_kill(home: Path) -> tuple[dict, str, list, float]:
        """Train on the cluster in a thread, kill the worker running a model task; how it ended, which worker,
        its model tasks, and the seconds from the kill to the end."""
        outcome: dict = {}

        def compare():
            try:
                outcome["result"] = train(frame, settings.replace(home=home, dask_scheduler=address))
            except Exception as err:  # noqa: BLE001 - the test asserts which
                outcome["error"] = err

        thread = threading.Thread(target=compare)
        thread.start()
        deadline, victim, killed = time.monotonic() + 120, None, []
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            for addr, keys in client.processing().items():
                killed = [k for k in keys if cluster._is_model_task(k)]
                if killed:
                    victim = addr
                    break
            time.sleep(0.05)
        assert victim is not None, "no comparison task was seen running"
        workers[victim].send_signal(signal.SIGKILL)  # the worker process the fixture started, by its pid
        killed_at = time.monotonic()
        thread.join(180)
        assert not thread.is_alive()
        return outcome, victim, killed, time.monotonic() - killed_at

    with distributed.get_task_stream(client) as stream:
        outcome, victim, killed, _ = compare_and_kill(tmp_path / "b")
    assert "error" not in outcome, outcome.get("error")  # rescheduled, not failed
    result = outcome["result"]
    assert (result.comparison["Accuracy"] == expected.loc[result.comparison.index]).all()
    finished = {str(r["key"]): r["worker"] for r in _model_tasks(stream)}
    assert len(finished) == len(FAST["models"])
    assert all(finished[str(k)] != victim for k in killed)  # the killed task ran again, on the other worker
    outcome, _, _, seconds = compare_and_kill(tmp_path / "c")  # the last worker
    assert isinstance(outcome.get("error"), ClusterError), outcome
    assert seconds < NO_WORKERS_TIMEOUT + 30
    assert "lost the comparison" in str(outcome["error"]) and "NoWorkerError" in str(outcome["error"])
    assert not (tmp_path / "c" / "models" / "best_model.pkl").exists()
