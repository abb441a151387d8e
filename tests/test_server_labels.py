"""Labels of any kind through the HTTP API, in-process: words, booleans and integers, two classes and ten.

Four small PyCaret pipelines registered once for the module (one registry): iris' versicolor/virginica
(strings, "virginica" positive), iris' three species (strings), "is it virginica" (booleans) and load_digits'
ten digits (integers). Answers equal the registered pipeline's own ``predict``/``predict_proba``; the JSON
shape, /openapi.json, /feedback and the live A/B follow each arm's labels.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _registries import FakeRegistry

from mlops_core.config import Settings
from mlops_core.inference.predictors import to_frame
from mlops_core.labels import Labels, canonical
from mlops_core.registry import Registry
from server import create_app

pytestmark = pytest.mark.slow  # trains four PyCaret pipelines

TOKEN = "labels-feedback-token"
IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
WORDS, SPECIES, FLAGS, DIGITS = "1", "2", "3", "4"  # the versions registered below


def _tables() -> dict[str, tuple]:
    """(frame, target, positive label setting) of each version."""
    from sklearn.datasets import load_digits, load_iris

    iris = load_iris(as_frame=True)
    x = iris.data.set_axis(IRIS, axis=1)
    species = np.array(iris.target_names)[iris.target]
    three = x.assign(species=species)
    digits = load_digits(as_frame=True)
    pixels = digits.data.iloc[:400].set_axis([f"p{i}" for i in range(64)], axis=1)
    return {WORDS: (three[three.species != "setosa"].reset_index(drop=True), "species", "virginica"),
            SPECIES: (three, "species", None),
            FLAGS: (x.assign(virginica=species == "virginica"), "virginica", None),
            DIGITS: (pixels.assign(digit=digits.target.iloc[:400].to_numpy()), "digit", None)}


def _fit(frame, target: str):
    """A small PyCaret pipeline: one model, fitted on every row."""
    from mlops_core.training import import_pycaret_classification

    exp = import_pycaret_classification().ClassificationExperiment()
    exp.setup(frame, target=target, fold=2, session_id=0, verbose=False, html=False, n_jobs=1, memory=False,
              system_log=False)
    return exp.finalize_model(exp.create_model("lr", cross_validation=False, verbose=False))


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A registry holding the four versions, each logged with its labels as the chain logs them; and the rows."""
    home = tmp_path_factory.mktemp("labels") / "home"
    settings = Settings(home=home, model_name="labels", experiment="labels", feedback_token=TOKEN,
                        ab_feedback_wait=0.3, ab_min_labels=5)
    registry = Registry(settings)
    rows = {}
    for expected, (frame, target, positive) in _tables().items():
        labels = Labels.of(canonical(frame[target]).tolist(), positive, target=target)
        x = frame.drop(columns=[target])
        run_id = registry.create_run(f"labels-{target}")
        uri = registry.log_model(run_id, _fit(frame, target), x.head(5), metadata=labels.tags())
        assert registry.register(uri, {"mlops.source": "test"}) == expected
        registry.finish_run(run_id, ok=True)
        rows[expected] = (x.to_dict(orient="records"), frame[target].tolist())
    return settings, registry, rows


def _app(registered, tmp_path, aliases: dict[str, str], **changes):
    settings, registry, _ = registered
    settings = settings.replace(ab_store_url=f"sqlite:///{tmp_path / 'predictions.db'}", **changes)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_AUTOSTART": False,
                      "MLOPS_REGISTRY": FakeRegistry(registry, aliases)})
    assert app.extensions["mlops_store"].refresh().error is None
    app.extensions["mlops_ab"].start()
    return app


@pytest.fixture
def apps(registered, tmp_path):
    """make(aliases, **settings): apps over the module's registry, each with its own prediction store."""
    made = []

    def make(aliases: dict[str, str], **changes):
        made.append(_app(registered, tmp_path / str(len(made)), aliases, **changes))
        client = made[-1].test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
        return made[-1], client

    yield make
    for app in made:
        app.extensions["mlops_ab"].stop()


