"""Predictors: rows (dicts of a model's columns, already checked) → (predictions, probabilities to 6 places).

Predictions are the labels as they are in the data (strings stay strings). Probabilities: for two classes the
positive class's per row; for more, one list per row aligned with the predictor's ``labels.classes``.

Two kinds, one interface (``raw(rows)`` for verification, ``__call__(rows)`` for answers, ``compiled`` and
``reason`` for ``/models``): :class:`PipelinePredictor`, the registered pipeline itself, and
:class:`CompiledPredictor`, the pipeline's preprocessing as list operations feeding a kernel (see
:mod:`.compile`). :class:`ServedModel` is a loaded version together with the predictor that serves it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..labels import Labels
from ..registry import LoadedModel
from .ops import missing

__all__ = ["PipelinePredictor", "CompiledPredictor", "LazyPipeline", "ServedModel", "generic_kernel", "answer",
           "label_values", "is_regressor", "NUMERIC_TYPES", "UNSEEN", "missing", "to_frame"]

log = logging.getLogger(__name__)

NUMERIC_TYPES = {"double", "float", "long", "integer"}
FLOAT_TYPES = {"double", "float"}
UNSEEN = "\x00unseen category"  # a category no encoder can have seen
_NAN = float("nan")


def to_frame(rows: list[dict[str, Any]], model: LoadedModel):
    """Rows as a DataFrame in the one normalised form the pipelines were trained on (``data.normalise``)."""
    import pandas as pd

    from ..data import CATEGORICAL, NUMERIC, normalise

    kinds = {c: NUMERIC if model.dtypes.get(c, "") in FLOAT_TYPES else CATEGORICAL
             for c in model.columns if model.dtypes.get(c, "") in FLOAT_TYPES or model.dtypes.get(c, "") == "string"}
    return normalise(pd.DataFrame.from_records(rows, columns=model.columns), kinds)


def label_values(labels) -> list:
    """Labels (an array, a Series, a list) as Python values: ``str``, ``bool``, ``int``… as JSON gives them."""
    return [p.item() if isinstance(p, np.generic) else p for p in labels]


def answer(predictions, proba, labels: Labels | None) -> tuple[list, list | None]:
    """The served form: labels as Python values; the positive class's probability per row (two classes) or
    each row's probabilities aligned with ``labels.classes`` (more). A regression (no labels): the predicted
    numbers, no probabilities."""
    if labels is None:
        return [float(p) for p in predictions], None
    values = label_values(predictions)
    if labels.multiclass:
        return values, np.round(np.asarray(proba, dtype=float), 6).tolist()
    return values, [round(float(p), 6) for p in proba[:, labels.positive_column(labels.classes)]]


class PipelinePredictor:
    """The reference path: the registered pipeline's own ``predict`` and ``predict_proba`` on a DataFrame."""

    compiled = False

    def __init__(self, model, reason: str = ""):
        self.model = model
        self.reason = reason
        self.labels = model.labels
        self.task = "regression" if self.labels is None else "classification"
        pipeline = model.model
        steps = getattr(pipeline, "steps", None)
        # predict and predict_proba each run every preprocessing step; serving runs them once for both
        self._once = (pipeline[:-1], steps[-1][1]) if (
            steps and len(steps) > 1 and hasattr(pipeline, "inverse_transform")) else None

    def raw(self, rows: list[dict[str, Any]]):
        """The pipeline's own ``predict`` and ``predict_proba`` (the reference every other path is checked on;
        a regression's: ``predict`` and None)."""
        frame = to_frame(rows, self.model)
        if self.labels is None:
            return self.model.model.predict(frame), None
        return self.model.model.predict(frame), self.model.model.predict_proba(frame)

    def served(self, rows: list[dict[str, Any]]):
        """What :meth:`raw` gives, with the preprocessing run once: the steps' transform, then the estimator's
        ``predict`` (through the pipeline's ``inverse_transform`` of labels) and ``predict_proba`` on it, which
        is how the pipeline's own methods are written (PyCaret's and imblearn's)."""
        if self._once is None or self.labels is None:
            return self.raw(rows)
        preprocess, estimator = self._once
        features = preprocess.transform(to_frame(rows, self.model))
        return self.model.model.inverse_transform(estimator.predict(features)), estimator.predict_proba(features)

    def raw_row_wise(self, rows: list[dict[str, Any]]):
        """What :meth:`raw` gives on each row as a request of its own. The steps transform each row by itself,
        so they run once on all the rows; the estimator then answers row by row (a numerically sensitive one,
        such as QDA with near-singular covariances, answers a row otherwise within a larger call), on the row as
        the array its own input check would make of it (what it computes on is the same; pandas' cost a call
        is not paid a row)."""
        if self._once is None:
            answers = [self.raw([row]) for row in rows]
            return np.concatenate([p for p, _ in answers]), (
                None if self.labels is None else np.vstack([q for _, q in answers]))
        preprocess, estimator = self._once
        features = preprocess.transform(to_frame(rows, self.model))
        matrix = features.to_numpy() if hasattr(features, "to_numpy") else np.asarray(features)
        own = generic_kernel(estimator)
        labels, proba = [], []
        for i in range(len(rows)):
            predicted, probabilities = own(matrix[i:i + 1])
            labels.append(predicted)
            proba.append(probabilities)
        predictions = self.model.model.inverse_transform(np.concatenate(labels))
        return predictions, None if self.labels is None else np.vstack(proba)

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list]:
        predictions, proba = self.served(rows)
        return answer(predictions, proba, self.labels)


