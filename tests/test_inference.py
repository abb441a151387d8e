"""mlops_core.inference and server.serving: the compiled path answers exactly as the registered pipeline, or is
not used; the private-API version guard; micro-batching (server.batching); the serving settings."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin

from mlops_core.config import Settings
from mlops_core.inference import compile as compiler
from mlops_core.inference import kernels, libraries, tree_engine
from mlops_core.inference.compile import build_predictor, probe_rows
from mlops_core.inference.predictors import PipelinePredictor, to_frame
from mlops_core.registry import LoadedModel
from server.batching import Batcher
from server.serving import Serving

MODEL_TYPES = Settings().models  # every model type the default list can select
HAND_KERNELS = {"lr": "logistic", "dt": "decision_tree", "rf": "forest", "lightgbm": "lightgbm"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, LoadedModel]:
    """One finalised pipeline per model type (two folds), with the schema the registry would record."""
    from mlflow.models import infer_signature

    from mlops_core.data import load_batch, make_datasets
    from mlops_core.training import train

    models = {}
    for kind in MODEL_TYPES:
        settings = Settings(home=tmp_path_factory.mktemp(kind), models=(kind,), fold=2)
        make_datasets(settings)
        frame = load_batch(settings.train_csv, settings, require_target=True)
        result = train(frame, settings)
        schema = infer_signature(frame[list(settings.features)].head(5)).inputs
        models[kind] = LoadedModel(version=kind, run_id="", model=result.model, columns=list(schema.input_names()),
                                   dtypes={c.name: c.type.name for c in schema.inputs})
    return models


def _edge_rows(model: LoadedModel) -> list[dict]:
    base = {"pclass": 3, "sex": "male", "age": 22.0, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}
    return [base, dict.fromkeys(model.columns), {**base, "sex": None, "embarked": None, "age": None},
            {**base, "sex": "unknown", "embarked": "Z"}, {**base, "sex": "", "embarked": "s"},
            {**base, "age": -5.0, "fare": 1e12, "pclass": 7, "sibsp": 100}]


def _assert_same(predictor, model: LoadedModel, rows: list[dict]) -> None:
    """Labels equal, probabilities within 1e-9 (1e-6 through ONNX Runtime); the API's answers equal (one unit of
    their 6th place apart at most through ONNX Runtime)."""
    reference = PipelinePredictor(model)
    tolerance = getattr(getattr(predictor, "kernel", None), "tolerance", 1e-9)
    (p1, q1), (p0, q0) = predictor.raw(rows), reference.raw(rows)
    assert list(p1) == list(p0)
    np.testing.assert_allclose(q1, q0, rtol=0, atol=tolerance)
    if tolerance == 1e-9:
        assert predictor(rows) == reference(rows)  # the answers the API gives, rounding included
    else:
        (labels, probabilities), (labels0, probabilities0) = predictor(rows), reference(rows)
        assert labels == labels0
        np.testing.assert_allclose(probabilities, probabilities0, rtol=0, atol=1e-6 + tolerance + 1e-12)


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_compiled_path_agrees_on_every_titanic_row_nulls_and_unseen_categories(loaded, kind):
    model = loaded[kind]
    predictor = build_predictor(model)
    assert predictor.compiled, predictor.reason
    # the hand kernel or ONNX Runtime (LightGBM has no converter here), not the estimator's own methods
    report = predictor.kernel_choice.report
    assert "rejected" not in report["hand"] and report["hand"]["name"] == HAND_KERNELS[kind]
    assert predictor.kernel.__name__ in (HAND_KERNELS[kind], "onnx"), predictor.kernel_choice.reason
    titanic = compiler._titanic_rows(model)
    assert len(titanic) == 1309
    _assert_same(predictor, model, titanic)
    _assert_same(predictor, model, _edge_rows(model))
    _assert_same(predictor, model, probe_rows(model))
    for row in _edge_rows(model):  # one row at a time, as /predict mostly sees them
        _assert_same(predictor, model, [row])


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_the_pipeline_served_in_one_pass_answers_as_its_own_methods(loaded, kind):
    """The fallback path transforms once for labels and probabilities: equal, bit for bit, to the pipeline's
    own predict and predict_proba, which transform twice."""
    model = loaded[kind]
    rows = probe_rows(model)
    predictor = PipelinePredictor(model)
    (p1, q1), (p0, q0) = predictor.served(rows), predictor.raw(rows)
    assert list(p1) == list(p0) and np.array_equal(q1, q0)


class _AddOne(BaseEstimator, TransformerMixin):
    """A step the compiler does not know."""

    def fit(self, X, y=None):
        return self

    def transform(self, X, y=None):
        return X.assign(fare=X["fare"] + 1.0)


class _Sparse(BaseEstimator, TransformerMixin):
    """A step the compiler does not know, that answers a sparse matrix (no columns to put back)."""

    def fit(self, X, y=None):
        return self

    def transform(self, X, y=None):
        from scipy import sparse

        return sparse.csr_matrix(X.to_numpy(dtype=float))


def _with_step(model: LoadedModel, name: str, step) -> LoadedModel:
    """A copy of ``model`` with ``step`` inserted before its estimator."""
    model = copy.copy(model)
    model.model = copy.deepcopy(model.model)
    model.model.steps.insert(len(model.model.steps) - 1, (name, step))
    return model


def test_an_unknown_step_runs_its_own_transformer_inside_the_compiled_path(loaded):
    """A plain step the compiler has no operation for runs as the pipeline runs it, on every column, between the
    compiled operations: the version stays compiled and answers as its pipeline."""
    model = _with_step(loaded["lr"], "add_one", _AddOne())
    predictor = build_predictor(model)
    assert predictor.compiled, predictor.reason
    assert predictor.own_transformers == ["add_one (_AddOne)"]
    rows = compiler._titanic_rows(model)[:300] + _edge_rows(model)
    _assert_same(predictor, model, rows)
    assert predictor(rows)[1] != PipelinePredictor(loaded["lr"])(rows)[1]  # the extra step really changes answers


def test_an_unknown_transformer_in_pycarets_wrapper_runs_on_the_columns_it_includes(loaded):
    """What setup options outside our settings would add (here scikit-learn's PowerTransformer on two columns,
    as ``transformation=True`` does), wrapped as PyCaret wraps its steps: compiled around it, answers equal."""
    from pycaret.internal.preprocess.transformers import TransformerWrapper
    from sklearn.preprocessing import PowerTransformer

    from mlops_core.data import load_titanic

    base = loaded["lr"]
    frame = to_frame(compiler.rows_of(load_titanic(), base), base)
    wrapper = TransformerWrapper(PowerTransformer(), include=["age", "fare"]).fit(base.model[:-1].transform(frame))
    model = _with_step(base, "power", wrapper)
    predictor = build_predictor(model)
    assert predictor.compiled, predictor.reason
    assert predictor.own_transformers == ["power (PowerTransformer)"]
    _assert_same(predictor, model, compiler._titanic_rows(model)[:300] + _edge_rows(model))


def test_an_unknown_step_that_cannot_run_alone_falls_back_to_the_pipeline(loaded):
    model = _with_step(loaded["lr"], "sparse", _Sparse())
    predictor = build_predictor(model)
    assert not predictor.compiled and "_Sparse" in predictor.reason
    rows = compiler._titanic_rows(model)[:300] + _edge_rows(model)
    predictions, probabilities = predictor(rows)
    frame = to_frame(rows, model)
    assert predictions == [int(p) for p in model.model.predict(frame)]
    assert probabilities == [round(float(p), 6) for p in model.model.predict_proba(frame)[:, 1]]


def test_a_mismatch_on_probe_rows_falls_back(loaded, monkeypatch):
    real = compiler._imputer

    def off_by_a_little(t, include):  # an imputer compiled wrongly: fills 1e-6 too high
        op = real(t, include)

        def wrong(cols):
            missing = {c: [v is None or v != v for v in cols[c]] for c in include}
            op(cols)
            for c in include:
                cols[c] = [v + 1e-6 if m and isinstance(v, float) else v for v, m in zip(cols[c], missing[c])]
        return wrong

    monkeypatch.setattr(compiler, "_imputer", off_by_a_little)
    predictor = build_predictor(loaded["lightgbm"])
    assert not predictor.compiled and "features differ" in predictor.reason
    _assert_same(predictor, loaded["lightgbm"], _edge_rows(loaded["lightgbm"]))


def test_a_wrong_hand_kernel_is_not_used(loaded, monkeypatch):
    def skewed(estimator):
        return lambda x: (estimator.predict(x), estimator.predict_proba(x) + 1e-7)

    monkeypatch.setattr(kernels, "hand_kernel", skewed)
    predictor = build_predictor(loaded["rf"])
    assert predictor.compiled and predictor.kernel.__name__ in ("onnx", "generic")
    assert predictor.kernel_choice.report["hand"]["rejected"].startswith("the compiled probabilities differ")
    _assert_same(predictor, loaded["rf"], _edge_rows(loaded["rf"]))


def test_lightgbm_small_requests_go_row_by_row_and_agree_on_every_titanic_row(loaded, monkeypatch):
    model = loaded["lightgbm"]
    predictor = build_predictor(model)
    assert predictor.compiled and predictor.kernel.single_rows == libraries.SINGLE_ROWS
    rows = probe_rows(model)
    p0, q0 = PipelinePredictor(model).raw(rows)
    calls = []
    real = tree_engine._LightGBMSingleRow.__call__
    monkeypatch.setattr(tree_engine._LightGBMSingleRow, "__call__",
                        lambda self, row: calls.append(1) or real(self, row))
    for size in (1, libraries.SINGLE_ROWS):
        for start in range(0, len(rows), size):
            p1, q1 = predictor.raw(rows[start:start + size])
            assert list(p1) == list(p0[start:start + size])
            np.testing.assert_allclose(q1, q0[start:start + size], rtol=0, atol=1e-9)
    assert len(calls) == 2 * len(rows)  # every one of them took the single-row path
    predictor.raw(rows[:libraries.SINGLE_ROWS + 1])
    assert len(calls) == 2 * len(rows)  # a larger batch is one matrix call


def test_lightgbm_single_rows_from_threads_each_get_their_own_answer(loaded):
    """MLOPS_BATCH_WAIT_MS=off: request threads call the same model at once; thread switches forced often."""
    import sys

    model = loaded["lightgbm"]
    predictor = build_predictor(model)
    rows = compiler._titanic_rows(model)[:400]
    _, expected = PipelinePredictor(model).raw(rows)
    wrong, done = [], []

    def client(offset):
        for i in range(offset, len(rows), 4):
            _, proba = predictor.raw([rows[i]])
            if abs(proba[0, 1] - expected[i, 1]) > 1e-9:
                wrong.append(i)
        done.append(offset)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert len(done) == 20 and not wrong, f"{len(wrong)} answers belonged to another row"


@pytest.mark.parametrize("library", ["scikit-learn", "lightgbm"])
def test_an_untested_library_version_serves_through_its_public_api(loaded, monkeypatch, library):
    """The hand kernels read private attributes: with a version they were not written for, they are not
    tried, and ONNX Runtime or the estimator's own predict_proba answers (still compiled preprocessing, still
    verified)."""
    monkeypatch.setitem(libraries.TESTED, library, "0.0.")
    libraries.untested.cache_clear()
    try:
        assert library in libraries.untested(library) and "is not the tested 0.0.x" in libraries.untested(library)
        model = loaded["lightgbm" if library == "lightgbm" else "rf"]
        predictor = build_predictor(model)
        assert predictor.compiled and predictor.kernel_choice.report["hand"]["rejected"] == "none for this estimator"
        # a random forest through ONNX Runtime (its converter is skl2onnx's public API); LightGBM has no converter
        assert predictor.kernel.__name__ == ("generic" if library == "lightgbm" else "onnx")
        _assert_same(predictor, model, _edge_rows(model))
    finally:
        libraries.untested.cache_clear()


def test_an_untested_pycaret_version_is_served_by_the_pipeline(loaded, monkeypatch):
    """PyCaret's step wrappers are read through private attributes: another version is not compiled at all."""
    monkeypatch.setitem(libraries.TESTED, "pycaret", "0.0.")
    libraries.untested.cache_clear()
    try:
        predictor = build_predictor(loaded["lr"])
        assert not predictor.compiled and predictor.reason.startswith("not compiled: step TransformerWrapper")
        _assert_same(predictor, loaded["lr"], _edge_rows(loaded["lr"]))
    finally:
        libraries.untested.cache_clear()