def _predict(client, user_id: int, rows) -> dict:
    response = client.post("/predict", json={"user_id": user_id, "features": rows})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _expected(registry: Registry, version: str, rows: list[dict]) -> tuple[list, list, Labels]:
    """The registered pipeline's own answer: its labels as Python values, its probabilities, its classes."""
    loaded = registry.load_model(version)
    frame = to_frame(rows, loaded)
    labels = loaded.labels
    predictions = [p.item() if hasattr(p, "item") else p for p in loaded.model.predict(frame)]
    proba = loaded.model.predict_proba(frame)
    if not labels.multiclass:
        proba = proba[:, list(labels.classes).index(labels.positive)]
    return predictions, proba.tolist(), labels


def _same(answer: dict, expected: tuple[list, list, Labels]) -> None:
    predictions, proba, labels = expected
    assert answer["predictions"] == predictions
    assert [type(p) for p in answer["predictions"]] == [type(p) for p in predictions]  # "1" is not 1, True not 1
    if labels.multiclass:
        assert answer["classes"] == list(labels.classes)
        assert np.allclose(answer["probabilities"], proba, atol=1e-6)
    else:
        assert "classes" not in answer
        assert answer["probabilities"] == pytest.approx(proba, abs=1e-6)


# -- answers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fastpath", ["pipeline", "compiled"])
def test_each_arm_answers_its_own_labels_as_its_pipeline_does(registered, apps, fastpath):
    """Production two word classes (the positive class's probability), Staging three (classes and one list per
    row); a batch and a single row."""
    _, registry, rows = registered
    _, client = apps({"production": WORDS, "staging": SPECIES}, fastpath=fastpath)
    batch = rows[SPECIES][0][::5]
    binary = _predict(client, 2, batch)
    assert (binary["version"], set(binary["predictions"])) == (WORDS, {"versicolor", "virginica"})
    _same(binary, _expected(registry, WORDS, batch))
    multi = _predict(client, 3, batch)
    assert multi["version"] == SPECIES and multi["classes"] == ["setosa", "versicolor", "virginica"]
    assert list(multi)[:3] == ["predictions", "probabilities", "classes"]
    assert all(len(p) == 3 and sum(p) == pytest.approx(1, abs=1e-5) for p in multi["probabilities"])
    _same(multi, _expected(registry, SPECIES, batch))
    one = _predict(client, 5, batch[0])
    assert len(one["predictions"]) == 1 and len(one["probabilities"]) == 1 and len(one["probabilities"][0]) == 3


@pytest.mark.parametrize("fastpath", ["pipeline", "compiled"])
def test_boolean_labels_stay_booleans(registered, apps, fastpath):
    _, registry, rows = registered
    _, client = apps({"production": FLAGS}, fastpath=fastpath)
    batch = rows[FLAGS][0][::3]
    answer = _predict(client, 2, batch)
    assert set(answer["predictions"]) == {True, False} and "classes" not in answer
    _same(answer, _expected(registry, FLAGS, batch))


@pytest.mark.parametrize("fastpath", ["pipeline", "compiled"])
def test_ten_integer_classes(registered, apps, fastpath):
    _, registry, rows = registered
    _, client = apps({"production": DIGITS}, fastpath=fastpath)
    batch = rows[DIGITS][0][:40]
    answer = _predict(client, 2, batch)
    assert answer["classes"] == list(range(10)) and all(len(p) == 10 for p in answer["probabilities"])
    _same(answer, _expected(registry, DIGITS, batch))


