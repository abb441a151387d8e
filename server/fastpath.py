"""Compiled inference: a fitted PyCaret pipeline's known steps as plain array operations.

At load time :func:`build_predictor` walks the pipeline's preprocessing steps. Each
step it knows (scikit-learn's ``SimpleImputer``, category_encoders' ``OrdinalEncoder``
and ``OneHotEncoder``, scikit-learn's ``StandardScaler`` and ``MinMaxScaler``) becomes
an operation on Python lists, the encoders as lookup tables read off the fitted
encoder itself. The result feeds the final estimator as one numpy matrix. The
compiled path is then run beside the pipeline on probe rows (the Titanic table,
nulls, unseen categories, extreme numbers): the matrix must be identical, the
predictions equal and the probabilities within 1e-9. Any unknown step, any
difference, any error: the predictor is the pipeline itself.

A predictor is called with checked rows (dicts of the model's columns) and returns
``(predictions, probabilities of the positive class rounded to 6 places)``.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np

__all__ = ["build_predictor", "CompiledPredictor", "PipelinePredictor", "probe_rows", "UNSEEN"]

log = logging.getLogger(__name__)

NUMERIC_TYPES = {"double", "float", "long", "integer"}
UNSEEN = "\x00unseen category"  # a category no encoder can have seen
_NAN = float("nan")
_TOLERANCE = 1e-9


class Unsupported(Exception):
    """The pipeline holds something the compiler does not know: serve it as it is."""


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def positive_index(estimator: Any, n_columns: int) -> int:
    """The column of P(class 1) in ``predict_proba``'s answer (the last one without a class 1)."""
    classes = list(getattr(estimator, "classes_", [])) or list(range(n_columns))
    return classes.index(1) if 1 in classes else n_columns - 1


def _answer(predictions, proba, index: int) -> tuple[list, list[float]]:
    return ([p.item() if hasattr(p, "item") else p for p in predictions],
            [round(float(p), 6) for p in proba[:, index]])


class PipelinePredictor:
    """The reference path: the registered pipeline's own ``predict`` and ``predict_proba`` on a DataFrame."""

    compiled = False

    def __init__(self, model, reason: str = ""):
        self.model = model
        self.reason = reason

    def raw(self, rows: list[dict[str, Any]]):
        from .predict import to_frame

        frame = to_frame(rows, self.model)
        return self.model.model.predict(frame), self.model.model.predict_proba(frame)

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        predictions, proba = self.raw(rows)
        return _answer(predictions, proba, positive_index(self.model.model, proba.shape[1]))


# -- the compiler: one function per known transformer, each returning an op on a dict of column lists --
def _imputer(t, include: list[str]):
    from sklearn.impute import SimpleImputer

    if type(t) is not SimpleImputer or t.add_indicator or not _missing(t.missing_values):
        raise Unsupported(f"imputer {t!r}")
    if list(t.feature_names_in_) != include or len(t.statistics_) != len(include):
        raise Unsupported("imputer columns differ from the step's")
    fills = dict(zip(include, t.statistics_.tolist(), strict=True))
    if any(_missing(v) for v in fills.values()):
        raise Unsupported("an imputer column was all missing in training")

    def impute(cols: dict[str, list]) -> None:
        for name, fill in fills.items():
            cols[name] = [fill if _missing(v) else v for v in cols[name]]
    return impute


def _scaler(t, include: list[str]):
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if list(getattr(t, "feature_names_in_", [])) != include:
        raise Unsupported("scaler columns differ from the step's")
    if type(t) is StandardScaler:  # sklearn: X -= mean_; X /= scale_
        mean = t.mean_.tolist() if t.with_mean else [0.0] * len(include)
        scale = t.scale_.tolist() if t.with_std else [1.0] * len(include)
        ops = [(name, lambda v, m=m, s=s: (v - m) / s) for name, m, s in zip(include, mean, scale, strict=True)]
    elif type(t) is MinMaxScaler and not t.clip:  # sklearn: X *= scale_; X += min_
        ops = [(name, lambda v, m=m, s=s: v * s + m)
               for name, m, s in zip(include, t.min_.tolist(), t.scale_.tolist(), strict=True)]
    else:
        raise Unsupported(f"scaler {t!r}")

    def scale_columns(cols: dict[str, list]) -> None:
        for name, op in ops:
            cols[name] = [op(float(v)) for v in cols[name]]
    return scale_columns


