"""Labels of any kind: words, booleans, integers, two classes or more, from the CSV to the registered version.

The unit tests pin the one label form, the positive class and the refusals; the chain tests run the whole chain
(bootstrap, drift, training, judgement, registration) on four data sets that are not Titanic's 0/1 label: a
string binary one, a boolean one, a three-class one with a class Production never saw, and a ten-class one.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_core.config import Settings
from mlops_core.data import apply_concept, atomic_write_csv, load_titanic, make_datasets, validate_frame
from mlops_core.errors import DataValidationError, SettingsError
from mlops_core.evidence import compare
from mlops_core.labels import Labels, canonical, label_key, pipeline_classes, task_labels
from mlops_core.pipeline import run
from mlops_core.registry import Registry

QUICK = {"models": ("dt",), "fold": 2}


# --- the one form, the positive class, the refusals ---------------------------------------------------------------

def test_one_class_whatever_its_spelling_and_missing_labels_stay_missing():
    assert canonical(pd.Series([1, "1", " 0 ", None, 1.0], dtype=object)).tolist()[:3] == [1, 1, 0]
    assert pd.isna(canonical(pd.Series([1, None], dtype=object)).iloc[1])
    assert canonical(pd.Series(["True", "false", "TRUE"])).tolist() == [True, False, True]
    assert canonical(pd.Series([" yes", "no "])).tolist() == ["yes", "no"]
    assert canonical(pd.Series([0.0, 2.0])).tolist() == [0, 2] and canonical(pd.Series([0.5])).tolist() == [0.5]
    assert label_key(1) == label_key("1") == label_key(1.0) == label_key(np.int64(1)) == "1"
    assert label_key(True) == label_key("true") == "true" and label_key(">50K") == ">50K"


def test_the_positive_class_is_the_setting_else_the_one_reading_true_else_the_run_is_refused():
    settings = Settings(home="/tmp/unused", target="income", features=("a",), drift_features=("a",))
    assert Labels.of(["no", "yes"], None, target="t").positive == "yes"
    assert Labels.of([False, True], None, target="t").positive is True
    assert Labels.of([0, 1], None, target="t").positive == 1
    assert Labels.of(["<=50K", ">50K"], ">50K", target="t") == Labels(("<=50K", ">50K"), ">50K")
    assert Labels.of([0, 1], "0", target="t").positive == 0  # the setting names a class by its text
    with pytest.raises(SettingsError) as info:
        task_labels(["<=50K", ">50K", "<=50K"], settings)
    assert "'<=50K', '>50K'" in str(info.value) and "MLOPS_POSITIVE_LABEL" in str(info.value)
    with pytest.raises(SettingsError, match="MLOPS_POSITIVE_LABEL='maybe' is not one of"):
        task_labels(["no", "yes"], Settings(home="/tmp/unused", positive_label="maybe"))
    with pytest.raises(SettingsError, match="MLOPS_PROMOTION_METRIC=auc needs two classes"):
        task_labels(["a", "b", "c"], Settings(home="/tmp/unused", promotion_metric="auc"))
    assert task_labels(["a", "b", "c", None], settings).multiclass


def test_bad_label_columns_are_refused_with_what_is_wrong():
    settings = Settings(home="/tmp/unused")
    frame = load_titanic()[[*settings.features, settings.target]].head(120).reset_index(drop=True)

    def problem(labels) -> str:
        with pytest.raises(DataValidationError) as info:
            validate_frame(frame.assign(survived=labels), settings)
        return str(info.value)

    assert "single class (1)" in problem(1)
    many = problem([f"id-{i}" for i in range(len(frame))])
    assert "120 distinct values, more than MLOPS_MAX_CLASSES=50" in many and "an id or a number" in many
    assert "looks like a number to predict: set MLOPS_TASK=regression" in problem(np.linspace(0, 1, len(frame)))
    assert "has no values" in problem(np.nan)


def test_mixed_spellings_are_one_class_and_unlabelled_rows_are_kept_for_drift():
    settings = Settings(home="/tmp/unused")
    frame = load_titanic()[[*settings.features, settings.target]].head(40).reset_index(drop=True)
    labels = frame.survived.astype(object)
    labels[::4] = labels[::4].astype(str)  # "1" beside 1: one class
    labels[1] = None
    out = validate_frame(frame.assign(survived=labels), settings)
    assert len(out) == 40 and pd.isna(out.survived[1])
    assert set(out.survived.dropna()) == {0, 1} and {type(v) for v in out.survived.dropna()} == {int}


def test_macro_metrics_of_the_evidence_are_scikit_learns():
    from sklearn.metrics import f1_score, recall_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    good = np.where(rng.random(400) < 0.8, y, rng.integers(0, 4, 400))
    poor = np.where(rng.random(400) < 0.5, y, rng.integers(0, 4, 400))
    f1 = compare("f1", y, good, poor, n_classes=4)
    assert f1.metric == "f1_macro" and f1.test == "paired_bootstrap"
    assert f1.candidate == pytest.approx(f1_score(y, good, average="macro"))
    assert f1.baseline == pytest.approx(f1_score(y, poor, average="macro"))
    assert f1.p_value < 0.01 < f1.p_worse and f1.ci_low > 0
    recall = compare("recall", y, poor, good, n_classes=4)
    assert recall.candidate == pytest.approx(recall_score(y, poor, average="macro")) and recall.p_worse < 0.01
    assert compare("accuracy", y, good, poor, n_classes=4).test == "mcnemar_exact"


def test_a_changed_rule_moves_each_class_to_the_next():
    frame = pd.DataFrame({"x": np.arange(9.0), "y": ["a", "b", "c"] * 3})
    out = apply_concept(frame, 1.0, target="y", column="x")
    assert out.y.tolist() == ["b", "c", "a"] * 3


# --- through the chain --------------------------------------------------------------------------------------------

def _titanic_home(tmp_path, **settings) -> Settings:
    s = Settings(home=tmp_path / "home", **{**QUICK, **settings})
    make_datasets(s, drift=1.0, seed=3)
    return s


def _relabel(path, target: str, mapping) -> None:
    frame = pd.read_csv(path)
    atomic_write_csv(frame.assign(**{target: frame[target].map(mapping)}), path)


def _digits_home(tmp_path) -> Settings:
    """scikit-learn's handwritten digits (ten classes, 64 pixel columns): the batch is drawn brighter."""
    from sklearn.datasets import load_digits

    data = load_digits(as_frame=True)
    frame = data.frame.rename(columns={"target": "digit"}).sample(900, random_state=0).reset_index(drop=True)
    pixels = [c for c in frame.columns if c != "digit"]
    s = Settings(home=tmp_path / "home", target="digit", features=tuple(pixels),
                 drift_features=("pixel_2_3", "pixel_5_4"), **QUICK)
    s.data_dir.mkdir(parents=True)
    atomic_write_csv(frame.iloc[:450], s.train_csv)
    batch = frame.iloc[450:].copy()
    batch[pixels] = (batch[pixels] * 1.6 + 2).round(2)
    atomic_write_csv(batch, s.current_csv)
    return s


