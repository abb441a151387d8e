"""The Flask app in-process (no gunicorn): validation, routing, model store, scheduler, endpoints."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace

import pytest
from _registries import FakeRegistry

from mlops_core.config import Settings
from mlops_core.inference.predictors import to_frame
from mlops_core.registry import Registry
from server import create_app
from server.batching import Batcher

ROW = {"pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}


@pytest.fixture(scope="module")
def app(ab_home):
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": ab_home, "MLOPS_AUTOSTART": False})
    snapshot = app.extensions["mlops_store"].refresh()
    assert snapshot.error is None
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def _post(client, body, content_type="application/json"):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/predict", data=data, content_type=content_type)


# -- the malformed corpus ----------------------------------------------------------------
def _row(**changes):
    row = dict(ROW)
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()
_NESTED = "[" * 200_000 + "]" * 200_000  # deeper than any JSON parser's recursion limit

MALFORMED = [  # (id, body, expected field); bodies that are str/bytes are sent as they are
    ("empty body", b"", "body"),
    ("whitespace body", b"   \n", "body"),
    ("not json", b"user_id=1", "body"),
    ("truncated json", b'{"user_id": 1, "features": {', "body"),
    ("trailing garbage", b'{"user_id": 1, "features": {}} xx', "body"),
    ("invalid utf-8", b'{"user_id": 1, "features": "\xff\xfe"}', "body"),
    ("NaN literal", b'{"user_id": 1, "features": {"age": NaN}}', "body"),
    ("Infinity literal", b'{"user_id": Infinity, "features": {}}', "body"),
    ("float overflow", b'{"user_id": 2, "features": {"age": 1e999}}', "body"),
    ("int of 5000 digits", b'{"user_id": ' + b"9" * 5000 + b', "features": {}}', "body"),
    ("nested garbage", _NESTED.encode(), "body"),
    ("null body", b"null", "body"),
    ("list body", json.dumps([{"user_id": 1, "features": ROW}]), "body"),
    ("string body", b'"hello"', "body"),
    ("number body", b"42", "body"),
    ("empty object", {}, "user_id"),
    ("missing user_id", {"features": ROW}, "user_id"),
    ("user_id true", {"user_id": True, "features": ROW}, "user_id"),
    ("user_id false", {"user_id": False, "features": ROW}, "user_id"),
    ("user_id string", {"user_id": "2", "features": ROW}, "user_id"),
    ("user_id fraction", {"user_id": 2.5, "features": ROW}, "user_id"),  # 2.0 is an integer (JSON Schema)
    ("user_id null", {"user_id": None, "features": ROW}, "user_id"),
    ("user_id list", {"user_id": [2], "features": ROW}, "user_id"),
    ("user_id object", {"user_id": {"id": 2}, "features": ROW}, "user_id"),
    ("missing features", {"user_id": 2}, "features"),
    ("features null", {"user_id": 2, "features": None}, "features"),
    ("features string", {"user_id": 2, "features": "pclass=3"}, "features"),
    ("features number", {"user_id": 2, "features": 3}, "features"),
    ("empty batch", {"user_id": 2, "features": []}, "features"),
    ("oversize batch", {"user_id": 2, "features": [ROW] * 1001}, "features"),
    ("batch of non-objects", {"user_id": 2, "features": [ROW, 5]}, "features[1]"),
    ("batch of lists", {"user_id": 2, "features": [[3, "male"]]}, "features[0]"),
    ("extra top-level key", {"user_id": 2, "features": ROW, "debug": True}, "debug"),
    ("missing feature", {"user_id": 2, "features": _row(age=_DROP)}, "features.age"),
    ("missing feature in batch", {"user_id": 3, "features": [ROW, _row(fare=_DROP)]}, "features[1].fare"),
    ("unknown feature", {"user_id": 2, "features": _row(cabin="C85")}, "features.cabin"),
    ("empty feature object", {"user_id": 2, "features": {}}, "features.pclass"),
    ("string for double", {"user_id": 2, "features": _row(age="22")}, "features.age"),
    ("bool for double", {"user_id": 2, "features": _row(fare=True)}, "features.fare"),
    ("list for double", {"user_id": 2, "features": _row(age=[22])}, "features.age"),
    ("object for double", {"user_id": 2, "features": _row(sibsp={"n": 1})}, "features.sibsp"),
    ("number for string", {"user_id": 2, "features": _row(sex=1)}, "features.sex"),
    ("bool for string", {"user_id": 2, "features": _row(embarked=False)}, "features.embarked"),
    ("nested garbage in a feature", {"user_id": 2, "features": _row(sex=[[["male"]]])}, "features.sex"),
    ("wrong type deep in a batch", {"user_id": 5, "features": [ROW] * 7 + [_row(pclass="first")]},
     "features[7].pclass"),
    ("huge int for double", {"user_id": 2, "features": _row(fare=10 ** 400)}, "features.fare"),
    ("double beyond float32 (tree models)", {"user_id": 2, "features": _row(age=1e300)}, "features.age"),
    ("user_id beyond 64 bits (the log's column)", {"user_id": 2 ** 63, "features": ROW}, "user_id"),
]


@pytest.mark.parametrize("body,field", [pytest.param(b, f, id=i) for i, b, f in MALFORMED])
def test_malformed_request_gets_4xx_json_naming_the_field(client, body, field):
    response = _post(client, body)
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.is_json
    answer = response.get_json()
    assert answer["field"] == field
    assert field.split(".")[-1].split("[")[0] in answer["message"]


def test_corpus_is_large_enough():
    assert len(MALFORMED) >= 30


def test_oversize_body_is_413_before_parsing(client, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = json.dumps({"user_id": 2, "features": [ROW] * 2}).encode() + b" " * limit
    response = _post(client, body)
    assert response.status_code == 413
    assert response.get_json()["field"] == "body"


def test_a_batch_over_the_cap_breaks_the_schema_400_and_the_cap_is_inclusive(client, ab_home):
    """The schema declares maxItems: a longer batch is a validation error (413 is for a body over the byte cap)."""
    over = _post(client, {"user_id": 2, "features": [ROW] * (ab_home.max_batch + 1)})
    assert over.status_code == 400 and over.get_json()["field"] == "features"
    response = _post(client, {"user_id": 2, "features": [ROW] * ab_home.max_batch})
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == ab_home.max_batch


def test_non_json_content_type_is_415(client):
    response = client.post("/predict", data=json.dumps({"user_id": 2, "features": ROW}), content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["field"] == "Content-Type"


def test_unknown_route_and_method_answer_json(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json
    response = client.get("/predict")
    assert response.status_code == 405 and response.is_json and "POST" in response.headers["Allow"]


# -- routing and predictions ---------------------------------------------------------------
def _titanic_rows(n: int, seed: int = 0) -> list[dict]:
    from mlops_core.data import load_titanic

    frame = load_titanic().sample(n, random_state=seed)[list(ROW)]
    rows = []
    for record in frame.to_dict(orient="records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    return rows


@pytest.mark.parametrize("user_id,stage,version", [(0, "Production", "1"), (2, "Production", "1"),
                                                   (-4, "Production", "1"), (1, "Staging", "2"),
                                                   (7, "Staging", "2"), (-3, "Staging", "2"),
                                                   (2 ** 63 - 1, "Staging", "2"), (-(2 ** 63), "Production", "1")])
def test_parity_routes_even_to_production_and_odd_to_staging(client, user_id, stage, version):
    answer = _post(client, {"user_id": user_id, "features": ROW}).get_json()
    assert (answer["stage"], answer["version"], answer["model"]) == (stage, version, "titanic-survival")
    assert answer["fallback"] is False and answer["requested_stage"] == stage


def test_predictions_equal_the_registered_pipelines_own(client, ab_home):
    rows = _titanic_rows(60)
    registry = Registry(ab_home)
    for user_id, version in ((10, "1"), (11, "2")):
        answer = _post(client, {"user_id": user_id, "features": rows}).get_json()
        assert answer["version"] == version
        loaded = registry.load_model(version)
        frame = to_frame(rows, loaded)
        assert answer["predictions"] == [int(p) for p in loaded.model.predict(frame)]
        expected = loaded.model.predict_proba(frame)[:, 1]
        assert answer["probabilities"] == pytest.approx(list(expected), abs=1e-6)


def test_the_batcher_slices_answers_of_either_shape():
    """Requests queued behind a running call share the next one; each gets its rows' predictions and lists."""
    calls, release = [], threading.Event()

    def predict(model, rows):
        calls.append((model, len(rows)))
        if len(calls) == 1:
            release.wait(5)  # the first call runs while the others queue behind it
        if model == "three":
            return [f"c{r}" for r in rows], [[r / 10, 0.5, 0.5 - r / 10] for r in rows]
        if model == "numbers":  # a regression: no probabilities
            return [r * 1.5 for r in rows], None
        return [r % 2 == 0 for r in rows], [r / 10 for r in rows]

    batcher = Batcher(predict, wait=0.0)
    jobs = [("two", [0])] + [(("three", "two", "numbers")[i % 3], list(range(i, i + 1 + i % 3))) for i in range(1, 10)]
    answers: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, batcher(*jobs[i]))) for i in range(len(jobs))]
    threads[0].start()
    while not calls:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(batcher._queue) < len(jobs) - 1:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 4 and sorted(m for m, _ in calls[1:]) == ["numbers", "three", "two"]  # one call a model
    for i, (model, rows) in enumerate(jobs):
        assert answers[i] == predict(model, rows), (i, answers[i])


