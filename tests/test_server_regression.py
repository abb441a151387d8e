"""Regression through the HTTP API, in-process: numbers to predict, true values as feedback, the live A/B on
mean absolute error.

One PyCaret regression experiment on scikit-learn's bundled diabetes table (442 rows), two fast models (lr,
dt) registered once for the module the way the chain registers a regression (MLflow model metadata
``task: regression``), and a plain scikit-learn classifier on the same columns for the mixed case. Answers
equal the registered pipeline's own ``predict``; the JSON shape, /openapi.json, /feedback, /ab/report and a
live decision follow each arm's task.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from _registries import FakeRegistry

from mlops_core.config import Settings
from mlops_core.inference.predictors import to_frame
from mlops_core.labels import Labels
from mlops_core.registry import Registry
from server import create_app

pytestmark = pytest.mark.slow  # trains two PyCaret pipelines

TOKEN = "regression-feedback-token"
LR, DT, CLASSIFIER = "1", "2", "3"  # the versions registered below
TASK = {"task": "regression"}


def _regressors(frame):
    """PyCaret's lr and dt pipelines on ``frame`` (target ``target``), fitted on its training split: one setup."""
    from pycaret.regression import RegressionExperiment

    exp = RegressionExperiment()
    exp.setup(frame, target="target", fold=2, session_id=0, verbose=False, html=False, n_jobs=1, memory=False,
              system_log=False)
    return [exp.create_model(m, cross_validation=False, verbose=False) for m in ("lr", "dt")]


def _classifier(x, y):
    """A scikit-learn classifier on the same columns: is the disease measure above its median (0/1)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([("impute", SimpleImputer()), ("lr", LogisticRegression(max_iter=500))]).fit(x, y)


@pytest.fixture(scope="module")
def registered(bootstrapped, tmp_path_factory):
    """A registry holding lr (1) and dt (2), regressions, and a classifier (3); the rows, true values, and each
    version's own ``predict`` (the reference every answer is checked on). The registry is a copy of the
    session's (an MLflow store that exists already: creating one costs seconds), under a model name of its own."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    x = frame.drop(columns=["target"])
    home = tmp_path_factory.mktemp("regression") / "home"
    shutil.copytree(bootstrapped.home, home)
    settings = Settings(home=home, model_name="diabetes", experiment="diabetes", feedback_token=TOKEN,
                        ab_feedback_wait=0.3, ab_min_labels=20)
    registry = Registry(settings)
    high = (frame["target"] > frame["target"].median()).astype(int)
    labels = Labels.of(high.tolist(), None, target="high")
    models = [*((m, TASK) for m in _regressors(frame)), (_classifier(x, high), labels.tags())]
    for expected, (model, metadata) in zip((LR, DT, CLASSIFIER), models):
        run_id = registry.create_run(f"diabetes-{expected}")
        uri = registry.log_model(run_id, model, x.head(5), metadata=metadata)
        assert registry.register(uri, {"mlops.source": "test"}) == expected
        registry.finish_run(run_id, ok=True)
    loaded = {v: registry.load_model(v) for v in (LR, DT)}
    assert all(m.task == "regression" and m.labels is None for m in loaded.values())

    def predict(version: str, rows: list[dict]) -> list[float]:
        return loaded[version].model.predict(to_frame(rows, loaded[version])).tolist()

    return settings, registry, x.to_dict(orient="records"), frame["target"].tolist(), predict


@pytest.fixture
def apps(registered, tmp_path):
    """make(aliases, **settings): an app over the module's registry with its own prediction store, and a client
    sending the feedback token."""
    made = []

    def make(aliases: dict[str, str], **changes):
        settings, registry, *_ = registered
        settings = settings.replace(ab_store_url=f"sqlite:///{tmp_path / f'predictions{len(made)}.db'}", **changes)
        app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_AUTOSTART": False,
                          "MLOPS_REGISTRY": FakeRegistry(registry, aliases)})
        assert app.extensions["mlops_store"].refresh().error is None
        app.extensions["mlops_ab"].start()
        made.append(app)
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
        return app, client

    yield make
    for app in made:
        app.extensions["mlops_ab"].stop()


