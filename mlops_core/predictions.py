"""The prediction log: every answered row and its feedback label, in one SQL store.

Rows are written in batches by the server's writer thread (:mod:`server.live_ab`); ``POST /feedback``
adds true labels; :mod:`mlops_core.ab` reads the per-arm figures and request shares back.

Predictions and labels are stored as text, by their :func:`~mlops_core.labels.label_key` (``"1"``, ``"yes"``,
``"true"``), so a label of any kind is compared with a prediction by one SQL equality. A store written before
labels of any kind held 0/1 integers; it is altered once, on first use, to the same text columns (its
values become ``"0"`` and ``"1"``, the keys of 0 and 1).

A regression's rows say so (``task``) and keep their numbers as numbers: the predicted value in
``predictions.prediction_value``, the true value in ``feedback.label_value`` (floating point), so absolute
and squared errors are SQL arithmetic (the text columns hold the same numbers as text). A store written before
regression has neither column nor ``task``; they are added once, on first use (nullable: its rows read as
the classification rows they are).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Settings, redact_uri
from .errors import DuplicateFeedbackError, FeedbackError, InvalidLabelError, UnknownRequestError
from .forks import PerProcess
from .labels import canonical_value, label_key
from .means import error_figures, percentiles
from .prediction_schema import (
    add_regression_columns,
    as_int,
    labels_as_text,
    number_text,
    stored_key,
    stored_number,
    stored_probability,
    tables,
)
from .proportions import wilson_interval

__all__ = ["PredictionStore", "Prediction", "FeedbackError", "UnknownRequestError", "DuplicateFeedbackError",
           "InvalidLabelError", "store_url", "PRODUCTION_ARM", "STAGING_ARM", "REGRESSION", "MAX_TRUE_VALUE"]

log = logging.getLogger(__name__)

PRODUCTION_ARM, STAGING_ARM = "Production", "Staging"
REGRESSION = "regression"
#: the largest true value of a regression taken, in size (the features' bound: float32's largest); squared
#: errors of values this size still sum in double precision without overflowing
MAX_TRUE_VALUE = 3.4028234663852886e38


@dataclass(frozen=True)
class Prediction:
    """One answered request as the writer receives it (rows expanded when written)."""

    call_id: str
    request_ids: Sequence[str]
    user_id: int | None
    arm: str
    version: str | None
    predictions: Sequence[Any]  # the labels answered, as in the data (strings, booleans, integers); numbers
    probabilities: Sequence[float | Sequence[float]] | None  # the positive class's per row, or every class's
    status: int
    latency_ms: float
    created: float
    task: str = "classification"  # or "regression": the predictions are the predicted values


def store_url(settings: Settings) -> str:
    """The store's SQLAlchemy URL: the setting, else ``<home>/predictions.db``."""
    return settings.ab_store_url or f"sqlite:///{settings.home / 'predictions.db'}"


_COLUMNS = ("request_id", "call_id", "created", "user_id", "arm", "version", "prediction", "probability", "status",
            "latency_ms", "task", "prediction_value")
_INSERT = f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES "
_ROW = f"({', '.join('?' * len(_COLUMNS))})"


_CHUNK = 256  # rows in the largest INSERT statement (a power of two)


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """INSERT of ``n`` rows in one statement (``n`` a power of two up to _CHUNK)."""
    return _INSERT + ", ".join([_ROW] * n)