def is_regressor(estimator) -> bool:
    """Whether ``estimator`` predicts numbers (scikit-learn's ``_estimator_type``, which LightGBM's share)."""
    return getattr(estimator, "_estimator_type", None) == "regressor"


def generic_kernel(estimator):
    """``predict`` and ``predict_proba`` of a copy without ``feature_names_in_`` (sklearn warns, slowly, on arrays);
    a regressor's: ``predict`` and None."""
    est = copy.copy(estimator)
    if isinstance(getattr(est, "feature_names_in_", None), np.ndarray):
        del est.feature_names_in_
    if is_regressor(est):
        def generic_regression(x):
            return np.asarray(est.predict(x), dtype=np.float64).reshape(len(x)), None
        return generic_regression

    def generic(x):
        return est.predict(x), est.predict_proba(x)
    return generic


class CompiledPredictor:
    """Rows to a feature matrix by the compiled operations, then a kernel (the final estimator) on that matrix.

    Needs neither the pipeline nor the library that fitted it: ``ops`` are :mod:`.ops` objects and
    ``estimator`` the pipeline's final estimator. ``fallback`` answers a request the kernel fails on (never
    seen in verification), as the pipeline would: a :class:`PipelinePredictor`, or a loader of one.

    A kernel answers as the estimator does, with its ``classes_``: codes ``0..k-1`` when the pipeline
    label-encodes its target. ``labels`` are the pipeline's own (its classes in the estimator's order, the
    positive one): :meth:`raw` decodes the kernel's answers to them, so it answers as the pipeline's
    ``predict`` (strings, booleans, integers as in the data). Without ``labels`` (an artifact stored before
    labels of any kind), the estimator's classes are the labels. A regression (``task="regression"``) has no
    labels: its kernel answers ``(predicted numbers, None)``.
    """

    compiled = True
    reason = ""

    def __init__(self, columns: list[str], dtypes: dict[str, str], ops: list, layout: list[str], dtype, estimator,
                 kernel=None, fallback=None, own_transformers: list[str] | None = None, labels: Labels | None = None,
                 task: str = "classification"):
        self.columns, self.dtypes = list(columns), dict(dtypes)
        self.ops = ops
        self.layout = layout  # the estimator's input columns, in the pipeline's order
        self.dtype = np.dtype(dtype)
        self.estimator = estimator
        self.kernel = kernel or generic_kernel(estimator)
        self.kernel_choice = None  # a kernels.Choice: which kind of kernel serves, and why
        self.expected = None  # the pipeline's answers it was verified on (a compile.Expected)
        self.own_transformers = list(own_transformers or [])  # steps run by their fitted transformer (ops.Transform)
        self.onnx: tuple[bytes, str] | None = None  # the estimator as an ONNX graph, and the dtype it reads
        self.fallback = fallback
        numeric = {c for c in self.columns if self.dtypes.get(c, "") in NUMERIC_TYPES}
        self._numeric = [c for c in self.columns if c in numeric]
        self._strings = [c for c in self.columns if c not in numeric]
        self.task = task
        if task == "regression":
            self.labels, self._decode = None, None
            return
        codes = label_values(estimator.classes_)
        self.labels = labels if labels is not None else Labels.from_tags({}, codes)
        if len(self.labels.classes) != len(codes):
            raise ValueError(f"expected {len(codes)} classes, as the estimator has, got {list(self.labels.classes)}")
        same = all(type(a) is type(b) and a == b for a, b in zip(codes, self.labels.classes, strict=True))
        # the estimator's class -> the pipeline's label (None: they are the same)
        self._decode = None if same else dict(zip(codes, self.labels.classes, strict=True))

    def matrix(self, rows: list[dict[str, Any]]) -> np.ndarray:
        cols: dict[str, list] = {c: [_NAN if r[c] is None else float(r[c]) for r in rows] for c in self._numeric}
        for c in self._strings:
            cols[c] = [_NAN if r[c] is None else r[c] for r in rows]
        for op in self.ops:
            op(cols)
        return np.array([cols[c] for c in self.layout], dtype=self.dtype).T

    def raw(self, rows: list[dict[str, Any]]):
        """The pipeline's labels (decoded from the kernel's) and ``predict_proba`` matrix of ``rows``."""
        predictions, proba = self.kernel(self.matrix(rows))
        if self._decode is not None:
            decode, codes = self._decode, np.asarray(predictions).ravel().tolist()
            predictions = np.empty(len(codes), dtype=object)
            predictions[:] = [decode[p] for p in codes]
        return predictions, proba

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list]:
        try:
            predictions, proba = self.raw(rows)
        except Exception:  # never seen in verification: answer as the pipeline would (or fail as it would)
            if self.fallback is None:
                raise
            log.exception("compiled inference failed; answering through the pipeline")
            return self.fallback(rows)
        return answer(predictions, proba, self.labels)