def test_a_hand_kernel_that_raises_falls_back_to_the_estimators_own_methods(loaded, monkeypatch):
    def unavailable(self, *args):  # e.g. a LightGBM without the single-row fast API
        raise AttributeError("function 'LGBM_BoosterPredictForMatSingleRowFastInit' not found")

    monkeypatch.setattr(tree_engine._LightGBMSingleRow, "__init__", unavailable)
    model = loaded["lightgbm"]
    predictor = build_predictor(model)
    assert predictor.compiled and predictor.kernel.__name__ == "generic"
    _assert_same(predictor, model, _edge_rows(model))


def test_a_wrong_single_row_path_is_not_used(loaded, monkeypatch):
    real = tree_engine._LightGBMSingleRow.__call__
    monkeypatch.setattr(tree_engine._LightGBMSingleRow, "__call__", lambda self, row: real(self, row) + 1e-7)
    model = loaded["lightgbm"]
    predictor = build_predictor(model)
    assert predictor.compiled and predictor.kernel.__name__ == "generic"  # the estimator's own methods
    _assert_same(predictor, model, _edge_rows(model))


# -- micro-batching -------------------------------------------------------------------------
class _Arm:
    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def predictor(self, rows):
        self.calls.append((self.name, len(rows)))
        time.sleep(0.003)  # a predict call long enough for requests to queue behind it
        if any(r["x"] < 0 for r in rows):
            raise ValueError("negative x")
        return [self.name] * len(rows), [float(r["x"]) for r in rows]


