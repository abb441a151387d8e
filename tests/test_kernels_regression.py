"""mlops_core.inference for a regression: every regression model id the chain can register, compiled through the
artifact path (``artifact.export`` then ``artifact.load``, as registration and the server do) on scikit-learn's
diabetes table with a categorical column and missing values, answering as its pipeline's ``predict`` (within
1e-9 relative; ONNX Runtime's 1e-6), known as a regression from the artifact alone (no labels, no MLflow
metadata)."""

from __future__ import annotations

import gc
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from mlops_core.config import REGRESSION_MODEL_IDS, Settings
from mlops_core.inference import artifact
from mlops_core.inference.compile import build_predictor, probe_rows, rows_of
from mlops_core.inference.predictors import PipelinePredictor
from mlops_core.registry import LoadedModel

# every PyCaret regression model id, less: xgboost and catboost (not installed with the project)
KINDS = ("lr", "lasso", "ridge", "en", "lar", "llar", "omp", "br", "ard", "par", "ransac", "tr", "huber", "kr",
         "svm", "knn", "dt", "rf", "et", "ada", "gbr", "mlp", "lightgbm", "dummy")
SKIPPED = {"xgboost", "catboost"}
#: the hand kernel of each model id that has one (the others are served by their own ``predict``)
HAND = {**{kind: "linear" for kind in ("lr", "lasso", "ridge", "en", "lar", "llar", "omp", "br", "ard", "par",
                                       "huber")},
        "dt": "decision_tree_regression", "rf": "forest_regression", "et": "forest_regression",
        "gbr": "gradient_boosting_regression", "lightgbm": "lightgbm_regression", "knn": "knn_regression",
        "dummy": "constant"}

TRAIN_ROWS = 250


def _diabetes() -> pd.DataFrame:
    """scikit-learn's diabetes table (442 rows), with ``band``, a three-level string column of age and sex, and
    about 5% of ``bmi``, ``bp`` and ``band`` missing."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    rng = np.random.default_rng(0)
    band = np.where(frame["age"] < -0.02, "young", np.where(frame["sex"] > 0, "older-m", "older-f")).astype(object)
    frame.insert(3, "band", band)
    for column in ("bmi", "bp", "band"):
        frame[column] = frame[column].mask(rng.random(len(frame)) < 0.05)
    return frame


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Every model id finalised on the first 300 rows after one PyCaret setup (as ``training.train`` makes it, two
    folds), registered as a regression (``task`` metadata), exported and stored as registration does; and the
    rows none of them was trained on, then the edge rows."""
    from mlflow.models import infer_signature
    from pycaret.regression import RegressionExperiment

    from mlops_core.data import NUMERIC, normalise

    frame = _diabetes()
    features = [c for c in frame.columns if c != "target"]
    numeric = [c for c in features if c != "band"]
    data = normalise(frame.iloc[:TRAIN_ROWS], {c: NUMERIC if c in numeric else "categorical" for c in features})
    settings = Settings(home=tmp_path_factory.mktemp("regression"), features=tuple(features), target="target",
                        fold=2, task="regression", drift_features=("bmi",))
    exp = RegressionExperiment()
    gc.freeze()
    try:
        exp.setup(data=data, target="target", session_id=settings.seed, fold=settings.fold, n_jobs=settings.n_jobs,
                  numeric_features=numeric, categorical_features=["band"], verbose=False, html=False,
                  log_experiment=False, system_log=False, memory=False)
        pipelines = {kind: _finalize(exp, kind, data[features], data["target"]) for kind in KINDS}
    finally:
        gc.unfreeze()
    schema = infer_signature(frame[features].head(5)).inputs
    models = {}
    for kind, pipeline in pipelines.items():
        model = LoadedModel(version=kind, run_id="", model=pipeline, columns=list(schema.input_names()),
                            dtypes={c.name: c.type.name for c in schema.inputs}, metadata={"task": "regression"})
        stored, manifest = artifact.export(model, frame.iloc[:TRAIN_ROWS][features])
        models[kind] = model, stored, json.loads(json.dumps(manifest, default=str))  # as the registry stores it
    any_model = models["lr"][0]
    return models, probe_rows(any_model, rows_of(frame.iloc[TRAIN_ROWS:][features], any_model))


