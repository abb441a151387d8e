"""Paired evidence: is a candidate better than another model on the same labelled rows?

The test is chosen before looking, by the promotion metric:

- ``accuracy``: the exact one-sided McNemar test. Only the discordant rows carry
  information: ``b`` rows only the candidate gets right, ``c`` rows only the other
  model does. Under "no difference" ``b ~ Binomial(b + c, 1/2)``, so the p-value
  of "better" is ``P(X >= b)`` and that of "worse" ``P(X <= b)``. The 95% interval
  of the accuracy difference is Agresti and Min's (2005) adjusted Wald interval
  for matched proportions (0.5 added to each
  cell of the 2x2 table), which keeps its coverage with few discordant rows.
- ``f1``, ``precision``, ``recall``, ``auc``: a paired bootstrap (both models
  scored on the same resampled rows; 2,000 resamples from a fixed seed); for two
  classes the metric is the positive class's, for more the macro average over the
  classes (AUC is refused up front for more than two: see ``labels.task_labels``). The
  p-value of "better" is the share of resampled differences at or below zero (with
  the usual +1 correction), that of "worse" the share at or above zero, the
  interval their 2.5 and 97.5 percentiles.

For a regression (``rmse``, ``mae``, ``r2``) the test is a paired bootstrap too, of the
metric on the same rows' errors: the candidate's and the baseline's per-row errors are
resampled together (2,000 resamples; above 2,000 rows, drawn from the normal law the
resampled means follow by the central limit theorem, which the row bootstrap would only
approximate at far greater cost). A bootstrap rather than Wilcoxon's signed-rank test:
Wilcoxon tests whether the per-row absolute errors' differences are centred on zero, not
whether the RMSE (or R²) the promotion rule is about improved, and two models can differ
in one without the other. ``difference`` is then the improvement: the baseline's error
less the candidate's (R²: the candidate's less the baseline's), so that above zero is
better for every metric.

Promotion then needs both: a difference above the minimum improvement and a
p-value of "better" below alpha (alpha 1 is the plain "strictly better" rule, no
test). The same test the other way (p-value of "worse" below alpha) shows a
candidate worse: it is never served.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Comparison", "compare", "compare_errors", "mcnemar", "metric_value"]

_Z95 = 1.959963984540054
_RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    """How ``candidate`` compares with ``baseline`` on the same rows (difference = candidate - baseline)."""

    metric: str
    test: str
    rows: int
    candidate: float
    baseline: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float  # one-sided: H0 "the candidate is not better"
    candidate_only: int | None = None  # discordant rows (McNemar): only the candidate is right
    baseline_only: int | None = None  # ... only the baseline is right
    p_worse: float = 1.0  # one-sided, the other way: H0 "the candidate is not worse"

    def better(self, *, alpha: float, min_improvement: float) -> bool:
        """Better by more than ``min_improvement``, with p < ``alpha`` (no test when alpha is 1)."""
        return self.difference > min_improvement and (alpha >= 1.0 or self.p_value < alpha)

    def worse(self, *, alpha: float) -> bool:
        """Shown worse: below the baseline with p of "worse" < ``alpha`` (any shortfall when alpha is 1)."""
        return self.difference < 0 and (alpha >= 1.0 or self.p_worse < alpha)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        return (f"{self.metric} {self.candidate:.4f} vs {self.baseline:.4f}, difference {self.difference:+.4f} "
                f"(95% CI {self.ci_low:+.4f} to {self.ci_high:+.4f}), one-sided p={self.p_value:.4g} "
                f"(worse: p={self.p_worse:.4g}) "
                f"({self.test}, {self.rows} rows)")


def _binomial_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, 0.5))


def mcnemar(candidate_right: np.ndarray, baseline_right: np.ndarray) -> Comparison:
    """Exact one-sided McNemar test and Agresti-Min interval for the difference in accuracy."""
    a = np.asarray(candidate_right, dtype=bool)
    z = np.asarray(baseline_right, dtype=bool)
    n = int(a.size)
    if n == 0:
        return Comparison("accuracy", "mcnemar_exact", 0, math.nan, math.nan, 0.0, -1.0, 1.0, 1.0, 0, 0, 1.0)
    b, c = int(np.sum(a & ~z)), int(np.sum(~a & z))
    diff = (b - c) / n
    m = n + 2.0  # Agresti & Min (2005): add 0.5 to each of the four cells
    p12, p21 = (b + 0.5) / m, (c + 0.5) / m
    half = _Z95 * math.sqrt(max((p12 + p21) - (p12 - p21) ** 2, 0.0) / m)
    centre = p12 - p21
    return Comparison("accuracy", "mcnemar_exact", n, float(a.mean()), float(z.mean()), diff,
                      max(centre - half, -1.0), min(centre + half, 1.0), _binomial_sf(b, b + c), b, c,
                      _binomial_sf(c, b + c))


def metric_value(metric: str, y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None = None) -> float:
    """One metric on labels ``y`` (0/1: 1 the positive class), predictions ``pred`` and P(class 1) ``proba``."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    if metric == "accuracy":
        return float(np.mean(y == pred)) if y.size else math.nan
    if metric == "auc":
        return _auc(y, np.asarray(proba, dtype=float))
    tp = float(np.sum((pred == 1) & (y == 1)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    return _from_counts(metric, tp, fp, fn)


def _from_counts(metric, tp, fp, fn):
    """Precision, recall or F1 from counts (arrays allowed); 0 where undefined, like scikit-learn's zero_division=0."""
    tp, fp, fn = (np.asarray(v, dtype=float) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "precision":
            out = tp / (tp + fp)
        elif metric == "recall":
            out = tp / (tp + fn)
        elif metric == "f1":
            out = 2 * tp / (2 * tp + fp + fn)
        else:
            raise ValueError(f"unknown metric {metric!r}")
    out = np.where(np.isfinite(out), out, 0.0)
    return float(out) if out.ndim == 0 else out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _bootstrap(metric: str, y, pred_c, pred_b, proba_c, proba_b, seed: int) -> Comparison:
    rng = np.random.default_rng(seed)
    n = int(len(y))
    cand = metric_value(metric, y, pred_c, proba_c)
    base = metric_value(metric, y, pred_b, proba_b)
    if n == 0:
        return Comparison(metric, "paired_bootstrap", 0, cand, base, 0.0, -1.0, 1.0, 1.0)
    if metric == "auc":
        diffs = np.empty(_RESAMPLES)
        for i in range(_RESAMPLES):
            idx = rng.integers(0, n, n)
            diffs[i] = _auc(y[idx], proba_c[idx]) - _auc(y[idx], proba_b[idx])
        diffs = diffs[np.isfinite(diffs)]
    else:
        # the metrics depend on the rows only through counts of the 8 (label, candidate, baseline) cells:
        # resampling rows is resampling those counts (multinomial), whatever the number of rows
        cell = (y.astype(int) * 4 + pred_c.astype(int) * 2 + pred_b.astype(int))
        shares = np.bincount(cell, minlength=8) / n
        counts = rng.multinomial(n, shares, size=_RESAMPLES)

        def count(label, which, predicted):
            keep = [k for k in range(8) if (k >> 2) == label and ((k >> which) & 1) == predicted]
            return counts[:, keep].sum(axis=1)

        diffs = (_from_counts(metric, count(1, 1, 1), count(0, 1, 1), count(1, 1, 0))
                 - _from_counts(metric, count(1, 0, 1), count(0, 0, 1), count(1, 0, 0)))
    return _from_diffs(metric, n, cand, base, diffs)


def _macro_bootstrap(metric: str, y: np.ndarray, pred_c: np.ndarray, pred_b: np.ndarray, n_classes: int,
                     seed: int) -> Comparison:
    """Macro precision, recall or F1 over ``n_classes`` classes (codes ``0..n_classes-1``; any other code is a
    label outside them, always wrong), by the paired bootstrap.

    The macro metrics depend on the rows only through the counts of the observed (label, candidate, baseline)
    cells: resampling rows is resampling those counts (multinomial), at most one cell a row whatever the number
    of classes. A class neither in the labels nor in a model's predictions of a resample has no score there
    and is left out of that resample's average (scikit-learn's macro average over the labels present).
    """
    other = n_classes
    y, pred_c, pred_b = (np.where((a >= 0) & (a < n_classes), a, other) for a in (y, pred_c, pred_b))
    n, width = int(y.size), n_classes + 1
    cells, counts = np.unique((y * width + pred_c) * width + pred_b, return_counts=True)
    truth, cand, base = cells // (width * width), (cells // width) % width, cells % width
    classes = np.arange(n_classes)
    is_true = truth[:, None] == classes  # cell x class: the cell's label is the class
    per_model = {name: (pred[:, None] == classes) for name, pred in (("c", cand), ("b", base))}

    def macro(cell_counts: np.ndarray, which: str) -> np.ndarray:
        said = per_model[which]
        tp = cell_counts @ (said & is_true)
        fp = cell_counts @ (said & ~is_true)
        fn = cell_counts @ (~said & is_true)
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "precision":
                num, den = tp, tp + fp
            elif metric == "recall":
                num, den = tp, tp + fn
            else:
                num, den = 2 * tp, 2 * tp + fp + fn
            score = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
            present = (tp + fp + fn) > 0
            score = np.where(present, np.nan_to_num(score, nan=0.0), np.nan)
            return np.nanmean(score, axis=-1)

    cand_value, base_value = float(macro(counts.astype(float), "c")), float(macro(counts.astype(float), "b"))
    resampled = np.random.default_rng(seed).multinomial(n, counts / n, size=_RESAMPLES).astype(float)
    diffs = macro(resampled, "c") - macro(resampled, "b")
    diffs = diffs[np.isfinite(diffs)]
    return _from_diffs(f"{metric}_macro", n, cand_value, base_value, diffs)


def _from_diffs(metric: str, n: int, cand: float, base: float, diffs: np.ndarray) -> Comparison:
    """The bootstrap's verdict from its resampled differences (candidate - baseline)."""
    if not diffs.size:
        return Comparison(metric, "paired_bootstrap", n, cand, base, cand - base, -1.0, 1.0, 1.0)
    p = (1 + int(np.sum(diffs <= 0))) / (diffs.size + 1)
    p_worse = (1 + int(np.sum(diffs >= 0))) / (diffs.size + 1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Comparison(metric, "paired_bootstrap", n, cand, base, cand - base, float(low), float(high), float(p),
                      p_worse=float(p_worse))


_ERRORS = {"rmse", "mae", "r2"}
_EXACT_ROWS = 2_000  # above: the resampled means are drawn from their normal law


def compare_errors(metric: str, y, pred_candidate, pred_baseline, *, seed: int = 0) -> Comparison:
    """Compare two regressors' predictions of ``y`` on the same rows by ``metric`` (``rmse``, ``mae``, ``r2``):
    the paired bootstrap of the module doc; ``difference`` is the improvement (above zero: the candidate is
    better)."""
    if metric not in _ERRORS:
        raise ValueError(f"unknown regression metric {metric!r}; expected one of {sorted(_ERRORS)}")
    y = np.asarray(y, dtype=float)
    e_c, e_b = np.asarray(pred_candidate, dtype=float) - y, np.asarray(pred_baseline, dtype=float) - y
    n = int(y.size)
    if metric == "mae":
        rows = np.column_stack([np.abs(e_c), np.abs(e_b)])
    elif metric == "rmse":
        rows = np.column_stack([e_c ** 2, e_b ** 2])
    else:
        rows = np.column_stack([e_c ** 2, e_b ** 2, y, y ** 2])

    def values(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if metric == "mae":
            return means[..., 0], means[..., 1]
        if metric == "rmse":
            return np.sqrt(means[..., 0]), np.sqrt(means[..., 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = means[..., 3] - means[..., 2] ** 2
            return 1 - means[..., 0] / spread, 1 - means[..., 1] / spread

    def improvement(means: np.ndarray) -> np.ndarray:
        cand, base = values(means)
        return cand - base if metric == "r2" else base - cand

    if n < 2:
        return Comparison(metric, "paired_bootstrap", n, math.nan, math.nan, 0.0, -math.inf, math.inf, 1.0)
    cand, base = (float(v) for v in values(rows.mean(axis=0)))
    rng = np.random.default_rng(seed)
    if n <= _EXACT_ROWS:
        resampled = np.concatenate([rows[rng.integers(0, n, (100, n))].mean(axis=1)
                                    for _ in range(_RESAMPLES // 100)])
    else:
        resampled = rng.multivariate_normal(rows.mean(axis=0), np.cov(rows, rowvar=False) / n, size=_RESAMPLES)
    diffs = improvement(resampled)
    diffs = diffs[np.isfinite(diffs)]
    better = float(improvement(rows.mean(axis=0)))
    if not diffs.size:
        return Comparison(metric, "paired_bootstrap", n, cand, base, better, -math.inf, math.inf, 1.0)
    p = (1 + int(np.sum(diffs <= 0))) / (diffs.size + 1)
    p_worse = (1 + int(np.sum(diffs >= 0))) / (diffs.size + 1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Comparison(metric, "paired_bootstrap", n, cand, base, better, float(low), float(high), float(p),
                      p_worse=float(p_worse))


def compare(metric: str, y, pred_candidate, pred_baseline, proba_candidate=None, proba_baseline=None, *,
            seed: int = 0, n_classes: int = 2) -> Comparison:
    """Compare two models' outputs on the same rows with the test fixed for ``metric`` (see the module doc).

    ``y`` and the predictions are integer codes: for two classes 1 is the positive class and 0 the other (any
    other code is neither: a negative prediction); for ``n_classes`` > 2 the classes are ``0..n_classes-1``.
    """
    y = np.asarray(y, dtype=int)
    pred_c, pred_b = np.asarray(pred_candidate, dtype=int), np.asarray(pred_baseline, dtype=int)
    if metric == "accuracy":
        return mcnemar(pred_c == y, pred_b == y)
    if n_classes > 2:
        if metric == "auc":
            raise ValueError("AUC compares two classes; this task has more (see labels.task_labels)")
        return _macro_bootstrap(metric, y, pred_c, pred_b, n_classes, seed)
    y, pred_c, pred_b = ((a == 1).astype(int) for a in (y, pred_c, pred_b))
    proba_c = None if proba_candidate is None else np.asarray(proba_candidate, dtype=float)
    proba_b = None if proba_baseline is None else np.asarray(proba_baseline, dtype=float)
    return _bootstrap(metric, y, pred_c, pred_b, proba_c, proba_b, seed)