def _chained(s: Settings):
    result = run(s)
    assert result.bootstrapped == "1", result.reason
    assert result.drift["drift"] and result.version == "2", result.reason
    assert result.status in ("promoted", "staged", "archived") and result.evidence["vs_production"]["rows"] > 0
    registry = Registry(s)
    return result, registry, registry.load_model("2"), registry.describe("2")["tags"]


def _answers_are_labels_of_the_data(model, frame: pd.DataFrame, classes: list) -> None:
    predicted = model.model.predict(frame[model.columns].head(50))
    assert {label_key(v) for v in predicted} <= {label_key(c) for c in classes}
    assert model.model.predict_proba(frame[model.columns].head(5)).shape == (5, len(classes))


@pytest.mark.slow
def test_string_labels_with_a_named_positive_class_through_the_chain(tmp_path):
    s = _titanic_home(tmp_path, target="sex", positive_label="female",
                      features=("pclass", "age", "fare", "sibsp", "parch", "embarked", "survived"),
                      promotion_metric="f1")
    result, registry, model, tags = _chained(s)
    assert json.loads(tags["classes"]) == ["female", "male"] and json.loads(tags["positive_label"]) == "female"
    assert model.labels == Labels(("female", "male"), "female")
    assert result.evidence["vs_production"]["metric"] == "f1"  # the positive class's F1, not a macro one
    _answers_are_labels_of_the_data(model, pd.read_csv(s.current_csv), ["female", "male"])
    assert all(isinstance(v, str) for v in model.model.predict(pd.read_csv(s.current_csv)[model.columns].head(9)))


