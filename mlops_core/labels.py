"""Labels as users have them: words, booleans or integers, two classes or more.

One form everywhere (:func:`canonical`): a label column becomes integers when every value is a whole number
(``1``, ``"1"`` and ``1.0`` are one class), booleans when every value is true/false, else stripped strings.
PyCaret then trains on those values as they are (it label-encodes them itself, in sorted order), so the
registered pipeline predicts labels as they appear in the data; :func:`pipeline_classes` gives the labels in
the order of its ``predict_proba`` columns.

Two classes are a binary task with a positive class (the one ``probabilities`` gives and precision, recall,
F1 and AUC are computed for): ``MLOPS_POSITIVE_LABEL`` names it, else one of ``1``/``True``/``"yes"``… is it,
else the run is refused (:func:`positive_of`). Three or more classes are a multiclass task.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import SettingsError

__all__ = ["Labels", "canonical", "canonical_value", "label_key", "label_keys", "distinct", "positive_of",
           "pipeline_classes", "task_labels", "MAX_CLASSES_HINT", "TRUE_WORDS"]

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t"})
_BOOL_WORDS = {"true": True, "false": False}
MAX_CLASSES_HINT = ("a label column with this many values is probably an id or a number to predict, not classes: "
                    "check MLOPS_TARGET")


def label_key(value: Any) -> str:
    """The text a label is matched by (settings, feedback, versions trained on other batches): ``1``, ``"1"``
    and ``1.0`` are one class, ``True`` and ``"true"`` another."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    text = str(value).strip()
    lowered = text.lower()
    if lowered in _BOOL_WORDS:
        return lowered
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def label_keys(values: Iterable[Any]) -> np.ndarray:
    """:func:`label_key` of each value (``None`` for a missing one), an object array: computed once per distinct
    value, so ten million labels of a few classes cost a factorisation, not ten million calls. (Values of mixed
    types go one by one: a hash table holds ``True`` and ``1`` as one value, their keys differ.)"""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if pd.api.types.infer_dtype(series, skipna=True) not in _ONE_TYPE:
        return np.array([None if _missing(v) else label_key(v) for v in series], dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    keys = np.array([label_key(v) for v in uniques] + [None], dtype=object)
    return keys[codes]  # the sentinel -1 picks the trailing None


def distinct(values: Iterable[Any]) -> dict[str, Any]:
    """The first value of each label key among ``values`` (missing ones left out), in order of appearance."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    keys = pd.Series(label_keys(series), dtype=object)
    first = keys.dropna().drop_duplicates()
    return dict(zip(first.tolist(), series.to_numpy()[first.index.to_numpy()].tolist()))


_ONE_TYPE = frozenset({"string", "integer", "floating", "boolean", "empty", "categorical"})


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and value != value)


def canonical(labels: pd.Series) -> pd.Series:
    """The label column in its one form: integers, booleans or stripped strings (missing values stay missing).

    The form is decided from every present value at once, so a column holding ``1`` and ``"1"`` has one class
    ``1``; a column of ``true``/``false`` words becomes booleans.
    """
    present = labels.dropna()
    out = pd.Series(np.nan, index=labels.index, dtype=object)
    if not len(present):
        return out
    if pd.api.types.is_bool_dtype(present):
        values = present.astype(bool)
    elif pd.api.types.is_numeric_dtype(present):
        numbers = present.astype(float)
        whole = bool(np.isfinite(numbers).all() and (numbers % 1 == 0).all())
        values = numbers.astype(np.int64) if whole else numbers  # fractions: refused later as numbers
    else:
        texts = present.astype(str).str.strip()
        keys = texts.str.lower()
        numbers = pd.to_numeric(texts, errors="coerce")
        if keys.isin(_BOOL_WORDS.keys()).all():
            values = keys.eq("true")
        elif numbers.notna().all() and np.isfinite(numbers).all() and (numbers % 1 == 0).all():
            values = numbers.astype(np.int64)
        else:
            values = texts
    out[present.index] = values.astype(object)  # Python ints, bools and strings
    return out


def canonical_value(value: Any, classes: Sequence[Any]) -> Any:
    """The one of ``classes`` that ``value`` (from a request, a setting) names, or ``None``."""
    key = label_key(value)
    for cls in classes:
        if label_key(cls) == key:
            return cls
    return None


def positive_of(classes: Sequence[Any], setting: str | None, *, target: str) -> Any:
    """The positive class of a binary task: the one ``setting`` names, else the one that reads as true/yes/1.

    Raises :class:`SettingsError` naming both classes and ``MLOPS_POSITIVE_LABEL`` when neither rule decides.
    """
    shown = ", ".join(repr(c) for c in classes)
    if setting not in (None, ""):
        found = canonical_value(setting, classes)
        if found is None:
            raise SettingsError(f"MLOPS_POSITIVE_LABEL={setting!r} is not one of the classes of {target!r} "
                                f"({shown})")
        return found
    truthy = [c for c in classes if label_key(c) in TRUE_WORDS]
    if len(truthy) == 1:
        return truthy[0]
    raise SettingsError(f"target {target!r} has the classes {shown}: set MLOPS_POSITIVE_LABEL to the positive one "
                        f"(the class probabilities, precision, recall, F1 and AUC are given for)")


def _sorted(values: Iterable[Any]) -> list[Any]:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:  # mixed types cannot happen after canonical(); keep a stable order all the same
        return sorted(values, key=label_key)


def pipeline_classes(pipeline: Any) -> list[Any]:
    """A fitted pipeline's labels in the order of its ``predict_proba`` columns, as Python values.

    PyCaret label-encodes a target that is not already ``0..k-1`` (a ``label_encoding`` step, LabelEncoder
    order); its estimator's ``classes_`` are then the codes.
    """
    steps = dict(getattr(pipeline, "steps", []) or [])
    encoder = steps.get("label_encoding")
    inner = getattr(encoder, "transformer", encoder)
    classes = getattr(inner, "classes_", None)
    if classes is None:
        final = pipeline.steps[-1][1] if steps else pipeline
        classes = getattr(final, "classes_", None)
    if classes is None:
        classes = getattr(pipeline, "classes_", None)
    if classes is None:
        raise ValueError(f"{type(pipeline).__name__} has no classes_ (not a fitted classifier)")
    return [c.item() if hasattr(c, "item") else c for c in classes]


@dataclass(frozen=True)
class Labels:
    """The classes of a task and, when there are two, the positive one."""

    classes: tuple  # in pipeline (sorted) order
    positive: Any = None  # binary only

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 2

    @classmethod
    def of(cls, values: Iterable[Any], setting: str | None, *, target: str) -> Labels:
        classes = tuple(_sorted(set(values)))
        if len(classes) == 2:
            return cls(classes, positive_of(classes, setting, target=target))
        return cls(classes)

    def codes(self, values: Iterable[Any], *, universe: Sequence[Any] | None = None) -> np.ndarray:
        """``values`` as integer codes: for a binary task 1 for the positive class and 0 for the other; for a
        multiclass one the index in ``universe`` (default ``classes``). A value in neither is -1."""
        keys = label_keys(values)
        if not self.multiclass and self.positive is not None and universe is None:
            positive = label_key(self.positive)
            negative = [label_key(c) for c in self.classes if label_key(c) != positive]
            return np.where(keys == positive, 1, np.where(pd.Series(keys).isin(negative), 0, -1)).astype(int)
        index = {label_key(c): i for i, c in enumerate(universe if universe is not None else self.classes)}
        return pd.Series(keys, dtype=object).map(index).fillna(-1).to_numpy(dtype=int)

    def positive_column(self, classes: Sequence[Any]) -> int:
        """The ``predict_proba`` column of the positive class in a model's ``classes`` (last one without it)."""
        if self.positive is not None:
            found = canonical_value(self.positive, classes)
            if found is not None:
                return list(classes).index(found)
        return len(classes) - 1

    def tags(self) -> dict[str, str]:
        """What a version records of its labels (JSON values): its classes and its positive class."""
        out = {"classes": json.dumps(list(self.classes))}
        if self.positive is not None:
            out["positive_label"] = json.dumps(self.positive)
        return out

    @classmethod
    def from_tags(cls, tags: dict[str, str], classes: Sequence[Any]) -> Labels:
        """A version's labels: its ``classes`` (from the pipeline) and the positive class it was trained for
        (its ``positive_label`` tag; a version without one, from before labels of any kind, had 0/1 labels)."""
        classes = tuple(classes)
        if len(classes) != 2:
            return cls(classes)
        raw = tags.get("positive_label")
        positive = canonical_value(json.loads(raw), classes) if raw else None
        if positive is None:
            truthy = [c for c in classes if label_key(c) in TRUE_WORDS]
            positive = truthy[0] if len(truthy) == 1 else classes[-1]
        return cls(classes, positive)


def task_labels(values: Iterable[Any], settings) -> Labels:
    """The labels a run trains and judges with, from the labelled values and the settings; refused up front
    (exit 2) when the settings cannot serve them: no positive class for two, AUC promotion for more."""
    present = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    labels = Labels.of(present.dropna().unique().tolist(), settings.positive_label or None, target=settings.target)
    if labels.multiclass and settings.promotion_metric == "auc":
        raise SettingsError(f"MLOPS_PROMOTION_METRIC=auc needs two classes; {settings.target!r} has "
                            f"{len(labels.classes)} ({', '.join(repr(c) for c in labels.classes[:10])}"
                            f"{', ...' if len(labels.classes) > 10 else ''}): use accuracy or f1 (macro)")
    return labels
