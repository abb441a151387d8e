"""The live A/B verdict: per-arm figures from the prediction log and the arms compared.

    from mlops_core.ab import report
    out = report(PredictionStore(settings), production="3", staging="4")
    out["comparison"]["verdict"]      # staging_better | staging_worse | keep_collecting | ...

The comparison is the always-valid sequential test of :mod:`mlops_core.sequential`, on
one observation per labelled request, both arms over the same period (since the current
Staging version first served): of the share of correct rows (classification, higher is better) or of the mean
absolute error (a regression, lower is better), one implementation each behind :func:`compare`, with the same
verdicts and the same keys. The decisions taken on the verdict live in :mod:`mlops_core.live`.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .predictions import PRODUCTION_ARM, REGRESSION, STAGING_ARM, PredictionStore
from .proportions import two_proportion_test

__all__ = ["report", "compare"]


def report(store: PredictionStore, *, production: str | None = None, staging: str | None = None) -> dict:
    """Every group, and the comparison of Production's version with Staging's (default: the latest seen)."""
    groups = store.groups()
    production = str(production) if production is not None else _latest(groups, PRODUCTION_ARM)
    staging = str(staging) if staging is not None else _latest(groups, STAGING_ARM)
    return {"generated_at": store.clock(), "store": store.describe(), "groups": groups,
            "comparison": compare(store, production, staging, store.settings),
            "settings": {"alpha": store.settings.ab_alpha, "power": store.settings.ab_power,
                         "min_labels": store.settings.ab_min_labels, "min_effect": store.settings.ab_min_effect,
                         "promote": store.settings.ab_promote, "retire": store.settings.ab_retire}}


def _latest(groups: list[dict], arm: str) -> str | None:
    seen = [g for g in groups if g["arm"] == arm]
    return max(seen, key=lambda g: g["last_at"] or 0)["version"] if seen else None


def compare(store: PredictionStore, production: str | None, staging: str | None, settings: Settings) -> dict:
    """Staging minus Production since Staging's version first served: the sequential test and a verdict.

    Verdicts: ``nothing_to_compare`` (also when the arms answer different tasks), ``insufficient_labels``
    (fewer than ``ab_min_labels`` labelled requests in an arm), ``staging_better`` / ``staging_worse`` (the
    always-valid p-value below ``ab_alpha``), else ``keep_collecting``. The task the arms' logged answers
    have picks the measure: accuracy (:func:`_compare_accuracy`) or mean absolute error
    (:func:`_compare_errors`); ``metric`` says which, ``lower_is_better`` which way ``difference`` favours
    Staging.
    """
    out = _keys(production, staging, settings)
    if production is None or staging is None or production == staging:
        out["verdict"] = "nothing_to_compare"
        out["reason"] = (f"both arms serve version {production}" if production is not None and production == staging
                         else "an arm has no logged predictions")
        return out
    tasks = {PRODUCTION_ARM: store.task(PRODUCTION_ARM, production), STAGING_ARM: store.task(STAGING_ARM, staging)}
    known = {task for task in tasks.values() if task is not None}
    if len(known) > 1:
        out["verdict"] = "nothing_to_compare"
        out["reason"] = (f"the arms answer different tasks (production v{production} a {tasks[PRODUCTION_ARM]}, "
                         f"staging v{staging} a {tasks[STAGING_ARM]}): their quality has no common measure")
        return out
    compared = _compare_errors if known == {REGRESSION} else _compare_accuracy
    out = compared(store, production, staging, settings, out)
    out["action"] = {"staging_better": "promote", "staging_worse": "retire"}.get(out["verdict"])
    out["decision_allowed"] = bool((out["action"] == "promote" and settings.ab_promote)
                                   or (out["action"] == "retire" and settings.ab_retire))
    return out


def _keys(production: str | None, staging: str | None, settings: Settings) -> dict[str, Any]:
    """The comparison's keys before any figure, both tasks' (a regression's figures stay None for a classifier
    and the other way round): a reader finds every key whatever the arms answer."""
    return {"production_version": production, "staging_version": staging, "since": None, "metric": None,
            "lower_is_better": None, "unit": None,
            "production_requests": 0, "staging_requests": 0, "production_labelled": 0, "staging_labelled": 0,
            "production_accuracy": None, "staging_accuracy": None,
            "production_mae": None, "staging_mae": None, "production_rmse": None, "staging_rmse": None,
            "difference": None, "p_value": None, "cs_low": None, "cs_high": None, "alpha": settings.ab_alpha,
            "test": None, "tau": None, "fixed_horizon": None, "min_labels": settings.ab_min_labels,
            "min_labels_met": False, "min_effect": settings.ab_min_effect, "samples_needed_per_arm": None,
            "samples_still_needed": {"production": None, "staging": None}, "decision_allowed": False,
            "action": None}


def _compare_accuracy(store: PredictionStore, production: str, staging: str, settings: Settings,
                      out: dict[str, Any]) -> dict[str, Any]:
    """A classifier's arms: the mSPRT of Staging's share of correct rows per request minus Production's
    (higher is better); ``tau`` is ``ab_min_effect``, a difference of accuracy."""
    from .sequential import Arm, labels_needed, mixture_sprt

    out.update({"metric": "accuracy", "lower_is_better": False, "unit": "request (its share of correct rows)",
                "test": "mixture SPRT, always valid (Johari et al. 2017)", "tau": settings.ab_min_effect})
    since = store.first_served(STAGING_ARM, staging)
    prod_shares, prod_rows, prod_correct = store.request_shares(PRODUCTION_ARM, production, since=since or 0.0)
    stag_shares, stag_rows, stag_correct = (store.request_shares(STAGING_ARM, staging, since=since)
                                            if since is not None else ([], 0, 0))
    prod, stag = Arm.of(prod_shares), Arm.of(stag_shares)
    test = mixture_sprt(prod, stag, tau=settings.ab_min_effect, alpha=settings.ab_alpha)
    var_sum = (prod.variance if prod.n >= 2 else 0.25) + (stag.variance if stag.n >= 2 else 0.25)
    needed = max(settings.ab_min_labels, labels_needed(var_sum, settings.ab_min_effect, tau=settings.ab_min_effect,
                                                       alpha=settings.ab_alpha, power=settings.ab_power))
    fixed = two_proportion_test(prod_correct, prod_rows, stag_correct, stag_rows)
    out.update({"since": since, "production_requests": prod.n, "staging_requests": stag.n,
                "production_labelled": prod_rows, "staging_labelled": stag_rows,
                "production_accuracy": round(prod_correct / prod_rows, 6) if prod_rows else None,
                "staging_accuracy": round(stag_correct / stag_rows, 6) if stag_rows else None,
                "min_labels_met": prod.n >= settings.ab_min_labels and stag.n >= settings.ab_min_labels,
                "samples_needed_per_arm": needed,
                "samples_still_needed": {"production": max(0, needed - prod.n), "staging": max(0, needed - stag.n)},
                "fixed_horizon": None if fixed is None else {
                    "z": round(fixed[0], 4), "p_value": fixed[1],
                    "note": "two-proportion z-test on rows: valid at one pre-planned look only, not for decisions"}})
    if test is not None:
        out.update({"difference": round(test.difference, 6), "p_value": test.p_value,
                    "cs_low": round(test.cs_low, 6), "cs_high": round(test.cs_high, 6)})
    figures = (f"staging v{staging} {stag.mean:.4f} vs production v{production} {prod.mean:.4f} per request "
               f"({stag.n} and {prod.n} labelled requests since staging first served)") if test else ""
    if not out["min_labels_met"] or test is None:
        out["verdict"] = "insufficient_labels"
        out["reason"] = (f"labelled requests: production v{production} {prod.n}, staging v{staging} {stag.n}; "
                         f"at least {settings.ab_min_labels} per arm are needed")
    elif test.p_value < settings.ab_alpha:
        out["verdict"] = "staging_better" if test.difference > 0 else "staging_worse"
        out["reason"] = (f"{figures}: difference {test.difference:+.4f}, {1 - settings.ab_alpha:.0%} confidence "
                         f"sequence [{test.cs_low:+.4f}, {test.cs_high:+.4f}], always-valid p={test.p_value:.3g} "
                         f"< {settings.ab_alpha}")
    else:
        out["verdict"] = "keep_collecting"
        out["reason"] = (f"{figures}: difference {test.difference:+.4f}, confidence sequence "
                         f"[{test.cs_low:+.4f}, {test.cs_high:+.4f}] holds 0 (always-valid p={test.p_value:.3g})")
    return out


def _compare_errors(store: PredictionStore, production: str, staging: str, settings: Settings,
                    out: dict[str, Any]) -> dict[str, Any]:
    """A regression's arms: the mSPRT of Staging's mean absolute error per request minus Production's (lower is
    better); ``tau`` is ``ab_min_effect`` times the pooled mean absolute error (:func:`.sequential.error_msprt`).
    MAE and RMSE are over rows; the test's observations, over requests."""
    from .means import welch_test
    from .sequential import Arm, error_msprt, labels_needed

    out.update({"metric": "mae", "lower_is_better": True,
                "unit": "request (the mean absolute error of its labelled rows)",
                "test": "mixture SPRT on the difference of mean absolute errors, always valid (Johari et al. 2017); "
                        "tau = min_effect x the pooled mean absolute error"})
    since = store.first_served(STAGING_ARM, staging)
    prod_requests = store.request_errors(PRODUCTION_ARM, production, since=since or 0.0)
    stag_requests = store.request_errors(STAGING_ARM, staging, since=since) if since is not None else []
    prod_errors, stag_errors = ([a / n for n, a, _ in requests] for requests in (prod_requests, stag_requests))
    prod, stag = Arm.of(prod_errors), Arm.of(stag_errors)
    out.update({"since": since, "production_requests": prod.n, "staging_requests": stag.n,
                "min_labels_met": min(prod.n, stag.n) >= max(2, settings.ab_min_labels)})
    for arm, requests in (("production", prod_requests), ("staging", stag_requests)):
        rows = sum(n for n, _, _ in requests)
        out[f"{arm}_labelled"] = rows
        if rows:
            out[f"{arm}_mae"] = round(sum(a for _, a, _ in requests) / rows, 6)
            out[f"{arm}_rmse"] = round((sum(q for _, _, q in requests) / rows) ** 0.5, 6)
    fixed = welch_test(prod_errors, stag_errors)
    if fixed is not None:
        out["fixed_horizon"] = {"t": round(fixed[0], 4), "p_value": fixed[1],
                                "note": "Welch's t-test on requests' mean absolute errors: valid at one pre-planned "
                                        "look only, not for decisions"}
    test = error_msprt(prod, stag, min_effect=settings.ab_min_effect, alpha=settings.ab_alpha)
    if test is not None:
        out.update({"difference": round(test.difference, 6), "p_value": test.p_value,
                    "cs_low": round(test.cs_low, 6), "cs_high": round(test.cs_high, 6), "tau": round(test.tau, 6)})
        if test.tau > 0:
            needed = max(settings.ab_min_labels,
                         labels_needed(prod.sample_variance + stag.sample_variance, test.tau, tau=test.tau,
                                       alpha=settings.ab_alpha, power=settings.ab_power))
            out["samples_needed_per_arm"] = needed
            out["samples_still_needed"] = {"production": max(0, needed - prod.n), "staging": max(0, needed - stag.n)}
    if not out["min_labels_met"] or test is None:
        out["verdict"] = "insufficient_labels"
        out["reason"] = (f"labelled requests: production v{production} {prod.n}, staging v{staging} {stag.n}; "
                         f"at least {max(2, settings.ab_min_labels)} per arm are needed")
        return out
    figures = (f"mean absolute error: staging v{staging} {stag.mean:.6g} vs production v{production} "
               f"{prod.mean:.6g} per request ({stag.n} and {prod.n} labelled requests since staging first served)")
    interval = f"[{test.cs_low:+.6g}, {test.cs_high:+.6g}]"
    if test.p_value < settings.ab_alpha:
        out["verdict"] = "staging_better" if test.difference < 0 else "staging_worse"
        out["reason"] = (f"{figures}: difference {test.difference:+.6g} (lower is better), "
                         f"{1 - settings.ab_alpha:.0%} confidence sequence {interval}, always-valid "
                         f"p={test.p_value:.3g} < {settings.ab_alpha}")
    else:
        out["verdict"] = "keep_collecting"
        out["reason"] = (f"{figures}: difference {test.difference:+.6g}, confidence sequence {interval} holds 0 "
                         f"(always-valid p={test.p_value:.3g})")
    return out
