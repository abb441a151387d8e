"""The compiler: a fitted PyCaret pipeline's known steps as plain list operations, verified against the pipeline.

:func:`build_predictor` walks the pipeline's preprocessing steps. Each step it knows (scikit-learn's
``SimpleImputer``, ``StandardScaler`` and ``MinMaxScaler``, category_encoders' ``OrdinalEncoder``,
``OneHotEncoder`` and ``TargetEncoder``, PyCaret's ``CleanColumnNames``) becomes an operation on Python lists,
the encoders as lookup tables read off the fitted encoder itself. The result feeds the final estimator as one
numpy matrix, through the fastest kernel that answers as the estimator (:mod:`.kernels`: its ONNX graph, a
hand kernel of :mod:`.libraries`, else its own methods). The compiled path is then run beside the pipeline on
probe rows (nulls, unseen categories, extreme numbers): the matrix must be identical, the predictions equal
(labels as the pipeline's ``predict`` gives them: strings, booleans, integers) and every class's probability
within 1e-9 (1e-6 through ONNX Runtime). The target's encoder PyCaret adds is not compiled: the kernel answers
its codes and the compiled predictor decodes them. A step it has no operation for runs its own fitted
transformer between the operations (:class:`~.ops.Transform`) when it can run alone. A step that cannot, any
difference, any error: the predictor is the pipeline itself, with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .kernels import candidates, choose_kernel, convert_onnx
from .libraries import pycaret_labels_only, pycaret_renames, pycaret_step
from .ops import Encode, Impute, MinMax, Rename, Standardise, Transform
from .predictors import (
    NUMERIC_TYPES,
    UNSEEN,
    CompiledPredictor,
    PipelinePredictor,
    is_regressor,
    label_values,
    missing,
    to_frame,
)

__all__ = ["build_predictor", "compile_pipeline", "Expected", "check_features", "check_outputs", "probe_rows",
           "rows_of", "same_labels", "Unsupported"]

log = logging.getLogger(__name__)

_NAN = float("nan")
_TOLERANCE = 1e-9


class Unsupported(Exception):
    """The pipeline holds something the compiler does not know: serve it as it is."""


# -- the compiler: one function per known transformer, each returning an op (mlops_core.inference.ops) --
def _imputer(t, include: list[str]):
    from sklearn.impute import SimpleImputer

    if type(t) is not SimpleImputer or t.add_indicator or not missing(t.missing_values):
        raise Unsupported(f"imputer {t!r}")
    if list(t.feature_names_in_) != include or len(t.statistics_) != len(include):
        raise Unsupported("imputer columns differ from the step's")
    fills = dict(zip(include, t.statistics_.tolist(), strict=True))
    if any(missing(v) for v in fills.values()):
        raise Unsupported("an imputer column was all missing in training")

    return Impute(fills)


def _scaler(t, include: list[str]):
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    if list(getattr(t, "feature_names_in_", [])) != include:
        raise Unsupported("scaler columns differ from the step's")
    if type(t) is StandardScaler:  # sklearn: X -= mean_; X /= scale_
        mean = t.mean_.tolist() if t.with_mean else [0.0] * len(include)
        scale = t.scale_.tolist() if t.with_std else [1.0] * len(include)
        return Standardise(list(zip(include, mean, scale, strict=True)))
    if type(t) is MinMaxScaler and not t.clip:  # sklearn: X *= scale_; X += min_
        return MinMax(list(zip(include, t.min_.tolist(), t.scale_.tolist(), strict=True)))
    raise Unsupported(f"scaler {t!r}")


def _encoder(t, include: list[str]):
    """A per-column category encoder as lookup tables, read off the fitted encoder on every category it knows."""
    import pandas as pd
    from category_encoders import OneHotEncoder, OrdinalEncoder, TargetEncoder

    if type(t) is OrdinalEncoder:
        known = {s["col"]: list(s["mapping"].index) for s in t.mapping}
        outputs = {col: [col] for col in known}
    elif type(t) is OneHotEncoder:
        known = {s["col"]: list(s["mapping"].index) for s in t.ordinal_encoder.mapping}
        outputs = {s["col"]: list(s["mapping"].columns) for s in t.mapping}
    elif type(t) is TargetEncoder:  # PyCaret's encoder of categoricals with many levels: one smoothed mean each
        known = {s["col"]: list(s["mapping"].index) for s in t.ordinal_encoder.mapping}
        outputs = {col: [col] for col in known}
    else:
        raise Unsupported(f"encoder {type(t).__name__}")
    if list(t.feature_names_in_) != include or set(known) != set(include) or t.drop_invariant:
        raise Unsupported("encoder columns differ from the step's")
    tables = {}
    for col in include:
        categories = [c for c in known[col] if not missing(c)]
        if not all(isinstance(c, str) for c in categories):
            raise Unsupported(f"non-string categories in {col!r}")
        probe = [*categories, _NAN, UNSEEN]
        frame = pd.DataFrame({c: probe if c == col else [categories[0] if categories else UNSEEN] * len(probe)
                              for c in include})
        out = t.transform(frame)[outputs[col]].to_numpy(dtype="float64").tolist()
        values = [tuple(row) for row in out]
        tables[col] = (dict(zip(categories, values, strict=False)), values[-2], values[-1])

    return Encode(tables, {col: outputs[col] for col in include})


def _renamer(t, include: list[str]):
    """The new name of each column whose name changes, read off the step itself (on a frame without rows)."""
    import pandas as pd

    renamed = [str(c) for c in t.transform(pd.DataFrame(columns=include)).columns]
    if len(renamed) != len(include) or len(set(renamed)) != len(renamed):
        raise Unsupported("a column renaming that merges columns")
    names = {old: new for old, new in zip(include, renamed, strict=True) if old != new}
    return Rename(names) if names else None


def _compile_step(step):
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    wrapped = pycaret_step(step)
    if wrapped is None:
        raise Unsupported(f"step {type(step).__name__}")
    include, t = wrapped
    if not include:
        return None
    if pycaret_renames(t):
        return _renamer(t, include)
    if type(t).__name__ == "SimpleImputer":
        return _imputer(t, include)
    if type(t) in (StandardScaler, MinMaxScaler):
        return _scaler(t, include)
    return _encoder(t, include)


def compile_pipeline(model) -> CompiledPredictor:
    """The compiled predictor of ``model`` (a LoadedModel), or :class:`Unsupported`; not yet verified."""
    pipeline = model.model
    steps = getattr(pipeline, "steps", None)
    regression = model.labels is None
    if regression:
        if not steps or not is_regressor(steps[-1][1]):
            raise Unsupported("not a pipeline ending in a regressor")
        if any(pycaret_labels_only(step) for _, step in steps[:-1]):  # PyCaret's transform_target=True
            raise Unsupported("the pipeline transforms the target (transform_target): its inverse is not compiled")
    elif not steps or not hasattr(steps[-1][1], "predict_proba"):
        raise Unsupported("not a pipeline ending in a classifier")
    if any(model.dtypes.get(c, "") not in NUMERIC_TYPES | {"string"} for c in model.columns):
        raise Unsupported(f"column types {sorted(set(model.dtypes.values()))}")
    ops, own = [], []
    probe = to_frame(probe_rows(model)[:5], model)
    for i, (name, step) in enumerate(steps[:-1]):
        if step is None or step == "passthrough" or getattr(step, "_train_only", False) or pycaret_labels_only(step):
            continue  # the target's encoder: the kernel's codes are decoded to the pipeline's labels instead
        try:
            op = _compile_step(step)
        except Unsupported as err:  # no operation for it: run its own fitted transformer, when it can be alone
            op = _own_transformer(step, pipeline[:i].transform(probe) if i else probe, err)
            own.append(f"{name} ({type(op.transformer).__name__})")
        if op is not None:
            ops.append(op)
    sample = pipeline[:-1].transform(probe)
    kinds = set(sample.dtypes.map(lambda d: d.kind))
    if not kinds <= {"f", "i", "u", "b"}:
        raise Unsupported(f"the estimator receives non-numeric columns ({sample.dtypes.to_dict()})")
    dtype = np.result_type(*sample.dtypes)
    if any(d != dtype and d.kind == "f" and d.itemsize < dtype.itemsize for d in sample.dtypes):
        raise Unsupported("mixed float widths")
    estimator, labels = steps[-1][1], model.labels
    if regression:
        return CompiledPredictor(model.columns, model.dtypes, ops, list(sample.columns), dtype, estimator,
                                 fallback=PipelinePredictor(model), own_transformers=own, task="regression")
    if len(labels.classes) != np.size(getattr(estimator, "classes_", ())):
        raise Unsupported(f"expected one estimator class for each of the pipeline's classes {list(labels.classes)}, "
                          f"got {np.size(getattr(estimator, 'classes_', ()))}")
    return CompiledPredictor(model.columns, model.dtypes, ops, list(sample.columns), dtype, estimator,
                             fallback=PipelinePredictor(model), own_transformers=own, labels=labels)


def _own_transformer(step, before, unknown: Unsupported) -> Transform:
    """A step the compiler has no operation for, as a :class:`~.ops.Transform` of its fitted transformer: what
    PyCaret's wrapper gives it (the columns it includes) or, for a plain step, every column. ``before``: the
    pipeline's frame as the step receives it (a few probe rows). Raises ``unknown`` when the step cannot run
    alone: a wrapper this PyCaret version does not let us read, a transformer of PyCaret's own (serving it would
    import PyCaret), a transformer that drops or adds rows, or answers an array whose columns it does not name."""
    import pandas as pd

    wrapped = pycaret_step(step)
    include, transformer = wrapped if wrapped is not None else (list(before.columns), step)
    if type(transformer).__module__.split(".")[0] == "pycaret" or not hasattr(transformer, "transform"):
        raise unknown
    out = transformer.transform(before[include])
    if isinstance(out, pd.DataFrame):
        names, produced = None, [str(c) for c in out.columns]
    elif isinstance(out, np.ndarray) and out.ndim == 2:
        if hasattr(transformer, "get_feature_names_out"):  # how PyCaret's wrapper names an array's columns
            names = [str(c) for c in transformer.get_feature_names_out()]
        elif out.shape[1] == len(include):
            names = list(include)
        else:
            raise unknown
        produced = names
    else:
        raise unknown
    kept = [c for c in before.columns if c not in include]
    if len(out) != len(before) or len(produced) != out.shape[1] or set(produced) & set(kept):
        raise unknown
    return Transform(transformer, include, {c: str(before[c].dtype) for c in include}, names)


class Expected:
    """The pipeline's answers on the probe rows, which a kernel must reproduce: on all of them in one call
    (``predictions``, ``probabilities``) and on each row as a request of its own (:meth:`row_wise`), which a
    ``row_wise`` kernel is checked on instead (one that answers each row as the estimator answers it alone, for an
    estimator whose answer on a row moves with the rows beside it). ``row_wise`` is the pair, a function computing
    it (at registration, called only when a row-wise kernel asks), or None (not stored)."""

    def __init__(self, predictions, probabilities, row_wise=None):
        self.predictions, self.probabilities = np.asarray(predictions), _proba(probabilities)
        self._row_wise = row_wise

    def row_wise(self):
        if callable(self._row_wise):
            predictions, probabilities = self._row_wise()
            self._row_wise = np.asarray(predictions), _proba(probabilities)
        return self._row_wise

    @property
    def row_wise_computed(self):
        """The answers row by row when they were computed (or stored), else None."""
        return None if callable(self._row_wise) else self._row_wise


def _proba(probabilities):
    """Probabilities as a float64 matrix; None (a regression's) stays None."""
    return None if probabilities is None else np.asarray(probabilities, dtype=np.float64)


def check_features(compiled: CompiledPredictor, fallback: PipelinePredictor, rows: list[dict[str, Any]]) -> str | None:
    """None when the compiled operations give the feature matrix the pipeline's steps give on ``rows``."""
    model = fallback.model
    expected = model.model[:-1].transform(to_frame(rows, model)).to_numpy(dtype=compiled.dtype)
    got = compiled.matrix(rows)
    if got.shape != expected.shape or not np.array_equal(got, expected, equal_nan=True):
        return "the compiled features differ from the pipeline's"
    return None


def check_outputs(compiled: CompiledPredictor, rows: list[dict[str, Any]], expected: Expected) -> str | None:
    """None when the compiled path gives the pipeline's answers (``expected``) on ``rows``, in one batch and in
    the request sizes its kernel treats differently; else what differed. Probabilities may differ by the kernel's
    ``tolerance`` (ONNX Runtime's: 1e-6), else by 1e-9; a regression's predictions within that, relative
    (:func:`_compare_numbers`). A ``row_wise`` kernel is checked on the pipeline's
    answers on each row alone."""
    tolerance = getattr(compiled.kernel, "tolerance", _TOLERANCE)
    if getattr(compiled.kernel, "row_wise", False):
        if expected.row_wise() is None:
            return "the pipeline's answers on each row alone were not stored"
        p0, q0 = expected.row_wise()
    else:
        p0, q0 = expected.predictions, expected.probabilities
    p1, q1 = compiled.raw(rows)
    problem = _compare(p1, q1, p0, q0, "", tolerance)
    if problem is not None:
        return problem
    # small requests may take another path through the kernel: check them too, in the sizes served
    small = getattr(compiled.kernel, "single_rows", 0)
    picks = range(len(rows)) if small else range(0, len(rows), max(1, len(rows) // 32))
    for size in sorted({1, small or 1}):
        for start in picks[::size]:
            chunk = rows[start:start + size]
            p2, q2 = compiled.raw(chunk)
            problem = _compare(p2, q2, p0[start:start + len(chunk)],
                               None if q0 is None else q0[start:start + len(chunk)],
                               f" (a request of {len(chunk)} rows)", tolerance)
            if problem is not None:
                return problem
    return None


def _compare(p1, q1, p0, q0, where: str, tolerance: float) -> str | None:
    if q0 is None or q1 is None:  # a regression: numbers, no probabilities
        return _compare_numbers(p1, q1, p0, q0, where, tolerance)
    if q1.shape != q0.shape:
        return f"the compiled probabilities have the shape {q1.shape}, the pipeline's {q0.shape}{where}"
    if not same_labels(p1, p0):
        got, expected = label_values(p1), label_values(p0)
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if type(a) is not type(b) or a != b), None)
        detail = (f" ({len(got)} labels for {len(expected)})" if first is None else
                  f" ({got[first]!r} for {expected[first]!r} on row {first})")
        return f"the compiled predictions differ from the pipeline's{detail}{where}"
    worst = float(np.max(np.abs(q1 - q0))) if q0.size else 0.0
    if not worst <= tolerance:
        return f"the compiled probabilities differ from the pipeline's by {worst:.3g}{where}"
    return None


def _compare_numbers(p1, q1, p0, q0, where: str, tolerance: float) -> str | None:
    """A regression's predictions: each within ``tolerance`` relative to the larger of its own magnitude and the
    median magnitude of the pipeline's predictions compared (a floor, for predictions near 0 that are sums of
    larger terms); NaN where the pipeline answers NaN, the same infinities."""
    if q0 is not None or q1 is not None:
        return f"expected no probabilities for a regression, got {type(q1 if q1 is not None else q0).__name__}{where}"
    try:
        got, expected = np.asarray(p1, dtype=np.float64).ravel(), np.asarray(p0, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        return f"the compiled predictions are not numbers ({err}){where}"
    if got.shape != expected.shape:
        return f"the compiled predictions have the shape {got.shape}, the pipeline's {expected.shape}{where}"
    finite = np.isfinite(expected)
    if not np.array_equal(np.isfinite(got), finite) or not np.array_equal(got[~finite], expected[~finite],
                                                                          equal_nan=True):
        return f"the compiled predictions are not finite where the pipeline's are (or are where not){where}"
    if not finite.any():
        return None
    floor = float(np.median(np.abs(expected[finite])))
    error = np.abs(got[finite] - expected[finite]) / np.maximum(np.abs(expected[finite]), floor or 1.0)
    worst = int(np.argmax(error))
    if not error[worst] <= tolerance:
        return (f"the compiled predictions differ from the pipeline's by {error[worst]:.3g} relative "
                f"({got[finite][worst]!r} for {expected[finite][worst]!r}){where}")
    return None


def same_labels(got, expected) -> bool:
    """Whether two sequences of labels are equal value for value and type for type (``True`` is not ``1``,
    ``"1"`` not ``1``): what the API would answer from each."""
    got, expected = label_values(got), label_values(expected)
    return len(got) == len(expected) and all(type(a) is type(b) and a == b for a, b in zip(got, expected))


def probe_rows(model, base: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows to verify on: ``base`` (rows of the version's training data; default: the demo table's rows), then
    edge rows: every column null, and each column of 20 base rows null, unseen or extreme in turn."""
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
    """The demo table's rows: the probe of versions registered without rows of their own training data."""
    from mlops_core.data import load_titanic

    return rows_of(load_titanic(), model)


def rows_of(frame, model) -> list[dict[str, Any]]:
    """A frame's rows as request rows of ``model`` (typed by its schema, missing as None); [] without its columns."""
    import pandas as pd

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

    Its kernel is the fastest that verifies (:func:`~.kernels.choose_kernel`) of the estimator converted to
    ONNX, its hand kernel and its own ``predict``/``predict_proba``; ``kernel_choice`` says which and why, and
    ``onnx`` holds the converted graph (stored with the artifact).
    """
    fallback = PipelinePredictor(model)
    version = getattr(model, "version", "?")
    try:
        compiled = compile_pipeline(model)
        rows = probe if probe is not None else probe_rows(model)
        problem = check_features(compiled, fallback, rows)
        if problem is None:
            compiled.expected = Expected(*fallback.raw(rows), row_wise=lambda: fallback.raw_row_wise(rows))

            def convert():
                compiled.onnx = convert_onnx(compiled.estimator, width=len(compiled.layout), dtype=compiled.dtype)
                return compiled.onnx

            timing = ([compiled.matrix([row]) for row in rows[:8]], compiled.matrix(rows[:32]))
            choice = choose_kernel(compiled, lambda c: check_outputs(c, rows, compiled.expected),
                                   candidates(compiled.estimator, convert), timing=timing)
            problem = None if choice.kind else choice.reason
            compiled.kernel_choice = choice
            for kind, entry in choice.report.items():
                if "rejected" in entry and kind != "onnx" and entry["rejected"].startswith("failed"):
                    log.warning("version %s: the %s kernel %s", version, kind, entry["rejected"])
    except Unsupported as err:
        problem = f"not compiled: {err}"
    except Exception as err:  # a compiler bug must never stop a model from serving
        log.exception("compiling version %s failed", version)
        problem = f"compiling failed: {type(err).__name__}: {err}"
    if problem is None:
        log.info("version %s: compiled inference path verified; kernel %s", version, choice.reason)
        return compiled
    log.warning("version %s: serving through the pipeline (%s)", version, problem)
    fallback.reason = problem
    return fallback
