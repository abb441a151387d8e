"""A generated mixed data set for ``bench/matrix``: the awkward shapes Titanic does not have.

    .venv/bin/python bench/mixed_data.py            # rewrites bench/data/mixed.csv (same bytes every time)
    .venv/bin/python bench/mixed_data.py --check    # exit 1 if the shipped file differs from a fresh one

``bench/data/mixed.csv`` is this module's output with the defaults (3,000 rows,
``numpy.random.default_rng(19)``), written with ``DataFrame.to_csv(index=False)``.
It has 24 feature columns and a 0/1 target ``churned``:

- 14 numeric (floats, counts, a 0/1 flag, a heavy-tailed amount) and 10 categorical
  (``home city`` with 40 levels, so PyCaret target-encodes it; ``plan tier`` with 4;
  yes/no strings; codes that look like numbers but are written ``R07``);
- every feature column has 5-15% missing values (written as empty fields);
- names with hyphens, spaces, parentheses, a dot, a slash, a percent sign and a
  non-ASCII letter (``income-usd``, ``home city``, ``avg basket (eur)``, ``score.v2``,
  ``returns/orders``, ``discount %``, ``café visits``);
- the target is a logistic function of eight columns (numeric and categorical,
  one interaction) plus noise, missing values counted as their own signal, so a
  fitted model reaches an AUC of about 0.8 and no single column decides it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["generate", "FEATURES", "TARGET", "DEFAULT_PATH"]

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "mixed.csv"
TARGET = "churned"
CITIES = [f"city-{i:02d}" for i in range(40)]
FEATURES = (
    "income-usd", "home city", "num visits", "account age-days", "plan tier", "device type",
    "credit score", "is-member", "signup channel", "region code", "avg basket (eur)", "score.v2",
    "returns/orders", "discount %", "café visits", "support tickets", "pages per-session",
    "payment method", "newsletter opt-in", "tenure months", "age", "household size",
    "last-campaign", "browser",
)


def generate(rows: int = 3000, *, seed: int = 19) -> pd.DataFrame:
    """Draw ``rows`` rows of the mixed data set (the same rows for the same ``seed``)."""
    rng = np.random.default_rng(seed)
    n = rows
    city_weight = rng.dirichlet(np.full(len(CITIES), 2.0))  # a long tail: some cities are rare
    city_effect = rng.normal(0.0, 0.8, len(CITIES))
    city = rng.choice(len(CITIES), size=n, p=city_weight)
    plan = rng.choice(["basic", "plus", "pro", "enterprise"], size=n, p=[0.45, 0.3, 0.18, 0.07])
    age = rng.normal(42, 13, n).clip(18, 90).round(0)
    income = np.exp(rng.normal(10.6, 0.55, n)).round(2)
    visits = rng.poisson(6, n).astype(float)
    tenure = rng.gamma(2.0, 14.0, n).round(1)
    tickets = rng.poisson(1.2, n).astype(float)
    discount = rng.choice([0, 5, 10, 15, 20, 30], size=n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]).astype(float)
    member = rng.choice(["yes", "no"], size=n, p=[0.35, 0.65])
    channel = rng.choice(["web", "app", "store", "partner", "phone"], size=n)
    frame = pd.DataFrame({
        "income-usd": income,
        "home city": np.array(CITIES)[city],
        "num visits": visits,
        "account age-days": (tenure * 30.4 + rng.normal(0, 20, n)).clip(1).round(0),
        "plan tier": plan,
        "device type": rng.choice(["mobile", "desktop", "tablet"], size=n, p=[0.55, 0.35, 0.1]),
        "credit score": rng.normal(680, 60, n).clip(300, 850).round(0),
        "is-member": member,
        "signup channel": channel,
        "region code": np.array([f"R{i:02d}" for i in range(8)])[rng.integers(0, 8, n)],
        "avg basket (eur)": rng.lognormal(3.6, 0.7, n).round(2),
        "score.v2": rng.normal(0, 1, n).round(4),
        "returns/orders": rng.beta(1.2, 8, n).round(4),
        "discount %": discount,
        "café visits": rng.poisson(2.5, n).astype(float),
        "support tickets": tickets,
        "pages per-session": rng.gamma(3.0, 1.8, n).round(2),
        "payment method": rng.choice(["card", "paypal", "transfer", "invoice"], size=n, p=[0.5, 0.25, 0.15, 0.1]),
        "newsletter opt-in": rng.integers(0, 2, n).astype(float),
        "tenure months": tenure,
        "age": age,
        "household size": rng.integers(1, 7, n).astype(float),
        "last-campaign": rng.choice(["spring", "summer", "autumn", "winter", "none"], size=n),
        "browser": rng.choice(["chrome", "firefox", "safari", "edge", "other"], size=n),
    })
    assert tuple(frame.columns) == FEATURES
    plan_effect = pd.Series({"basic": 0.5, "plus": 0.0, "pro": -0.5, "enterprise": -1.0})[plan].to_numpy()
    logit = (-0.6
             + 1.0 * (tickets - 1.2) / 1.1
             - 1.1 * (np.log(tenure + 1) - 3.0)
             - 0.5 * (np.log(income) - 10.6) / 0.55
             + plan_effect
             + city_effect[city]
             - 0.6 * (member == "yes")
             + 0.4 * (discount >= 20) * (channel == "partner") * 3
             + 0.5 * frame["score.v2"].to_numpy()
             + 0.4 * ((age - 42) / 13) ** 2
             + rng.normal(0, 0.3, n))
    target = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    for col in FEATURES:  # missing values everywhere, 5-15% per column, drawn after the target
        share = rng.uniform(0.05, 0.15)
        frame.loc[rng.random(n) < share, col] = np.nan
    frame[TARGET] = target
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    text = generate(args.rows, seed=args.seed).to_csv(index=False)
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh generation'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({args.rows} rows, {len(text) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
