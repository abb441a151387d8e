"""The service under real gunicorn on 127.0.0.1: routing, live alias moves, every worker refreshing,
and a registry (a real ``mlflow server``) stopped for a while under load."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlops_core.config import Settings
from mlops_core.inference.predictors import to_frame
from mlops_core.registry import Registry

pytestmark = pytest.mark.slow

from _services import CONF, REFRESH, ROW, Gunicorn, Load, base_env, free_port, python_json, stop, wait_for  # noqa: E402

OUTAGE = float(os.environ.get("MLOPS_TEST_OUTAGE_SECONDS", "10"))  # ten refreshes fail meanwhile


@pytest.fixture(scope="module")
def abc_home(ab_home, tmp_path_factory) -> Settings:
    """Production v1, Staging v3, and an archived v2 (two drifted batches whose challengers lost): the session's
    ab_home (v2 the first batch's challenger) and a second drifted batch."""
    from mlops_core.data import make_datasets
    from mlops_core.pipeline import run

    dst = tmp_path_factory.mktemp("abc") / "home"
    shutil.copytree(ab_home.home, dst)
    s = ab_home.replace(home=dst, tracking_uri="")
    make_datasets(s, seed=7, drift=0.8, write_train=False)
    result = run(s.replace(min_improvement=1.0))
    assert result.version == "3" and result.status in ("staged", "archived"), result
    Registry(s).make_challenger("3")  # it beat no one: the challenger by hand, v2 archived
    assert Registry(s).aliases() == {"production": "1", "staging": "3"}
    return s


@pytest.fixture(scope="module")
def served(abc_home, tmp_path_factory):
    server_ = Gunicorn(abc_home.home, tmp_path_factory.mktemp("cwd"))
    try:
        server_.wait_ready()
        yield server_
    finally:
        abnormal = server_.stop()
    # after a module of requests, SIGTERM lets every worker exit by itself (ONNX Runtime imported before the
    # fork made them abort or hang until gunicorn killed them)
    assert not abnormal, abnormal


def _post(url, user_id, features):
    return requests.post(url + "/predict", json={"user_id": user_id, "features": features}, timeout=10)


def _rows(n: int) -> list[dict]:
    from mlops_core.data import load_titanic

    frame = load_titanic().sample(n, random_state=1)[list(ROW)]
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]


def test_parity_routing_and_predictions_equal_the_registered_pipelines(served, abc_home):
    rows = _rows(50)
    registry = Registry(abc_home)
    for user_id, stage, version in ((8, "Production", "1"), (9, "Staging", "3")):
        response = _post(served.url, user_id, rows)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["stage"], answer["version"], answer["model"]) == (stage, version, "titanic-survival")
        loaded = registry.load_model(version)
        frame = to_frame(rows, loaded)
        assert answer["predictions"] == [int(p) for p in loaded.model.predict(frame)]
        assert answer["probabilities"] == pytest.approx(list(loaded.model.predict_proba(frame)[:, 1]), abs=1e-6)


def test_a_worker_serving_compiled_versions_has_not_imported_pycaret(served):
    """Both arms come from their compiled artifacts, read from the registry without MLflow: the worker holds
    scikit-learn (the estimators) but neither MLflow, PyCaret nor its preprocessing libraries."""
    seen = {}
    for _ in range(20):  # ask until both workers answered
        models = requests.get(served.url + "/models", timeout=10).json()
        seen[models["worker_pid"]] = models
        if len(seen) == 2:
            break
    assert len(seen) == 2, "only one worker answered /models"
    for models in seen.values():
        for arm in ("production", "staging"):
            assert models[arm]["inference"]["source"] == "artifact", models[arm]["inference"]
            assert models[arm]["inference"]["path"] == "compiled" and models[arm]["inference"]["note"] is None
        imports = models["worker_imports"]
        assert imports["pycaret"] is False and imports["category_encoders"] is False, imports
        assert imports["mlflow"] is False and imports["sklearn"] is True, imports