def test_versions_really_differ(client):
    """The two arms are distinct models: some rows get different probabilities."""
    rows = _titanic_rows(40, seed=3)
    even = _post(client, {"user_id": 2, "features": rows}).get_json()["probabilities"]
    odd = _post(client, {"user_id": 3, "features": rows}).get_json()["probabilities"]
    assert even != odd


def test_integers_for_doubles_and_nulls_are_accepted(client):
    answer = _post(client, {"user_id": 2, "features": [ROW, _row(age=None, fare=None, embarked=None),
                                                       _row(age=22.5, pclass=1)]})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert len(body["predictions"]) == 3 and all(p in (0, 1) for p in body["predictions"])
    assert all(0.0 <= p <= 1.0 for p in body["probabilities"])


def test_single_row_answers_lists_of_one(client):
    body = _post(client, {"user_id": 4, "features": ROW}).get_json()
    assert len(body["predictions"]) == 1 and len(body["probabilities"]) == 1


def test_odd_users_fall_back_to_production_without_staging(app, client):
    store = app.extensions["mlops_store"]
    before = store.snapshot
    store.snapshot = replace(before, staging=None)
    try:
        answer = _post(client, {"user_id": 3, "features": ROW}).get_json()
    finally:
        store.snapshot = before
    assert (answer["stage"], answer["version"]) == ("Production", "1")
    assert answer["fallback"] is True and answer["requested_stage"] == "Staging"


