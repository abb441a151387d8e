"""Past one machine: a PostgreSQL-backed `mlflow server` with proxied artifacts, the chain as its client,
and two gunicorn servers (standing for two hosts) polling it under load."""

from __future__ import annotations

import pytest
import requests

from mlops_core.config import Settings
from mlops_core.data import make_datasets
from mlops_core.pipeline import run
from mlops_core.registry import Registry

from _services import Gunicorn, Load, postgres, start_mlflow_server, stop_group, wait_for

pytestmark = pytest.mark.slow  # PostgreSQL, an mlflow server, two trainings and two gunicorn hosts


def _arms(url: str) -> dict[str, str | None]:
    models = requests.get(url + "/models", timeout=5).json()
    return {arm: (models.get(arm) or {}).get("version") for arm in ("production", "staging")}


def test_chain_and_two_servers_on_postgres_backed_mlflow_server(tmp_path):
    with postgres() as db_url:
        (tmp_path / "artifacts").mkdir()
        mlflow_proc, tracking = start_mlflow_server(db_url, tmp_path / "artifacts")
        hosts: list[Gunicorn] = []
        loads: list[Load] = []
        try:
            trainer = Settings(home=tmp_path / "trainer", tracking_uri=tracking, models=("lr", "dt"), fold=2)
            make_datasets(trainer)
            first = run(trainer)
            assert first.bootstrapped == "1" and first.status == "no_drift"
            # the artifacts went through the server to its destination folder, not to the trainer's home
            assert any((tmp_path / "artifacts").rglob("MLmodel"))
            assert not (trainer.home / "mlartifacts").exists()

            for name in ("host-a", "host-b"):
                hosts.append(Gunicorn(tmp_path / name, tmp_path / name / "cwd", tracking_uri=tracking))
            for host in hosts:
                host.wait_ready()
                loads.append(Load(host.url))
            for load in loads:
                load.start()

            make_datasets(trainer, seed=5, drift=0.5, write_train=False)
            second = run(trainer)
            assert second.version == "2" and second.status in {"promoted", "staged"}
            expected = {"production": second.production, "staging": second.staging}
            assert expected == Registry(trainer).aliases()

            for host in hosts:  # every worker of every host
                assert wait_for(lambda h=host: h.serves(**expected), 30), (_arms(host.url), host.tail())
            for load in loads:
                load.stop()
            for host, load in zip(hosts, loads):
                assert load.answers, "no request was answered"
                assert load.failures == [], load.failures[:5]
                even = requests.post(host.url + "/predict", json={"user_id": 4, "features": _row()}, timeout=10)
                odd = requests.post(host.url + "/predict", json={"user_id": 5, "features": _row()}, timeout=10)
                assert even.json()["version"] == expected["production"]
                assert odd.json()["version"] == expected["staging"]
        finally:
            for load in loads:
                if load.is_alive():
                    load.stop()
            abnormal = [problem for host in hosts for problem in host.stop()]
            stop_group(mlflow_proc)
        assert not abnormal, abnormal  # every worker of every host exited by itself


def _row() -> dict:
    return {"pclass": 1, "sex": "female", "age": 38, "fare": 71.28, "sibsp": 1, "parch": 0, "embarked": "C"}
