"""AutoML with a PyCaret ClassificationExperiment: compare, pick by Accuracy, finalise (labels of any kind)."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import pandas as pd

from .config import NO_PROBABILITIES, Settings
from .data import NUMERIC, normalise
from .errors import TrainingError
from .files import atomic_write
from .labels import Labels, task_labels

__all__ = ["TrainResult", "train", "import_pycaret_classification"]

log = logging.getLogger(__name__)


def import_pycaret_classification():
    """Import PyCaret's classification module (its log file is placed by ``runtime.prepare_process``)."""
    from pycaret import classification

    return classification


@dataclass
class TrainResult:
    """The finalised best pipeline and how the comparison went."""

    model: object  # a fitted sklearn-compatible pipeline (preprocessing + estimator)
    model_id: str
    model_name: str
    comparison: pd.DataFrame
    cv_metrics: dict[str, float]
    model_path: Path
    comparison_path: Path
    seconds: float
    n_train: int
    labels: Labels  # the classes it was trained on and, for two, the positive one


def _metrics(row: pd.Series) -> dict[str, float]:
    """The comparison row's scores as ``accuracy``, ``auc``, ``f1``… (the timing column left out)."""
    return {re.sub(r"[^a-z0-9]+", "_", str(k).lower()).strip("_"): float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and k != "TT (Sec)"}


def train(frame: pd.DataFrame, settings: Settings, *, kinds: dict[str, str] | None = None) -> TrainResult:
    """Compare ``settings.models`` on ``frame`` by Accuracy and finalise the best.

    Writes ``best_model.pkl`` and ``pycaret_compare_results.csv`` under
    ``settings.models_dir``, whatever the working directory.
    """
    started = time.perf_counter()
    classification = import_pycaret_classification()
    features = list(settings.features)
    kinds = kinds or {}
    numeric = [c for c in features if kinds.get(c, NUMERIC if pd.api.types.is_numeric_dtype(frame[c]) else "")
               == NUMERIC]
    categorical = [c for c in features if c not in numeric]
    data = normalise(frame[[*features, settings.target]].dropna(subset=[settings.target]).reset_index(drop=True),
                     {**{c: NUMERIC for c in numeric}, **{c: "categorical" for c in categorical}})
    # the labels as one typed column (ints, booleans or strings): PyCaret label-encodes anything but 0..k-1
    data[settings.target] = data[settings.target].infer_objects()
    labels = task_labels(data[settings.target], settings)
    if len(labels.classes) < 2:
        raise TrainingError(f"expected at least two classes in {settings.target!r} to train on, got "
                            f"{list(labels.classes)}")
    with _frozen_heap():
        final, comparison = _compare_and_finalise(classification, data, settings, numeric, categorical)
    top = comparison.iloc[0]
    if not hasattr(final, "predict_proba"):
        raise TrainingError(f"{top.get('Model')} gives no probabilities (no predict_proba); serving needs them")
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    model_path = settings.models_dir / "best_model.pkl"
    comparison_path = settings.models_dir / "pycaret_compare_results.csv"
    comparison.to_csv(comparison_path, index_label="model_id")
    atomic_write(model_path, lambda fh: joblib.dump(final, fh))
    metrics = _metrics(top)
    seconds = time.perf_counter() - started
    log.info("trained %s (cv accuracy %.4f) on %d rows in %.1fs", top.get("Model"), metrics.get("accuracy", 0.0),
             len(data), seconds)
    return TrainResult(model=final, model_id=str(comparison.index[0]), model_name=str(top.get("Model")),
                       comparison=comparison, cv_metrics=metrics, model_path=model_path,
                       comparison_path=comparison_path, seconds=seconds, n_train=len(data), labels=labels)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collector's full collections while the block runs.

    PyCaret calls ``gc.collect()`` after every model it fits; each walked the whole heap of the libraries
    imported so far (PyCaret, MLflow, scikit-learn: about 0.2 s a call on this machine, 1.5 s of an 8.5 s
    comparison of four models). Frozen, those objects are skipped; unfrozen afterwards, nothing is kept that
    would otherwise be freed.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _compare_and_finalise(classification, data: pd.DataFrame, settings: Settings, numeric: list[str],
                          categorical: list[str]):
    """PyCaret's comparison of ``settings.models`` by Accuracy; the best pipeline finalised, and the table."""
    exp = classification.ClassificationExperiment()
    try:
        exp.setup(data=data, target=settings.target, session_id=settings.seed, fold=settings.fold,
                  n_jobs=settings.n_jobs, numeric_features=numeric, categorical_features=categorical,
                  verbose=False, html=False, log_experiment=False, system_log=False, memory=False)
        # every model, when none is named, but those without predict_proba (serving answers probabilities)
        best = exp.compare_models(include=list(settings.models) or None, sort="Accuracy", n_select=1,
                                  exclude=None if settings.models else sorted(NO_PROBABILITIES),
                                  budget_time=settings.budget_minutes or None, errors="ignore", verbose=False)
        comparison = exp.pull()
    except Exception as err:  # PyCaret raises bare ValueErrors and more from deep inside
        raise TrainingError(f"PyCaret comparison failed: {err}") from err
    if isinstance(best, list):
        best = best[0] if best else None
    if best is None or comparison is None or comparison.empty or float(comparison["Accuracy"].max()) <= 0.0:
        raise TrainingError(f"no model of {list(settings.models) or 'all'} trained successfully")
    try:
        final = exp.finalize_model(best)
    except Exception as err:
        raise TrainingError(f"finalising {type(best).__name__} failed: {err}") from err
    return final, comparison