def test_no_model_is_503_with_a_clear_message(tmp_path):
    registry = FakeRegistry(None, {})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": Settings(home=tmp_path), "MLOPS_REGISTRY": registry,
                      "MLOPS_AUTOSTART": False})
    app.extensions["mlops_store"].refresh()
    client = app.test_client()
    response = _post(client, {"user_id": 2, "features": ROW})
    assert response.status_code == 503 and "no Production model" in response.get_json()["message"]
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200
    assert client.get("/models").get_json()["production"] is None
    doc = client.get("/openapi.json").get_json()  # no model: answers and labels of any kind (numbers too)
    answer = doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["predictions"]["items"] == {"type": ["string", "integer", "number", "boolean"]}
    assert "classes" in answer["properties"] and "classes" not in answer["required"]
    assert doc["components"]["schemas"]["Label"]["properties"]["label"]["pattern"] == "\\S"


def test_create_app_leaves_the_scheduler_to_gunicorn_hooks(tmp_path, monkeypatch):
    import server

    monkeypatch.setattr(server, "_hooks_start_workers", True)  # what server/gunicorn.conf.py sets in the master
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": Settings(home=tmp_path),
                      "MLOPS_REGISTRY": FakeRegistry(None, {})})
    assert app.extensions["mlops_store"].running is False