def _encoder(t, include: list[str]):
    """A per-column category encoder as lookup tables, read off the fitted encoder on every category it knows."""
    import pandas as pd
    from category_encoders import OneHotEncoder, OrdinalEncoder

    if type(t) is OrdinalEncoder:
        known = {s["col"]: list(s["mapping"].index) for s in t.mapping}
        outputs = {col: [col] for col in known}
    elif type(t) is OneHotEncoder:
        known = {s["col"]: list(s["mapping"].index) for s in t.ordinal_encoder.mapping}
        outputs = {s["col"]: list(s["mapping"].columns) for s in t.mapping}
    else:
        raise Unsupported(f"encoder {type(t).__name__}")
    if list(t.feature_names_in_) != include or set(known) != set(include) or t.drop_invariant:
        raise Unsupported("encoder columns differ from the step's")
    tables = {}
    for col in include:
        categories = [c for c in known[col] if not _missing(c)]
        if not all(isinstance(c, str) for c in categories):
            raise Unsupported(f"non-string categories in {col!r}")
        probe = [*categories, _NAN, UNSEEN]
        frame = pd.DataFrame({c: probe if c == col else [categories[0] if categories else UNSEEN] * len(probe)
                              for c in include})
        out = t.transform(frame)[outputs[col]].to_numpy(dtype="float64").tolist()
        values = [tuple(row) for row in out]
        tables[col] = (dict(zip(categories, values, strict=False)), values[-2], values[-1])

    def encode(cols: dict[str, list]) -> None:
        for col, (table, when_missing, when_unseen) in tables.items():
            coded = [when_missing if _missing(v) else table.get(v, when_unseen) for v in cols.pop(col)]
            for j, name in enumerate(outputs[col]):
                cols[name] = [c[j] for c in coded]
    return encode


def _compile_step(step):
    from pycaret.internal.preprocess.transformers import TransformerWrapper
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if type(step) is not TransformerWrapper or step._include is None or step._exclude:
        raise Unsupported(f"step {type(step).__name__}")
    include = list(step._include)
    if not include:
        return None
    t = step.transformer
    if type(t).__name__ == "SimpleImputer":
        return _imputer(t, include)
    if type(t) in (StandardScaler, MinMaxScaler):
        return _scaler(t, include)
    return _encoder(t, include)


# -- kernels: the final estimator on the feature matrix, returning (predictions, probabilities) --
def _generic(estimator):
    """``predict`` and ``predict_proba`` of a copy without ``feature_names_in_`` (sklearn warns, slowly, on arrays)."""
    est = copy.copy(estimator)
    if isinstance(getattr(est, "feature_names_in_", None), np.ndarray):
        del est.feature_names_in_

    def generic(x):
        return est.predict(x), est.predict_proba(x)
    return generic


def _special(estimator):
    """A cheaper kernel doing what the estimator's own ``predict``/``predict_proba`` do (scikit-learn
    1.4, LightGBM 4), minus their per-call input validation, which costs more than the model on
    one row; None for other estimators. Non-finite features, which that validation would reject,
    raise, so that the pipeline answers (or fails) as it would.
    """
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    kind = type(estimator)
    if kind is DecisionTreeClassifier and estimator.n_outputs_ == 1:
        tree, n, classes = estimator.tree_, estimator.n_classes_, estimator.classes_

        def decision_tree(x):  # predict: classes_.take(argmax(tree_.predict)); predict_proba: its first n columns
            raw = tree.predict(_float32(x))
            return classes.take(np.argmax(raw, axis=1), axis=0), raw[:, :n]
        return decision_tree
    if isinstance(estimator, ForestClassifier) and estimator.n_outputs_ == 1 and all(
            type(e) is DecisionTreeClassifier for e in estimator.estimators_):
        trees = [(e.tree_, e.n_classes_) for e in estimator.estimators_]
        n, classes = estimator.n_classes_, estimator.classes_

        def forest(x):  # every tree's predict_proba added in order, then / n_estimators; predict: the argmax
            x32 = _float32(x)
            proba = np.zeros((x32.shape[0], n), dtype=np.float64)
            for tree, k in trees:
                proba += tree.predict(x32)[:, :k]
            proba /= len(trees)
            return classes.take(np.argmax(proba, axis=1), axis=0), proba
        return forest
    if kind is LogisticRegression and estimator.classes_.size == 2 and (
            estimator.multi_class in ("ovr", "warn", "auto")):  # binary: predict_proba is the ovr expit
        from scipy.special import expit

        coef, intercept, classes = estimator.coef_.T, estimator.intercept_, estimator.classes_

        def logistic(x):  # decision = x @ coef_.T + intercept_; predict: decision > 0
            if not np.isfinite(x).all():
                raise ValueError("non-finite features")
            decision = (x @ coef + intercept).reshape(-1)
            prob = expit(decision)
            return classes.take((decision > 0).astype(int), axis=0), np.vstack([1 - prob, prob]).T
        return logistic
    if type(estimator).__name__ == "LGBMClassifier" and estimator.n_classes_ == 2 and not callable(estimator.objective):
        return _lightgbm(estimator)
    return None


