"""The prediction log's tables (:mod:`mlops_core.predictions`), how an answer's values are stored in them, and the
changes a store written by an earlier version gets once, on first use: label columns as text (labels of any
kind), regression's columns."""

from __future__ import annotations

import math
from typing import Any

from .labels import label_key

__all__ = ["tables", "labels_as_text", "added_columns", "add_regression_columns", "as_int", "stored_key",
           "number_text", "stored_number", "stored_probability"]


def tables():
    from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

    md = MetaData()
    Table("predictions", md,
          Column("request_id", String(32), primary_key=True),
          Column("call_id", String(32), nullable=False),
          Column("created", Float, nullable=False),
          Column("user_id", BigInteger),
          Column("arm", String(16), nullable=False),
          Column("version", String(32)),
          Column("prediction", Text),  # the label's key (labels.label_key); a regression's value as text
          # the positive class's probability (two classes), the predicted class's (more)
          Column("probability", Float),
          Column("status", Integer, nullable=False),
          Column("latency_ms", Float),
          Column("task", String(16)),  # "classification" or "regression" (NULL: written before regression)
          Column("prediction_value", Float),  # a regression's predicted value
          Index("ix_predictions_created", "created"),
          Index("ix_predictions_arm_version", "arm", "version"))
    Table("feedback", md,
          Column("request_id", String(32), primary_key=True),
          Column("label", Text, nullable=False),  # the label's key, compared with the prediction's
          Column("received", Float, nullable=False),
          Column("label_value", Float),  # a regression's true value
          Index("ix_feedback_received", "received"))
    return md


#: (table, column, NOT NULL) that held 0/1 integers before labels of any kind
_LABEL_COLUMNS = (("predictions", "prediction", False), ("feedback", "label", True))


def labels_as_text(conn) -> list[str]:
    """Alter a store written before labels of any kind: its integer label columns become text, their values
    the keys of 0 and 1 (``"0"``, ``"1"``). Returns the columns altered (none on a current store).

    Add a text column, copy the values cast to text, drop the old column, rename the new one: statements
    SQLite (3.35+) and PostgreSQL both run inside the caller's transaction, so a store is altered whole or not
    at all. A process altering the same store at the same moment fails its transaction or finds it done. An
    older SQLite (no DROP COLUMN) keeps its columns: their integer affinity stores the key ``"1"`` as 1, as
    the previous version stored 1, and every other key as the text it is, so equal keys still compare equal."""
    from sqlalchemy import Integer, Text, cast, column, inspect, table, update

    if conn.dialect.name == "sqlite" and conn.dialect.dbapi.sqlite_version_info < (3, 35):
        return []
    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    text_type = Text().compile(dialect=conn.dialect)
    altered = []
    for name, col, not_null in _LABEL_COLUMNS:
        found = {c["name"]: c["type"] for c in inspector.get_columns(name)}
        if not isinstance(found.get(col), Integer):
            continue
        new = f"{col}_text"
        conn.exec_driver_sql(f"ALTER TABLE {quote(name)} ADD COLUMN {quote(new)} {text_type}"
                             + (" NOT NULL DEFAULT ''" if not_null else ""))
        conn.execute(update(table(name, column(col), column(new))).values({new: cast(column(col), Text)}))
        conn.exec_driver_sql(f"ALTER TABLE {quote(name)} DROP COLUMN {quote(col)}")
        conn.exec_driver_sql(f"ALTER TABLE {quote(name)} RENAME COLUMN {quote(new)} TO {quote(col)}")
        altered.append(f"{name}.{col}")
    return altered


#: (table, column, type) added after a store's first version: regression rows
def added_columns():
    from sqlalchemy import Float, String

    return (("predictions", "task", String(16)), ("predictions", "prediction_value", Float()),
            ("feedback", "label_value", Float()))


def add_regression_columns(conn) -> list[str]:
    """Add the columns of regression rows to a store written before them (nullable: its rows are classification
    rows). Returns the columns added (none on a current store). ADD COLUMN of a nullable column runs on every
    SQLite and PostgreSQL, inside the caller's transaction."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    added = []
    for name, col, kind in added_columns():
        if col in {c["name"] for c in inspector.get_columns(name)}:
            continue
        conn.exec_driver_sql(f"ALTER TABLE {quote(name)} ADD COLUMN {quote(col)} {kind.compile(dialect=conn.dialect)}")
        added.append(f"{name}.{col}")
    return added


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def stored_key(prediction: Any) -> str | None:
    return None if prediction is None else label_key(prediction)


def number_text(value: float | None) -> str | None:
    """A regression's value as text: the shortest text that reads back as the same float."""
    return None if value is None else repr(float(value))


def stored_number(value: Any) -> float | None:
    """A regression's predicted value as stored (None: the model gave no finite number)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def stored_probability(value: Any) -> float | None:
    """The stored probability of a row: the positive class's as answered, or the largest of a row of every class's
    (the predicted class's)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return max(value) if len(value) else None