class LazyPipeline:
    """The pipeline of a version, loaded (importing its AutoML library) only when first asked to answer."""

    compiled = False

    def __init__(self, load, reason: str = ""):
        import threading

        self._load = load  # () -> LoadedModel
        self._lock = threading.Lock()
        self._predictor: PipelinePredictor | None = None
        self.reason = reason

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list]:
        if self._predictor is None:
            with self._lock:
                if self._predictor is None:
                    log.warning("loading the pipeline to answer a request the compiled path failed on")
                    self._predictor = PipelinePredictor(self._load(), self.reason)
        return self._predictor(rows)


@dataclass
class ServedModel(LoadedModel):
    """A loaded version and the predictor chosen for it when it was loaded (compiled or the pipeline).

    ``source``: ``artifact`` (the compiled form stored at registration, loaded without the AutoML library) or
    ``pipeline`` (the pickled pipeline, loaded with it); ``note``: why the artifact was not used.
    """

    predictor: Any = None
    source: str = "pipeline"
    note: str = ""

    @property
    def labels(self) -> Labels:
        """The classes the predictor answers with (``probabilities``' order) and the positive class."""
        return self.predictor.labels

    @classmethod
    def of(cls, model: LoadedModel, predictor, *, source: str = "pipeline", note: str = "") -> ServedModel:
        """``model`` with ``predictor``, which answers for it."""
        return cls(**{name: getattr(model, name) for name in LoadedModel.__dataclass_fields__}, predictor=predictor,
                   source=source, note=note)
