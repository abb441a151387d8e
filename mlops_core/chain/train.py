"""The training stage: a candidate on the batch's training rows, the holdout kept out."""

from __future__ import annotations

import pandas as pd

from ..data import normalise
from .context import Context, Run

__all__ = ["train"]


def train(ctx: Context, run: Run) -> Run:
    """Train on the batch's training rows, after ``history_rows`` of Production's training data.

    A drifted batch is the new regime: by default the candidate learns it alone, so a changed label rule is not
    outvoted by the old rows; ``history_rows`` adds that many of the most recent rows the Production version
    was trained on (useful when batches are small and only the covariates move).
    """
    from ..training import train as automl

    settings = ctx.settings
    training = run.fit_rows
    if settings.history_rows:
        _, reference = ctx.registry.load_reference(run.production)
        history = normalise(reference.tail(settings.history_rows), run.kinds)
        columns = [c for c in training.columns if c in history.columns or c in run.kinds]
        training = pd.concat([history.reindex(columns=columns), training[columns]], ignore_index=True)
    with ctx.timer("train"):
        run.candidate = automl(training, settings, kinds=run.kinds, progress=ctx.timer.progress)
    run.training = training
    return run
