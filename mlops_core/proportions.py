"""Fixed-horizon figures of proportions: the Wilson interval and the two-proportion z-test.

Shown beside the always-valid sequential test (:mod:`mlops_core.sequential`); valid at one
pre-planned look only, so no decision is taken on them. Both are statsmodels' own, imported
on the first call: the server imports this module at start-up and only its ``/ab/report``
needs them.
"""

from __future__ import annotations

__all__ = ["wilson_interval", "two_proportion_test"]


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return max(0.0, float(low)), min(1.0, float(high))


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """Pooled two-proportion z-test of p2 - p1: ``(z, two-sided p-value)`` (None when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    if pooled * (1 - pooled) == 0:  # both arms all right or all wrong: no evidence of a difference
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportions_ztest

    z, p_value = proportions_ztest([x2, x1], [n2, n1], value=0, alternative="two-sided", prop_var=False)
    return float(z), float(p_value)
