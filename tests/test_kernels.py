"""mlops_core.inference.kernels: the kernel choice (ONNX Runtime, a hand kernel, the estimator's own methods), and
every model id the chain can register, compiled through the artifact path on a data set that is not the demo
one, answering as its pipeline (labels equal, probabilities within 1e-6) or served by it, with the reason."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from mlops_core.config import MODEL_IDS, NO_PROBABILITIES, Settings
from mlops_core.inference import artifact, kernels
from mlops_core.inference.compile import probe_rows, rows_of
from mlops_core.inference.predictors import PipelinePredictor
from mlops_core.registry import LoadedModel

from _services import python_json

FEATURES = ("x-a", "x b", "count", "flag", "colour", "home city")
# every PyCaret model id with predict_proba, less: gpc and rbfsvm (a Gaussian process and an RBF SVC with
# probability=True take minutes to train, not seconds), xgboost and catboost (not installed with the project)
KINDS = ("lr", "knn", "nb", "dt", "rf", "qda", "ada", "gbc", "lda", "et", "lightgbm", "mlp", "dummy")
SKIPPED = {"gpc", "rbfsvm", "xgboost", "catboost"}
# the candidates that reproduce each pipeline on this data set; the one serving is the fastest of them
VERIFIED = {
    "lr": {"onnx", "hand", "generic"}, "knn": {"hand", "generic"}, "nb": {"onnx", "generic"},
    "dt": {"onnx", "hand", "generic"}, "rf": {"onnx", "hand", "generic"}, "ada": {"hand", "generic"},
    "gbc": {"onnx", "generic"}, "lda": {"hand", "generic"}, "et": {"onnx", "hand", "generic"},
    "lightgbm": {"hand", "generic"}, "mlp": {"onnx", "generic"}, "dummy": {"hand", "generic"}, "qda": {"hand"},
}
# why the others are not used (the start of the reason recorded in the manifest)
REJECTED = {
    ("knn", "onnx"): "failed: InvalidGraph",  # skl2onnx's KNN graph does not load in ONNX Runtime
    ("ada", "onnx"): "the compiled probabilities differ",  # by ~8e-4: ONNX Runtime's SAMME.R is float32
    ("lda", "onnx"): "the compiled probabilities differ",  # by 0.15: skl2onnx's LDA is wrong
    ("lightgbm", "onnx"): "failed: MissingShapeCalculator",  # no converter without onnxmltools
    ("dummy", "onnx"): "failed: MissingShapeCalculator",  # no converter
    ("qda", "generic"): "the compiled pr",  # predictions or probabilities, on a row alone: see the QDA test below
    **{(kind, "hand"): "none for this estimator" for kind in ("nb", "gbc", "mlp")},
}


def _data(n: int, seed: int) -> pd.DataFrame:
    """Not the demo table: names with a hyphen and a space (PyCaret adds its CleanColumnNames step), numbers with
    missing values, a two-level categorical (ordinal encoded), a three-level one (one-hot) and one of 40 levels
    (target encoded), all with missing values."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.exponential(2.0, size=n)
    count = rng.integers(0, 5, size=n).astype(float)
    flag = rng.choice(["yes", "no"], n).astype(object)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    city = rng.choice([f"c{i}" for i in range(40)], n).astype(object)
    effect = np.array([(int(c[1:]) % 5 - 2) * 0.4 for c in city])
    z = a - 0.3 * b + 0.2 * count + 0.5 * (flag == "yes") + 0.8 * (colour == "red") + effect + rng.normal(size=n)
    a[rng.random(n) < 0.05], b[rng.random(n) < 0.05] = np.nan, np.nan
    for column in (flag, colour, city):
        column[rng.random(n) < 0.05] = None
    return pd.DataFrame({"x-a": a, "x b": b, "count": count, "flag": flag, "colour": colour, "home city": city,
                         "y": (z > 0).astype(int)})


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict[str, tuple[LoadedModel, bytes | None, dict]]:
    """Each model id trained alone (1500 rows, two folds), with its artifact and manifest as registration makes
    them (compiled and verified on its own training rows)."""
    from mlflow.models import infer_signature

    from mlops_core.training import train

    frame = _data(1500, seed=0)
    schema = infer_signature(frame[list(FEATURES)].head(5)).inputs
    out = {}
    for kind in KINDS:
        settings = Settings(home=tmp_path_factory.mktemp(kind), models=(kind,), fold=2, features=FEATURES,
                            target="y", drift_features=("x-a",))
        result = train(frame, settings)
        model = LoadedModel(version=kind, run_id="", model=result.model, columns=list(schema.input_names()),
                            dtypes={c.name: c.type.name for c in schema.inputs})
        data, manifest = artifact.export(model, frame[list(FEATURES)])
        out[kind] = model, data, json.loads(json.dumps(manifest, default=str))  # as the registry stores it
    return out


