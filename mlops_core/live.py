"""Decisions on live A/B evidence, taken from the watcher's schedule (or ``mlops ab-decide``), never in a request.

On the always-valid verdict of :func:`mlops_core.ab.compare`:

- ``staging_better`` (more accurate; for a regression, a lower mean absolute error): promote Staging (only with
  ``MLOPS_AB_PROMOTE=true``), exactly as an offline promotion (archive the old Production, sync Staging);
- ``staging_worse``: retire the challenger (``MLOPS_AB_RETIRE``, on by default: half of the
  users are being served a worse model): Staging is synced back to Production and the
  version is tagged with the reason;
- anything else: keep collecting.

Every decision is an MLflow run with the live figures, and tags on the version.

Labels that can move an alias must not come from anyone who can reach the server:
:func:`feedback_refusal` says when ``POST /feedback`` refuses them (no ``MLOPS_FEEDBACK_TOKEN`` while
promotion or retirement is on). The gate is where labels enter; a decision trusts the labels stored.
"""

from __future__ import annotations

import logging

from .ab import compare
from .config import Settings
from .predictions import PredictionStore

__all__ = ["decide_live", "feedback_refusal"]

log = logging.getLogger(__name__)


def feedback_refusal(settings: Settings) -> str | None:
    """Why ``POST /feedback`` is refused under these settings (its labels can move an alias and no token
    guards them), or None when it is accepted."""
    switches = [name for name, on in (("MLOPS_AB_RETIRE", settings.ab_retire),
                                      ("MLOPS_AB_PROMOTE", settings.ab_promote)) if on]
    if settings.feedback_token or not switches:
        return None
    return (f"labels can move an alias ({' and '.join(switches)} {'is' if len(switches) == 1 else 'are'} on) "
            "and no MLOPS_FEEDBACK_TOKEN is set: set MLOPS_FEEDBACK_TOKEN and send 'Authorization: Bearer "
            "<token>', or set MLOPS_AB_RETIRE=false and MLOPS_AB_PROMOTE=false to collect labels that move nothing")


def _figures(comparison: dict) -> dict:
    """The live evidence a decision records (tags on the version, metrics of its run): each arm's measure
    (accuracy; MAE and RMSE for a regression) and requests, the difference (Staging minus Production of the
    compared measure), its confidence sequence and the always-valid p-value."""
    measures = ("mae", "rmse") if comparison["metric"] == "mae" else ("accuracy",)
    figures = {f"live_{m}_{side}": comparison[f"{arm}_{m}"] for m in measures
               for side, arm in (("candidate", "staging"), ("production", "production"))}
    return {**figures, "live_requests_candidate": comparison["staging_requests"],
            "live_requests_production": comparison["production_requests"],
            "live_difference": comparison["difference"], "live_cs_low": comparison["cs_low"],
            "live_cs_high": comparison["cs_high"], "live_p_value": comparison["p_value"]}


def decide_live(settings: Settings, *, promote: bool | None = None, retire: bool | None = None,
                dry_run: bool = False, registry=None, store: PredictionStore | None = None,
                lock_timeout: float = 60.0) -> dict:
    """Promote or retire Staging when the sequential test says so and the setting allows it.

    ``promote`` and ``retire`` override ``settings.ab_promote`` and ``settings.ab_retire``. Returns
    ``{"status": disabled | kept | promoted | retired | would_promote | would_retire | busy, ...}``.
    Runs under the pipeline lock, so it never interleaves with a chain run.

    It does not look at ``settings.feedback_token``: this process's token says nothing about how the labels
    already stored were posted (before a token was set, or while both switches were off), and the watcher
    need not hold the server's secret. Anonymous labels are refused where they enter (:func:`feedback_refusal`).
    """
    from .errors import BusyError
    from .pipeline import pipeline_lock
    from .registry import PRODUCTION, STAGING, Registry, dumps

    promote = settings.ab_promote if promote is None else promote
    retire = settings.ab_retire if retire is None else retire
    if not (promote or retire):
        return {"status": "disabled", "reason": "live decisions are off (MLOPS_AB_PROMOTE and MLOPS_AB_RETIRE)"}
    settings = settings.replace(ab_promote=promote, ab_retire=retire)
    store = store or PredictionStore(settings)
    try:
        with pipeline_lock(settings, timeout=lock_timeout):
            registry = registry or Registry(settings)
            aliases = registry.aliases()
            production, staging = aliases.get(PRODUCTION), aliases.get(STAGING)
            # judged by this decision's settings (its switches, alpha, labels, effect), whatever the store's are
            comparison = compare(store, production, staging, settings)
            out = {"status": "kept", "production": production, "staging": staging, "version": None,
                   "reason": comparison["reason"], "comparison": comparison, "run_id": None}
            action = comparison["action"] if comparison["decision_allowed"] else None
            if production is None or staging is None or action is None:
                if comparison["action"] and not comparison["decision_allowed"]:
                    out["reason"] += f" ({comparison['action']} is off)"
                return out
            if dry_run:
                return {**out, "status": f"would_{action}", "version": staging}
            status = "promoted" if action == "promote" else "retired"
            run_id = registry.create_run(f"ab-{action}", tags={"mlops.kind": f"ab-{action}",
                                                              "mlops.production_before": production})
            ok = False
            try:
                figures = _figures(comparison)
                registry.tag_version(staging, {**figures, "compared_with": production, "decision": status,
                                               "live_metric": comparison["metric"], "decision_source": "live_ab",
                                               "decision_reason": comparison["reason"]})
                if action == "promote":
                    registry.promote(staging)
                else:
                    registry.sync(lifecycle="retired")
                after = registry.aliases()
                out = {**out, "status": status, "version": staging, "production": after.get(PRODUCTION),
                       "staging": after.get(STAGING), "run_id": run_id}
                registry.log_run(run_id, metrics={k: v for k, v in figures.items() if v is not None},
                                 params={"alpha": settings.ab_alpha, "min_labels": settings.ab_min_labels,
                                         "min_effect": settings.ab_min_effect, "tau": comparison["tau"],
                                         "metric": comparison["metric"]},
                                 tags={"mlops.status": status, "mlops.reason": comparison["reason"],
                                       "mlops.version": staging, "mlops.decision_source": "live_ab",
                                       "mlops.done": "true"},
                                 text={"decision.json": dumps(out)})
                ok = True
            finally:
                try:
                    registry.finish_run(run_id, ok=ok)
                except Exception:  # the decision stands; the run stays open
                    log.exception("could not close run %s", run_id)
            log.info("live A/B: version %s %s (%s)", staging, status, comparison["reason"])
            return out
    except BusyError as err:
        return {"status": "busy", "reason": str(err)}
