"""The whole loop as users run it, each part a separate process on 127.0.0.1:
`mlflow server` (registry), the watcher, gunicorn; drop a drifted batch -> a new version is
registered, decided and served; a no-drift batch changes nothing; zero failed requests throughout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pandas as pd
import pytest
import requests

from mlops_core.config import Settings
from mlops_core.data import atomic_write_csv, make_datasets
from mlops_core.registry import Registry

from _services import REPO, ROW, Gunicorn, Load, base_env, start_mlflow_server, stop_group, wait_for

pytestmark = pytest.mark.slow


class Watcher:
    def __init__(self, settings: Settings, log_path):
        self.log_path = log_path
        env = base_env(MLOPS_HOME=str(settings.home), MLFLOW_TRACKING_URI=settings.tracking_uri,
                       MLOPS_MODELS=",".join(settings.models), MLOPS_FOLD=str(settings.fold),
                       MLOPS_SETTLE_SECONDS="0.5")
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "watcher.py")], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self, pattern: str) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if re.search(pattern, line)]

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def _arms(url: str) -> dict:
    models = requests.get(url + "/models", timeout=5).json()
    return {arm: (models.get(arm) or {}).get("version") for arm in ("production", "staging")}


def test_drop_drifted_batch_is_trained_promoted_and_served_then_no_drift_changes_nothing(tmp_path):
    (tmp_path / "artifacts").mkdir()
    mlflow_proc, tracking = start_mlflow_server(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    settings = Settings(home=tmp_path / "home", tracking_uri=tracking, models=("lr", "dt"), fold=2)
    started: list = [mlflow_proc]
    load = None
    try:
        make_datasets(settings)
        boot = subprocess.run([sys.executable, "-m", "mlops_core.cli", "--home", str(settings.home), "run", "--json"],
                              env=base_env(MLFLOW_TRACKING_URI=tracking, MLOPS_MODELS="lr,dt", MLOPS_FOLD="2"),
                              capture_output=True, text=True, timeout=300)
        assert boot.returncode == 0, boot.stderr[-2000:]
        assert json.loads(boot.stdout)["bootstrapped"] == "1"  # one JSON object, even with an HTTP registry
        registry = Registry(settings)
        assert registry.aliases() == {"production": "1", "staging": "1"}

        watcher = Watcher(settings, tmp_path / "watcher.log")
        started.append(watcher)
        server = Gunicorn(tmp_path / "server-home", tmp_path / "server-cwd", tracking_uri=tracking)
        started.append(server)
        server.wait_ready()
        assert wait_for(lambda: watcher.lines("watcher=started"), 60), watcher.log_path.read_text()
        load = Load(server.url, user_ids=(10, 11, 12, 13))
        load.start()

        # 1. a drifted batch: trained, registered, decided, served
        make_datasets(settings, seed=5, drift=0.5, write_train=False)
        assert wait_for(lambda: [v for v in registry.versions() if v["version"] == "2"], 180), \
            watcher.log_path.read_text()[-3000:]
        # the run is over (decision tagged, then aliases moved) once the watcher logs it
        assert wait_for(lambda: watcher.lines(r"run=done status=(promoted|staged)"), 60)
        tags = registry.describe("2")["tags"]
        assert {"holdout_accuracy_candidate", "holdout_accuracy_production", "decision_reason"} <= set(tags)
        aliases = registry.aliases()
        assert aliases["staging"] == "2"
        assert aliases["production"] == ("2" if tags["decision"] == "promoted" else "1")
        assert wait_for(lambda: server.serves(**aliases), 30), (_arms(server.url), aliases)  # both workers
        even = requests.post(server.url + "/predict", json={"user_id": 2, "features": ROW}, timeout=10).json()
        odd = requests.post(server.url + "/predict", json={"user_id": 3, "features": ROW}, timeout=10).json()
        assert (even["stage"], even["version"]) == ("Production", aliases["production"])
        assert (odd["stage"], odd["version"]) == ("Staging", aliases["staging"])
        # the workers read both versions' compiled artifacts through the server's REST and artifact APIs
        models = requests.get(server.url + "/models", timeout=10).json()
        assert [models[arm]["inference"]["source"] for arm in ("production", "staging")] == ["artifact"] * 2, models
        assert models["worker_imports"]["mlflow"] is False and models["worker_imports"]["pycaret"] is False

        # 2. a batch like Production's own training data: no drift, nothing changes
        _, reference = registry.load_reference(aliases["production"])
        atomic_write_csv(reference.sample(n=300, random_state=3), settings.current_csv)
        assert wait_for(lambda: watcher.lines(r"run=done status=no_drift"), 120), watcher.log_path.read_text()[-3000:]
        assert [v["version"] for v in registry.versions()] == ["1", "2"]
        assert registry.aliases() == aliases
        time.sleep(2 * 1.0)  # two server ticks: nothing may move
        assert _arms(server.url) == aliases

        load.stop()
        assert len(load.answers) > 20 and load.failures == [], load.failures[:5]
        served = {(stage, version) for _, _, stage, version in load.answers}
        assert served <= {("Production", "1"), ("Staging", "1"), ("Production", aliases["production"]),
                          ("Staging", aliases["staging"])}
    finally:
        if load is not None and load.is_alive():
            load.stop()
        for part in reversed(started):
            if isinstance(part, subprocess.Popen):
                stop_group(part)
            else:
                part.stop()


def test_the_no_drift_sample_really_has_no_drift(tmp_path):
    """Guard for the scenario above: a sample of the reference scores below the threshold."""
    settings = Settings(home=tmp_path)
    make_datasets(settings)
    reference = pd.read_csv(settings.train_csv)
    from mlops_core.drift import ReferenceProfile

    profile = ReferenceProfile.fit(reference, features=settings.features)
    report = profile.report(reference.sample(n=300, random_state=3), settings.drift_features,
                            threshold=settings.psi_threshold)
    assert not report.drift