def _predict(client, user_id: int, features) -> dict:
    response = client.post("/predict", json={"user_id": user_id, "features": features})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# -- answers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fastpath", ["pipeline", "compiled"])
def test_each_arm_answers_its_pipelines_numbers_and_no_probabilities(registered, apps, fastpath):
    """Compiled serving too: a regression the compiled path cannot serve yet is served by its pipeline."""
    _, _, rows, _, predict = registered
    _, client = apps({"production": LR, "staging": DT}, fastpath=fastpath)
    batch = rows[::23]
    for user, version in ((2, LR), (3, DT)):
        answer = _predict(client, user, batch)
        assert list(answer) == ["predictions", "stage", "version", "model", "requested_stage", "fallback",
                                "request_id", "request_ids"]  # no probabilities, no classes
        assert answer["version"] == version and all(type(p) is float for p in answer["predictions"])
        assert answer["predictions"] == pytest.approx(predict(version, batch), rel=1e-6, abs=1e-6)
    one = _predict(client, 5, rows[7])
    assert one["predictions"] == pytest.approx(predict(DT, [rows[7]]), rel=1e-6) and "request_ids" not in one
    assert predict(LR, batch) != pytest.approx(predict(DT, batch))  # the arms really differ
    models = client.get("/models").get_json()
    assert (models["production"]["task"], models["staging"]["task"]) == ("regression", "regression")


def test_a_classifier_beside_a_regression_answers_each_its_own_shape(registered, apps):
    """Not a set-up the chain makes (one task a model name), but nothing breaks: each arm answers, takes
    feedback and is reported by its own task, and the arms are not compared."""
    _, _, rows, truth, _ = registered
    _, client = apps({"production": CLASSIFIER, "staging": LR}, fastpath="pipeline")
    even, odd = _predict(client, 2, rows[:3]), _predict(client, 3, rows[:3])
    assert set(even["predictions"]) <= {0, 1} and len(even["probabilities"]) == 3
    assert all(type(p) is float for p in odd["predictions"]) and "probabilities" not in odd
    assert [_feedback(client, i, y).status_code for i, y in zip(odd["request_ids"], (truth[0], 1, "1"))] == \
        [201, 201, 400]
    bad = _feedback(client, even["request_ids"][0], truth[0]).get_json()  # a number is no class
    assert bad["field"] == "label" and bad["classes"] == [0, 1]
    assert _feedback(client, even["request_ids"][1], "1").status_code == 201
    report = client.get("/ab/report").get_json()
    assert {g["version"]: g["task"] for g in report["groups"]} == {CLASSIFIER: "classification", LR: "regression"}
    comparison = report["comparison"]
    assert comparison["verdict"] == "nothing_to_compare" and "different tasks" in comparison["reason"]


