"""AutoML with PyCaret: one small comparison per module, shared by the tests below."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import FAST

from mlops_core.config import Settings
from mlops_core.data import infer_kinds, load_titanic, normalise
from mlops_core.errors import TrainingError
from mlops_core.training import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("train"), **FAST)
    frame = load_titanic()[[*settings.features, settings.target]].sample(400, random_state=0)
    frame.loc[frame.index[:40], "embarked"] = None  # missing categoricals are ordinary data
    return settings, frame, train(frame, settings, kinds=infer_kinds(frame, settings.features))


def test_the_best_of_the_listed_models_is_finalised_with_probabilities(trained):
    settings, frame, result = trained
    assert set(result.comparison.index) == set(settings.models) and result.model_id in settings.models
    assert result.cv_metrics["accuracy"] == pytest.approx(result.comparison["Accuracy"].max())
    proba = result.model.predict_proba(normalise(frame[list(settings.features)], infer_kinds(frame, settings.features)))
    assert proba.shape == (len(frame), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert result.n_train == len(frame)


def test_the_model_and_comparison_are_written_under_the_home_and_read_back(trained):
    settings, frame, result = trained
    assert result.model_path == settings.models_dir / "best_model.pkl" and result.model_path.exists()
    assert not list(settings.models_dir.glob("*.tmp"))  # written through a temporary file and renamed
    table = pd.read_csv(result.comparison_path, index_col=0)
    assert table.index[0] == result.model_id
    assert table["Accuracy"].iloc[0] == pytest.approx(result.cv_metrics["accuracy"])
    again = joblib.load(result.model_path)
    X = normalise(frame[list(settings.features)], infer_kinds(frame, settings.features))
    assert np.array_equal(again.predict(X), result.model.predict(X))


def test_a_frame_no_model_can_learn_from_is_a_training_error(tmp_path):
    settings = Settings(home=tmp_path, **FAST)
    frame = load_titanic()[[*settings.features, settings.target]].head(30).assign(survived=1)  # one class only
    with pytest.raises(TrainingError, match=r"expected at least two classes in 'survived' to train on, got \[1\]"):
        train(frame, settings)