def _float32(x: np.ndarray) -> np.ndarray:
    """Features as the trees read them (float32), refusing what their input check refuses."""
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise ValueError("non-finite features")
    return x32


def _lightgbm(estimator):
    """LGBMClassifier.predict_proba without its per-call cost.

    Booster.predict builds an _InnerPredictor from the fitted params on every call (copied
    and formatted, about 20 us) and LightGBM parses that string again on every call (another
    20 us). Here the predictor is built once, with the prediction parameters only (LightGBM's
    "Predict Parameters" and num_threads: the others do not change a prediction, and
    verification proves it). Batches of up to :data:`SINGLE_ROWS` rows go through LightGBM's
    single-row fast API instead (3 us a row against 17 us a call). Probabilities are stacked
    as (1 - p, p); predict is their argmax through the classifier's label table
    (LabelEncoder.inverse_transform's).
    """
    from lightgbm.basic import _ConfigAliases, _InnerPredictor, _param_dict_to_str
    from lightgbm.sklearn import _choose_param_value

    params = estimator._process_params(stage="predict")
    params = _choose_param_value("num_threads", params, estimator.n_jobs)
    params["num_threads"] = estimator._process_n_jobs(params["num_threads"])
    wanted = _ConfigAliases.get("num_threads", "predict_disable_shape_check", "pred_early_stop",
                                "pred_early_stop_freq", "pred_early_stop_margin")
    params = {k: copy.deepcopy(v) for k, v in params.items() if k in wanted}
    booster, classes = estimator.booster_, estimator._le.classes_
    predictor = _InnerPredictor.from_booster(booster, params)  # shares the booster's handle
    iterations = booster.best_iteration  # Booster.predict's default when num_iteration is None
    single = _LightGBMSingleRow(booster, iterations, _param_dict_to_str(params))

    def lightgbm(x, booster=booster):  # the booster is held here: the predictors do not own its handle
        if len(x) <= SINGLE_ROWS and x.dtype == np.float64:
            p = np.array([single(row) for row in x.tolist()])
        else:
            p = predictor.predict(x, num_iteration=iterations)
        proba = np.empty((len(p), 2))
        proba[:, 0], proba[:, 1] = 1.0 - p, p
        return classes[np.argmax(proba, axis=1)], proba
    lightgbm.single_rows = SINGLE_ROWS  # verify() checks that path row by row too
    return lightgbm


SINGLE_ROWS = 16  # batches up to this size are predicted row by row through LightGBM's fast API


def _free_fast_config(config, booster) -> None:
    from lightgbm.basic import _LIB

    _LIB.LGBM_FastConfigFree(config)