def _finalize(exp, kind: str, x, y):
    """What ``exp.finalize_model(kind)`` registers, without its cost a model (a second or two on 2 cores): the
    setup's preprocessing (cloned from PyCaret's own finalised pipeline) ending in PyCaret's estimator for
    ``kind`` (its class and default arguments: the session's seed, its n_jobs), fitted on every row."""
    from sklearn.base import clone

    if not hasattr(exp, "_base_pipeline"):
        exp._base_pipeline = exp.finalize_model(exp.create_model("dummy", cross_validation=False, verbose=False))
    container = exp._all_models_internal[kind]
    pipeline = clone(exp._base_pipeline)
    pipeline.steps[-1] = (pipeline.steps[-1][0], container.class_def(**container.args))
    return pipeline.fit(x, y)


def _degenerate(model) -> bool:
    """Whether a linear fit is degenerate: one-hot columns (which sum to one, as the intercept) given coefficients
    of 1e12 or more that cancel, so that the pipeline's answer on a row moves with the rows beside it (BLAS)."""
    coef = getattr(model.model.steps[-1][1], "coef_", None)
    return coef is not None and float(np.max(np.abs(coef))) >= 1e12


def test_the_model_ids_tested_are_every_regression_one_the_chain_can_register_but_the_missing():
    assert set(KINDS) == REGRESSION_MODEL_IDS - SKIPPED and set(HAND) <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_regression_model_id_is_compiled_verified_and_answers_as_its_pipeline(registered, kind):
    models, rows = registered
    model, data, manifest = models[kind]
    if _degenerate(model):  # lr and lar, on this table: served by the pipeline, with the reason
        assert kind in ("lr", "lar") and data is None, manifest
        assert manifest["reason"].startswith("no kernel reproduces the pipeline (hand: the compiled predictions "
                                             "differ from the pipeline's by ")
        return
    assert data is not None, manifest["reason"]
    assert manifest["task"] == "regression" and manifest["labels"] is None
    assert pickle.loads(data)["task"] == "regression"
    report = manifest["kernels"]
    if kind in HAND:
        assert report["hand"].get("name") == HAND[kind] and "rejected" not in report["hand"], report["hand"]
    else:
        assert report["hand"]["rejected"] == "none for this estimator"
    predictor = artifact.load(data, manifest)  # the artifact alone: no MLflow metadata
    assert predictor.labels is None and predictor.task == "regression"
    assert predictor.kernel.__name__ == manifest["kernel"]
    assert len(rows) > 142
    expected = np.asarray(model.model.predict(_frame(rows, model)), dtype=np.float64)
    got, probabilities = predictor(rows)
    assert probabilities is None and all(type(p) is float for p in got)
    tolerance = getattr(predictor.kernel, "tolerance", 1e-9)
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance * np.median(np.abs(expected)))
    for i in range(0, len(rows), 17):  # one row a request: the same answers
        assert predictor(rows[i:i + 1])[0] == pytest.approx([got[i]], rel=tolerance)


def _frame(rows, model):
    from mlops_core.inference.predictors import to_frame

    return to_frame(rows, model)


def test_a_regression_served_by_its_pipeline_answers_numbers_and_no_probabilities(registered):
    models, rows = registered
    model, _, _ = models["ridge"]
    pipeline = PipelinePredictor(model)
    predictions, probabilities = pipeline(rows[:5])
    assert probabilities is None and pipeline.task == "regression" and pipeline.labels is None
    assert predictions == [float(p) for p in model.model.predict(_frame(rows[:5], model))]


def test_a_pipeline_transforming_its_target_is_not_compiled(registered):
    """PyCaret's ``transform_target``: setup adds a step transforming the target (Yeo-Johnson by default) and the
    pipeline's predict inverts it; the compiled path does not, so it is refused (served by the pipeline, with the
    reason). The step is added here as setup adds it, to the ridge pipeline, refitted."""
    from pycaret.internal.preprocess.transformers import TargetTransformer, TransformerWrapperWithInverse
    from sklearn.base import clone
    from sklearn.preprocessing import PowerTransformer

    models, rows = registered
    model = models["ridge"][0]
    frame = _frame(rows, model).assign(target=np.linspace(25.0, 300.0, len(rows))).dropna().iloc[:200]
    pipeline = clone(model.model)
    pipeline.steps.insert(-1, ("target_transformation",
                               TransformerWrapperWithInverse(TargetTransformer(PowerTransformer()))))
    pipeline.fit(frame[model.columns], frame["target"])
    transformed = LoadedModel(version="t", run_id="", model=pipeline, columns=model.columns, dtypes=model.dtypes,
                              metadata={"task": "regression"})
    predictor = build_predictor(transformed, probe=rows[:50])
    assert not predictor.compiled
    assert predictor.reason == "not compiled: the pipeline transforms the target (transform_target): its inverse " \
                               "is not compiled"
    assert predictor(rows[:3])[0] == [float(p) for p in pipeline.predict(_frame(rows[:3], model))]
