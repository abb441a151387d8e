"""Injected faults: the registry server dies mid-run; gunicorn under load while both aliases keep moving.

- a real ``mlflow server`` is stopped while the chain trains: the run fails in seconds with a RegistryError,
  the aliases are unchanged, no version looks live without an alias; with the server back the next run
  succeeds;
- gunicorn (2 workers, 1 s refresh) under a steady load while production and staging move 10 times
  between three versions: zero failed requests, and every answer's version is one the registry held for
  that arm within a refresh-and-load window before the answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import pytest
from _watching import assert_registry_consistent

from mlops_core.data import make_datasets
from mlops_core.errors import RegistryError
from mlops_core.pipeline import run
from mlops_core.registry import COMPILED_TAG, PRODUCTION, STAGING, Registry
from tests._services import REFRESH, Gunicorn, Load, free_port, start_mlflow_server, stop_group

pytestmark = pytest.mark.slow
ARM = {"Production": PRODUCTION, "Staging": STAGING}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_registry_down_mid_run_fails_cleanly_and_the_next_run_succeeds(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = free_port()
    backend = f"sqlite:///{fresh.home / 'mlflow.db'}"
    server, url = start_mlflow_server(backend, tmp_path / "served-artifacts", port=port)
    remote = fresh.replace(tracking_uri=url)
    make_datasets(fresh, seed=701, drift=0.5, write_train=False)
    before = Registry(remote).aliases()
    assert before == {PRODUCTION: "1", STAGING: "1"}

    lines = _Lines()
    pipeline_log = logging.getLogger("mlops_core.pipeline")
    pipeline_log.addHandler(lines)
    pipeline_log.setLevel(logging.INFO)
    outcome: dict = {}

    def chain():
        try:
            outcome["result"] = run(remote, lock_timeout=10)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    worker = threading.Thread(target=chain, daemon=True)
    try:
        worker.start()
        _wait(lambda: any(line.startswith("step=drift") for line in lines.lines) or not worker.is_alive(), 90,
              "the drift stage")
        time.sleep(1.0)  # training is under way (the reference has been read)
        stop_group(server)
        down_at = time.monotonic()
        worker.join(120)
        assert not worker.is_alive(), "the run hung with the registry down"
        took = time.monotonic() - down_at
    finally:
        pipeline_log.removeHandler(lines)
        stop_group(server)
    err = outcome.get("error")
    assert isinstance(err, RegistryError), outcome
    assert "API request" in str(err) or "Connection" in str(err), str(err)
    assert took < 60, f"failing took {took:.0f}s"

    server, url = start_mlflow_server(backend, tmp_path / "served-artifacts", port=port)  # back, same address
    try:
        assert Registry(remote).aliases() == before
        assert_registry_consistent(remote)
        result = run(remote)
        assert result.status in ("promoted", "staged"), result
        assert result.version is not None and int(result.version) >= 2
        assert_registry_consistent(remote)
    finally:
        stop_group(server)


def _three_versions(settings) -> Registry:
    """Versions 2 and 3 as new versions of version 1's model: cheap, and each loads like any other."""
    reg = Registry(settings)
    v1 = reg.client.get_model_version(reg.name, "1")
    for _ in range(2):
        # another version of the same logged model and run: it carries the same compiled form
        reg.register(v1.source, tags={COMPILED_TAG: v1.tags[COMPILED_TAG]})
    assert [v["version"] for v in reg.versions()] == ["1", "2", "3"]
    return reg


def test_aliases_moving_under_load_zero_failures_and_only_held_versions(fresh, tmp_path):
    reg = _three_versions(fresh)
    srv = Gunicorn(fresh.home, tmp_path / "cwd")
    history: dict[str, list[list]] = {PRODUCTION: [[0.0, None, "1"]], STAGING: [[0.0, None, "1"]]}  # start, end, v
    loads: list[Load] = []
    try:
        srv.wait_ready()
        loads = [Load(srv.url), Load(srv.url, user_ids=(5, 8, 7, 10))]
        for load in loads:
            load.start()
        rng = random.Random(7)
        time.sleep(1.0)
        for i in range(10):
            alias = (PRODUCTION, STAGING)[i % 2]
            current = history[alias][-1][2]
            version = rng.choice([v for v in ("1", "2", "3") if v != current])
            started = time.time()
            reg.set_alias(alias, version)
            history[alias][-1][1] = time.time()  # the old version was held until the call returned
            history[alias].append([started, None, version])
            time.sleep(1.5)
        time.sleep(REFRESH + 3.0)  # every worker catches up with the last move
    finally:
        for load in loads:
            load.stop()
        tail = srv.tail()
        srv.stop()
    answers = [a for load in loads for a in load.answers]
    failures = [f for load in loads for f in load.failures]
    assert not failures, failures[:5]
    assert len(answers) > 200, tail

    lag = REFRESH + 4.0  # a worker follows a move within one tick plus a model load
    stale = []
    for at, user_id, stage, version in answers:
        assert stage == ("Staging" if user_id % 2 else "Production")
        held = [(s, e) for s, e, v in history[ARM[stage]] if v == version]
        if not any(s <= at and (e is None or e >= at - lag) for s, e in held):
            stale.append((at, user_id, stage, version))
    assert not stale, f"{len(stale)} answers from versions the registry did not hold then: {stale[:5]}"
    last = max(at for at, *_ in answers)
    for stage, alias in ARM.items():
        served = {v for at, _, s, v in answers if s == stage}
        assert len(served) >= 2, (stage, served)  # the moves were followed
        final = {v for at, _, s, v in answers if s == stage and at > last - 1.0}
        assert final == {history[alias][-1][2]}, (stage, final, history[alias][-1])
