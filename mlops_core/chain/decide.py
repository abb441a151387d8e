"""The decision stage: candidate and rivals on the same unseen holdout rows, a paired test chosen before
looking, and the one action it allows; the decision recorded on the version and the run."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import numpy as np

from ..errors import RegistryError
from ..evidence import Comparison, compare
from ..registry import LIFECYCLE, PRODUCTION, STAGING, dumps
from .context import Context, Run
from .scoring import labels_and_proba, loaded, unseen

__all__ = ["decide", "finish", "mark_failed"]

log = logging.getLogger("mlops_core.pipeline")


def decide(ctx: Context, run: Run) -> Run:
    """Judge the candidate on held-out rows no compared model has seen, with a paired test; act on the verdict.

    - **promoted** when it beats Production (by more than ``min_improvement``, one-sided p < ``promotion_alpha``);
    - **archived** when the same test, the other way, shows it worse than Production (p < ``promotion_alpha``):
      users are never served a candidate the data already shows worse;
    - else **staged** as the live challenger, unless a different challenger is already staged and the
      candidate does not beat it too: then it is archived and the challenger keeps its live evidence.
    """
    settings, registry = ctx.settings, ctx.registry
    version, production = run.version, run.production
    aliases = registry.aliases()
    now = aliases.get(PRODUCTION)
    if now != production:  # another trainer promoted meanwhile: the comparison would be against the wrong model
        raise RegistryError(f"Production moved from version {production} to {now} while this chain ran; "
                            f"version {version} stays undecided (run the batch again)")
    challenger = aliases.get(STAGING) if aliases.get(STAGING) not in (None, production, version) else None
    rivals = {PRODUCTION: production, **({STAGING: challenger} if challenger else {})}
    out = run.result
    decided = False
    try:
        with ctx.timer("score"):
            verdicts, scored, dropped = _judge(ctx, run, rivals)
        rule = {"alpha": settings.promotion_alpha, "min_improvement": settings.min_improvement}
        vs_prod = verdicts[PRODUCTION]
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
        out.reason = _reason(out.status, version, rivals, verdicts, scored, dropped, settings.promotion_alpha)
        _record_scores(ctx, run, vs_prod, verdicts.get(STAGING), challenger, scored, dropped)
        # the aliases move and the decision record is written as one step: a SIGTERM waits until both are done
        with ctx.timer("promote"), _uninterrupted():
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


def _judge(ctx: Context, run: Run, rivals: dict[str, str]) -> tuple[dict[str, Comparison], int, int]:
    """Each rival against the candidate (scored from memory) on the holdout rows none of them was trained on."""
    settings = ctx.settings
    features, target = list(settings.features), settings.target
    models = {role: loaded(ctx, run, v) for role, v in rivals.items()}
    seen = [run.training, *(ctx.registry.load_reference(v)[1] for v in rivals.values())]
    rows, dropped = unseen(run.holdout, seen, features, target, run.kinds)
    proba = settings.promotion_metric == "auc"
    candidate_labels, candidate_proba = labels_and_proba(run.candidate.model, rows, features, run.kinds, proba=proba)
    y = rows[target].to_numpy()
    verdicts = {}
    for role, model in models.items():
        # a column the batch no longer has is given as missing, of the kind Production's reference knew
        known = {**run.profile.kinds, **run.kinds}
        kinds = {c: known.get(c, "numeric") for c in model.columns}
        rival_labels, rival_proba = labels_and_proba(model.model, rows, model.columns, kinds, proba=proba)
        verdicts[role] = compare(settings.promotion_metric, y, candidate_labels, rival_labels, candidate_proba,
                                 rival_proba, seed=settings.seed)
    return verdicts, len(rows), dropped


def _record_scores(ctx: Context, run: Run, vs_prod: Comparison, vs_staging: Comparison | None,
                   challenger: str | None, scored: int, dropped: int) -> None:
    metric, out = ctx.settings.promotion_metric, run.result
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
    ctx.registry.tag_version(run.version, {
        f"holdout_{metric}_candidate": round(vs_prod.candidate, 6),
        f"holdout_{metric}_production": round(vs_prod.baseline, 6),
        "holdout_difference": round(vs_prod.difference, 6),
        "holdout_ci95": f"[{vs_prod.ci_low:.4f}, {vs_prod.ci_high:.4f}]",
        "holdout_p_value": f"{vs_prod.p_value:.4g}", "holdout_p_value_worse": f"{vs_prod.p_worse:.4g}",
        "holdout_test": vs_prod.test, "holdout_rows": len(run.holdout), "holdout_rows_scored": scored,
        "holdout_rows_dropped_seen": dropped, "compared_with": run.production,
        **({"compared_with_staging": challenger, "staging_p_value": f"{vs_staging.p_value:.4g}"}
           if challenger else {}),
        "decision_reason": out.reason[:5000], "decision": out.status})  # decision last


def _reason(status: str, version: str, rivals: dict, verdicts: dict, scored: int, dropped: int,
            alpha: float) -> str:
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
    _picture(ctx, run)
    registry.finish_run(run.run_id, ok=True)
    log.info("decision status=%s version=%s production=%s staging=%s reason=%r", out.status, out.version,
             out.production, out.staging, out.reason)
    return run


def _picture(ctx: Context, run: Run) -> None:
    """Draw the drift report's picture and log it with the run: after the decision (drawing takes a good part
    of a second), never failing a decided run."""
    if run.report is None:
        return
    try:
        path = run.report.plot(ctx.settings.data_dir / "drift_report.png")
        ctx.registry.log_run(run.run_id, artifacts={"drift": [path]})
    except Exception as err:  # the picture is for people; the decision stands without it
        log.warning("drift picture not drawn: %s", err)


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
