"""Predictors: rows (dicts of a model's columns, already checked) → (predictions, P(class 1) to 6 places).

Two kinds, one interface (``raw(rows)`` for verification, ``__call__(rows)`` for answers, ``compiled`` and
``reason`` for ``/models``): :class:`PipelinePredictor`, the registered pipeline itself, and
:class:`CompiledPredictor`, the pipeline's preprocessing as list operations feeding a kernel (see
:mod:`.compile`). :class:`ServedModel` is a loaded version together with the predictor that serves it.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_core.registry import LoadedModel

__all__ = ["PipelinePredictor", "CompiledPredictor", "ServedModel", "generic_kernel", "positive_index",
           "NUMERIC_TYPES", "UNSEEN", "missing"]

log = logging.getLogger(__name__)

NUMERIC_TYPES = {"double", "float", "long", "integer"}
UNSEEN = "\x00unseen category"  # a category no encoder can have seen
_NAN = float("nan")


def missing(value: Any) -> bool:
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
        from ..predict import to_frame

        frame = to_frame(rows, self.model)
        return self.model.model.predict(frame), self.model.model.predict_proba(frame)

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        predictions, proba = self.raw(rows)
        return _answer(predictions, proba, positive_index(self.model.model, proba.shape[1]))


def generic_kernel(estimator):
    """``predict`` and ``predict_proba`` of a copy without ``feature_names_in_`` (sklearn warns, slowly, on arrays)."""
    est = copy.copy(estimator)
    if isinstance(getattr(est, "feature_names_in_", None), np.ndarray):
        del est.feature_names_in_

    def generic(x):
        return est.predict(x), est.predict_proba(x)
    return generic


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
        self.kernel = kernel or generic_kernel(estimator)
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



@dataclass
class ServedModel(LoadedModel):
    """A loaded version and the predictor chosen for it when it was loaded (compiled or the pipeline)."""

    predictor: Any = None

    @classmethod
    def of(cls, model: LoadedModel, predictor) -> ServedModel:
        return cls(**{name: getattr(model, name) for name in LoadedModel.__dataclass_fields__}, predictor=predictor)
