"""The paired tests behind a promotion, checked against the published formulas and by simulation."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from mlops_core.evidence import compare, mcnemar


def _exact_tail(b: int, n: int) -> float:
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2 ** n


def test_mcnemar_p_value_is_the_exact_binomial_tail_of_the_discordant_rows():
    cand = np.array([1] * 30 + [0] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    base = np.array([0] * 30 + [1] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    c = mcnemar(cand, base)
    assert (c.candidate_only, c.baseline_only, c.rows) == (30, 12, 100)
    assert c.p_value == pytest.approx(_exact_tail(30, 42), rel=1e-9)
    assert c.difference == pytest.approx(0.18)
    # Agresti & Min (2005): 0.5 added to each cell, then the Wald interval of the matched difference
    m, p12, p21 = 102, 30.5 / 102, 12.5 / 102
    half = 1.959964 * math.sqrt(((p12 + p21) - (p12 - p21) ** 2) / m)
    assert (c.ci_low, c.ci_high) == pytest.approx((p12 - p21 - half, p12 - p21 + half), abs=1e-6)


def test_concordant_rows_carry_no_evidence():
    same = np.array([1, 0, 1, 1, 0] * 40, dtype=bool)
    c = mcnemar(same, same)
    assert c.p_value == 1.0 and c.difference == 0.0
    assert not c.better(alpha=0.05, min_improvement=0.0) and not c.better(alpha=1.0, min_improvement=0.0)


def test_alpha_one_is_the_plain_strictly_better_rule_and_min_improvement_still_applies():
    cand = np.array([1, 0] + [1] * 98, dtype=bool)
    base = np.array([0, 1] + [1] * 97 + [0], dtype=bool)  # one row better in all: no evidence at 5%
    c = mcnemar(cand, base)
    assert c.difference == pytest.approx(0.01) and c.p_value > 0.05
    assert not c.better(alpha=0.05, min_improvement=0.0)
    assert c.better(alpha=1.0, min_improvement=0.0)
    assert not c.better(alpha=1.0, min_improvement=0.01)


def test_false_promotion_rate_under_no_difference_stays_below_alpha():
    """Two equally good models (78%, independent errors) on 300 rows, 4,000 times: rejections <= 5%."""
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(4000):
        c = mcnemar(rng.random(300) < 0.78, rng.random(300) < 0.78)
        rejected += c.better(alpha=0.05, min_improvement=0.0)
    assert rejected / 4000 <= 0.05


def test_a_clearly_better_model_is_found():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    poor = np.where(rng.random(400) < 0.7, y, 1 - y)
    c = compare("accuracy", y, good, poor)
    assert c.better(alpha=0.05, min_improvement=0.0) and c.ci_low > 0


@pytest.mark.parametrize("metric", ["f1", "precision", "recall"])
def test_paired_bootstrap_difference_matches_scikit_learn_and_detects_a_better_model(metric):
    from sklearn import metrics

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    good = np.where(rng.random(500) < 0.9, y, 1 - y)
    poor = np.where(rng.random(500) < 0.6, y, 1 - y)
    fn = {"f1": f1_score, "precision": metrics.precision_score, "recall": metrics.recall_score}[metric]
    c = compare(metric, y, good, poor, seed=1)
    assert c.test == "paired_bootstrap"
    assert c.difference == pytest.approx(fn(y, good) - fn(y, poor))
    assert c.ci_low <= c.difference <= c.ci_high
    assert c.p_value < 0.01 and c.better(alpha=0.05, min_improvement=0.0)
    swapped = compare(metric, y, poor, good, seed=1)
    assert swapped.p_value > 0.95 and not swapped.better(alpha=0.05, min_improvement=0.0)


def test_auc_bootstrap_uses_probabilities():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 300)
    sharp, vague = y * 0.6 + rng.random(300) * 0.4, y * 0.1 + rng.random(300) * 0.9
    c = compare("auc", y, sharp > 0.5, vague > 0.5, sharp, vague, seed=2)
    assert c.candidate == pytest.approx(roc_auc_score(y, sharp))
    assert c.baseline == pytest.approx(roc_auc_score(y, vague))
    assert c.better(alpha=0.05, min_improvement=0.0)


def test_no_rows_means_no_evidence():
    c = compare("accuracy", [], [], [])
    assert c.rows == 0 and c.p_value == 1.0 and not c.better(alpha=1.0, min_improvement=0.0)
