"""The compiled preprocessing operations: plain data and arithmetic on a dict of column lists.

Each operation changes ``cols`` (column name → list of values, one per row) in place, exactly as the fitted
transformer it was read from would (checked against the pipeline on probe rows). They hold numbers, strings
and tuples only, so a compiled predictor pickles without the library that fitted them; but :class:`Transform`,
which holds a fitted transformer the compiler has no operation for and runs it as the pipeline would.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Impute", "Standardise", "MinMax", "Encode", "Rename", "Transform", "missing"]


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class Impute:
    """scikit-learn's ``SimpleImputer``: a missing value becomes the column's fitted statistic."""

    def __init__(self, fills: dict[str, Any]):
        self.fills = fills

    def __call__(self, cols: dict[str, list]) -> None:
        for name, fill in self.fills.items():
            cols[name] = [fill if missing(v) else v for v in cols[name]]


class Standardise:
    """scikit-learn's ``StandardScaler``: ``(x - mean_) / scale_``, in that order (bit for bit)."""

    def __init__(self, columns: list[tuple[str, float, float]]):
        self.columns = columns  # (name, mean, scale)

    def __call__(self, cols: dict[str, list]) -> None:
        for name, mean, scale in self.columns:
            cols[name] = [(float(v) - mean) / scale for v in cols[name]]


class MinMax:
    """scikit-learn's ``MinMaxScaler`` without clipping: ``x * scale_ + min_``."""

    def __init__(self, columns: list[tuple[str, float, float]]):
        self.columns = columns  # (name, min_, scale_)

    def __call__(self, cols: dict[str, list]) -> None:
        for name, low, scale in self.columns:
            cols[name] = [float(v) * scale + low for v in cols[name]]


class Encode:
    """A per-column category encoder as lookup tables: category → output values; separate answers for a
    missing value and for a category the encoder never saw. One column may become several (one-hot)."""

    def __init__(self, tables: dict[str, tuple[dict[str, tuple], tuple, tuple]], outputs: dict[str, list[str]]):
        self.tables = tables  # column -> (table, when missing, when unseen)
        self.outputs = outputs  # column -> the output columns it becomes

    def __call__(self, cols: dict[str, list]) -> None:
        for col, (table, when_missing, when_unseen) in self.tables.items():
            coded = [when_missing if missing(v) else table.get(v, when_unseen) for v in cols.pop(col)]
            for j, name in enumerate(self.outputs[col]):
                cols[name] = [c[j] for c in coded]


class Rename:
    """PyCaret's ``CleanColumnNames``: columns renamed (the characters some estimators refuse removed)."""

    def __init__(self, names: dict[str, str]):
        self.names = names  # old name -> new name, for the columns whose name changes

    def __call__(self, cols: dict[str, list]) -> None:
        moved = {new: cols.pop(old) for old, new in self.names.items()}
        cols.update(moved)


class Transform:
    """A fitted transformer the compiler has no operation for, run as the pipeline runs it: on a DataFrame of the
    columns it reads (in the pipeline's order, with the pipeline's dtypes there); its output columns replace them.
    ``names``: its output columns when it answers an array (None: it answers a DataFrame, whose names are kept)."""

    def __init__(self, transformer, reads: list[str], dtypes: dict[str, str], names: list[str] | None):
        self.transformer, self.reads, self.dtypes, self.names = transformer, reads, dtypes, names

    def __call__(self, cols: dict[str, list]) -> None:
        import pandas as pd

        frame = pd.DataFrame({c: pd.Series(cols.pop(c), dtype=self.dtypes[c]) for c in self.reads})
        out = self.transformer.transform(frame)
        if isinstance(out, pd.DataFrame):
            for name in out.columns:
                cols[name] = out[name].tolist()
        else:
            for j, name in enumerate(self.names):
                cols[name] = out[:, j].tolist()
