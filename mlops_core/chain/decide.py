"""The decision stage, in two steps around registration: :func:`judge` scores the candidate (in memory) and its
rivals on the same unseen holdout rows with a paired test chosen before looking, and reaches a verdict; the
candidate is then registered with that evidence on it (one registry call); :func:`act` takes the one action the
verdict allows and records the decision on the version and the run."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import numpy as np

from ..data import RowSet
from ..errors import RegistryError
from ..evidence import Comparison, compare, compare_errors
from ..labels import Labels, distinct, label_key
from ..registry import LIFECYCLE, PRODUCTION, STAGING, dumps
from .context import Context, Judgement, Run
from .scoring import labels_and_proba, loaded, unseen

__all__ = ["judge", "act", "finish", "mark_failed"]

log = logging.getLogger("mlops_core.pipeline")


def judge(ctx: Context, run: Run) -> Run:
    """Judge the candidate on held-out rows no compared model has seen, with a paired test: the verdict.

    - **promoted** when it beats Production (by more than ``min_improvement``, one-sided p < ``promotion_alpha``);
    - **archived** when the same test, the other way, shows it worse than Production (p < ``promotion_alpha``):
      users are never served a candidate the data already shows worse;
    - else **staged** as the live challenger, unless a different challenger is already staged and the
      candidate does not beat it too: then it is archived and the challenger keeps its live evidence.
    """
    settings = ctx.settings
    production = run.production
    aliases = _unmoved(ctx, run)
    challenger = aliases.get(STAGING) if aliases.get(STAGING) not in (None, production) else None
    rivals = {PRODUCTION: production, **({STAGING: challenger} if challenger else {})}
    with ctx.timer("score"):
        verdicts, scored, dropped = _judge(ctx, run, rivals)
    rule = {"alpha": settings.promotion_alpha, "min_improvement": settings.min_improvement}
    vs_prod, out = verdicts[PRODUCTION], run.result
    if vs_prod.better(**rule):
        out.status = "promoted"
    elif vs_prod.worse(alpha=settings.promotion_alpha):
        out.status = "archived"
    elif challenger is None or verdicts[STAGING].better(**rule):
        out.status = "staged"
    else:
        out.status = "archived"
    test = f"one-sided p < {settings.promotion_alpha}" if settings.promotion_alpha < 1 else "no test (alpha 1)"
    out.evidence = {"rule": f"difference > {settings.min_improvement} and {test}",
                    "alpha": settings.promotion_alpha, "min_improvement": settings.min_improvement,
                    "shown_worse": vs_prod.worse(alpha=settings.promotion_alpha),
                    "holdout_rows": len(run.holdout), "rows_scored": scored, "rows_dropped_seen": dropped,
                    **{f"vs_{role}": {"version": rivals[role], **c.to_dict()} for role, c in verdicts.items()}}
    run.judgement = Judgement(rivals, verdicts, scored, dropped)
    _record_scores(ctx, run)
    return run


def act(ctx: Context, run: Run) -> Run:
    """Take the action the verdict allows on the registered candidate: promote it, stage it, or archive it.

    The registry must still be as it was judged (another trainer may have moved an alias meanwhile: the verdict
    would be about the wrong models). The decision tags, the aliases and the run's record are written as one
    step: a SIGTERM arriving meanwhile is delivered after all of them.
    """
    registry, out, version = ctx.registry, run.result, run.version
    _unmoved(ctx, run)
    out.reason = _reason(out.status, version, run.judgement, ctx.settings.promotion_alpha)
    if out.notes:
        out.reason += f" ({'; '.join(out.notes)})"
    decided = False
    try:
        with ctx.timer("promote"), _uninterrupted():
            registry.tag_version(version, {"decision_reason": out.reason[:5000], "decision": out.status})
            if out.status == "promoted":
                registry.promote(version)
            elif out.status == "staged":
                registry.make_challenger(version)
            else:
                registry.tag_version(version, {LIFECYCLE: "archived"})
            finish(ctx, run)
            decided = True
    finally:
        if not decided:
            mark_failed(ctx, version)
    return run


def _unmoved(ctx: Context, run: Run) -> dict[str, str]:
    """The aliases, when Production and the staged challenger are those the run was judged against."""
    aliases = ctx.registry.aliases()
    now = aliases.get(PRODUCTION)
    if now != run.production:  # another trainer promoted meanwhile: the comparison would be against the wrong model
        raise RegistryError(f"Production moved from version {run.production} to {now} while this chain ran; "
                            f"the candidate{f' (version {run.version})' if run.version else ''} stays undecided "
                            f"(run the batch again)")
    if run.judgement is not None and aliases.get(STAGING) not in (run.judgement.rivals.get(STAGING), now):
        raise RegistryError(f"Staging moved to version {aliases.get(STAGING)} while this chain ran; version "
                            f"{run.version} stays undecided (run the batch again)")
    return aliases


def _judge(ctx: Context, run: Run, rivals: dict[str, str]) -> tuple[dict[str, Comparison], int, int]:
    """Each rival against the candidate (scored from memory) on the holdout rows none of them was trained on."""
    settings = ctx.settings
    features, target = list(settings.features), settings.target
    models = {role: loaded(ctx, run, v) for role, v in rivals.items()}
    every = [*features, target]
    if run.seen is None:
        run.seen = RowSet.of(run.training, every, run.kinds, target)
    seen = [run.seen, *(ctx.registry.load_rows(v, kinds=run.kinds) for v in rivals.values())]
    rows, dropped = unseen(run.holdout, seen, target, run.kinds)
    labels = run.candidate.labels  # None: a regression
    proba = labels if settings.promotion_metric == "auc" else None
    candidate_labels, candidate_proba = labels_and_proba(run.candidate.model, rows, features, run.kinds,
                                                         positive=proba)
    y = rows[target].to_numpy()
    scored = {}
    for role, model in models.items():
        # a column the batch no longer has is given as missing, of the kind Production's reference knew
        known = {**run.profile.kinds, **run.kinds}
        kinds = {c: known.get(c, "numeric") for c in model.columns}
        scored[role] = labels_and_proba(model.model, rows, model.columns, kinds, positive=proba)
    if labels is None:
        verdicts = {role: compare_errors(settings.promotion_metric, y.astype(float), candidate_labels.astype(float),
                                         pred.astype(float), seed=settings.seed) for role, (pred, _) in scored.items()}
        return verdicts, len(rows), dropped
    encode, n_classes = _codes(labels, [y, candidate_labels, *(pred for pred, _ in scored.values())])
    verdicts = {role: compare(settings.promotion_metric, encode(y), encode(candidate_labels), encode(pred),
                              candidate_proba, rival_proba, seed=settings.seed, n_classes=n_classes)
                for role, (pred, rival_proba) in scored.items()}
    return verdicts, len(rows), dropped


def _codes(labels: Labels, arrays: list[np.ndarray]):
    """How labels become the evidence's integer codes: positive 1 and other 0 for a two-class task, else each
    label's index among the candidate's classes and any other label the rows or a rival's answers hold (a class
    the candidate never saw is simply a label it never gets right)."""
    universe = list(labels.classes)
    keys = {label_key(c) for c in universe}
    for values in arrays:
        for key, value in distinct(values).items():
            if key not in keys:
                keys.add(key)
                universe.append(value)
    if len(universe) == 2 and labels.positive is not None:
        return (lambda values: labels.codes(values)), 2
    return (lambda values: labels.codes(values, universe=universe)), len(universe)




def _record_scores(ctx: Context, run: Run) -> None:
    """The scores in the run's result and metrics, and the evidence tags the version is registered with."""
    metric, out, judgement = ctx.settings.promotion_metric, run.result, run.judgement
    vs_prod, vs_staging = judgement.verdicts[PRODUCTION], judgement.verdicts.get(STAGING)
    scored, dropped = judgement.scored, judgement.dropped
    out.scores = {f"candidate_{metric}": vs_prod.candidate, f"production_{metric}": vs_prod.baseline,
                  "holdout_rows": len(run.holdout), "rows_scored": scored, "rows_dropped_seen": dropped,
                  "production_version": run.production, "difference": vs_prod.difference,
                  "ci_low": vs_prod.ci_low, "ci_high": vs_prod.ci_high, "p_value": vs_prod.p_value,
                  "p_value_worse": vs_prod.p_worse}
    ctx.registry.log_run(run.run_id, metrics={k: v for k, v in {
        f"holdout_{metric}_candidate": vs_prod.candidate, f"holdout_{metric}_production": vs_prod.baseline,
        "holdout_difference": vs_prod.difference, "holdout_p_value": vs_prod.p_value,
        "holdout_p_value_worse": vs_prod.p_worse, "holdout_rows_scored": scored,
        "holdout_rows_dropped_seen": dropped}.items() if np.isfinite(v)})
    judgement.tags = {
        f"holdout_{metric}_candidate": round(vs_prod.candidate, 6),
        f"holdout_{metric}_production": round(vs_prod.baseline, 6),
        "holdout_difference": round(vs_prod.difference, 6),
        "holdout_ci95": f"[{vs_prod.ci_low:.4f}, {vs_prod.ci_high:.4f}]",
        "holdout_p_value": f"{vs_prod.p_value:.4g}", "holdout_p_value_worse": f"{vs_prod.p_worse:.4g}",
        "holdout_test": vs_prod.test, "holdout_rows": len(run.holdout), "holdout_rows_scored": scored,
        "holdout_rows_dropped_seen": dropped, "compared_with": run.production,
        **({"compared_with_staging": judgement.rivals[STAGING], "staging_p_value": f"{vs_staging.p_value:.4g}"}
           if vs_staging is not None else {})}


