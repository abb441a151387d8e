"""Live A/B evidence: the prediction store and the comparison of the two arms.

Every answered prediction row is one row of ``predictions`` (written in batches by the
server's writer thread); ``POST /feedback`` adds its true label to ``feedback``. The
report joins the two per arm and version::

    store = PredictionStore(settings)
    report = store.report(production="3", staging="4")
    report["comparison"]["verdict"]      # staging_better | staging_worse | keep_collecting | ...

The comparison is the always-valid sequential test of :mod:`mlops_core.sequential`, on
one observation per labelled request, both arms over the same period (since the current
Staging version first served). Nothing here runs inside a request except
:meth:`PredictionStore.add_feedback` and :meth:`PredictionStore.report`; the decisions
taken on the verdict live in :mod:`mlops_core.live`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Settings, redact_uri
from .errors import MlopsError

__all__ = ["PredictionStore", "Prediction", "FeedbackError", "UnknownRequestError", "DuplicateFeedbackError",
           "wilson_interval", "two_proportion_test", "samples_per_arm", "store_url", "compare"]

log = logging.getLogger(__name__)

PRODUCTION_ARM, STAGING_ARM = "Production", "Staging"
_RETENTION_EVERY = 60.0  # seconds between retention passes of one writer


# -- errors ------------------------------------------------------------------------------------------
class FeedbackError(MlopsError, ValueError):
    """Feedback that cannot be joined; ``ids`` names the request ids at fault."""

    def __init__(self, message: str, ids: Sequence[str]):
        self.ids = list(ids)
        super().__init__(message)


class UnknownRequestError(FeedbackError, LookupError):
    """Feedback for a request id that no logged prediction carries."""


class DuplicateFeedbackError(FeedbackError):
    """Feedback for a request id that already has a label."""


# -- statistics --------------------------------------------------------------------------------------
_NORMAL = statistics.NormalDist()


def _z(confidence: float) -> float:
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """Pooled two-proportion z-test of p2 - p1: ``(z, two-sided p-value)`` (None when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = x2 / n2 - x1 / n1
    if se == 0:  # both arms all right or all wrong: no evidence of a difference
        return 0.0, 1.0
    z = diff / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def samples_per_arm(baseline: float, *, min_effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Labelled rows per arm for a two-sided test at ``alpha`` to detect ``min_effect`` with ``power``.

    The classic normal-approximation formula for two proportions, around the
    baseline accuracy and baseline + effect (baseline - effect near 1).
    """
    p1 = min(max(baseline, 0.0), 1.0)
    p2 = p1 + min_effect if p1 + min_effect <= 1.0 else p1 - min_effect
    mean = (p1 + p2) / 2
    za, zb = _z(1 - alpha), _NORMAL.inv_cdf(power)
    root = za * math.sqrt(2 * mean * (1 - mean)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / (min_effect * min_effect))


# -- the store ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One answered request as the writer receives it (rows expanded when written)."""

    call_id: str
    request_ids: Sequence[str]
    user_id: int | None
    arm: str
    version: str | None
    predictions: Sequence[Any]
    probabilities: Sequence[float]
    status: int
    latency_ms: float
    created: float


def store_url(settings: Settings) -> str:
    """The store's SQLAlchemy URL: the setting, else ``<home>/predictions.db``."""
    return settings.ab_store_url or f"sqlite:///{settings.home / 'predictions.db'}"


def _metadata():
    from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table

    md = MetaData()
    Table("predictions", md,
          Column("request_id", String(32), primary_key=True),
          Column("call_id", String(32), nullable=False),
          Column("created", Float, nullable=False),
          Column("user_id", BigInteger),
          Column("arm", String(16), nullable=False),
          Column("version", String(32)),
          Column("prediction", Integer),
          Column("probability", Float),
          Column("status", Integer, nullable=False),
          Column("latency_ms", Float),
          Index("ix_predictions_created", "created"),
          Index("ix_predictions_arm_version", "arm", "version"))
    Table("feedback", md,
          Column("request_id", String(32), primary_key=True),
          Column("label", Integer, nullable=False),
          Column("received", Float, nullable=False),
          Index("ix_feedback_received", "received"))
    return md


_COLUMNS = ("request_id", "call_id", "created", "user_id", "arm", "version", "prediction", "probability", "status",
            "latency_ms")
_INSERT = f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES "
_ROW = f"({', '.join('?' * len(_COLUMNS))})"


_CHUNK = 256  # rows in the largest INSERT statement (a power of two)


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """INSERT of ``n`` rows in one statement (``n`` a power of two up to _CHUNK)."""
    return _INSERT + ", ".join([_ROW] * n)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class PredictionStore:
    """The append-only log of predictions and their labels, in any SQLAlchemy database.

    The engine is created in the process that uses it (gunicorn workers fork after the
    app is built), and is safe to share between that process's threads.
    """

    def __init__(self, settings: Settings, *, url: str | None = None, clock=time.time):
        self.settings = settings
        self.url = url or store_url(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._engine = None
        self._pid: int | None = None
        self._md = _metadata()
        self.predictions = self._md.tables["predictions"]
        self.feedback = self._md.tables["feedback"]

    # -- connection -------------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine, self._pid = self._connect(), os.getpid()
        return self._engine

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
        for attempt in range(3):  # two workers creating the tables at once: one wins, the other retries
            try:
                self._md.create_all(engine, checkfirst=True)
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return engine

    def dispose(self) -> None:
        """Close this process's connections."""
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    def describe(self) -> str:
        return redact_uri(self.url)

    # -- writing ----------------------------------------------------------------------------------
    def write(self, items: Iterable[Prediction]) -> int:
        """Insert the rows of answered requests in one transaction; return the number of rows."""
        rows = []
        for item in items:
            common = (item.call_id, item.created, item.user_id, item.arm, item.version)
            if not item.request_ids:  # an error answer: one row, no prediction
                rows.append((item.call_id, *common, None, None, item.status, item.latency_ms))
                continue
            predictions, probabilities = item.predictions, item.probabilities
            for i, request_id in enumerate(item.request_ids):
                rows.append((request_id, *common, _as_int(predictions[i]) if i < len(predictions) else None,
                             probabilities[i] if i < len(probabilities) else None, item.status, item.latency_ms))
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
                cutoff = self._clock() - self.settings.ab_retention_days * 86400
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
    def add_feedback(self, labels: Sequence[tuple[str, int]]) -> int:
        """Join true labels to logged predictions, all or none; return how many were stored.

        Raises UnknownRequestError for ids with no logged prediction and
        DuplicateFeedbackError for ids labelled before (or twice in ``labels``).
        """
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        ids = [request_id for request_id, _ in labels]
        repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if repeated:
            raise DuplicateFeedbackError(f"request ids given more than once: {', '.join(repeated[:10])}", repeated)
        p, f = self.predictions, self.feedback
        now = self._clock()
        try:
            with self.engine.begin() as conn:
                known = set()
                for chunk in _chunks(ids, 500):
                    known.update(conn.execute(select(p.c.request_id).where(p.c.request_id.in_(chunk),
                                                                           p.c.status < 400)).scalars())
                unknown = [i for i in ids if i not in known]
                if unknown:
                    raise UnknownRequestError(f"no logged prediction has request id {', '.join(unknown[:10])}"
                                              + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""),
                                              unknown)
                done = set()
                for chunk in _chunks(ids, 500):
                    done.update(conn.execute(select(f.c.request_id).where(f.c.request_id.in_(chunk))).scalars())
                if done:
                    dup = [i for i in ids if i in done]
                    raise DuplicateFeedbackError(f"request id {', '.join(dup[:10])} already has a label", dup)
                conn.execute(f.insert(), [{"request_id": i, "label": int(label), "received": now}
                                          for i, label in labels])
        except IntegrityError as err:  # labelled meanwhile by another worker
            raise DuplicateFeedbackError(f"request ids already labelled: {', '.join(ids[:10])}", ids) from err
        return len(labels)

    # -- the report -------------------------------------------------------------------------------
    def groups(self) -> list[dict]:
        """Per arm and version: requests, errors, rows, latency p50/p99, labels, accuracy with its 95% interval."""
        from sqlalchemy import case, func, select

        p, f = self.predictions, self.feedback
        ok = p.c.status < 400
        query = (select(p.c.arm, p.c.version,
                        func.count(func.distinct(p.c.call_id)).label("requests"),
                        func.count(func.distinct(case((~ok, p.c.call_id)))).label("errors"),
                        func.sum(case((ok, 1), else_=0)).label("rows"),
                        func.count(f.c.request_id).label("labelled"),
                        func.sum(case((f.c.label == p.c.prediction, 1), else_=0)).label("correct"),
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
        out = []
        for row in rows:
            labelled, correct = int(row["labelled"] or 0), int(row["correct"] or 0)
            interval = wilson_interval(correct, labelled)
            out.append({"arm": row["arm"], "version": row["version"], "requests": int(row["requests"] or 0),
                        "errors": int(row["errors"] or 0), "rows": int(row["rows"] or 0),
                        "latency_ms": _percentiles(latencies.get((row["arm"], row["version"]), [])),
                        "labelled": labelled, "correct": correct,
                        "accuracy": round(correct / labelled, 6) if labelled else None,
                        "accuracy_ci95": [round(v, 6) for v in interval] if interval else None,
                        "first_at": row["first_at"], "last_at": row["last_at"]})
        return sorted(out, key=lambda g: (g["arm"], _as_int(g["version"]) or 0, str(g["version"])))

    def first_served(self, arm: str, version: str) -> float | None:
        """When ``arm`` began serving ``version`` this time: its first answer after the arm last served another."""
        from sqlalchemy import func, select

        p = self.predictions
        with self.engine.connect() as conn:
            other = conn.execute(select(func.max(p.c.created)).where(p.c.arm == arm, p.c.version != version,
                                                                    p.c.status < 400)).scalar()
            query = select(func.min(p.c.created)).where(p.c.arm == arm, p.c.version == version, p.c.status < 400)
            return conn.execute(query if other is None else query.where(p.c.created > other)).scalar()

    def request_shares(self, arm: str, version: str, *, since: float) -> tuple[list[float], int, int]:
        """Per labelled request of ``arm``/``version`` answered at or after ``since``: its share of correct rows.

        Returns the shares (one per request: the unit of the comparison), and the labelled and correct rows.
        """
        from sqlalchemy import case, func, select

        p, f = self.predictions, self.feedback
        query = (select(func.count(f.c.request_id), func.sum(case((f.c.label == p.c.prediction, 1), else_=0)))
                 .select_from(p.join(f, f.c.request_id == p.c.request_id))
                 .where(p.c.arm == arm, p.c.version == version, p.c.created >= since, p.c.status < 400)
                 .group_by(p.c.call_id))
        with self.engine.connect() as conn:
            counts = conn.execute(query).all()
        shares = [int(correct or 0) / int(n) for n, correct in counts if n]
        return shares, sum(int(n) for n, _ in counts), sum(int(c or 0) for _, c in counts)

    def report(self, *, production: str | None = None, staging: str | None = None) -> dict:
        """Every group, and the comparison of Production's version with Staging's (default: the latest seen)."""
        groups = self.groups()
        production = str(production) if production is not None else _latest(groups, PRODUCTION_ARM)
        staging = str(staging) if staging is not None else _latest(groups, STAGING_ARM)
        return {"generated_at": self._clock(), "store": self.describe(), "groups": groups,
                "comparison": compare(self, production, staging, self.settings),
                "settings": {"alpha": self.settings.ab_alpha, "power": self.settings.ab_power,
                             "min_labels": self.settings.ab_min_labels, "min_effect": self.settings.ab_min_effect,
                             "promote": self.settings.ab_promote, "retire": self.settings.ab_retire}}


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None}
    import numpy as np

    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def _latest(groups: list[dict], arm: str) -> str | None:
    seen = [g for g in groups if g["arm"] == arm]
    return max(seen, key=lambda g: g["last_at"] or 0)["version"] if seen else None


def compare(store: PredictionStore, production: str | None, staging: str | None, settings: Settings) -> dict:
    """Staging minus Production since Staging's version first served: the sequential test and a verdict.

    Verdicts: ``nothing_to_compare``, ``insufficient_labels`` (fewer than ``ab_min_labels`` labelled
    requests in an arm), ``staging_better`` / ``staging_worse`` (the always-valid p-value below
    ``ab_alpha``), else ``keep_collecting``.
    """
    from .sequential import Arm, labels_needed, mixture_sprt

    out: dict[str, Any] = {"production_version": production, "staging_version": staging, "since": None,
                           "unit": "request (its share of correct rows)",
                           "production_requests": 0, "staging_requests": 0,
                           "production_labelled": 0, "staging_labelled": 0,
                           "production_accuracy": None, "staging_accuracy": None, "difference": None,
                           "p_value": None, "cs_low": None, "cs_high": None, "alpha": settings.ab_alpha,
                           "test": "mixture SPRT, always valid (Johari et al. 2017)", "tau": settings.ab_min_effect,
                           "fixed_horizon": None, "min_labels": settings.ab_min_labels, "min_labels_met": False,
                           "min_effect": settings.ab_min_effect, "samples_needed_per_arm": None,
                           "samples_still_needed": {"production": None, "staging": None},
                           "decision_allowed": False, "action": None}
    if production is None or staging is None or production == staging:
        out["verdict"] = "nothing_to_compare"
        out["reason"] = (f"both arms serve version {production}" if production is not None and production == staging
                         else "an arm has no logged predictions")
        return out
    since = store.first_served(STAGING_ARM, staging)
    prod_shares, prod_rows, prod_correct = store.request_shares(PRODUCTION_ARM, production, since=since or 0.0)
    stag_shares, stag_rows, stag_correct = (store.request_shares(STAGING_ARM, staging, since=since)
                                            if since is not None else ([], 0, 0))
    prod, stag = Arm.of(prod_shares), Arm.of(stag_shares)
    test = mixture_sprt(prod, stag, tau=settings.ab_min_effect, alpha=settings.ab_alpha)
    var_sum = (prod.variance if prod.n >= 2 else 0.25) + (stag.variance if stag.n >= 2 else 0.25)
    needed = max(settings.ab_min_labels, labels_needed(var_sum, settings.ab_min_effect, tau=settings.ab_min_effect,
                                                       alpha=settings.ab_alpha, power=settings.ab_power))
    fixed = two_proportion_test(prod_correct, prod_rows, stag_correct, stag_rows)
    out.update({"since": since, "production_requests": prod.n, "staging_requests": stag.n,
                "production_labelled": prod_rows, "staging_labelled": stag_rows,
                "production_accuracy": round(prod_correct / prod_rows, 6) if prod_rows else None,
                "staging_accuracy": round(stag_correct / stag_rows, 6) if stag_rows else None,
                "min_labels_met": prod.n >= settings.ab_min_labels and stag.n >= settings.ab_min_labels,
                "samples_needed_per_arm": needed,
                "samples_still_needed": {"production": max(0, needed - prod.n), "staging": max(0, needed - stag.n)},
                "fixed_horizon": None if fixed is None else {
                    "z": round(fixed[0], 4), "p_value": fixed[1],
                    "note": "two-proportion z-test on rows: valid at one pre-planned look only, not for decisions"}})
    if test is not None:
        out.update({"difference": round(test.difference, 6), "p_value": test.p_value,
                    "cs_low": round(test.cs_low, 6), "cs_high": round(test.cs_high, 6)})
    figures = (f"staging v{staging} {stag.mean:.4f} vs production v{production} {prod.mean:.4f} per request "
               f"({stag.n} and {prod.n} labelled requests since staging first served)") if test else ""
    if not out["min_labels_met"] or test is None:
        out["verdict"] = "insufficient_labels"
        out["reason"] = (f"labelled requests: production v{production} {prod.n}, staging v{staging} {stag.n}; "
                         f"at least {settings.ab_min_labels} per arm are needed")
    elif test.p_value < settings.ab_alpha:
        out["verdict"] = "staging_better" if test.difference > 0 else "staging_worse"
        out["reason"] = (f"{figures}: difference {test.difference:+.4f}, {1 - settings.ab_alpha:.0%} confidence "
                         f"sequence [{test.cs_low:+.4f}, {test.cs_high:+.4f}], always-valid p={test.p_value:.3g} "
                         f"< {settings.ab_alpha}")
    else:
        out["verdict"] = "keep_collecting"
        out["reason"] = (f"{figures}: difference {test.difference:+.4f}, confidence sequence "
                         f"[{test.cs_low:+.4f}, {test.cs_high:+.4f}] holds 0 (always-valid p={test.p_value:.3g})")
    out["action"] = {"staging_better": "promote", "staging_worse": "retire"}.get(out["verdict"])
    out["decision_allowed"] = bool((out["action"] == "promote" and settings.ab_promote)
                                   or (out["action"] == "retire" and settings.ab_retire))
    return out