class _LightGBMSingleRow:
    """P(class 1) of one row of float64 features by LGBM_BoosterPredictForMatSingleRowFast.

    The call is made through ``ctypes.PyDLL``, which keeps the GIL for its 2-3 us: no hand-off
    to another thread and back. The output buffers are the call's own: with shared ones a thread
    switch between the call and the read could hand a request another request's probability.
    """

    def __init__(self, booster, iterations: int, parameters: str):
        import ctypes
        import weakref

        from lightgbm.basic import _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL, _LIB, _c_str, _safe_call

        self._ctypes = ctypes
        self.ncol = booster.num_feature()
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_C_API_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(iterations),
            ctypes.c_int(_C_API_DTYPE_FLOAT64), ctypes.c_int32(self.ncol), _c_str(parameters),
            ctypes.byref(self._config)))
        # freed with this object; the finalizer holds the booster, so its handle is freed after the config
        weakref.finalize(self, _free_fast_config, self._config, booster)
        self._predict = ctypes.PyDLL(_LIB._name).LGBM_BoosterPredictForMatSingleRowFast
        self._row_type, self._out_type = ctypes.c_double * self.ncol, ctypes.c_double * 1

    def __call__(self, row: list[float]) -> float:
        out, out_len = self._out_type(), self._ctypes.c_int64(0)
        if len(row) != self.ncol or self._predict(self._config, self._row_type(*row), self._ctypes.byref(out_len),
                                                 out) != 0 or out_len.value != 1:
            from lightgbm.basic import _LIB

            raise RuntimeError(f"LightGBM single-row predict failed: {_LIB.LGBM_GetLastError().decode()}")
        return out[0]


class CompiledPredictor:
    """Rows to a feature matrix by the compiled steps, then the final estimator on that matrix."""

    compiled = True
    reason = ""

    def __init__(self, model, ops: list, layout: list[str], dtype, estimator, kernel=None):
        self.model = model
        self.ops = ops
        self.layout = layout  # the estimator's input columns, in the pipeline's order
        self.dtype = dtype
        self.estimator = estimator
        self.kernel = kernel or _generic(estimator)
        self.fallback = PipelinePredictor(model)
        numeric = {c for c in model.columns if model.dtypes.get(c, "") in NUMERIC_TYPES}
        self._numeric = [c for c in model.columns if c in numeric]
        self._strings = [c for c in model.columns if c not in numeric]
        self._index: int | None = None

    def matrix(self, rows: list[dict[str, Any]]) -> np.ndarray:
        cols: dict[str, list] = {c: [_NAN if r[c] is None else float(r[c]) for r in rows] for c in self._numeric}
        for c in self._strings:
            cols[c] = [_NAN if r[c] is None else r[c] for r in rows]
        for op in self.ops:
            op(cols)
        return np.array([cols[c] for c in self.layout], dtype=self.dtype).T

    def raw(self, rows: list[dict[str, Any]]):
        return self.kernel(self.matrix(rows))

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        try:
            predictions, proba = self.raw(rows)
        except Exception:  # never seen in verification: answer as the pipeline would (or fail as it would)
            log.exception("compiled inference failed; answering through the pipeline")
            return self.fallback(rows)
        if self._index is None:
            self._index = positive_index(self.estimator, proba.shape[1])
        return _answer(predictions, proba, self._index)


def compile_pipeline(model) -> CompiledPredictor:
    """The compiled predictor of ``model`` (a LoadedModel), or :class:`Unsupported`; not yet verified."""
    pipeline = model.model
    steps = getattr(pipeline, "steps", None)
    if not steps or not hasattr(steps[-1][1], "predict_proba"):
        raise Unsupported("not a pipeline ending in a classifier")
    if any(model.dtypes.get(c, "") not in NUMERIC_TYPES | {"string"} for c in model.columns):
        raise Unsupported(f"column types {sorted(set(model.dtypes.values()))}")
    ops = []
    for _, step in steps[:-1]:
        if step is None or step == "passthrough" or getattr(step, "_train_only", False):
            continue
        op = _compile_step(step)
        if op is not None:
            ops.append(op)
    from .predict import to_frame

    sample = pipeline[:-1].transform(to_frame(probe_rows(model)[:5], model))
    kinds = set(sample.dtypes.map(lambda d: d.kind))
    if not kinds <= {"f", "i", "u", "b"}:
        raise Unsupported(f"the estimator receives non-numeric columns ({sample.dtypes.to_dict()})")
    dtype = np.result_type(*sample.dtypes)
    if any(d != dtype and d.kind == "f" and d.itemsize < dtype.itemsize for d in sample.dtypes):
        raise Unsupported("mixed float widths")
    return CompiledPredictor(model, ops, list(sample.columns), dtype, steps[-1][1])


