"""The registration stage: log the candidate to MLflow (pipeline, comparison, reference, compiled form) and
create a version; no alias moves here."""

from __future__ import annotations

import logging

import pandas as pd

from ..data import NUMERIC, RowSet, normalise
from ..drift import PREDICTED_VALUE, PREDICTION, ReferenceProfile
from ..errors import shorten
from ..registry import COMPILED_TAG, LoadedModel
from .context import Context, Run
from .scoring import labels_and_proba, sample_rows

__all__ = ["register", "register_model"]

log = logging.getLogger("mlops_core.pipeline")

REFERENCE_ROWS = 100_000  # training rows stored as data with a version (every row is stored as its hash)


def register(ctx: Context, run: Run) -> Run:
    """Register the run's candidate as a new version, its drift reference fitted on the whole batch, the evidence
    of its judgement on it from the start (one registry call, not one a tag)."""
    with ctx.timer("register"):
        regime = pd.concat([run.fit_rows, run.holdout], ignore_index=True)
        run.version = run.result.version = register_model(
            ctx, run.run_id, run.candidate, training=run.training, regime=regime, kinds=run.kinds, seen=run.seen,
            tags={"mlops.source": "drift", "mlops.batch_sha256": run.digest,
                  **(run.judgement.tags if run.judgement else {})})
    return run


def register_model(ctx: Context, run_id: str, candidate, *, training: pd.DataFrame, regime: pd.DataFrame,
                   kinds: dict, tags: dict, seen: RowSet | None = None) -> str:
    """Log a trained pipeline, its comparison and reference to ``run_id``; create a version and return it.

    The drift reference is fitted on ``regime`` (the batch the version was trained for), so later batches of
    the same regime do not score as drift against a mix of old and new rows; ``training`` is stored as the
    rows the version has seen (holdout hygiene of later decisions): one hash a row (``seen``, when the judgement
    built it already), and its most recent
    :data:`REFERENCE_ROWS` rows as data (``history_rows``, people), so what is logged stays bounded.
    """
    settings, registry = ctx.settings, ctx.registry
    features = list(settings.features)
    profile = ReferenceProfile.fit(normalise(regime, kinds), features=features, kinds=kinds, bins=settings.bins)
    predicted = labels_and_proba(candidate.model, sample_rows(regime, seed=settings.seed), features, kinds)[0]
    profile = (profile.with_output(PREDICTED_VALUE, predicted, kind=NUMERIC) if settings.task == "regression"
               else profile.with_output(PREDICTION, predicted))
    registry.log_run(run_id, params={"models": ",".join(settings.models) or "all", "fold": settings.fold,
                                     "n_jobs": settings.n_jobs, "seed": settings.seed, "n_train": len(training),
                                     "n_select": candidate.n_select, "select_rows": settings.select_rows,
                                     "best_model": candidate.model_name, "features": ",".join(features),
                                     "target": settings.target, "history_rows": settings.history_rows,
                                     "n_regime": len(regime)},
                     metrics={f"cv_{k}": v for k, v in candidate.cv_metrics.items()},
                     artifacts={"": candidate.comparison_path})
    if seen is None:
        seen = RowSet.of(training, [*features, settings.target], kinds, settings.target)
    registry.log_reference(run_id, profile, training.tail(REFERENCE_ROWS), seen)
    example = training[features].head(5).reset_index(drop=True)
    labels = candidate.labels.tags() if candidate.labels is not None else {"task": "regression"}
    uri = registry.log_model(run_id, candidate.model, example, metadata=labels)
    compiled = _log_compiled(ctx, run_id, candidate.model, example, regime[features], labels)
    chosen_by = settings.promotion_metric if settings.task == "regression" else "accuracy"  # the comparison's sort
    return registry.register(uri, {"mlops.model": candidate.model_name,
                                   f"cv_{chosen_by}": round(candidate.cv_metrics.get(chosen_by, 0.0), 6),
                                   "rows_select": candidate.n_select, "rows_fit": candidate.n_train,
                                   COMPILED_TAG: compiled, **labels, **tags})


def _log_compiled(ctx: Context, run_id: str, model, example: pd.DataFrame, rows: pd.DataFrame,
                  labels: dict[str, str]) -> str:
    """Compile the new version, verify it on ``rows`` (its own data), store it with the run; the version tag."""
    from mlflow.models import infer_signature

    from ..inference import artifact

    schema = infer_signature(example).inputs
    version = LoadedModel(version="new", run_id=run_id, model=model, columns=list(schema.input_names()),
                          dtypes={c.name: c.type.name for c in schema.inputs}, metadata=labels)
    data, manifest = artifact.export(version, rows)
    ctx.registry.log_compiled(run_id, data, manifest)
    if data is None:
        log.info("not compiled (served through its pipeline): %s", manifest["reason"])
        return shorten(f"no: {manifest['reason']}", 250)
    log.info("compiled (%s kernel), verified on %d rows: %s", manifest["kernel"], manifest["probe_rows"],
             manifest["kernel_reason"])
    return "true"
