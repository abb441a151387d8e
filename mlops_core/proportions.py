"""Fixed-horizon figures of proportions: the Wilson interval and the two-proportion z-test.

Shown beside the always-valid sequential test (:mod:`mlops_core.sequential`); valid at one
pre-planned look only, so no decision is taken on them.
"""

from __future__ import annotations

import math
import statistics

__all__ = ["wilson_interval", "two_proportion_test"]

_NORMAL = statistics.NormalDist()


def _z(confidence: float) -> float:
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """Pooled two-proportion z-test of p2 - p1: ``(z, two-sided p-value)`` (None when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = x2 / n2 - x1 / n1
    if se == 0:  # both arms all right or all wrong: no evidence of a difference
        return 0.0, 1.0
    z = diff / se
    return z, math.erfc(abs(z) / math.sqrt(2))
