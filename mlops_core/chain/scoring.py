"""Scoring a model on rows of the batch: its labels (and probabilities), the drift report's predicted classes,
and which holdout rows no compared model has seen."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..data import RowSet, normalise
from ..drift import PREDICTED_VALUE, PREDICTION, ReferenceProfile
from ..errors import shorten
from ..labels import Labels, pipeline_classes
from ..registry import LoadedModel
from .context import Context, Run

__all__ = ["labels_and_proba", "loaded", "predicted_classes", "unseen", "sample_rows", "PREDICTED_ROWS"]

log = logging.getLogger("mlops_core.pipeline")

PREDICTED_ROWS = 100_000  # rows a model's predicted classes are profiled on (information only)
CHUNK_ROWS = 200_000  # rows a pipeline scores at a time


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
    preds, probas = [], []
    for start in range(0, len(rows), CHUNK_ROWS):  # bounded memory: the pipeline's steps copy what they get
        # a fresh index: PyCaret's transformers re-join columns on the index, so a repeated label (rows gathered
        # from several frames) would multiply rows instead of scoring each once
        X = normalise(rows.iloc[start:start + CHUNK_ROWS][list(columns)], kinds).reset_index(drop=True)
        pred = np.asarray(model.predict(X), dtype=object)
        if len(pred) != len(X):
            raise RuntimeError(f"the model gave {len(pred)} predictions for {len(X)} rows")
        preds.append(pred)
        if positive is not None:
            probas.append(model.predict_proba(X)[:, positive.positive_column(pipeline_classes(model))])
    return np.concatenate(preds), np.concatenate(probas) if positive is not None else None


def loaded(ctx: Context, run: Run, version: str) -> LoadedModel:
    """Version ``version``'s pipeline with its input columns, loaded from the registry once per run."""
    if version not in run.models:
        run.models[version] = ctx.registry.load_model(version)
    return run.models[version]


def predicted_classes(ctx: Context, run: Run, profile: ReferenceProfile) -> dict:
    """Production's predicted classes (a regression's predicted values) on the batch, for the drift report's
    information (never fails the run).

    Through the version's compiled form when it has one (no AutoML library imported, answers verified equal
    to its pipeline's), else through its pipeline (kept for the decision); on a seeded sample of at most
    :data:`PREDICTED_ROWS` rows (shares of classes: a larger sample changes the PSI shown by less than its
    rounding).
    """
    output = next((name for name in (PREDICTION, PREDICTED_VALUE) if name in profile.outputs), None)
    if run.production is None or output is None or not len(run.batch):
        return {}
    batch = sample_rows(run.batch, seed=ctx.settings.seed)
    try:
        labels = _compiled_labels(ctx, run.production, batch)
        if labels is None:
            model = loaded(ctx, run, run.production)
            labels = labels_and_proba(model.model, batch, model.columns, run.kinds)[0]
        return {output: labels}
    except Exception as err:  # information only: a model that cannot score the batch fails later, in context
        log.warning("drift report without the predicted-class shift: %s", shorten(err, 300))
        return {}


def sample_rows(frame: pd.DataFrame, *, seed: int, rows: int = 0) -> pd.DataFrame:
    """At most ``rows`` (default :data:`PREDICTED_ROWS`) rows of ``frame``, drawn with ``seed``, in their order."""
    rows = rows or PREDICTED_ROWS
    if len(frame) <= rows:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


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


def unseen(holdout: pd.DataFrame, seen: list[RowSet], target: str, kinds: dict) -> tuple[pd.DataFrame, int]:
    """The holdout rows that none of the ``seen`` sets (the compared models' training rows) holds, and how many
    were dropped. A row counts as seen by a set when it equals one of its rows on the set's columns (features
    and label), so versions trained on other feature sets are checked on what they saw."""
    keep = np.ones(len(holdout), dtype=bool)
    for rows in seen:
        keep &= ~rows.contains(holdout, kinds, target)
    return holdout[keep].reset_index(drop=True), int((~keep).sum())
