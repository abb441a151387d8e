"""An always-valid comparison of two arms' accuracy (or, for a regression, mean absolute error), safe to look at
after every label.

A fixed-horizon test re-run on a schedule "peeks": every look is another chance of a
false verdict (both arms equal, a look every 50 labels, 48 looks: 13% false "better"
where 2.5% was meant). This module implements the mixture sequential probability
ratio test (mSPRT) of Johari, Koomen, Pekelis and Walsh, "Peeking at A/B Tests: Why it
matters, and what to do about it" (KDD 2017), in its normal form for a difference of
means:

- each observation is one request's share of correct rows (a request's rows are not
  independent trials, so the request is the unit); arm means ``m_P``, ``m_S``, sample
  variances ``s_P^2``, ``s_S^2`` over ``n_P``, ``n_S`` requests;
- the estimate ``d = m_S - m_P`` has variance ``V = s_P^2 / n_P + s_S^2 / n_S``;
- with a normal mixing distribution ``N(0, tau^2)`` on the true difference, the
  likelihood ratio is ``L = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))``;
  under "no difference" it is a martingale with mean 1, so by Ville's inequality
  ``P(L ever >= 1/alpha) <= alpha``: ``p = min(1, 1/L)`` is an always-valid p-value;
- inverting the same boundary gives the confidence sequence
  ``d +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 log(1/alpha)))``,
  which covers the true difference at every look at once with probability 1 - alpha.

``tau`` is the size of difference the test is tuned to find quickest; we use the
smallest effect worth detecting (``MLOPS_AB_MIN_EFFECT``). The variances are plug-in
estimates, so the guarantee is asymptotic; ``bench/ab_sequential`` measures the error
rates by simulation (and a floor of labelled requests, ``MLOPS_AB_MIN_LABELS``, keeps
the first looks from acting on a few rows).

A regression's arms are compared on the same test (:func:`error_msprt`), chosen before any data was seen:

- each observation is one request's mean absolute error over its labelled rows (lower is better); ``d`` is
  Staging's mean minus Production's, so a negative ``d`` favours Staging;
- the variances are the arms' sample variances of those observations (plug-in, as above; an error has no
  bound that would give a worst case, so there is no verdict before two requests an arm);
- ``tau`` is relative: ``MLOPS_AB_MIN_EFFECT`` times the pooled mean absolute error of both arms (0.05: a
  difference of 5% of the errors' size), so the test reads the same whatever the target's unit. It is estimated
  with the variances and converges with them: the guarantee stays asymptotic, and
  ``bench/ab_sequential --regression`` measures it (normal and heavy-tailed errors).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Arm", "Sequential", "mixture_sprt", "error_msprt", "error_statistics", "always_valid_p", "half_width",
           "labels_needed"]


@dataclass(frozen=True)
class Arm:
    """Sufficient statistics of one arm: requests, sum and sum of squares of their shares correct."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    @classmethod
    def of(cls, shares) -> Arm:
        values = np.asarray(shares, dtype=float)
        return cls(int(values.size), float(values.sum()), float(np.square(values).sum()))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def sample_variance(self) -> float:
        """The plain sample variance (NaN below two observations)."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))

    @property
    def variance(self) -> float:
        """Sample variance of shares correct, floored at 1/(4(n+1)) so that an arm all right (or all wrong)
        still has some."""
        if self.n < 2:
            return 0.25
        var = (self.squares - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 1.0 / (4.0 * (self.n + 1)))


@dataclass(frozen=True)
class Sequential:
    """Staging minus Production: the estimate, its always-valid p-value and confidence sequence."""

    difference: float
    variance: float
    p_value: float  # always valid, two-sided
    cs_low: float
    cs_high: float
    alpha: float
    tau: float

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def _log_ratio(d, V, tau):
    """log of the mixture likelihood ratio (arrays allowed)."""
    t2 = tau * tau
    return 0.5 * np.log(V / (V + t2)) + t2 * d * d / (2.0 * V * (V + t2))


def always_valid_p(d, V, *, tau: float):
    """``min(1, 1/L)`` for estimates ``d`` with variances ``V`` (arrays allowed)."""
    return np.minimum(1.0, np.exp(-np.minimum(_log_ratio(d, V, tau), 700.0)))


def half_width(V, *, tau: float, alpha: float):
    """Half-width of the (1 - alpha) confidence sequence at estimate variance ``V`` (arrays allowed)."""
    t2 = tau * tau
    return np.sqrt(V * (V + t2) / t2 * (np.log((V + t2) / V) + 2.0 * math.log(1.0 / alpha)))


def mixture_sprt(production: Arm, staging: Arm, *, tau: float, alpha: float) -> Sequential | None:
    """The mSPRT of ``staging.mean - production.mean`` (None while an arm has no observation)."""
    if production.n == 0 or staging.n == 0:
        return None
    d = staging.mean - production.mean
    V = production.variance / production.n + staging.variance / staging.n
    p = float(always_valid_p(d, V, tau=tau))
    h = float(half_width(V, tau=tau, alpha=alpha))
    return Sequential(d, V, p, max(d - h, -1.0), min(d + h, 1.0), alpha, tau)


#: the smallest variance of an arm's errors, relative to their squared size: identical errors in every request
#: (never seen on real data) still give a finite statistic
_RELATIVE_VARIANCE_FLOOR = 1e-12


def error_msprt(production: Arm, staging: Arm, *, min_effect: float, alpha: float) -> Sequential | None:
    """The mSPRT of ``staging.mean - production.mean``, each observation a request's mean absolute error (lower
    is better), with ``tau = min_effect`` times the pooled mean absolute error; None while an arm has fewer than
    two observations. No errors at all in either arm: no difference, p = 1."""
    if production.n < 2 or staging.n < 2:
        return None
    d, V, tau = (float(v) for v in error_statistics(production.n, production.total, production.squares, staging.n,
                                                     staging.total, staging.squares, min_effect=min_effect))
    if tau <= 0.0:
        return Sequential(d, 0.0, 1.0, d, d, alpha, 0.0)
    p = float(always_valid_p(d, V, tau=tau))
    h = float(half_width(V, tau=tau, alpha=alpha))
    return Sequential(d, V, p, d - h, d + h, alpha, tau)


def error_statistics(n_p, total_p, squares_p, n_s, total_s, squares_s, *, min_effect: float):
    """``(d, V, tau)`` of :func:`error_msprt` from each arm's count, sum and sum of squares of its requests' mean
    absolute errors (arrays allowed, two observations an arm at least; ``tau`` is 0 when there are no errors)."""
    n_p, n_s = np.asarray(n_p, dtype=float), np.asarray(n_s, dtype=float)
    total_p, total_s = np.asarray(total_p, dtype=float), np.asarray(total_s, dtype=float)
    d = total_s / n_s - total_p / n_p
    scale = (total_p + total_s) / (n_p + n_s)
    floor = np.maximum(_RELATIVE_VARIANCE_FLOOR * scale * scale, np.finfo(float).tiny)
    var_p = np.maximum((np.asarray(squares_p) - total_p * total_p / n_p) / (n_p - 1), floor)
    var_s = np.maximum((np.asarray(squares_s) - total_s * total_s / n_s) / (n_s - 1), floor)
    return d, var_p / n_p + var_s / n_s, min_effect * scale


def labels_needed(variance_sum: float, effect: float, *, tau: float, alpha: float, power: float = 0.5) -> int:
    """Requests per arm at which a true difference of ``effect`` is decided with probability about ``power``.

    ``variance_sum`` is ``s_P^2 + s_S^2`` (per-request variances of both arms). The estimate is normal with
    variance ``V = variance_sum / n``; it clears the confidence sequence's half-width ``h(V)`` with probability
    ``power`` once ``effect - z(power) * sqrt(V) > h(V)`` (looks before that only add chances to decide).
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(power)

    def enough(n: int) -> bool:
        V = variance_sum / n
        return effect - z * math.sqrt(V) > float(half_width(V, tau=tau, alpha=alpha))

    lo, hi = 1, 1
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            return hi
    while lo < hi:  # the smallest n that is enough
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
