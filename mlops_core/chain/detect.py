"""The drift stage: PSI of the drift features against Production's reference; the CLI's drift check."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..config import Settings
from ..data import normalise, read_csv
from ..drift import DriftReport, ReferenceProfile
from ..registry import PRODUCTION, Registry
from .context import Context, Run
from .decide import finish
from .scoring import predicted_classes

__all__ = ["detect", "illustrate", "check_drift"]

log = logging.getLogger("mlops_core.pipeline")


def detect(ctx: Context, run: Run) -> Run:
    """Open the run's record, score drift and say what comes next: nothing (no drift), a refusal (no usable
    labels), or training, with the batch split into the rows to learn from and the holdout."""
    settings, registry = ctx.settings, ctx.registry
    run.run_id = run.result.run_id = registry.create_run(
        "chain", tags={"mlops.kind": "chain", "mlops.batch_sha256": run.digest,
                       "mlops.production_before": run.production, "mlops.current": run.source})
    with ctx.timer("drift"):
        report = run.profile.report(run.batch, settings.drift_features, threshold=settings.psi_threshold,
                                    outputs=predicted_classes(ctx, run, run.profile), new=settings.features)
        paths = report.save(settings.data_dir, picture=False)  # drawn once decided: off the path to serving
        registry.log_run(run.run_id, artifacts={"drift": list(paths.values())}, metrics=_metrics(report),
                         tags={"mlops.drift": str(report.drift).lower(),
                               "mlops.drift_summary": json.dumps(report.summary())})
    run.report, run.result.drift = report, report.summary()
    target = settings.target
    if not report.drift:
        run.result.status = "no_drift"
        run.result.reason = f"mean PSI {report.mean_psi:.4f} <= threshold {settings.psi_threshold}"
    elif target not in run.batch.columns:
        run.result.status = "refused"
        run.result.reason = (f"drift detected (mean PSI {report.mean_psi:.4f}) but the batch has no {target!r} "
                             f"labels: retraining refused")
    elif (counts := run.batch[target].value_counts()).size < 2 or counts.min() < 2:
        run.result.status = "refused"
        run.result.reason = (f"drift detected (mean PSI {report.mean_psi:.4f}) but the batch's labels hold "
                             f"{dict(sorted(counts.to_dict().items()))}: a classifier needs at least 2 rows of each "
                             f"class to be trained and judged; retraining refused")
    else:
        run.fit_rows, run.holdout = _holdout_split(run.batch, settings)
        return run
    return finish(ctx, run)


def illustrate(ctx: Context, run: Run) -> Run:
    """Draw the drift report's picture and log it with the run. Last, once the decision is made and the aliases
    have moved: drawing takes most of a second, off the path to serving; a picture that fails is logged, the
    decision stands."""
    if run.report is None or run.run_id is None:
        return run
    with ctx.timer("picture"):
        try:
            path = run.report.plot(ctx.settings.data_dir / "drift_report.png")
            ctx.registry.log_run(run.run_id, artifacts={"drift": [path]})
        except Exception as err:  # the picture is for people
            log.warning("drift picture not drawn: %s", err)
    return run


def _holdout_split(batch, settings: Settings):
    from sklearn.model_selection import train_test_split

    y = batch[settings.target]
    stratify = y if y.value_counts().min() >= 2 else None
    fit, hold = train_test_split(batch, test_size=settings.holdout_fraction, random_state=settings.seed,
                                 stratify=stratify)
    return fit.reset_index(drop=True), hold.reset_index(drop=True)


def _metric_name(name: str) -> str:
    """A column name as MLflow accepts it in a metric key."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _metrics(report: DriftReport) -> dict[str, float]:
    return {"mean_psi": report.mean_psi, **{f"psi_{_metric_name(k)}": v for k, v in report.psi.items()},
            **{f"info_psi_{_metric_name(k)}": v for k, v in report.info.items()}}


def check_drift(settings: Settings, *, current: Path | None = None, reference: Path | None = None,
                features: list[str] | None = None, registry: Registry | None = None,
                save: bool = True) -> DriftReport:
    """Score a batch against a reference (default: Production's, else ``train.csv``): ``mlops drift``.

    The other profiled features, and Production's predicted classes, are scored as information.
    """
    from .context import OPEN, RunResult
    from .intake import reference_profile

    features = list(features or settings.drift_features)
    batch = read_csv(Path(current or settings.current_csv))
    if reference is not None:
        ref_frame = read_csv(reference)
        profile = ReferenceProfile.fit(ref_frame, features=[c for c in features if c in ref_frame.columns],
                                       bins=settings.bins)
        ctx, production = None, None
    else:
        ctx = Context(settings, registry or Registry(settings))
        production = ctx.registry.aliases().get(PRODUCTION)
        profile = reference_profile(ctx, production)
        if not set(features) <= set(profile.features):  # columns Production's profile does not hold
            _, ref_frame = (ctx.registry.load_reference(production) if production is not None
                            else (None, read_csv(settings.train_csv)))
            profile = ReferenceProfile.fit(ref_frame, features=[c for c in features if c in ref_frame.columns],
                                           bins=settings.bins)
    kinds = {c: k for c, k in profile.kinds.items() if c in settings.features}
    batch = normalise(batch, kinds)
    predicted = {}
    if ctx is not None and set(settings.features) <= set(batch.columns):
        predicted = predicted_classes(ctx, Run(str(current), "", batch, kinds, RunResult(OPEN),
                                               production=production), profile)
    report = profile.report(batch, features, threshold=settings.psi_threshold, outputs=predicted)
    if save:
        report.save(settings.data_dir)
    return report