# -- the published contract ---------------------------------------------------------------------------------------
def _answer_schema(client) -> tuple[dict, dict]:
    doc = client.get("/openapi.json").get_json()
    return doc, doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_openapi_describes_numbers_per_arm(registered, apps):
    from jsonschema import Draft202012Validator

    _, _, rows, _, _ = registered
    _, client = apps({"production": LR, "staging": DT})
    doc, schema = _answer_schema(client)
    assert schema["properties"]["predictions"]["items"]["type"] == ["number", "null"]
    assert schema["properties"]["probabilities"]["not"] == {} and "probabilities" not in schema["required"]
    label = doc["components"]["schemas"]["Label"]["properties"]["label"]
    assert (label["type"], label["maximum"], label["minimum"]) == ("number", 3.4028234663852886e38,
                                                                  -3.4028234663852886e38)
    assert set(doc["components"]["schemas"]["Row"]["required"]) == set(rows[0])
    validator = Draft202012Validator(schema)
    answers = [_predict(client, u, rows[:2]) for u in (2, 3)]
    assert all(validator.is_valid(a) for a in answers)
    assert not validator.is_valid({**answers[0], "probabilities": [0.5, 0.5]})
    assert not validator.is_valid({**answers[0], "predictions": ["151.0", 3.0]})

    _, client = apps({"production": CLASSIFIER, "staging": LR}, fastpath="pipeline")
    doc, schema = _answer_schema(client)
    classes, numbers = schema["anyOf"]
    assert classes["properties"]["predictions"]["items"] == {"type": "integer", "enum": [0, 1]}
    assert numbers["properties"]["probabilities"]["not"] == {}
    even, odd = _predict(client, 2, rows[:2]), _predict(client, 3, rows[:2])
    assert Draft202012Validator(classes).is_valid(even) and not Draft202012Validator(numbers).is_valid(even)
    assert Draft202012Validator(numbers).is_valid(odd) and not Draft202012Validator(classes).is_valid(odd)
    label = doc["components"]["schemas"]["Label"]["properties"]["label"]
    assert label["anyOf"][0] == {"enum": [0, 1]} and label["anyOf"][-1]["type"] == "number"


# -- feedback -----------------------------------------------------------------------------------------------------
def _feedback(client, request_id: str, label):
    return client.post("/feedback", json={"request_id": request_id, "label": label})


def test_feedback_takes_the_true_value_and_names_a_bad_one(registered, apps):
    """A JSON number, stored as one beside the predicted value; text, booleans, null, numbers beyond float32's
    range are a 400 naming the label, exactly as the Label schema says (201 if and only if it is valid)."""
    from jsonschema import Draft202012Validator

    _, _, rows, truth, _ = registered
    app, client = apps({"production": LR})
    schema = Draft202012Validator(client.get("/openapi.json").get_json()["components"]["schemas"]["Label"])
    labels = [truth[0], 151, -2.5, 0, 3.4028234663852886e38, "151.0", "151", True, None, 1e39, 10 ** 400, [151.0],
              {"value": 1}]
    answer = _predict(client, 2, rows[:len(labels)])
    for i, (request_id, label) in enumerate(zip(answer["request_ids"], labels)):
        response = _feedback(client, request_id, label)
        valid = schema.is_valid({"request_id": request_id, "label": label})
        assert response.status_code == (201 if valid else 400), (label, response.get_json())
        assert valid == (i < 5), label
        if not valid:
            assert response.get_json()["field"] == "label" and "classes" not in response.get_json()
    bad = _feedback(client, answer["request_ids"][5], "151.0").get_json()["message"]
    assert "expected the true value of version 1's prediction (a regression), a finite number, got text" in bad
    missing = client.post("/feedback", json={"request_id": answer["request_ids"][5]}).get_json()
    assert missing["field"] == "label" and "true value" in missing["message"]
    more = _predict(client, 4, rows[20:22])["request_ids"]
    both = client.post("/feedback", json={"feedback": [{"request_id": more[0], "label": 10.5},
                                                       {"request_id": more[1], "label": "ten"}]})
    assert (both.status_code, both.get_json()["field"]) == (400, "feedback[1].label")  # and nothing stored
    assert client.post("/feedback", json={"feedback": [{"request_id": i, "label": 10.5} for i in more]}
                       ).status_code == 201
    with app.extensions["mlops_ab"].store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT p.prediction_value, f.label_value FROM predictions p JOIN feedback f "
                                      "ON f.request_id = p.request_id WHERE p.request_id = ?",
                                      (answer["request_ids"][2],)).one()
    assert stored == (answer["predictions"][2], -2.5)


# -- the live A/B -------------------------------------------------------------------------------------------------
def _t_interval(totals: list[float], sizes: list[int]) -> list[float]:
    """The 95% interval of sum(totals) / sum(sizes) over requests, by hand (Student t, k - 1 df)."""
    from scipy.stats import t

    k, rows = len(totals), sum(sizes)
    r = sum(totals) / rows
    half = t.ppf(0.975, k - 1) * math.sqrt(k / (k - 1) * sum((a - r * m) ** 2 for a, m in zip(totals, sizes))) / rows
    return [max(0.0, r - half), r + half]