def _reason(status: str, version: str, judgement: Judgement, alpha: float) -> str:
    rivals, verdicts, scored, dropped = judgement.rivals, judgement.verdicts, judgement.scored, judgement.dropped
    vs_prod = verdicts[PRODUCTION]
    head = (f"v{version} vs Production v{rivals[PRODUCTION]} on {scored} unseen holdout rows "
            f"({dropped} dropped as seen in training): {vs_prod.summary()}")
    if status == "promoted":
        return f"{head} -> promoted"
    if vs_prod.worse(alpha=alpha):
        return (f"{head} -> shown worse than Production (one-sided p of 'worse' {vs_prod.p_worse:.4g} < {alpha}): "
                f"archived, never served")
    if STAGING not in rivals:
        return f"{head} -> not enough evidence to promote: staged as the live challenger"
    vs = f"vs Staging v{rivals[STAGING]}: {verdicts[STAGING].summary()}"
    if status == "staged":
        return f"{head}; {vs} -> replaces the challenger as Staging"
    return f"{head}; {vs} -> does not beat the challenger: archived, Staging keeps v{rivals[STAGING]}"


def finish(ctx: Context, run: Run) -> Run:
    """Record the decision on the chain run and close it; the batch now counts as processed."""
    registry, out = ctx.registry, run.result
    aliases = registry.aliases()
    out.production, out.staging = aliases.get(PRODUCTION), aliases.get(STAGING)
    registry.log_run(run.run_id, tags={"mlops.status": out.status, "mlops.reason": out.reason,
                                       "mlops.version": out.version or "",
                                       "mlops.production_after": out.production or "", "mlops.done": "true"},
                     text={"decision.json": dumps(out.to_dict())})
    registry.finish_run(run.run_id, ok=True)
    log.info("decision status=%s version=%s production=%s staging=%s reason=%r", out.status, out.version,
             out.production, out.staging, out.reason)
    return run


def mark_failed(ctx: Context, version: str | None) -> None:
    """Never leave a half-registered version looking live: one that holds no alias says it failed."""
    if version is None:
        return
    with contextlib.suppress(Exception):
        if version not in ctx.registry.aliases().values():
            ctx.registry.tag_version(version, {LIFECYCLE: "failed"})


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends (moving aliases is all or nothing), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in held:
            if callable(previous[sig]):
                previous[sig](sig, None)
            elif previous[sig] == signal.SIG_DFL:
                signal.raise_signal(sig)