def verify(compiled: CompiledPredictor, fallback: PipelinePredictor, rows: list[dict[str, Any]]) -> str | None:
    """None when the compiled path answers exactly as the pipeline on ``rows``; else what differed."""
    from .predict import to_frame

    expected = compiled.model.model[:-1].transform(to_frame(rows, compiled.model)).to_numpy(dtype=compiled.dtype)
    got = compiled.matrix(rows)
    if got.shape != expected.shape or not np.array_equal(got, expected, equal_nan=True):
        return "the compiled features differ from the pipeline's"
    (p1, q1), (p0, q0) = compiled.raw(rows), fallback.raw(rows)
    problem = _compare(p1, q1, p0, q0, "")
    if problem is not None:
        return problem
    # small requests may take another path through the kernel: check them too, in the sizes served
    small = getattr(compiled.kernel, "single_rows", 0)
    picks = range(len(rows)) if small else range(0, len(rows), max(1, len(rows) // 32))
    for size in sorted({1, small or 1}):
        for start in picks[::size]:
            chunk = rows[start:start + size]
            p2, q2 = compiled.raw(chunk)
            problem = _compare(p2, q2, p0[start:start + len(chunk)], q0[start:start + len(chunk)],
                               f" (a request of {len(chunk)} rows)")
            if problem is not None:
                return problem
    return None


def _compare(p1, q1, p0, q0, where: str) -> str | None:
    if q1.shape != q0.shape or list(p1) != list(p0):
        return f"the compiled predictions differ from the pipeline's{where}"
    worst = float(np.max(np.abs(q1 - q0))) if q0.size else 0.0
    if not worst <= _TOLERANCE:
        return f"the compiled probabilities differ from the pipeline's by {worst:.3g}{where}"
    return None


def probe_rows(model, base: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows to verify on: ``base`` (default: the Titanic table's rows), each column null, unseen or extreme."""
    if base is None:
        base = _titanic_rows(model)
    numeric = {c for c in model.columns if model.dtypes.get(c, "") in NUMERIC_TYPES}
    if not base:
        base = [{c: 1.0 if c in numeric else "a" for c in model.columns}]
    edges = [{c: None for c in model.columns}]
    for row in base[:20]:
        for c in model.columns:
            for value in ((None, 0, -1, 10 ** 9) if c in numeric else (None, UNSEEN, "")):
                edges.append({**row, c: value})
    return [*base, *edges]


def _titanic_rows(model) -> list[dict[str, Any]]:
    import pandas as pd

    from mlops_core.data import load_titanic

    frame = load_titanic()
    if not set(model.columns) <= set(frame.columns):
        return []
    rows = []
    for record in frame[model.columns].astype(object).to_dict("records"):
        row = {}
        for c, v in record.items():
            if pd.isna(v):
                row[c] = None
            elif model.dtypes.get(c) in ("long", "integer"):
                row[c] = int(v)
            elif model.dtypes.get(c) in NUMERIC_TYPES:
                row[c] = float(v)
            else:
                row[c] = str(v)
        rows.append(row)
    return rows


def build_predictor(model, *, probe: list[dict[str, Any]] | None = None):
    """The compiled predictor when it answers exactly as the pipeline on the probe rows, else the pipeline.

    The estimator's special kernel is tried first, then its plain ``predict``/``predict_proba``.
    """
    fallback = PipelinePredictor(model)
    version = getattr(model, "version", "?")
    try:
        compiled = compile_pipeline(model)
        rows = probe if probe is not None else probe_rows(model)
        problem = "no kernel"
        for make in (_special, _generic):
            try:
                kernel = make(compiled.estimator)
                if kernel is None:
                    continue
                compiled.kernel = kernel
                problem = verify(compiled, fallback, rows)
            except Exception as err:  # e.g. a library without the private API a special kernel uses
                log.warning("version %s: the %s kernel failed: %s: %s", version, make.__name__.strip("_"),
                            type(err).__name__, err)
                problem = f"the {make.__name__.strip('_')} kernel failed: {type(err).__name__}: {err}"
            if problem is None:
                break
    except Unsupported as err:
        problem = f"not compiled: {err}"
    except Exception as err:  # a compiler bug must never stop a model from serving
        log.exception("compiling version %s failed", version)
        problem = f"compiling failed: {type(err).__name__}: {err}"
    if problem is None:
        log.info("version %s: compiled inference path verified", version)
        return compiled
    log.warning("version %s: serving through the pipeline (%s)", version, problem)
    fallback.reason = problem
    return fallback


# -- serving: a predictor per loaded model, and micro-batching of the requests of one worker --
class _Job:
    __slots__ = ("model", "rows", "answer", "error", "done", "wake")

    def __init__(self, model, rows):
        import _thread

        self.model, self.rows = model, rows
        self.answer, self.error, self.done = None, None, False
        self.wake = _thread.allocate_lock()  # held until the job is answered or made the runner
        self.wake.acquire()


class Batcher:
    """Requests of one worker share a predict call: one runner at a time takes every queued request.

    A request arriving while no batch runs becomes the runner. Requests arriving while
    a batch runs queue; when it ends, the runner hands the queue to the first of them,
    which runs the next batch. Before running, a runner lingers up to ``wait`` seconds
    for as many requests as the previous batch held (none when it held one, so a lone
    request never waits). Each waiting request is woken once, by its own lock: when
    answered, or when made the runner. Each model (arm) of a batch gets its own call,
    on its own rows only.
    """

    def __init__(self, predict, *, wait: float = 0.001):
        import threading

        self._predict = predict  # (model, rows) -> (predictions, probabilities)
        self.wait = wait
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # only a lingering runner waits on it
        self._queue: list[_Job] = []
        self._busy = False  # a runner exists (lingering, running, or being handed the queue)
        self._lingering = False
        self._last = 1  # size of the previous batch

    def __call__(self, model, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        job = _Job(model, rows)
        with self._lock:
            self._queue.append(job)
            runner = not self._busy
            self._busy = True
            if self._lingering and len(self._queue) >= self._last:
                self._arrived.notify()
        if not runner:
            job.wake.acquire()  # answered, or handed the queue
            if not job.done:
                runner = True
        if runner:
            self._run_next(job)
        if job.error is not None:
            raise job.error
        return job.answer

    def _run_next(self, own: _Job) -> None:
        """Linger, take the queue (``own`` job first), predict it, then hand over to the next queued request."""
        import time

        with self._lock:
            if self.wait > 0 and len(self._queue) < self._last:
                self._lingering = True
                deadline = time.monotonic() + self.wait
                while len(self._queue) < self._last and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
                self._lingering = False
            batch, self._queue, self._last = self._queue, [], len(self._queue)
        following = None
        try:
            self._run(batch)
        finally:
            for j in batch:
                if not j.done:  # the runner was interrupted
                    j.error, j.done = RuntimeError("the shared predict call was interrupted"), True
            with self._lock:
                if self._queue:
                    following = self._queue[0]  # stays busy: the next runner is named
                else:
                    self._busy = False
            for j in batch:
                if j is not own:
                    j.wake.release()
            if following is not None:
                following.wake.release()

    def _run(self, batch: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in batch:
            groups.setdefault(id(job.model), []).append(job)
        for jobs in groups.values():
            try:
                predictions, probabilities = self._predict(jobs[0].model, [r for j in jobs for r in j.rows])
            except Exception as err:  # each request answers its own error
                for j in jobs:
                    j.error, j.done = err, True
                continue
            start = 0
            for j in jobs:
                end = start + len(j.rows)
                j.answer, j.done = (predictions[start:end], probabilities[start:end]), True
                start = end


class Serving:
    """How this app predicts: compiled or pipeline predictors, called directly or micro-batched.

    From the settings ``fastpath`` (``compiled``, the default, or ``pipeline``) and ``batch_wait_ms``
    (micro-batching; ``off`` or a wait in milliseconds).
    """

    def __init__(self, *, compiled: bool = True, batch_wait: float | None = None):
        self.compiled = compiled
        self.batch_wait = batch_wait
        self._call = Batcher(self._direct, wait=batch_wait) if batch_wait is not None else self._direct

    @classmethod
    def from_settings(cls, settings) -> Serving:
        return cls(compiled=settings.fastpath == "compiled", batch_wait=settings.batch_wait_seconds)

    def prepare(self, model) -> None:
        """Build the model's predictor once, at load time (the store calls this for every version it loads)."""
        model.predictor = build_predictor(model) if self.compiled else PipelinePredictor(model, "MLOPS_FASTPATH")

    def _direct(self, model, rows):
        predictor = getattr(model, "predictor", None)
        if predictor is None:
            self.prepare(model)
            predictor = model.predictor
        return predictor(rows)

    def __call__(self, model, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        """Predictions and P(class 1) (6 places) of ``rows`` by ``model``."""
        return self._call(model, rows)

