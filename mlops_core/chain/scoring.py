"""Scoring a model on rows of the batch: its labels (and probabilities), the drift report's predicted classes,
and which holdout rows no compared model has seen."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..data import normalise, unseen_rows
from ..drift import PREDICTION, ReferenceProfile
from ..errors import shorten
from ..labels import Labels, label_key, pipeline_classes
from ..registry import LoadedModel
from .context import Context, Run

__all__ = ["labels_and_proba", "loaded", "predicted_classes", "unseen"]

log = logging.getLogger("mlops_core.pipeline")


def labels_and_proba(model, frame: pd.DataFrame, columns: list[str], kinds: dict, *,
                     positive: Labels | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted labels (and, given the task's ``positive`` labels, P(positive class)) of ``model`` on
    ``frame``'s ``columns``.

    A column the model was trained on that ``frame`` lacks (the export dropped it) is given as missing, which
    the pipeline imputes: a version is always scored with its own columns.
    """
    if not len(frame):
        return np.empty(0, dtype=object), np.empty(0) if positive is not None else None
    absent = [c for c in columns if c not in frame.columns]
    rows = frame.assign(**{c: np.nan for c in absent}) if absent else frame
    # a fresh index: PyCaret's transformers re-join columns on the index, so a repeated label (rows gathered
    # from several frames) would multiply rows instead of scoring each once
    X = normalise(rows[list(columns)], kinds).reset_index(drop=True)
    pred = np.asarray(model.predict(X), dtype=object)
    if len(pred) != len(X):
        raise RuntimeError(f"the model gave {len(pred)} predictions for {len(X)} rows")
    if positive is None:
        return pred, None
    return pred, model.predict_proba(X)[:, positive.positive_column(pipeline_classes(model))]


def loaded(ctx: Context, run: Run, version: str) -> LoadedModel:
    """Version ``version``'s pipeline with its input columns, loaded from the registry once per run."""
    if version not in run.models:
        run.models[version] = ctx.registry.load_model(version)
    return run.models[version]


def predicted_classes(ctx: Context, run: Run, profile: ReferenceProfile) -> dict:
    """Production's predicted classes on the batch, for the drift report's information (never fails the run).

    Through the version's compiled form when it has one (no AutoML library imported, answers verified equal
    to its pipeline's), else through its pipeline (kept for the decision).
    """
    if run.production is None or PREDICTION not in profile.outputs or not len(run.batch):
        return {}
    try:
        labels = _compiled_labels(ctx, run.production, run.batch)
        if labels is None:
            model = loaded(ctx, run, run.production)
            labels = labels_and_proba(model.model, run.batch, model.columns, run.kinds)[0]
        return {PREDICTION: labels}
    except Exception as err:  # information only: a model that cannot score the batch fails later, in context
        log.warning("drift report without the predicted-class shift: %s", shorten(err, 300))
        return {}


def _compiled_labels(ctx: Context, version: str, batch: pd.DataFrame) -> np.ndarray | None:
    from ..inference import artifact
    from ..inference.compile import rows_of

    data, manifest, _ = ctx.registry.load_compiled(version)
    if data is None:
        return None
    try:
        predictor = artifact.load(data, manifest)
    except artifact.ArtifactError as err:
        log.info("version %s: compiled form not used (%s): scoring with its pipeline", version, err)
        return None
    rows = rows_of(batch, predictor)
    if not rows:  # the batch lacks a column the version was trained on
        return None
    return np.asarray(predictor(rows)[0], dtype=object)


def unseen(holdout: pd.DataFrame, seen: list[pd.DataFrame], columns: list[str], target: str,
           kinds: dict) -> tuple[pd.DataFrame, int]:
    """The holdout rows that none of the ``seen`` frames (the compared models' training data) holds, and how
    many were dropped. A row counts as seen by a frame when it equals one of its rows on every column both
    share (features and label), so versions trained on other feature sets are checked on what they saw."""
    rows = _keyed(holdout, kinds, target)
    keep = pd.Series(True, index=rows.index)
    for frame in (f for f in seen if f is not None):
        shared = [c for c in (*columns, target) if c in frame.columns and c in rows.columns]
        if target in shared and len(shared) > 1:
            keep &= unseen_rows(rows, _keyed(frame[shared], kinds, target), shared)
    return holdout[keep.to_numpy()].reset_index(drop=True), int((~keep).sum())


def _keyed(frame: pd.DataFrame, kinds: dict, target: str) -> pd.DataFrame:
    """``frame`` normalised, its labels as their text keys (``1`` stored as int64 or as an object equal)."""
    out = normalise(frame, kinds)
    if target in out.columns:
        out[target] = out[target].map(lambda v: v if pd.isna(v) else label_key(v)).astype(object)
    return out