def test_live_ab_on_mean_absolute_error_reports_and_promotes(registered, apps):
    """Simulated true values: Production's answers off by N(0, 40), Staging's by N(0, 8). /ab/report's per-arm
    MAE, RMSE and intervals equal a direct computation on the answers and the true values (a batch request
    counts once); the sequential test finds Staging better, and the live decision promotes it."""
    from mlops_core.live import decide_live

    settings, registry, rows, _, _ = registered
    app, client = apps({"production": LR, "staging": DT}, ab_min_effect=0.5)  # tuned to large differences
    rng = np.random.default_rng(7)
    requests = {"Production": [], "Staging": []}  # per request: (|errors|, squared errors)
    labels = []
    answers = [_predict(client, user, rows[user]) for user in range(1, 81)]
    answers.append(_predict(client, 2, rows[100:105]))  # a batch request: one observation of Production
    for answer in answers:
        ids = answer.get("request_ids", [answer["request_id"]])
        sd = 40.0 if answer["stage"] == "Production" else 8.0
        truth = [p + float(rng.normal(0, sd)) for p in answer["predictions"]]
        labels += [{"request_id": i, "label": y} for i, y in zip(ids, truth)]
        errors = np.subtract(truth, answer["predictions"])
        requests[answer["stage"]].append((np.abs(errors).tolist(), np.square(errors).tolist()))
    assert client.post("/feedback", json={"feedback": labels}).status_code == 201
    report = client.get("/ab/report").get_json()
    by = {g["arm"]: g for g in report["groups"]}
    for arm, seen in requests.items():
        absolute = [sum(a) for a, _ in seen]
        squared = [sum(q) for _, q in seen]
        sizes = [len(a) for a, _ in seen]
        group = by[arm]
        assert (group["task"], group["labelled"], group["accuracy"]) == ("regression", sum(sizes), None)
        assert group["mae"] == pytest.approx(sum(absolute) / sum(sizes), abs=1e-6)
        assert group["rmse"] == pytest.approx(math.sqrt(sum(squared) / sum(sizes)), abs=1e-6)
        assert group["mae_ci95"] == pytest.approx(_t_interval(absolute, sizes), abs=1e-6)
        assert group["rmse_ci95"] == pytest.approx([math.sqrt(v) for v in _t_interval(squared, sizes)], abs=1e-6)
    c = report["comparison"]
    per_request = {arm: np.mean([np.mean(a) for a, _ in seen]) for arm, seen in requests.items()}
    assert (c["metric"], c["lower_is_better"], c["production_requests"], c["staging_requests"]) == \
        ("mae", True, len(requests["Production"]), len(requests["Staging"]))
    assert c["difference"] == pytest.approx(per_request["Staging"] - per_request["Production"], abs=1e-6)
    assert c["production_mae"] == pytest.approx(by["Production"]["mae"], abs=1e-6)
    assert (c["verdict"], c["action"], c["decision_allowed"]) == ("staging_better", "promote", False)
    assert c["p_value"] < settings.ab_alpha and c["cs_high"] < 0

    registry.set_alias("production", LR)
    registry.set_alias("staging", DT)
    decided = decide_live(settings.replace(ab_min_effect=0.5), promote=True, registry=registry,
                          store=app.extensions["mlops_ab"].store)
    assert (decided["status"], decided["version"], decided["production"]) == ("promoted", DT, DT)
    tags = registry.describe(DT)["tags"]
    assert (tags["decision"], tags["decision_source"], tags["live_metric"]) == ("promoted", "live_ab", "mae")
    assert float(tags["live_mae_candidate"]) == pytest.approx(c["staging_mae"]) and "live_rmse_production" in tags
    assert float(tags["live_p_value"]) == pytest.approx(c["p_value"])