# -- health, models, metrics ------------------------------------------------------------------
def test_ready_models_and_metrics(client, ab_home):
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["production"] == "1"
    models = client.get("/models").get_json()
    assert models["production"]["version"] == "1" and models["staging"]["version"] == "2"
    assert models["production"]["run_id"] and models["production"]["loaded_at"]
    assert models["production"]["columns"] == list(ROW)
    # which predictor answers: lr and dt (the test model list) compile to their hand kernels or ONNX Runtime
    inference = models["production"]["inference"]
    assert inference["path"] == "compiled", inference
    assert inference["kernel"] in ("logistic", "decision_tree", "onnx")
    assert " fastest verified: " in inference["kernel_reason"] and "at registration: " in inference["kernel_reason"]
    assert models["refresh"]["ok"] is True and models["refresh"]["error"] is None
    _post(client, {"user_id": 3, "features": ROW})
    _post(client, {"user_id": "x", "features": ROW})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mlops_predict_requests_total{arm="Staging"}' in text
    assert 'mlops_predict_errors_total{arm="none",code="400"}' in text
    assert 'mlops_predict_latency_seconds_count{arm="Staging"}' in text
    assert 'mlops_model_version{arm="Production"} 1.0' in text
    assert 'mlops_model_version{arm="Staging"} 2.0' in text
    assert 'mlops_model_compiled{arm="Production"} 1.0' in text
    assert f'mlops_model_kernel{{arm="Production",kernel="{inference["kernel"]}"}} 1.0' in text


def test_the_kernel_metric_names_the_kernel_each_arm_answers_with():
    from types import SimpleNamespace

    from server.metrics import Metrics
    from server.store import Snapshot

    def arm(version, kernel=None):
        predictor = SimpleNamespace(compiled=kernel is not None, kernel=SimpleNamespace(__name__=kernel))
        return SimpleNamespace(version=version, loaded_at=1.0, predictor=predictor)

    metrics = Metrics()
    metrics.observe_refresh(Snapshot(production=arm("1", "onnx"), staging=arm("2")), ok=True)
    text = metrics.render()[0].decode()
    assert 'mlops_model_kernel{arm="Production",kernel="onnx"} 1.0' in text
    assert 'mlops_model_kernel{arm="Staging",kernel="pipeline"} 1.0' in text
    metrics.observe_refresh(Snapshot(production=arm("3", "forest")), ok=True)
    text = metrics.render()[0].decode()
    assert 'mlops_model_kernel{arm="Production",kernel="onnx"} 0.0' in text
    assert 'mlops_model_kernel{arm="Production",kernel="forest"} 1.0' in text
    assert 'mlops_model_kernel{arm="Staging",kernel="none"} 1.0' in text


def test_models_never_shows_credentials(tmp_path):
    settings = Settings(home=tmp_path, tracking_uri="postgresql://mlflow:hunter2@db.internal/mlflow")
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": FakeRegistry(None, {}),
                      "MLOPS_AUTOSTART": False})
    text = app.test_client().get("/models").get_data(as_text=True)
    assert "hunter2" not in text and "db.internal" in text
