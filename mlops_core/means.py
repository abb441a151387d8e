"""Fixed-horizon figures of mean errors (a regression's live A/B): the interval of a mean over requests and
Welch's test of two such means.

The unit is the request, as in the sequential test (:mod:`mlops_core.sequential`): the rows of one batch
request are answered by one call on correlated inputs, so they are not independent observations. A figure
over rows (a mean absolute error: the sum of every row's error over the number of rows) is then a ratio of two
sums over requests, and its variance is the ratio estimator's linearised (delta-method) one with the requests
as clusters. With one row a request it is exactly the variance of a mean, and the interval the Student t
interval of that mean.

Shown beside the always-valid sequential test; valid at one pre-planned look only, so no decision is taken on
them. scipy is imported on the first call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["ratio_interval", "welch_test", "error_figures", "percentiles"]


def ratio_interval(totals: Sequence[float], sizes: Sequence[float], *,
                   confidence: float = 0.95) -> tuple[float, float, float] | None:
    """``(estimate, low, high)`` of ``sum(totals) / sum(sizes)``: request ``i`` holds ``sizes[i]`` rows whose
    values sum to ``totals[i]``. Student t with ``k - 1`` degrees of freedom for ``k`` requests, on the
    cluster-robust standard error ``sqrt(k / (k - 1) * sum((t_i - r m_i)^2)) / sum(m_i)``. None with fewer than
    two requests (no spread to measure)."""
    k = len(totals)
    rows = float(sum(sizes))
    if k < 2 or rows <= 0:
        return None
    from scipy.stats import t

    estimate = float(sum(totals)) / rows
    spread = sum((total - estimate * size) ** 2 for total, size in zip(totals, sizes, strict=True))
    se = math.sqrt(k / (k - 1) * spread) / rows
    half = float(t.ppf(0.5 + confidence / 2, k - 1)) * se
    return estimate, estimate - half, estimate + half


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """Welch's t-test of ``mean(b) - mean(a)``, one value per request: ``(t, two-sided p-value)``; None with
    fewer than two values in either, or when neither has any spread and their means differ (undefined)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t

    (ma, va), (mb, vb) = _moments(a), _moments(b)
    sa, sb = va / len(a), vb / len(b)
    if sa + sb == 0.0:  # no spread at all: equal means are no evidence
        return (0.0, 1.0) if ma == mb else None
    statistic = (mb - ma) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa * sa / (len(a) - 1) + sb * sb / (len(b) - 1))  # Welch-Satterthwaite
    return statistic, float(2.0 * t.sf(abs(statistic), df))


def _moments(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample variance."""
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def error_figures(requests: Sequence[tuple[int, float, float]]) -> dict:
    """A regression's quality from its labelled requests, each ``(rows, sum of |error|, sum of error^2)``: rows,
    MAE and RMSE over rows, with their 95% intervals (None without two labelled requests).

    MAE: the Student t interval of the ratio estimator over requests (:func:`~mlops_core.means.ratio_interval`;
    with one row a request, the t interval of the mean absolute error). RMSE: the same interval of the mean
    squared error, square-rooted (a monotone map, so it keeps the 95%); the chi-square interval of a variance
    would assume normal errors centred on zero, which a model's residuals are not."""
    sizes = [int(n) for n, _, _ in requests]
    rows = sum(sizes)
    out: dict[str, Any] = {"rows": rows, "mae": None, "mae_ci95": None, "rmse": None, "rmse_ci95": None}
    if not rows:
        return out
    absolute = [float(a) for _, a, _ in requests]
    squared = [float(q) for _, _, q in requests]
    mse = sum(squared) / rows
    out["mae"], out["rmse"] = round(sum(absolute) / rows, 6), round(math.sqrt(mse), 6)
    mae = ratio_interval(absolute, sizes)
    if mae is not None:
        out["mae_ci95"] = [round(max(0.0, mae[1]), 6), round(mae[2], 6)]
        _, low, high = ratio_interval(squared, sizes)
        out["rmse_ci95"] = [round(math.sqrt(max(0.0, low)), 6), round(math.sqrt(high), 6)]
    return out


def percentiles(values: list[float]) -> dict:
    """The median and 99th percentile of ``values``, rounded to 3 decimals (None without values)."""
    if not values:
        return {"p50": None, "p99": None}
    import numpy as np

    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}