@pytest.fixture(scope="module")
def other_rows(registered) -> dict[str, list[dict]]:
    """1200 rows the models were not trained on, then the edge rows (nulls, unseen categories, extremes)."""
    frame = _data(1200, seed=1)
    return {kind: probe_rows(model, rows_of(frame, model)) for kind, (model, _, _) in registered.items()}


def test_the_model_ids_tested_are_every_one_the_chain_can_register_but_the_slow_or_missing():
    assert set(KINDS) == MODEL_IDS - NO_PROBABILITIES - SKIPPED and set(VERIFIED) == set(KINDS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_model_id_is_served_by_its_fastest_verified_kernel_and_answers_as_its_pipeline(
        registered, other_rows, kind):
    model, data, manifest = registered[kind]
    rows = other_rows[kind]
    assert len(rows) > 1200
    assert data is not None, manifest["reason"]
    report = manifest["kernels"]
    assert {k for k, r in report.items() if "rejected" not in r} == VERIFIED[kind], report
    for (model_id, candidate), reason in REJECTED.items():
        if model_id == kind:
            assert report[candidate]["rejected"].startswith(reason), report[candidate]
    payload = pickle.loads(data)
    assert payload["kernels"] == [k for k, r in report.items() if "rejected" not in r]  # the order tried at load
    assert (payload["onnx"] is not None) == ("onnx" in VERIFIED[kind])  # a rejected graph is not stored
    # the choice: fastest on one row, a hand kernel counted 1.5 times its time
    fastest = min(sorted(VERIFIED[kind], key=kernels.KINDS.index),  # a tie goes to the earlier kind, as chosen
                  key=lambda k: report[k]["us_1"] * (kernels.HAND_PENALTY if k == "hand" else 1))
    assert manifest["kernel_kind"] == fastest and manifest["kernel"] == report[fastest]["name"]
    assert manifest["kernel_reason"].startswith(f"{fastest} ({manifest['kernel']}) fastest verified")

    predictor = artifact.load(data, manifest)
    assert predictor.kernel_choice.kind == fastest and predictor.kernel.__name__ == manifest["kernel"]
    reference = PipelinePredictor(model)
    # a row-wise kernel answers each row as the pipeline answers it alone (QDA: see the test below)
    row_wise = getattr(predictor.kernel, "row_wise", False)
    assert row_wise == (kind == "qda")
    (p1, q1), (p0, q0) = predictor.raw(rows), (reference.raw_row_wise(rows) if row_wise else reference.raw(rows))
    assert list(p1) == list(p0)
    np.testing.assert_allclose(q1, q0, rtol=0, atol=1e-6)
    for start in range(0, len(rows), 97):  # one row at a time, as most requests come
        (p2, q2) = predictor.raw(rows[start:start + 1])
        assert list(p2) == list(p0[start:start + 1])
        np.testing.assert_allclose(q2, q0[start:start + 1], rtol=0, atol=1e-6)
    (labels, probabilities), (labels0, probabilities0) = predictor(rows), (
        (list(p0), list(np.round(q0[:, 1], 6))) if row_wise else reference(rows))
    assert labels == labels0  # what the API answers: rounded to 6 places, so one unit apart at most
    np.testing.assert_allclose(probabilities, probabilities0, rtol=0, atol=2e-6 + 1e-12)


@pytest.mark.slow
def test_qda_answers_each_row_as_alone_whatever_is_batched_with_it(registered, other_rows):
    """One-hot columns summing to one leave QDA's covariances singular: scikit-learn's own QDA then answers a row
    differently within a larger call than alone. The pipeline itself, micro-batched, would answer a request
    according to the requests that happened to arrive with it; the qda kernel answers every row as alone."""
    model, data, manifest = registered["qda"]
    rows = other_rows["qda"][:400]
    reference = PipelinePredictor(model)
    (_, q_batch), (p_alone, q_alone) = reference.raw(rows), reference.raw_row_wise(rows)
    assert np.max(np.abs(q_batch - q_alone)) > 1e-3  # the premise: the estimator's answer moves with the batch
    predictor = artifact.load(data, manifest)
    assert predictor.kernel.__name__ == "qda" and manifest["kernel_kind"] == "hand"
    p1, q1 = predictor.raw(rows)
    assert list(p1) == list(p_alone) and np.max(np.abs(q1 - q_alone)) <= 1e-9
    for start, size in ((0, 1), (5, 7), (100, 32)):  # the same rows in other batches: the same answers
        p2, q2 = predictor.raw(rows[start:start + size])
        assert list(p2) == list(p1[start:start + size])
        assert np.array_equal(q2, q1[start:start + size])


@pytest.mark.slow
def test_an_artifact_stored_before_issue_26_still_loads_its_row_wise_kernel(registered):
    """Artifacts stored before issue 26 hold the pipeline's answers row by row under "alone", not "row_wise"."""
    _, data, manifest = registered["qda"]
    payload = pickle.loads(data)
    payload["alone"] = payload.pop("row_wise")
    old = pickle.dumps(payload, protocol=5)
    predictor = artifact.load(old, {**manifest, "sha256": hashlib.sha256(old).hexdigest()})
    assert predictor.kernel_choice.kind == "hand" and predictor.kernel.__name__ == "qda"


@pytest.mark.slow
def test_every_step_kind_of_the_data_set_is_compiled(registered):
    """Imputers, the ordinal, one-hot and target encoders, and the renaming of columns PyCaret adds for names
    with a hyphen or a space."""
    model, data, manifest = registered["lr"]
    steps = {type(getattr(s, "transformer", s)).__name__ for _, s in model.model.steps}
    assert {"SimpleImputer", "OrdinalEncoder", "OneHotEncoder", "TargetEncoder", "CleanColumnNames"} <= steps, steps
    assert manifest["compiled"], manifest.get("reason")


def test_a_column_renaming_is_compiled_as_the_step_renames():
    """PyCaret's CleanColumnNames drops ``[]{},":`` from names: compiled into a Rename of those columns only."""
    from pycaret.internal.preprocess.transformers import CleanColumnNames

    from mlops_core.inference.compile import _renamer

    op = _renamer(CleanColumnNames(), ["a:b", "x b", "c[1]"])
    assert op.names == {"a:b": "ab", "c[1]": "c1"}
    cols = {"a:b": [1.0], "x b": [2.0], "c[1]": [3.0]}
    op(cols)
    assert cols == {"x b": [2.0], "ab": [1.0], "c1": [3.0]}
    assert _renamer(CleanColumnNames(), ["x-a", "x b"]) is None  # nothing to rename: no op


@pytest.mark.slow
def test_an_onnx_kernel_loads_with_onnx_runtime_alone_on_one_thread(registered, other_rows, tmp_path):
    """The server builds the session from the stored bytes: neither skl2onnx nor onnx (nor PyCaret) imported."""
    model, data, manifest = registered["gbc"]  # onnx serves it (no hand kernel)
    assert manifest["kernel"] == "onnx"
    (tmp_path / "predictor.pkl").write_bytes(data)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    rows = other_rows["gbc"][:300]
    code = (
        "import json, pathlib, sys\n"
        "from mlops_core.inference import artifact\n"
        f"folder = pathlib.Path({str(tmp_path)!r})\n"
        "predictor = artifact.load((folder / 'predictor.pkl').read_bytes(),"
        " json.loads((folder / 'manifest.json').read_text()))\n"
        f"answer = predictor(json.loads({json.dumps(json.dumps(rows))}))\n"
        "options = predictor.kernel.session.get_session_options()\n"
        "heavy = sorted(m for m in ('skl2onnx', 'onnx', 'pycaret', 'category_encoders') if m in sys.modules)\n"
        "print(json.dumps({'kernel': predictor.kernel.__name__, 'answer': answer, 'heavy': heavy,"
        " 'threads': [options.intra_op_num_threads, options.inter_op_num_threads],"
        " 'mode': str(options.execution_mode)}))\n")
    result = python_json(code)
    assert result["kernel"] == "onnx" and result["heavy"] == [], result["heavy"]
    assert result["threads"] == [1, 1] and result["mode"].endswith("ORT_SEQUENTIAL")
    labels, probabilities = PipelinePredictor(model)(rows)
    assert result["answer"][0] == labels
    np.testing.assert_allclose(result["answer"][1], probabilities, rtol=0, atol=2e-6 + 1e-12)


@pytest.mark.slow
def test_a_stored_kernel_that_fails_at_load_gives_way_to_the_next_verified_one(registered):
    model, data, manifest = registered["rf"]
    payload = pickle.loads(data)
    assert payload["kernels"] == list(manifest["kernels"]) == [manifest["kernel_kind"], *payload["kernels"][1:]]
    payload["onnx"], payload["kernels"] = (b"not an onnx graph", "<f4"), ["onnx", "hand", "generic"]
    damaged = pickle.dumps(payload, protocol=5)
    predictor = artifact.load(damaged, {**manifest, "sha256": hashlib.sha256(damaged).hexdigest()})
    assert predictor.kernel.__name__ == "forest"  # the ExtraTrees/RandomForest hand kernel
    assert predictor.kernel_choice.kind == "hand"
    assert predictor.kernel_choice.reason.startswith("hand verified (rejected: onnx: failed: ")
    assert "at registration: " in predictor.kernel_choice.reason


# -- the choice itself, with kernels and times made up -----------------------------------------------------------
class _Compiled:
    kernel = None


def _kernel(name: str):
    def kernel(x):
        return x, x
    kernel.__name__ = name
    return kernel


def _choose(times: dict[str, float], *, wrong=(), order=None, timed=True):
    makers = {kind: (lambda kind=kind: _kernel(kind)) for kind in times}
    compiled = _Compiled()

    def check(c):
        return "the compiled probabilities differ from the pipeline's by 0.15" if c.kernel.__name__ in wrong else None

    choice = kernels.choose_kernel(compiled, check, makers, timing=([1], 2) if timed else None, order=order,
                                   measure=lambda kernel, inputs: times[kernel.__name__] * 1e-6)
    return compiled, choice


def test_the_fastest_verified_kernel_serves_and_a_hand_kernel_only_when_clearly_faster():
    compiled, choice = _choose({"onnx": 10.0, "hand": 7.0, "generic": 150.0})  # hand 1.43x faster: onnx
    assert choice.kind == "onnx" and compiled.kernel.__name__ == "onnx"
    assert choice.ranking == ["onnx", "hand", "generic"]
    assert "(a hand kernel serves only when 1.5x faster)" in choice.reason
    compiled, choice = _choose({"onnx": 10.0, "hand": 6.0, "generic": 150.0})  # 1.67x faster: hand
    assert choice.kind == "hand" and compiled.kernel.__name__ == "hand"
    assert choice.report["onnx"]["us_1"] == 10.0 and choice.report["hand"]["us_32"] == 6.0
    compiled, choice = _choose({"onnx": 10.0, "hand": 6.0, "generic": 5.0})  # the estimator's own when fastest
    assert choice.kind == "generic"


def test_a_rejected_kernel_says_why_and_none_verified_says_each_reason():
    compiled, choice = _choose({"onnx": 1.0, "hand": 7.0, "generic": 150.0}, wrong={"onnx"})
    assert choice.kind == "hand" and choice.ranking == ["hand", "generic"]
    assert choice.reason.endswith("rejected: onnx: the compiled probabilities differ from the pipeline's by 0.15")
    assert "us_1" not in choice.report["onnx"]  # a kernel that does not verify is not timed
    compiled, choice = _choose({"onnx": 1.0, "generic": 2.0}, wrong={"onnx", "generic"})
    assert choice.kind is None and choice.reason.startswith("no kernel reproduces the pipeline (onnx: the compiled")


def test_at_load_the_stored_ranking_is_tried_in_order_and_the_generic_kernel_last():
    compiled, choice = _choose({"generic": 1.0, "hand": 7.0, "onnx": 3.0}, order=["generic", "hand", "onnx"],
                               timed=False)
    assert choice.kind == "hand" and list(choice.report) == ["hand"]  # the first that verifies; none timed
    compiled, choice = _choose({"generic": 1.0, "hand": 7.0, "onnx": 3.0}, order=["onnx"], wrong={"onnx"},
                               timed=False)  # only what verified at registration, then the generic kernel
    assert choice.kind == "generic" and list(choice.report) == ["onnx", "generic"]
    assert choice.reason.startswith("generic verified (rejected: onnx: the compiled")


def test_the_knn_kernel_leaves_a_tie_at_the_kth_neighbour_to_the_estimator():
    """Rows on a grid: many training rows as far from a query as its k-th nearest, of both classes. Which of them
    count is the library's choice: those rows are answered by the estimator's own methods, the others counted."""
    from sklearn.neighbors import KNeighborsClassifier

    from mlops_core.inference import libraries

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(300, 2)).astype(float)
    estimator = KNeighborsClassifier(n_neighbors=5).fit(x, rng.integers(0, 2, size=300))
    queries = np.vstack([x[:20], rng.normal(1.0, 2.0, size=(30, 2))])  # on the grid (ties), and off it
    kernel = libraries.hand_kernel(estimator)
    assert kernel.__name__ == "knn"
    labels, proba = kernel(queries)
    assert list(labels) == list(estimator.predict(queries))
    assert np.array_equal(proba, estimator.predict_proba(queries))
    for i in range(len(queries)):
        assert np.array_equal(kernel(queries[i:i + 1])[1], proba[i:i + 1])
    # the premise: counting any k of the rows tied at the k-th distance would answer otherwise on some rows
    naive = np.array([np.bincount(estimator._y[np.argsort(((x - q) ** 2).sum(axis=1), kind="stable")[:5]],
                                  minlength=2) / 5 for q in queries])
    assert not np.array_equal(naive, proba)