class PredictionStore:
    """The append-only log of predictions and their labels, in any SQLAlchemy database.

    The engine is created in the process that uses it (gunicorn workers fork after the
    app is built), and is safe to share between that process's threads.
    """

    def __init__(self, settings: Settings, *, url: str | None = None, clock=time.time):
        self.settings = settings
        self.url = url or store_url(settings)
        self.clock = clock
        self._engine = PerProcess(self._connect)  # connections never cross a fork
        self._md = tables()
        self.predictions = self._md.tables["predictions"]
        self.feedback = self._md.tables["feedback"]

    # -- connection -------------------------------------------------------------------------------
    @property
    def engine(self):
        return self._engine.get()

    def _connect(self):
        from sqlalchemy import create_engine, event

        if self.url.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(os.path.abspath(self.url[len("sqlite:///"):])) or ".", exist_ok=True)
        engine = create_engine(self.url, pool_pre_ping=not self.url.startswith("sqlite"))
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection, _record):  # WAL: readers never block the writer
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()
        for attempt in range(3):  # two workers creating (or altering) the tables at once: one wins, one retries
            try:
                self._md.create_all(engine, checkfirst=True)
                with engine.begin() as conn:
                    altered = labels_as_text(conn)
                    added = add_regression_columns(conn)
                if altered:
                    log.info("prediction store %s: %s now hold label keys as text", self.describe(),
                             ", ".join(altered))
                if added:
                    log.info("prediction store %s: added %s (regression rows)", self.describe(), ", ".join(added))
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return engine

    def dispose(self) -> None:
        """Close this process's connections."""
        engine = self._engine.here()
        if engine is not None:
            engine.dispose()
        self._engine.clear()

    def describe(self) -> str:
        return redact_uri(self.url)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, items: Iterable[Prediction]) -> int:
        """Insert the rows of answered requests in one transaction; return the number of rows."""
        rows = []
        for item in items:
            common = (item.call_id, item.created, item.user_id, item.arm, item.version)
            if not item.request_ids:  # an error answer: one row, no prediction
                rows.append((item.call_id, *common, None, None, item.status, item.latency_ms, item.task, None))
                continue
            predictions, probabilities = item.predictions, item.probabilities or ()
            if item.task == REGRESSION:  # the predicted values, as numbers (and as text)
                for i, request_id in enumerate(item.request_ids):
                    value = stored_number(predictions[i]) if i < len(predictions) else None
                    rows.append((request_id, *common, number_text(value), None, item.status, item.latency_ms,
                                 item.task, value))
                continue
            for i, request_id in enumerate(item.request_ids):
                rows.append((request_id, *common, stored_key(predictions[i]) if i < len(predictions) else None,
                             stored_probability(probabilities[i]) if i < len(probabilities) else None, item.status,
                             item.latency_ms, item.task, None))
        if not rows:
            return 0
        engine = self.engine
        if engine.dialect.name == "sqlite":
            # multi-row INSERTs straight to the driver: a fraction of Core's CPU, one GIL hand-off per
            # statement (executemany gives the GIL up around every row, so beside busy request threads
            # the writer waits a switch interval, 5 ms, per row). Statements hold a power of two of
            # rows, at most _CHUNK: the driver caches every distinct statement it compiles, per
            # connection, and a statement per batch length grew a worker by tens of MB.
            import sqlite3

            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    limit = raw.driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                except AttributeError:  # Python < 3.11
                    limit = 999
                size = _CHUNK
                while size > 1 and size * len(_COLUMNS) > limit:
                    size //= 2
                start = 0
                while start < len(rows):
                    while size > len(rows) - start:
                        size //= 2
                    chunk = rows[start:start + size]
                    cursor.execute(_insert_rows(size), [value for row in chunk for value in row])
                    start += size
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                raw.close()
        else:
            with engine.begin() as conn:
                conn.execute(self.predictions.insert(), [dict(zip(_COLUMNS, row)) for row in rows])
        return len(rows)

    def apply_retention(self) -> int:
        """Delete predictions (and labels) beyond the age and row limits; return rows deleted."""
        from sqlalchemy import delete, select

        p, f = self.predictions, self.feedback
        deleted = 0
        with self.engine.begin() as conn:
            if self.settings.ab_retention_days > 0:
                cutoff = self.clock() - self.settings.ab_retention_days * 86400
                deleted += conn.execute(delete(p).where(p.c.created < cutoff)).rowcount or 0
                conn.execute(delete(f).where(f.c.received < cutoff))
            if self.settings.ab_max_rows > 0:
                edge = conn.execute(select(p.c.created).order_by(p.c.created.desc())
                                    .offset(self.settings.ab_max_rows).limit(1)).scalar()
                if edge is not None:
                    deleted += conn.execute(delete(p).where(p.c.created <= edge)).rowcount or 0
            if deleted:
                conn.execute(delete(f).where(f.c.request_id.not_in(select(p.c.request_id))))
        return deleted

    # -- feedback ---------------------------------------------------------------------------------
    def add_feedback(self, labels: Sequence[tuple[str, Any]], *,
                     classes: Callable[[str | None], Sequence[Any] | None] | None = None) -> int:
        """Join true labels to logged predictions, all or none; return how many were stored.

        A label is matched to ``classes(version)``, the classes of the version that answered its request
        (:func:`~mlops_core.labels.canonical_value`: ``1``, ``"1"`` and ``1.0`` name one class, ``true`` and
        ``"True"`` another); it is stored by the matched class's key, or by its own key when ``classes`` is not
        given or gives None. The label of a regression's prediction (its row says so) is the true value: a
        JSON number (an integer or a float, not a boolean, not text), finite and at most
        :data:`MAX_TRUE_VALUE` in size, stored as a number.

        Raises UnknownRequestError for ids with no logged prediction, InvalidLabelError for a label that is
        none of its version's classes (or no such number), and DuplicateFeedbackError for ids labelled before
        (or twice in ``labels``).
        """
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        ids = [request_id for request_id, _ in labels]
        repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if repeated:
            raise DuplicateFeedbackError(f"request ids given more than once: {', '.join(repeated[:10])}", repeated)
        p, f = self.predictions, self.feedback
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                answered: dict[str, tuple[str | None, str | None]] = {}  # request id -> (version, task)
                for chunk in _chunks(ids, 500):
                    answered.update((i, (version, task)) for i, version, task in conn.execute(
                        select(p.c.request_id, p.c.version, p.c.task)
                        .where(p.c.request_id.in_(chunk), p.c.status < 400)))
                unknown = [i for i in ids if i not in answered]
                if unknown:
                    raise UnknownRequestError(f"no logged prediction has request id {', '.join(unknown[:10])}"
                                              + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""),
                                              unknown)
                stored = [_true_value(index, request_id, label, answered[request_id][0])
                          if answered[request_id][1] == REGRESSION else
                          (_label_key(index, request_id, label, answered[request_id][0], classes), None)
                          for index, (request_id, label) in enumerate(labels)]
                done = set()
                for chunk in _chunks(ids, 500):
                    done.update(conn.execute(select(f.c.request_id).where(f.c.request_id.in_(chunk))).scalars())
                if done:
                    dup = [i for i in ids if i in done]
                    raise DuplicateFeedbackError(f"request id {', '.join(dup[:10])} already has a label", dup)
                conn.execute(f.insert(), [{"request_id": i, "label": key, "received": now, "label_value": value}
                                          for i, (key, value) in zip(ids, stored)])
        except IntegrityError as err:  # labelled meanwhile by another worker
            raise DuplicateFeedbackError(f"request ids already labelled: {', '.join(ids[:10])}", ids) from err
        return len(labels)

    # -- the report -------------------------------------------------------------------------------
    def groups(self) -> list[dict]:
        """Per arm and version: requests, errors, rows, latency p50/p99, labels, and the quality of the labelled
        rows: accuracy with its 95% Wilson interval (classification), or MAE and RMSE with their 95% intervals
        (a regression: :func:`error_figures`)."""
        from sqlalchemy import case, func, select

        p, f = self.predictions, self.feedback
        ok = p.c.status < 400
        query = (select(p.c.arm, p.c.version,
                        func.count(func.distinct(p.c.call_id)).label("requests"),
                        func.count(func.distinct(case((~ok, p.c.call_id)))).label("errors"),
                        func.sum(case((ok, 1), else_=0)).label("rows"),
                        func.count(f.c.request_id).label("labelled"),
                        func.sum(case((f.c.label == p.c.prediction, 1), else_=0)).label("correct"),
                        func.max(case((p.c.task == REGRESSION, 1), else_=0)).label("regression"),
                        func.min(p.c.created).label("first_at"), func.max(p.c.created).label("last_at"))
                 .select_from(p.outerjoin(f, f.c.request_id == p.c.request_id))
                 .group_by(p.c.arm, p.c.version))
        latency = (select(p.c.arm, p.c.version, p.c.call_id, func.max(p.c.latency_ms))
                   .group_by(p.c.arm, p.c.version, p.c.call_id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            latencies: dict[tuple[str, str], list[float]] = {}
            for arm, version, _, ms in conn.execute(latency):
                if ms is not None:
                    latencies.setdefault((arm, version), []).append(float(ms))
            errors: dict[tuple[str, str], list[tuple]] = {}
            if any(row["regression"] for row in rows):
                for arm, version, _, *request in conn.execute(self._request_errors()):
                    errors.setdefault((arm, version), []).append(request)
        out = []
        for row in rows:
            group = {"arm": row["arm"], "version": row["version"], "requests": int(row["requests"] or 0),
                     "errors": int(row["errors"] or 0), "rows": int(row["rows"] or 0),
                     "latency_ms": percentiles(latencies.get((row["arm"], row["version"]), []))}
            if row["regression"]:
                figures = error_figures(errors.get((row["arm"], row["version"]), []))
                group.update({"task": REGRESSION, "labelled": figures.pop("rows"), "correct": None,
                              "accuracy": None, "accuracy_ci95": None, **figures})
            else:
                labelled, correct = int(row["labelled"] or 0), int(row["correct"] or 0)
                interval = wilson_interval(correct, labelled)
                group.update({"task": "classification", "labelled": labelled, "correct": correct,
                              "accuracy": round(correct / labelled, 6) if labelled else None,
                              "accuracy_ci95": [round(v, 6) for v in interval] if interval else None})
            group.update({"first_at": row["first_at"], "last_at": row["last_at"]})
            out.append(group)
        return sorted(out, key=lambda g: (g["arm"], as_int(g["version"]) or 0, str(g["version"])))

    def task(self, arm: str, version: str) -> str | None:
        """What ``arm`` answered with ``version``: ``classification`` or ``regression`` (None: no answer)."""
        from sqlalchemy import case, func, select

        p = self.predictions
        query = (select(func.count(), func.max(case((p.c.task == REGRESSION, 1), else_=0)))
                 .where(p.c.arm == arm, p.c.version == version, p.c.status < 400))
        with self.engine.connect() as conn:
            answered, regression = conn.execute(query).one()
        if not answered:
            return None
        return REGRESSION if regression else "classification"

    def _request_errors(self):
        """SELECT arm, version, call id, labelled rows, sum of absolute and of squared errors, per request: the
        regression rows whose prediction and true value are both numbers (add filters)."""
        from sqlalchemy import func, select

        p, f = self.predictions, self.feedback
        error = f.c.label_value - p.c.prediction_value
        return (select(p.c.arm, p.c.version, p.c.call_id, func.count(), func.sum(func.abs(error)),
                       func.sum(error * error))
                .select_from(p.join(f, f.c.request_id == p.c.request_id))
                .where(p.c.task == REGRESSION, p.c.status < 400, p.c.prediction_value.is_not(None),
                       f.c.label_value.is_not(None))
                .group_by(p.c.arm, p.c.version, p.c.call_id))

    def first_served(self, arm: str, version: str) -> float | None:
        """When ``arm`` began serving ``version`` this time: its first answer after the arm last served another."""
        from sqlalchemy import func, select

        p = self.predictions
        with self.engine.connect() as conn:
            other = conn.execute(select(func.max(p.c.created)).where(p.c.arm == arm, p.c.version != version,
                                                                    p.c.status < 400)).scalar()
            query = select(func.min(p.c.created)).where(p.c.arm == arm, p.c.version == version, p.c.status < 400)
            return conn.execute(query if other is None else query.where(p.c.created > other)).scalar()

    def request_errors(self, arm: str, version: str, *, since: float) -> list[tuple[int, float, float]]:
        """Per labelled request of a regression's ``arm``/``version`` answered at or after ``since``: its labelled
        rows, the sum of their absolute errors and of their squared errors (the request is the unit)."""
        p = self.predictions
        query = self._request_errors().where(p.c.arm == arm, p.c.version == version, p.c.created >= since)
        with self.engine.connect() as conn:
            return [(int(n), float(a), float(q)) for _, _, _, n, a, q in conn.execute(query)]

    def request_shares(self, arm: str, version: str, *, since: float) -> tuple[list[float], int, int]:
        """Per labelled request of ``arm``/``version`` answered at or after ``since``: its share of correct rows.

        Returns the shares (one per request: the unit of the comparison), and the labelled and correct rows.
        """
        from sqlalchemy import case, func, select

        p, f = self.predictions, self.feedback
        query = (select(func.count(f.c.request_id), func.sum(case((f.c.label == p.c.prediction, 1), else_=0)))
                 .select_from(p.join(f, f.c.request_id == p.c.request_id))
                 .where(p.c.arm == arm, p.c.version == version, p.c.created >= since, p.c.status < 400)
                 .group_by(p.c.arm, p.c.version, p.c.call_id))
        with self.engine.connect() as conn:
            counts = conn.execute(query).all()
        shares = [int(correct or 0) / int(n) for n, correct in counts if n]
        return shares, sum(int(n) for n, _ in counts), sum(int(c or 0) for _, c in counts)


def _label_key(index: int, request_id: str, label: Any, version: str | None,
               classes: Callable[[str | None], Sequence[Any] | None] | None) -> str:
    """The key ``label`` is stored by: its class's, checked against the classes of the version that answered."""
    known = classes(version) if classes is not None else None
    if known is None:
        return label_key(label)
    found = canonical_value(label, known)
    if found is None:
        shown = ", ".join(repr(c) for c in list(known)[:30]) + (f", … ({len(known)} in all)" if len(known) > 30 else "")
        raise InvalidLabelError(f"label {repr(label)[:100]} is not one of the classes of version {version} "
                                f"({shown})",
                                [request_id], index=index, label=label, classes=known)
    return label_key(found)


def _true_value(index: int, request_id: str, label: Any, version: str | None) -> tuple[str, float]:
    """The text and the number a regression's true value is stored by; InvalidLabelError unless it is a JSON
    number (not a boolean, not text), finite and at most :data:`MAX_TRUE_VALUE` in size."""
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        problem = f"got {_json_kind(label)} instead"
    elif not abs(label) <= MAX_TRUE_VALUE:  # exact for integers of any size; NaN and infinities fail it too
        problem = f"got {repr(label)[:40]}, out of range (at most {MAX_TRUE_VALUE:.8g} in size)"
    else:
        value = float(label)
        return number_text(value), value
    raise InvalidLabelError(f"expected the true value of version {version}'s prediction (a regression), a finite "
                            f"number, {problem}", [request_id], index=index, label=label, classes=None)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    return type(value).__name__


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
