"""The drift stage: PSI of the drift features against Production's reference; the CLI's drift check."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Settings
from ..data import normalise, read_csv
from ..drift import DriftReport, ReferenceProfile
from ..labels import distinct, label_key
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
        report = report.with_new_classes(_new_classes(ctx, run))
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
    else:
        learnable, note = _learnable(run.batch, target, regression=settings.task == "regression")
        if learnable is None:
            run.result.status = "refused"
            run.result.reason = f"drift detected (mean PSI {report.mean_psi:.4f}) but {note}: retraining refused"
        else:
            run.result.notes += [note] if note else []
            run.fit_rows, run.holdout = _holdout_split(learnable, settings)
            del learnable
            # the two parts hold every row the later stages use: the whole is let go before training (at 1M rows
            # its arrays are a tenth of the run's peak)
            run.batch = run.batch.iloc[:0]
            return run
    return finish(ctx, run)


MIN_CLASS_ROWS = 5  # labelled rows a class needs to be learned (cross-validated) and judged (held out)


def _learnable(batch: pd.DataFrame, target: str, *, regression: bool = False) -> tuple[pd.DataFrame | None, str]:
    """The labelled rows to train and judge on, and what was left out (a note); ``None`` and why when fewer than
    two classes have :data:`MIN_CLASS_ROWS` rows each.

    Rows without a label are left out (counted); so are the rows of a class too rare to be cross-validated and
    held out (named, with their count): the candidate is trained on the classes it can learn."""
    labels = batch[target] if target in batch.columns else pd.Series(np.nan, index=batch.index)
    present = labels.notna()
    labelled = batch if present.all() else batch[present]  # no copy of a batch labelled throughout
    if regression:
        note = (f"{len(batch) - len(labelled)} row(s) without a {target!r} value left out of training and the "
                f"holdout" if len(labelled) < len(batch) else "")
        if len(labelled) < 4 * MIN_CLASS_ROWS or labelled[target].nunique() < 2:
            return None, (f"the batch has {len(labelled)} row(s) with a {target!r} value: a regression needs at "
                          f"least {4 * MIN_CLASS_ROWS}, not all equal, to be trained and judged")
        return labelled, note
    counts = labelled[target].value_counts()
    rare = counts[counts < MIN_CLASS_ROWS]
    notes = []
    if len(labelled) < len(batch):
        notes.append(f"{len(batch) - len(labelled)} row(s) without a {target!r} label left out of training and "
                     f"the holdout")
    if len(rare):
        notes.append(f"class(es) {_counts(rare)} with fewer than {MIN_CLASS_ROWS} labelled rows left out")
    if counts.size - len(rare) < 2:
        return None, (f"the batch's labels hold {_counts(counts)}: a classifier needs at least two classes of "
                      f"{MIN_CLASS_ROWS} rows or more to be trained and judged")
    return (labelled[~labelled[target].isin(rare.index)] if len(rare) else labelled), "; ".join(notes)


def _counts(counts: pd.Series) -> str:
    return "{" + ", ".join(f"{k!r}: {int(v)}" for k, v in sorted(counts.items(), key=lambda kv: label_key(kv[0])))\
        + "}"


def _new_classes(ctx: Context, run: Run) -> list:
    """Labels of the batch that Production was not trained on (its ``classes`` tag; none known: none new)."""
    target = ctx.settings.target
    if run.production is None or target not in run.batch.columns or ctx.settings.task == "regression":
        return []
    raw = ctx.registry.describe(run.production)["tags"].get("classes")
    if not raw:
        return []
    known = {label_key(c) for c in json.loads(raw)}
    return sorted((v for k, v in distinct(run.batch[target]).items() if k not in known), key=label_key)


def illustrate(ctx: Context, run: Run) -> Run:
    """Draw the drift report's picture and log it with the run. Last, once the decision is made and the aliases
    have moved: drawing takes most of a second, off the path to serving; a picture that fails is logged, the
    decision stands."""
    if run.report is None or run.run_id is None:
        return run
    with ctx.timer("picture"):
        try:
            path = run.report.plot(ctx.settings.data_dir / "drift_report.svg")
            ctx.registry.log_run(run.run_id, artifacts={"drift": [path]})
        except Exception as err:  # the picture is for people
            log.warning("drift picture not drawn: %s", err)
    return run


def _holdout_split(batch, settings: Settings):
    from sklearn.model_selection import train_test_split

    y = batch[settings.target]
    stratify = None
    if settings.task != "regression" and y.value_counts().min() >= 2:
        # the classes' codes in sorted order: the split scikit-learn draws on the labels themselves, without its
        # sorting ten million Python objects
        stratify = pd.Categorical(y, categories=np.sort(y.unique())).codes
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