@pytest.mark.slow
def test_boolean_labels_through_the_chain(tmp_path):
    s = _titanic_home(tmp_path)
    for path in (s.train_csv, s.current_csv):
        _relabel(path, "survived", {0: "false", 1: "true"})
    result, registry, model, tags = _chained(s)
    assert json.loads(tags["classes"]) == [False, True] and json.loads(tags["positive_label"]) is True
    predicted = model.model.predict(pd.read_csv(s.current_csv)[model.columns].head(20))
    assert {type(v.item() if hasattr(v, "item") else v) for v in predicted} == {bool}


@pytest.mark.slow
def test_three_classes_and_a_class_production_never_saw_is_drift_and_learned(tmp_path):
    s = _titanic_home(tmp_path, target="embarked", promotion_metric="f1",
                      features=("pclass", "sex", "age", "fare", "sibsp", "parch", "survived"))
    batch = pd.read_csv(s.current_csv)
    batch.loc[batch.index[:40], "embarked"] = "Z"  # a new port of call, 40 rows
    atomic_write_csv(batch, s.current_csv)
    result, registry, model, tags = _chained(s)
    assert json.loads(registry.describe("1")["tags"]["classes"]) == ["C", "Q", "S"]
    assert result.drift["new_classes"] == ["Z"]
    assert json.loads(tags["classes"]) == ["C", "Q", "S", "Z"] and "positive_label" not in tags
    assert result.evidence["vs_production"]["metric"] == "f1_macro"
    _answers_are_labels_of_the_data(model, batch, ["C", "Q", "S", "Z"])
    assert "Z" in set(model.model.predict(batch[model.columns].head(40)))


@pytest.mark.slow
def test_ten_classes_through_the_chain_on_a_table_that_is_not_titanic(tmp_path, monkeypatch):
    """Also at scale, in small: selected on a sample of 150 rows, fitted on all; 100 rows stored as data."""
    from mlops_core.chain import register

    monkeypatch.setattr(register, "REFERENCE_ROWS", 100)
    s = _digits_home(tmp_path)
    s = Settings(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "select_rows": 150})
    result, registry, model, tags = _chained(s)
    assert json.loads(tags["classes"]) == list(range(10)) and pipeline_classes(model.model) == list(range(10))
    assert result.evidence["vs_production"]["test"] == "mcnemar_exact"
    _answers_are_labels_of_the_data(model, pd.read_csv(s.current_csv), list(range(10)))
    assert 150 <= int(tags["rows_select"]) < 160 and int(tags["rows_fit"]) == 315  # 450 rows, 135 held out
    _, stored = registry.load_reference("2")
    assert len(stored) == 100  # bounded: the most recent rows as data ...
    assert registry.load_rows("2", kinds={}).hashes.size > 100  # ... every row as its hash


def test_two_classes_and_no_positive_one_is_refused_before_anything_is_trained(tmp_path):
    s = _titanic_home(tmp_path)
    for path in (s.train_csv, s.current_csv):
        _relabel(path, "survived", {0: "died", 1: "lived"})
    with pytest.raises(SettingsError, match="'died', 'lived'.*MLOPS_POSITIVE_LABEL"):
        run(s)
    assert not (s.home / "mlflow.db").exists() or not Registry(s).versions()
