"""An always-valid comparison of two arms' accuracy, safe to look at after every label.

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Arm", "Sequential", "mixture_sprt", "always_valid_p", "half_width", "labels_needed"]


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
    def variance(self) -> float:
        """Sample variance, floored at 1/(4(n+1)) so that an arm all right (or all wrong) still has some."""
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
