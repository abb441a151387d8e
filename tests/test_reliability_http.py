"""HTTP fuzzing of POST /predict (hypothesis), the published OpenAPI document, and secrets kept out of answers and logs.

Thousands of generated bodies against the Flask app in-process: valid-ish rows with mutated keys
and types, arbitrary JSON values, raw bytes. Never a 5xx; every 4xx is JSON naming the field.
Each fuzz test checks that its planned examples ran (counted from the requests sent).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import create_app

ROW = {"pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}
FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def app(bootstrapped, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(bootstrapped.home, home)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": bootstrapped.replace(home=home, tracking_uri=""),
                      "MLOPS_AUTOSTART": False})
    assert app.extensions["mlops_store"].refresh().error is None
    return app


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def _check(response, body_repr: str, counts: Counter) -> None:
    """No 5xx; a 4xx is JSON with an error, a message and a non-empty field; a 2xx is a sane answer."""
    counts["cases"] += 1
    status = response.status_code
    assert status < 500, f"{status} for {body_repr[:300]}: {response.get_data(as_text=True)[:300]}"
    body = response.get_json(silent=True)
    assert isinstance(body, dict), f"{status} without a JSON object for {body_repr[:300]}"
    if status >= 400:
        counts["4xx"] += 1
        assert body.get("error") and body.get("message"), body
        assert isinstance(body.get("field"), str) and body["field"], f"no field named: {body} for {body_repr[:300]}"
        return
    counts["2xx"] += 1
    assert status == 200
    assert set(body["predictions"]) <= {0, 1}
    assert all(0.0 <= p <= 1.0 for p in body["probabilities"])
    assert body["stage"] in ("Production", "Staging") and body["version"] == "1"


def _post(client, payload, counts: Counter) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload)
    _check(client.post("/predict", data=data, content_type="application/json"), repr(payload), counts)


# -- strategies ---------------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 40), max_value=10 ** 40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
DROP = object()


@st.composite
def mutated_rows(draw):
    """ROW with some keys dropped, some values replaced by any JSON value, maybe an extra key."""
    row = {}
    for key, value in ROW.items():
        choice = draw(st.sampled_from(["keep", "keep", "keep", "drop", "null", "any"]))
        if choice == "keep":
            row[key] = value
        elif choice == "null":
            row[key] = None
        elif choice == "any":
            row[key] = draw(json_values)
    if draw(st.booleans()) and draw(st.booleans()):
        row[draw(st.text(min_size=1, max_size=10))] = draw(scalars)
    return row


valid_rows = st.fixed_dictionaries({
    "pclass": st.none() | st.integers(min_value=-5, max_value=10),
    "sex": st.none() | st.sampled_from(["male", "female"]) | st.text(max_size=10),
    "age": st.none() | st.integers(min_value=-100, max_value=200) | st.floats(-1e6, 1e6),
    "fare": st.none() | st.floats(min_value=-1e9, max_value=1e9),
    "sibsp": st.none() | st.integers(min_value=0, max_value=20),
    "parch": st.none() | st.integers(min_value=0, max_value=20),
    "embarked": st.none() | st.sampled_from(["S", "C", "Q", "X", ""]),
})
user_ids = st.integers() | st.sampled_from([0, 1, 2, 3]) | json_values


# -- fuzzing ------------------------------------------------------------------------------------------------
# Each test runs its Hypothesis search inside and then checks that the planned examples really ran: the counts
# come from the requests sent, whatever order the tests run in.
def test_fuzz_mutated_requests_never_5xx(client):
    counts: Counter = Counter()

    @FUZZ
    @given(user_id=user_ids, features=mutated_rows() | st.lists(mutated_rows(), min_size=0, max_size=4) | json_values,
           extra=st.none() | st.dictionaries(st.text(max_size=8), scalars, min_size=1, max_size=2))
    def case(user_id, features, extra):
        body = {"user_id": user_id, "features": features}
        if extra:
            body.update(extra)
        _post(client, body, counts)

    case()
    assert counts["cases"] >= 500 and counts["4xx"] + counts["2xx"] == counts["cases"], counts


def test_fuzz_well_typed_rows_are_answered(client):
    counts: Counter = Counter()

    @settings(FUZZ, max_examples=400)
    @given(user_id=st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
           features=valid_rows | st.lists(valid_rows, min_size=1, max_size=8))
    def case(user_id, features):
        response = client.post("/predict", json={"user_id": user_id, "features": features})
        _check(response, repr(features), counts)
        assert response.status_code == 200, response.get_json()
        n = len(features) if isinstance(features, list) else 1
        assert len(response.get_json()["predictions"]) == n

    case()
    assert counts["2xx"] == counts["cases"] >= 300, counts


def test_fuzz_arbitrary_json_bodies_never_5xx(client):
    counts: Counter = Counter()

    @settings(FUZZ, max_examples=300)
    @given(body=json_values)
    def case(body):
        _post(client, body, counts)

    case()
    assert counts["cases"] >= 200, counts


def test_fuzz_raw_bytes_never_5xx(client):
    counts: Counter = Counter()

    @settings(FUZZ, max_examples=300)
    @given(raw=st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
           | st.builds(lambda s, cut: s[:cut], st.just(json.dumps({"user_id": 1, "features": ROW}).encode()),
                       st.integers(0, 120)))
    def case(raw):
        _post(client, raw, counts)

    case()
    assert counts["cases"] >= 200, counts


def test_fixed_edge_cases_are_4xx_naming_the_field(client, app):
    cap = app.config["MLOPS_SETTINGS"].max_batch
    cases = {
        "huge integer": (b'{"user_id": ' + b"9" * 5000 + b', "features": {}}', "body"),
        "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "body"),
        "float overflow": ({"user_id": 0, "features": {**ROW, "fare": 10 ** 400}}, "features.fare"),
        "NaN literal": (b'{"user_id": 0, "features": {"age": NaN}}', "body"),
        "bool user": ({"user_id": True, "features": ROW}, "user_id"),
        "batch over cap": ({"user_id": 0, "features": [ROW] * (cap + 1)}, "features"),
        "oversize body": (b'{"user_id": 0, "features": "' + b"x" * (2 << 20) + b'"}', "body"),
    }
    for name, (payload, field) in cases.items():
        data = payload if isinstance(payload, bytes) else json.dumps(payload)
        response = client.post("/predict", data=data, content_type="application/json")
        assert 400 <= response.status_code < 500, (name, response.status_code)
        assert response.get_json()["field"] == field, (name, response.get_json())
    response = client.post("/predict", data="user_id=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.get_json()["field"] == "Content-Type"


def test_fuzz_feedback_labels_are_stored_exactly_when_the_schema_allows_them(app, client, monkeypatch):
    """Any JSON value as the label of a logged prediction: never a 5xx; stored (201) when the published Label
    schema accepts it (a class, 0 or 1, as in the data or as text), else 400 naming the label."""
    from jsonschema import Draft202012Validator

    monkeypatch.setitem(app.config, "MLOPS_SETTINGS", app.config["MLOPS_SETTINGS"].replace(feedback_token=TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    label_schema = Draft202012Validator(client.get("/openapi.json").get_json()["components"]["schemas"]["Label"])
    ab_log = app.extensions["mlops_ab"]
    ab_log.start()
    try:
        ids = iter(client.post("/predict", json={"user_id": 2, "features": [ROW] * 300}).get_json()["request_ids"])
        counts: Counter = Counter()

        @settings(FUZZ, max_examples=200)
        @given(label=json_values | st.sampled_from([0, 1, "0", "1", " 1 ", "+01", "1.0", 1.0, "-0", True, "true", 2]))
        def case(label):
            body = {"request_id": next(ids), "label": label}
            response = client.post("/feedback", json=body, headers=auth)
            counts["cases"] += 1
            answer = response.get_json()
            assert response.status_code == (201 if label_schema.is_valid(body) else 400), (label, answer)
            if response.status_code == 400:
                assert answer["field"] == "label" and answer["message"], answer
            counts["stored" if response.status_code == 201 else "refused"] += 1

        case()
    finally:
        ab_log.stop()
    assert counts["cases"] >= 150 and counts["stored"] >= 10 and counts["refused"] >= 50, counts


# -- the published schema ------------------------------------------------------------------------------
def test_openapi_document_names_the_model_columns_and_matches_the_api(client, app):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = json.loads(response.get_data())
    assert doc["openapi"].startswith("3.")
    row = doc["components"]["schemas"]["Row"]
    columns = app.extensions["mlops_store"].snapshot.production.columns
    assert row["required"] == list(columns) and set(row["properties"]) == set(columns)
    assert row["additionalProperties"] is False
    assert row["properties"]["sex"]["type"] == ["string", "null"]
    post = doc["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "503"} <= set(post["responses"])
    assert {"/predict", "/feedback", "/ab/report", "/models", "/health", "/ready", "/metrics"} <= set(doc["paths"])
    features = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["features"]
    assert features["oneOf"][1]["maxItems"] == app.config["MLOPS_SETTINGS"].max_batch


# -- secrets ------------------------------------------------------------------------------------------------------
SECRET, TOKEN = "s3cr3t-pw-Zq9", "tok-Yx7-password"


def test_tracking_credentials_never_reach_answers_or_logs(tmp_path, monkeypatch, caplog, capfd):
    """A credentialed tracking URI that fails: /models, /ready, /metrics and every log line stay clean."""
    from mlops_core.config import Settings
    from mlops_core.errors import RegistryError
    from mlops_core.pipeline import run
    from tests._services import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TOKEN)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    settings = Settings(home=tmp_path / "home", tracking_uri=uri)
    caplog.set_level(logging.DEBUG)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_AUTOSTART": False})
    snapshot = app.extensions["mlops_store"].refresh()
    assert snapshot.error and "unreachable" in snapshot.error
    client = app.test_client()
    answers = [client.get(path).get_data(as_text=True) for path in ("/models", "/ready", "/metrics", "/openapi.json")]
    answers.append(client.post("/predict", json={"user_id": 0, "features": ROW}).get_data(as_text=True))
    assert "alice:***@" in answers[0]
    # the library's own error (what the watcher and the CLI log) is redacted too
    from mlops_core.data import make_datasets

    make_datasets(settings.replace(tracking_uri=""))
    with pytest.raises(RegistryError, match=r"alice:\*\*\*@") as err:
        run(settings)
    captured = capfd.readouterr()
    logs = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    for text in (*answers, logs, captured.out, captured.err, str(err.value)):
        assert SECRET not in text and TOKEN not in text, text[:2000]


def test_feedback_needs_the_token_when_one_is_set_and_is_refused_without_one_under_live_promotion(
        app, client, monkeypatch):
    """POST /feedback can drive a live promotion: it is the one write an HTTP client can make."""
    body = {"request_id": "not-a-logged-request", "label": 1}
    settings = app.config["MLOPS_SETTINGS"]
    monkeypatch.setitem(app.config, "MLOPS_SETTINGS", settings.replace(feedback_token=TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.post("/feedback", json=body, headers=headers)
        assert response.status_code == 401 and response.get_json()["field"] == "Authorization"
        assert TOKEN not in response.get_data(as_text=True)
    response = client.post("/feedback", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404  # past the token check: the request id is unknown
    monkeypatch.setitem(app.config, "MLOPS_SETTINGS", settings.replace(ab_promote=True))
    response = client.post("/feedback", json=body)
    assert response.status_code == 403 and "MLOPS_FEEDBACK_TOKEN" in response.get_json()["message"]
