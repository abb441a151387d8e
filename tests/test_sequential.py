"""The always-valid test of the live A/B, against the published formulas (Johari et al. 2017) and by simulation."""

import math

import numpy as np
import pytest

from mlops_core.sequential import Arm, always_valid_p, half_width, labels_needed, mixture_sprt


def test_likelihood_ratio_and_confidence_sequence_match_the_formulas():
    prod, stag = Arm.of([1] * 78 + [0] * 22), Arm.of([1] * 88 + [0] * 12)
    t = mixture_sprt(prod, stag, tau=0.05, alpha=0.05)
    v_p, v_s = 0.78 * 0.22 * 100 / 99, 0.88 * 0.12 * 100 / 99  # sample variances (ddof 1)
    V, t2, d = v_p / 100 + v_s / 100, 0.0025, 0.10
    L = math.sqrt(V / (V + t2)) * math.exp(t2 * d * d / (2 * V * (V + t2)))
    assert t.difference == pytest.approx(d) and t.variance == pytest.approx(V)
    assert t.p_value == pytest.approx(min(1.0, 1 / L), rel=1e-9)
    h = math.sqrt(V * (V + t2) / t2 * (math.log((V + t2) / V) + 2 * math.log(20)))
    assert (t.cs_low, t.cs_high) == pytest.approx((d - h, d + h), rel=1e-9)


def test_p_value_below_alpha_exactly_when_the_sequence_leaves_zero():
    rng = np.random.default_rng(4)
    for _ in range(300):
        n_p, n_s = rng.integers(20, 2000, 2)
        t = mixture_sprt(Arm.of(rng.random(n_p) < rng.uniform(0.6, 0.9)),
                         Arm.of(rng.random(n_s) < rng.uniform(0.6, 0.9)), tau=0.05, alpha=0.05)
        excludes_zero = t.cs_low > 0 or t.cs_high < 0
        assert excludes_zero == (t.p_value < 0.05)


def test_error_rate_holds_under_continuous_monitoring():
    """2,000 A/A experiments, a look every 25 requests per arm up to 3,000: at most alpha decide anything."""
    rng = np.random.default_rng(11)
    looks = np.arange(25, 3001, 25)
    sp = np.cumsum(rng.binomial(25, 0.78, size=(2000, looks.size)), axis=1)
    ss = np.cumsum(rng.binomial(25, 0.78, size=(2000, looks.size)), axis=1)

    def var(s, n):
        return np.maximum((s / n) * (1 - s / n) * n / (n - 1), 1 / (4 * (n + 1)))

    V = var(sp, looks) / looks + var(ss, looks) / looks
    p = always_valid_p(ss / looks - sp / looks, V, tau=0.05)
    decided = (p < 0.05)[:, looks >= 200].any(axis=1)
    assert decided.mean() <= 0.05
    # the same looks with a fixed-horizon z-test would decide far more often
    pooled = (sp + ss) / (2 * looks)
    z = (ss - sp) / looks / np.sqrt(pooled * (1 - pooled) * 2 / looks)
    assert (np.abs(z) > 1.96)[:, looks >= 200].any(axis=1).mean() > 3 * decided.mean()


def test_a_constant_arm_keeps_a_variance_and_no_arm_gives_no_test():
    assert Arm.of([1] * 50).variance == pytest.approx(1 / (4 * 51))
    assert mixture_sprt(Arm(), Arm.of([1, 0]), tau=0.05, alpha=0.05) is None


def test_labels_needed_falls_with_the_effect_and_rises_with_power():
    n = labels_needed(0.34, 0.05, tau=0.05, alpha=0.05, power=0.8)
    assert float(half_width(0.34 / n, tau=0.05, alpha=0.05)) < 0.05
    assert labels_needed(0.34, 0.10, tau=0.05, alpha=0.05, power=0.8) < n
    assert labels_needed(0.34, 0.05, tau=0.05, alpha=0.05, power=0.5) < n
