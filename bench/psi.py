#!/usr/bin/env python
"""Score PSI on a 10-million-row column and compare with a plain pandas.cut baseline (run by hand).

    .venv/bin/python bench/psi.py [--rows 10000000]

Prints the time to fit the reference profile, to score a batch, the baseline
(``pandas.cut`` + ``value_counts`` on the same edges, measured in the same run)
and their ratio, for a numeric and a categorical column.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from mlops_core.drift import EMPTY_SHARE, FeatureProfile


def _best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def _baseline_numeric(profile: FeatureProfile, x: np.ndarray) -> float:
    bins = [-np.inf, *profile.edges, np.inf]
    counts = pd.Series(pd.cut(x, bins)).value_counts(sort=False).to_numpy()
    cur = np.append(counts, np.isnan(x).sum()) / len(x)
    ref = np.where(np.asarray(profile.shares) > 0, profile.shares, EMPTY_SHARE)
    cur = np.where(cur > 0, cur, EMPTY_SHARE)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ref = rng.lognormal(3, 1, size=args.rows)
    ref[rng.random(args.rows) < 0.05] = np.nan
    cur = ref * 1.2

    fit_s, profile = _best(lambda: FeatureProfile.fit("fare", ref, kind="numeric"), repeat=1)
    score_s, value = _best(lambda: profile.score(cur))
    base_s, base_value = _best(lambda: _baseline_numeric(profile, cur))
    assert abs(value - base_value) < 1e-9, (value, base_value)

    cats = rng.choice(np.array(["S", "C", "Q", None], dtype=object), size=args.rows, p=[0.7, 0.2, 0.09, 0.01])
    cat_fit_s, cat_profile = _best(lambda: FeatureProfile.fit("embarked", cats, kind="categorical"), repeat=1)
    cat_score_s, _ = _best(lambda: cat_profile.score(cats[::-1]), repeat=1)

    print(f"rows: {args.rows:,}")
    print(f"{'case':<34}{'seconds':>10}")
    print(f"{'numeric: fit profile (quantiles)':<34}{fit_s:>10.3f}")
    print(f"{'numeric: score batch':<34}{score_s:>10.3f}")
    print(f"{'numeric: baseline pandas.cut':<34}{base_s:>10.3f}")
    print(f"{'categorical: fit profile':<34}{cat_fit_s:>10.3f}")
    print(f"{'categorical: score batch':<34}{cat_score_s:>10.3f}")
    print(f"numeric score speed-up vs pandas.cut baseline: {base_s / score_s:.1f}x (PSI {value:.4f} both)")


if __name__ == "__main__":
    main()