def test_batched_requests_share_calls_and_each_gets_its_own_arms_answer():
    calls: list = []
    arms = [_Arm("production", calls), _Arm("staging", calls)]
    batcher = Batcher(lambda model, rows: model.predictor(rows), wait=0.002)
    answers, errors = {}, {}

    def request(i):
        rows = [{"x": float(i * 10 + k)} for k in range(1 + i % 3)]
        try:
            answers[i] = batcher(arms[i % 2], rows)
        except ValueError as err:
            errors[i] = err

    threads = [threading.Thread(target=request, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors and len(answers) == 24
    for i, (predictions, probabilities) in answers.items():
        n = 1 + i % 3
        assert predictions == [arms[i % 2].name] * n
        assert probabilities == [float(i * 10 + k) for k in range(n)]
    assert len(calls) < 24 and max(n for _, n in calls) > 3  # requests really shared calls


def test_an_error_reaches_only_the_requests_of_its_arm_and_a_lone_request_does_not_wait():
    calls: list = []
    good, bad = _Arm("production", calls), _Arm("staging", calls)
    batcher = Batcher(lambda model, rows: model.predictor(rows), wait=0.5)
    lingered = []
    real_wait = batcher._arrived.wait
    batcher._arrived.wait = lambda timeout=None: lingered.append(timeout) or real_wait(timeout)
    assert batcher(good, [{"x": 1.0}]) == (["production"], [1.0])
    assert batcher(good, [{"x": 1.5}]) == (["production"], [1.5])
    assert lingered == []  # a lone request after a batch of one never waits for company
    outcomes = {}

    def request(name, model, x):
        try:
            outcomes[name] = batcher(model, [{"x": x}])
        except ValueError as err:
            outcomes[name] = err

    threads = [threading.Thread(target=request, args=(f"r{i}", bad if i % 2 else good, -1.0 if i % 2 else 2.0))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(isinstance(outcomes[f"r{i}"], ValueError) for i in range(1, 6, 2))
    assert all(outcomes[f"r{i}"] == (["production"], [2.0]) for i in range(0, 6, 2))


def test_serving_settings_are_read_through_settings_and_checked(tmp_path):
    from mlops_core.config import Settings

    env = {"MLOPS_BATCH_WAIT_MS": "1.5", "MLOPS_FASTPATH": "pipeline"}
    serving = Serving.from_settings(Settings.from_env(env, home=tmp_path))
    assert serving.batch_wait == pytest.approx(0.0015) and not serving.compiled
    assert Serving.from_settings(Settings(home=tmp_path)).compiled
    assert Serving.from_settings(Settings(home=tmp_path, batch_wait_ms="off")).batch_wait is None
    with pytest.raises(ValueError, match="fastpath must be 'compiled' or 'pipeline'"):
        Settings(home=tmp_path, fastpath="fast")
    with pytest.raises(ValueError, match="batch_wait_ms must be 'off' or milliseconds"):
        Settings(home=tmp_path, batch_wait_ms="soon")


@pytest.mark.parametrize("wait", [0.0, 0.0005])
def test_no_request_is_lost_or_stuck_when_threads_keep_arriving(wait):
    """Hand-overs between runners under contention: every call answered with its own rows, none hangs."""
    def predict(model, rows):
        if len(rows) > 1:
            time.sleep(0)  # let arrivals interleave with a running batch
        return [model] * len(rows), [r["x"] for r in rows]

    batcher = Batcher(predict, wait=wait)
    wrong, done = [], []

    def client(t):
        for i in range(400):
            x = float(t * 1000 + i)
            if batcher(t % 2, [{"x": x}]) != ([t % 2], [x]):
                wrong.append((t, i))
        done.append(t)

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(done) == list(range(8)), "a request never got its answer"
    assert not wrong


def test_a_version_served_by_its_pipeline_batches_every_waiting_request(loaded):
    """The fallback path (a version nothing compiles): 32 concurrent requests, more than a worker's threads by
    default, share pipeline calls; each gets the pipeline's own answer for its row."""
    from mlops_core.data import load_titanic
    from mlops_core.inference.compile import rows_of
    from mlops_core.inference.predictors import ServedModel

    model = loaded["lr"]
    pipeline, sizes = PipelinePredictor(model, "not compiled"), []

    def counted(rows):
        sizes.append(len(rows))
        return pipeline(rows)

    served = ServedModel.of(model, counted)
    serving = Serving(compiled=False, batch_wait=0.0015)
    rows = rows_of(load_titanic().head(32 * 8), model)
    answers: dict[int, tuple] = {}

    def client(c):
        for i in range(c, len(rows), 32):
            answers[i] = serving(served, [rows[i]])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == len(rows), "a request never got its answer"
    expected_labels, expected_probabilities = pipeline(rows)
    assert [answers[i][0][0] for i in range(len(rows))] == expected_labels
    assert [answers[i][1][0] for i in range(len(rows))] == pytest.approx(expected_probabilities, abs=1.1e-6)
    assert sum(sizes) == len(rows) and len(sizes) < len(rows) / 4, sizes  # calls were shared
    assert max(sizes) > 16, sizes  # a batch gathered more requests than a worker has threads


@pytest.mark.slow
def test_a_categorical_with_many_levels_is_target_encoded_and_compiled(tmp_path):
    """PyCaret target-encodes a categorical of more than 25 levels: that step compiles too (issue 19), on a data
    set that is not the demo one (42 levels, missing values), and answers as the pipeline on unseen levels."""
    import pandas as pd
    from mlflow.models import infer_signature

    from mlops_core.inference.compile import rows_of
    from mlops_core.training import train

    rng = np.random.default_rng(0)
    n = 1500
    city = rng.choice([f"city-{i}" for i in range(42)], n).astype(object)
    x = rng.normal(size=n)
    y = ((x + np.array([int(c[-1]) % 3 for c in city]) + rng.normal(size=n)) > 1).astype(int)
    city[rng.choice(n, 60, replace=False)] = None
    frame = pd.DataFrame({"x": x, "city": city, "y": y})
    settings = Settings(home=tmp_path, models=("lr",), fold=2, features=("x", "city"), target="y",
                        drift_features=("x",))
    result = train(frame, settings)
    assert "TargetEncoder" in [type(getattr(s, "transformer", s)).__name__ for _, s in result.model.steps]
    schema = infer_signature(frame[["x", "city"]].head(5)).inputs
    model = LoadedModel(version="t", run_id="", model=result.model, columns=list(schema.input_names()),
                        dtypes={c.name: c.type.name for c in schema.inputs})
    rows = rows_of(frame.head(400), model)
    predictor = build_predictor(model, probe=probe_rows(model, rows))
    assert predictor.compiled, predictor.reason
    unseen = [{"x": 0.3, "city": "a city never seen"}, {"x": -1.0, "city": None}, {"x": 2.0, "city": ""}]
    _assert_same(predictor, model, rows + unseen)


def test_labels_are_compared_value_for_value_and_type_for_type():
    """What the API would answer from each: ``True`` is not ``1``, ``"1"`` not ``1``; numpy's scalars are their
    Python values."""
    from mlops_core.inference.compile import same_labels

    assert same_labels(np.array(["yes", "no"], dtype=object), ["yes", "no"])
    assert same_labels(np.array([1, 0]), [1, 0]) and same_labels(np.array([True, False]), [True, False])
    assert not same_labels([True, False], [1, 0]) and not same_labels(["1"], [1])
    assert not same_labels([1, 0], [1]) and not same_labels(["a", "b"], ["a", "c"])
