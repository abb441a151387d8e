"""server/hooks.py: MLflow's registry webhooks. Off without a secret (404); a delivery signed as MLflow signs it
refreshes at once, a bad, unsigned or stale one is refused (403); against a real ``mlflow server`` an alias move
reaches every gunicorn worker through the webhook while the poll is a minute away."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
import requests
from _registries import FakeRegistry

from mlops_core.config import Settings
from mlops_core.registry import Registry
from server import create_app
from server.hooks import EVENTS, MAX_SKEW_SECONDS, sign

from _services import Gunicorn, start_mlflow_server, stop_group, wait_for

SECRET = "a-webhook-secret"


def _delivery(secret: str, *, name: str = "titanic-survival", event: str = "model_version_alias.created",
              at: float | None = None, alias: str = "staging", version: str = "2") -> tuple[bytes, dict[str, str]]:
    """A body and headers as MLflow's delivery makes them (mlflow/webhooks/delivery.py), signed by MLflow's code."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    entity, action = event.rsplit(".", 1)
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2026-12-03T10:00:00+00:00",
                       "data": {"name": name, "alias": alias, "version": version}})
    delivery_id, timestamp = str(uuid.uuid4()), str(int(at if at is not None else time.time()))
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
               "X-MLflow-Timestamp": timestamp,
               "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, timestamp, body)}
    return body.encode(), headers


def _app(tmp_path, **settings):
    registry = FakeRegistry(None, {})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": Settings(home=tmp_path, **settings),
                      "MLOPS_REGISTRY": registry, "MLOPS_AUTOSTART": False})
    return app, registry


def test_our_signature_is_mlflows():
    body, headers = _delivery(SECRET)
    assert sign(SECRET, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body) == \
        headers["X-MLflow-Signature"]


def test_without_a_secret_the_endpoint_is_off_and_says_how_to_turn_it_on(tmp_path):
    app, registry = _app(tmp_path)
    body, headers = _delivery(SECRET)
    answer = app.test_client().post("/hooks/mlflow", data=body, headers=headers)
    assert answer.status_code == 404 and "MLOPS_WEBHOOK_SECRET" in answer.get_json()["message"]
    assert registry.alias_calls == 0


def test_a_signed_delivery_refreshes_and_a_bad_unsigned_or_stale_one_is_refused(tmp_path):
    app, registry = _app(tmp_path, webhook_secret=SECRET)
    client, store = app.test_client(), app.extensions["mlops_store"]
    refused = {
        "wrong secret": _delivery("another-secret"),
        "unsigned": (_delivery(SECRET)[0], {"Content-Type": "application/json"}),
        "stale": _delivery(SECRET, at=time.time() - MAX_SKEW_SECONDS - 60),
        "body changed": (_delivery(SECRET)[0].replace(b'"2"', b'"3"'), _delivery(SECRET)[1]),
    }
    for case, (body, headers) in refused.items():
        answer = client.post("/hooks/mlflow", data=body, headers=headers)
        assert answer.status_code == 403 and answer.get_json()["error"] == "forbidden", (case, answer.get_json())
    assert "X-MLflow-Signature" in client.post("/hooks/mlflow", data=refused["unsigned"][0]).get_json()["message"]
    assert registry.alias_calls == 0
    for event in EVENTS:
        body, headers = _delivery(SECRET, event=event)
        answer = client.post("/hooks/mlflow", data=body, headers=headers)
        assert answer.status_code == 202 and answer.get_json()["refresh"] is True, answer.get_json()
    assert registry.alias_calls == 2 and store.snapshot.cause == "webhook"
    body, headers = _delivery(SECRET, name="another-model")
    answer = client.post("/hooks/mlflow", data=body, headers=headers)
    assert answer.status_code == 200 and answer.get_json()["refresh"] is False and registry.alias_calls == 2


@pytest.mark.slow
def test_an_alias_moved_on_an_mlflow_server_reaches_every_worker_through_its_webhook(ab_home, tmp_path):
    """The mover has its own home (its notice reaches no worker) and the poll is 60 s away: the webhook reaches one
    worker, whose notice under the server's home reaches the other."""
    from mlflow import MlflowClient

    shutil.copy(ab_home.home / "mlflow.db", tmp_path / "registry.db")  # Production v1, Staging v2
    (tmp_path / "artifacts").mkdir()
    mlflow_proc, url = start_mlflow_server(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts",
                                           env={"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                                                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"})
    server = None
    try:
        server = Gunicorn(tmp_path / "server-home", tmp_path / "cwd", tracking_uri=url,
                          env={"MLOPS_REFRESH_SECONDS": "60", "MLOPS_WEBHOOK_SECRET": SECRET})
        server.wait_ready()
        assert wait_for(lambda: server.serves("1", "2"), 30), server.tail()
        MlflowClient(tracking_uri=url).create_webhook(name="mlops-serving", url=f"{server.url}/hooks/mlflow",
                                                      events=list(EVENTS), secret=SECRET)
        mover = Registry(ab_home.replace(home=tmp_path / "mover-home", tracking_uri=url))
        moved = time.monotonic()
        mover.sync()  # Staging -> version 1
        assert wait_for(lambda: server.serves("1", "1"), 10, 0.05), server.tail()
        took = time.monotonic() - moved
        assert took < 3.0, took
        refreshes = server.refreshes()
        assert refreshes.get("poll", 0) == 0 and refreshes["webhook"] >= 2, refreshes  # both workers
        body, headers = _delivery("not-the-secret", alias="production", version="2")
        answer = requests.post(server.url + "/hooks/mlflow", data=body, headers=headers, timeout=10)
        assert answer.status_code == 403, answer.text
        time.sleep(0.5)
        assert server.serves("1", "1") and server.refreshes() == refreshes  # nothing refreshed for it
        print(f"alias move on the MLflow server -> every worker serving it: {took:.2f} s")
    finally:
        if server is not None:
            abnormal = server.stop()
        stop_group(mlflow_proc)
    assert not abnormal, abnormal