def test_micro_batched_requests_each_get_their_own_rows_of_either_shape(registered, apps):
    """Concurrent requests share one predict call per arm; each answer is its own rows' (lists per row too)."""
    _, registry, rows = registered
    app, _ = apps({"production": WORDS, "staging": SPECIES}, batch_wait_ms="20", fastpath="pipeline")
    batches = [rows[SPECIES][0][i::17][:1 + i % 4] for i in range(12)]
    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        answers[i] = _predict(app.test_client(), i, batches[i])  # even users: two classes, odd: three

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == list(range(len(batches)))
    for i, answer in answers.items():
        _same(answer, _expected(registry, SPECIES if i % 2 else WORDS, batches[i]))


# -- the published contract ---------------------------------------------------------------------------------------
def _answer_schema(client) -> dict:
    doc = client.get("/openapi.json").get_json()
    return doc, doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_openapi_describes_each_arms_answer_and_label(apps, registered):
    from jsonschema import Draft202012Validator

    _, _, rows = registered
    _, client = apps({"production": WORDS, "staging": SPECIES})
    doc, schema = _answer_schema(client)
    binary, multi = schema["anyOf"]
    assert binary["properties"]["predictions"]["items"] == {"type": "string", "enum": ["versicolor", "virginica"]}
    assert "'virginica'" in binary["properties"]["probabilities"]["items"]["description"]
    assert binary["properties"]["probabilities"]["items"]["type"] == ["number", "null"]
    assert "classes" not in binary["properties"] and "classes" in multi["required"]
    assert multi["properties"]["classes"]["const"] == ["setosa", "versicolor", "virginica"]
    assert multi["properties"]["probabilities"]["items"]["minItems"] == 3
    label = doc["components"]["schemas"]["Label"]["properties"]["label"]
    assert label["anyOf"][0] == {"enum": ["versicolor", "virginica", "setosa"]}  # both arms' classes
    even, odd = (_predict(client, u, rows[SPECIES][0][:3]) for u in (2, 3))
    assert Draft202012Validator(binary).is_valid(even) and not Draft202012Validator(multi).is_valid(even)
    assert Draft202012Validator(multi).is_valid(odd) and not Draft202012Validator(binary).is_valid(odd)

    _, client = apps({"production": FLAGS})
    doc, schema = _answer_schema(client)
    assert schema["properties"]["predictions"]["items"] == {"type": "boolean", "enum": [False, True]}
    assert doc["components"]["schemas"]["Label"]["properties"]["label"]["anyOf"][0] == {"enum": [False, True]}
    assert Draft202012Validator(schema).is_valid(_predict(client, 2, rows[FLAGS][0][:3]))

    _, client = apps({"production": DIGITS})
    doc, schema = _answer_schema(client)
    assert schema["properties"]["predictions"]["items"] == {"type": "integer", "enum": list(range(10))}
    assert schema["properties"]["probabilities"]["items"]["maxItems"] == 10
    assert doc["components"]["schemas"]["Label"]["properties"]["label"]["anyOf"][0] == {"enum": list(range(10))}
    assert set(doc["components"]["schemas"]["Row"]["required"]) == {f"p{i}" for i in range(64)}
    assert Draft202012Validator(schema).is_valid(_predict(client, 2, rows[DIGITS][0][:3]))


# -- feedback and the live A/B ------------------------------------------------------------------------------------
def _feedback(client, request_id: str, label):
    return client.post("/feedback", json={"request_id": request_id, "label": label})