def test_malformed_requests_under_gunicorn_are_4xx(served):
    cases = [b"", b"{", b"null", b"[1]", b'{"user_id": true, "features": {}}', b"[" * 100_000,
             b'{"user_id": 1, "features": {"age": NaN}}', b" " * (2 * 1024 * 1024)]
    for body in cases:
        response = requests.post(served.url + "/predict", data=body, timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500 and "field" in response.json(), (body[:30], response.text)


def test_feedback_is_refused_without_a_token_and_the_master_says_why_once(served):
    """Retirement is on by default and this server has no MLOPS_FEEDBACK_TOKEN: no label is taken from anyone."""
    request_id = _post(served.url, 2, ROW).json()["request_id"]
    response = requests.post(served.url + "/feedback", json={"request_id": request_id, "label": 1}, timeout=10)
    answer = response.json()
    assert (response.status_code, answer["error"]) == (403, "feedback_refused"), answer
    assert "set MLOPS_FEEDBACK_TOKEN" in answer["message"] and "MLOPS_AB_RETIRE=false" in answer["message"]
    said = [line for line in served.log_path.read_text().splitlines() if "POST /feedback will answer 403" in line]
    assert len(said) == 1 and "WARNING" in said[0], said  # the master's, not one per worker


def test_no_logs_log_in_the_working_directory(served):
    assert not (served.workdir / "logs.log").exists()
    assert sorted(p.name for p in served.workdir.iterdir() if p.name != "metrics") == ["gunicorn.log"]


def test_workers_get_one_blas_and_openmp_thread_each_unless_told_otherwise(tmp_path):
    """Workers are processes, one per core: a thread pool per core in each would fight over the cores. The master
    reads the config before anything loads numpy (whose BLAS reads the setting once, when loaded)."""
    pools = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    code = (f"import json, runpy; runpy.run_path({str(CONF)!r})\n"
            "import numpy, threadpoolctl\n"
            "print(json.dumps({p['internal_api']: p['num_threads'] for p in threadpoolctl.threadpool_info()}))")

    def blas_threads(**extra):
        env = {k: v for k, v in base_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path), **extra).items()
               if k not in pools or k in extra}
        return python_json(code, env=env)

    assert blas_threads()["openblas"] == 1
    assert blas_threads(OPENBLAS_NUM_THREADS="2")["openblas"] == 2  # an operator's own setting is kept


def test_every_worker_loads_and_refreshes(served):
    _every_worker_refreshes(served)


def _every_worker_refreshes(srv: Gunicorn) -> None:
    pids = wait_for(lambda: len(srv.worker_pids()) == 2 and srv.worker_pids(), 10)
    assert pids and len(pids) == 2, srv.tail()
    first = srv.gauge("mlops_refresh_last_success_timestamp_seconds")
    time.sleep(3 * REFRESH + 0.5)
    second = srv.gauge("mlops_refresh_last_success_timestamp_seconds")
    assert set(first) == set(second) and len(second) == 2
    assert all(second[k] > first[k] for k in first), (first, second)  # every worker ticked
    versions = srv.gauge("mlops_model_version")
    assert len(versions) == 4 and all(v > 0 for v in versions.values())


def test_moving_production_is_served_within_a_tick_under_load(served, abc_home):
    load = Load(served.url, user_ids=(0, 2, 4, 1))
    load.start()
    try:
        time.sleep(1.0)
        moved_at = time.time()
        Registry(abc_home).set_alias("production", "2")  # version 2 is loaded nowhere: a real download

        def both_workers_on_2():
            versions = served.gauge("mlops_model_version")
            prod = [v for k, v in versions.items() if 'arm="Production"' in k]
            return len(prod) == 2 and all(v == 2 for v in prod)

        assert wait_for(both_workers_on_2, REFRESH + 15), served.gauge("mlops_model_version")
        switched_at = time.time()
        time.sleep(1.0)
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    even = [(t, v) for t, u, _, v in load.answers if u % 2 == 0]
    assert {v for _, v in even} <= {"1", "2"}
    assert all(v == "2" for t, v in even if t > switched_at + 0.2), "an old version served after the swap"
    first_v2 = min(t for t, v in even if v == "2")
    assert first_v2 - moved_at < REFRESH + 10, first_v2 - moved_at
    assert all(s == "Staging" and v == "3" for _, u, s, v in load.answers if u % 2)
    models = requests.get(served.url + "/models", timeout=5).json()
    assert models["production"]["version"] == "2" and models["refresh"]["ok"] is True


