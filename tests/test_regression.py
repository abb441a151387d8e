"""Numbers to predict: the regression chain (validation, evidence, drift of the predicted value, promotion) on the
diabetes table bundled with scikit-learn. Serving and the live A/B of regressions: tests/test_server_regression.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_core.config import Settings
from mlops_core.data import apply_concept, load_diabetes, make_datasets, validate_frame
from mlops_core.errors import DataValidationError
from mlops_core.evidence import compare_errors
from mlops_core.pipeline import run
from mlops_core.registry import Registry

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def _settings(home, **changes) -> Settings:
    return Settings(home=home, task="regression", target="progression", features=FEATURES,
                    drift_features=("bmi", "bp"), **{"models": ("lr", "dt"), "fold": 2, **changes})


def test_a_target_that_is_not_numbers_is_refused_naming_why(tmp_path):
    settings = _settings(tmp_path)
    table = load_diabetes().head(100)

    def problem(values) -> str:
        with pytest.raises(DataValidationError) as info:
            validate_frame(table.assign(progression=values), settings)
        return str(info.value)

    text = problem(table.progression.astype(object).where(table.index != 7, "high"))
    assert "1 non-numeric value(s) such as ['high'], the first at row 8 (line 9)" in text
    assert "infinite value(s)" in problem(table.progression.where(table.index != 3, np.inf))
    assert "is constant (5)" in problem(5.0)
    assert "has no values" in problem(np.nan)
    ok = validate_frame(table.assign(progression=table.progression.astype(str)), settings)  # text reading as numbers
    assert ok.progression.dtype == float and ok.progression.tolist() == table.progression.tolist()


def test_a_number_to_predict_given_as_a_classification_target_says_it_looks_like_regression(tmp_path):
    classification = Settings(home=tmp_path, target="progression", features=FEATURES, drift_features=("bmi",))
    with pytest.raises(DataValidationError, match="look like a number to predict: set MLOPS_TASK=regression"):
        validate_frame(load_diabetes(), classification)


def test_the_regression_evidence_is_the_metrics_improvement_with_its_interval():
    rng = np.random.default_rng(5)
    y = rng.normal(10, 3, 400)
    good, poor = y + rng.normal(0, 1.0, 400), y + rng.normal(0, 1.6, 400)
    rmse = compare_errors("rmse", y, good, poor)
    assert rmse.candidate == pytest.approx(np.sqrt(np.mean((good - y) ** 2)))
    assert rmse.baseline == pytest.approx(np.sqrt(np.mean((poor - y) ** 2)))
    assert rmse.difference == pytest.approx(rmse.baseline - rmse.candidate) and rmse.difference > 0
    assert rmse.p_value < 0.01 < rmse.p_worse and rmse.ci_low > 0
    r2 = compare_errors("r2", y, poor, good)  # the worse one as the candidate: shown worse
    assert r2.difference < 0 and r2.p_worse < 0.01
    mae = compare_errors("mae", y, good, good)
    assert mae.difference == 0 and mae.p_value > 0.5
    big = np.arange(50_000.0)
    assert compare_errors("mae", big, big + 1, big + 1.01).p_value < 0.01  # the large-sample path


def test_a_changed_relationship_mirrors_the_target_where_it_changed():
    frame = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) * 2})
    out = apply_concept(frame, 0.3, target="y", column="x", task="regression")
    assert out.y.tolist()[:7] == frame.y.tolist()[:7] and out.y.tolist()[7:] == [4.0, 2.0, 0.0]  # 2 x median 9


@pytest.mark.slow
def test_regression_chain_trains_judges_on_errors_and_promotes_a_changed_relationship(tmp_path):
    s = _settings(tmp_path / "home")
    make_datasets(s, drift=1.0, concept=0.5, seed=1)
    result = run(s)
    assert result.bootstrapped == "1" and result.status == "promoted", result.reason
    evidence = result.evidence["vs_production"]
    assert evidence["metric"] == "rmse" and evidence["test"] == "paired_bootstrap"
    assert evidence["difference"] == pytest.approx(evidence["baseline"] - evidence["candidate"], abs=1e-5)
    assert evidence["ci_low"] > 0 and evidence["p_value"] < 0.05
    registry = Registry(s)
    tags = registry.describe(result.version)["tags"]
    assert tags["task"] == "regression" and "classes" not in tags and "cv_rmse" in tags
    model = registry.load_model(result.version)
    assert model.task == "regression" and model.labels is None
    predicted = model.model.predict(pd.read_csv(s.current_csv)[model.columns].head(5))
    assert np.asarray(predicted).dtype.kind == "f"
    report = json.loads((s.data_dir / "drift_report.json").read_text())
    assert "predicted_value" in report["info"]["psi"]  # Production's predicted numbers, in quantile bins
    make_datasets(s, drift=1.0, seed=2, write_train=False)  # another batch of the new regime: no drift
    again = run(s)
    assert again.status == "no_drift" and again.production == result.version, again.reason