def test_feedback_takes_the_datas_labels_and_names_the_classes_of_a_bad_one(apps, registered):
    _, _, rows = registered
    _, client = apps({"production": WORDS, "staging": SPECIES})
    two = _predict(client, 2, rows[SPECIES][0][:4])["request_ids"]
    three = _predict(client, 3, rows[SPECIES][0][:4])["request_ids"]
    bad = _feedback(client, two[0], "setosa")  # a class of Staging's version, not of the one that answered
    answer = bad.get_json()
    assert (bad.status_code, answer["field"], answer["classes"]) == (400, "label", ["versicolor", "virginica"])
    assert "'setosa' is not one of the classes of version 1 ('versicolor', 'virginica')" in answer["message"]
    assert _feedback(client, three[0], "setosa").status_code == 201
    assert _feedback(client, two[0], " virginica").status_code == 201
    assert _feedback(client, two[1], 1).status_code == 400

    _, client = apps({"production": DIGITS})
    ids = _predict(client, 2, rows[DIGITS][0][:4])["request_ids"]
    assert [_feedback(client, i, y).status_code for i, y in zip(ids, (3, "3", 3.0, "11"))] == [201, 201, 201, 400]
    bad = _feedback(client, ids[3], True).get_json()
    assert bad["classes"] == list(range(10)) and "label True is not one of the classes" in bad["message"]

    _, client = apps({"production": FLAGS})
    ids = _predict(client, 2, rows[FLAGS][0][:3])["request_ids"]
    assert [_feedback(client, i, y).status_code for i, y in zip(ids, (True, "false", 1))] == [201, 201, 400]


@pytest.mark.parametrize(("version", "labels"), [
    (WORDS, ["virginica", " versicolor\t", "\u2003virginica", "setosa", "Virginica", "virginica!", "", 1, True,
             None]),
    (FLAGS, [True, False, "true", " TRUE ", "False", "yes", 1, 0, "1", 1.5, ["true"]]),
    (DIGITS, [3, 9, 3.0, "3", " 07 ", "+2", "-0", "4.", "1.00", "11", 10, -1, "3.5", 3.5, "three", True, "1e0x"]),
])
def test_feedback_accepts_exactly_the_labels_its_schema_describes(apps, registered, version, labels):
    """Schema-valid labels are stored (201), schema-invalid ones refused (400): what a contract checker such as
    schemathesis expects of every label it sends for a request id it found."""
    from jsonschema import Draft202012Validator

    _, _, rows = registered
    _, client = apps({"production": version})
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["Label"]
    valid = Draft202012Validator(schema)
    ids = _predict(client, 2, rows[version][0][:len(labels)])["request_ids"]
    for request_id, label in zip(ids, labels):
        status = _feedback(client, request_id, label).status_code
        assert status == (201 if valid.is_valid({"request_id": request_id, "label": label}) else 400), label


def test_live_ab_accuracy_for_word_labels(apps, registered):
    """Every row a request of its own, labelled with the true species: each arm's accuracy is its share of
    predictions equal to the label, in /ab/report and in the sequential comparison."""
    _, _, rows = registered
    _, client = apps({"production": WORDS, "staging": SPECIES})
    features, truth = rows[WORDS]  # versicolor and virginica: labels both arms know
    other = {"versicolor": "virginica", "virginica": "versicolor"}
    right = {"Production": [], "Staging": []}
    for user, i in enumerate(range(0, len(features), 2), start=1):  # Staging first: both arms over one period
        label = other[truth[i]] if user % 5 == 0 else truth[i]  # some labels the other way: some wrong answers
        answer = _predict(client, user, features[i])
        assert _feedback(client, answer["request_id"], label).status_code == 201
        right[answer["stage"]].append(answer["predictions"][0] == label)
    assert all(0 < sum(hits) < len(hits) for hits in right.values())
    report = client.get("/ab/report").get_json()
    by = {g["arm"]: g for g in report["groups"]}
    for arm, hits in right.items():
        assert (by[arm]["labelled"], by[arm]["correct"]) == (len(hits), sum(hits))
        assert by[arm]["accuracy"] == pytest.approx(sum(hits) / len(hits), abs=1e-6)
    comparison = report["comparison"]
    assert comparison["production_accuracy"] == pytest.approx(np.mean(right["Production"]), abs=1e-6)
    assert comparison["staging_accuracy"] == pytest.approx(np.mean(right["Staging"]), abs=1e-6)
    assert comparison["difference"] == pytest.approx(np.mean(right["Staging"]) - np.mean(right["Production"]),
                                                     abs=1e-6)
    assert comparison["verdict"] in ("keep_collecting", "staging_better", "staging_worse")