def test_with_preload_every_worker_refreshes(abc_home, tmp_path):
    srv = Gunicorn(abc_home.home, tmp_path / "cwd", preload=True)
    try:
        srv.wait_ready()
        _every_worker_refreshes(srv)
        for _ in range(10):  # /models answers from whichever worker accepts: each has its scheduler running
            models = requests.get(srv.url + "/models", timeout=5, headers={"Connection": "close"}).json()
            assert models["scheduler_running"] is True
        assert not (srv.workdir / "logs.log").exists()
    finally:
        srv.stop()


def test_a_stopping_worker_closes_idle_client_connections(abc_home, tmp_path):
    """Clients that keep their connection open between requests (an HTTP session, a load balancer) must not
    hold a stopping worker: each worker exits by itself. The test servers run with a graceful timeout of 300 s,
    so a worker waiting on such a connection shows as a master still waiting."""
    import socket

    srv = Gunicorn(abc_home.home, tmp_path / "cwd")
    idle: list[socket.socket] = []
    try:
        srv.wait_ready()
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode()
        for _ in range(8):  # kept alive after an answer, spread over both workers
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "no answer to a keep-alive request"
            idle.append(sock)
    finally:
        abnormal = srv.stop()
        for sock in idle:
            sock.close()
    assert not abnormal, abnormal
    assert srv.tail(60).count("Worker exiting") == 2, srv.tail(60)


# -- a real registry server that goes away ---------------------------------------------------------
class MlflowServer:
    def __init__(self, db: Path, port: int, log_path: Path):
        self.db, self.port, self.log_path = db, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout: float = 60) -> None:
        env = base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.db.parent)
        ok = wait_for(lambda: requests.get(self.url + "/health", timeout=2).status_code == 200, timeout, 0.25)
        assert ok, self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, group=True)


def test_registry_down_under_load_keeps_serving_and_recovers(abc_home, tmp_path):
    home = tmp_path / "remote"
    shutil.copytree(abc_home.home, home)
    mlflow_server = MlflowServer(home / "mlflow.db", free_port(), tmp_path / "mlflow.log")
    mlflow_server.start()
    srv = None
    try:
        srv = Gunicorn(home, tmp_path / "cwd", tracking_uri=mlflow_server.url)
        srv.wait_ready()
        models = requests.get(srv.url + "/models", timeout=5).json()
        assert models["tracking_uri"] == mlflow_server.url and models["refresh"]["ok"] is True
        before = wait_for(lambda: len(srv.gauge("mlops_model_version")) == 4 and srv.gauge("mlops_model_version"), 30)
        assert before, srv.tail()  # both workers have loaded both arms
        load = Load(srv.url)
        load.start()
        try:
            time.sleep(1.0)
            mlflow_server.stop()
            down_at = time.monotonic()

            def every_worker_reports_the_error():
                seen = {}
                for _ in range(20):
                    m = requests.get(srv.url + "/models", timeout=5, headers={"Connection": "close"}).json()
                    seen[m["worker_pid"]] = m["refresh"]
                    if len(seen) == 2:
                        break
                return any(r["error"] and not r["ok"] for r in seen.values()) and seen

            seen = wait_for(every_worker_reports_the_error, OUTAGE)
            assert seen, "no worker reported the registry error"
            assert all("unreachable" in r["error"] for r in seen.values() if r["error"])
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
            assert srv.gauge("mlops_model_version") == before  # last good models still loaded
            mlflow_server.start()
            Registry(Settings(home=home, tracking_uri=mlflow_server.url)).set_alias("production", "3")

            def production_is_3_everywhere():
                prod = [v for k, v in srv.gauge("mlops_model_version").items() if 'arm="Production"' in k]
                return len(prod) == 2 and all(v == 3 for v in prod)

            assert wait_for(production_is_3_everywhere, 30), srv.tail()
        finally:
            load.stop()
        assert not load.failures, load.failures[:5]
        assert len(load.answers) > 50
        text = requests.get(srv.url + "/metrics", timeout=5).text
        assert float(re.search(r"^mlops_refresh_failures_total (\S+)$", text, re.M).group(1)) >= 2
        recovered = wait_for(lambda: all(
            requests.get(srv.url + "/models", timeout=5, headers={"Connection": "close"}).json()["refresh"]["ok"]
            for _ in range(6)), 10)
        assert recovered
    finally:
        if srv is not None:
            srv.stop()
        mlflow_server.stop()
