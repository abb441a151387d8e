"""Live A/B serving: the per-worker prediction log writer, POST /feedback and GET /ab/report.

The request thread only appends one small record to a bounded deque: no lock, and no
wake-up of another thread (a ``queue.Queue`` would hand the GIL to the writer on every
put). A full deque drops the record and counts it; it is never waited on. One writer thread per
worker, started on the first record after :meth:`PredictionLog.start`, writes a
batch at a time: at once when a full batch, a flush or a stop waits, else after
gathering for up to ``ab_flush_seconds``; retention runs between batches now and then.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request

from mlops_core import ab
from mlops_core.config import Settings
from mlops_core.errors import first_line
from mlops_core.live import feedback_refusal
from mlops_core.predictions import InvalidLabelError, Prediction, PredictionStore, UnknownRequestError

from .ids import new_request_id
from .json_errors import FeedbackRefusedError, ValidationError
from .jsonbody import kind, read_json
from .serving import labels_of

__all__ = ["bp", "PredictionLog", "init_app", "warn_if_feedback_refused"]

log = logging.getLogger(__name__)

bp = Blueprint("ab", __name__)

_RETENTION_EVERY = 60.0


class _Flush:
    """A marker on the queue: the writer sets it once everything queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class PredictionLog:
    """A bounded deque and one writer thread per process, feeding a PredictionStore."""

    def __init__(self, settings: Settings, *, store: PredictionStore | None = None,
                 on_written: Callable[[int], None] | None = None, on_dropped: Callable[[int], None] | None = None):
        self.settings = settings
        self.store = store or PredictionStore(settings)
        self._on_written, self._on_dropped = on_written, on_dropped
        self._lock = threading.Lock()
        self._pid: int | None = None  # the process where start() was called; records elsewhere are ignored
        self._items: deque = deque()  # Prediction records and _Flush markers, in order
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._flushes = 0  # flush markers queued and not yet reached by the writer
        self.written = self.dropped = self.failed = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Accept records in this process (a fresh queue after a fork); the writer starts on the first one."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid, self._thread = os.getpid(), None
            self._items, self._flushes = deque(), 0
            self._halt.clear()

    @property
    def active(self) -> bool:
        """Whether records are accepted in this process."""
        return self.settings.ab_log and self._pid == os.getpid()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer and close the store's connections."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self._pid = None  # no new records from here on
            thread, self._thread = self._thread, None
        self._halt.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("prediction writer did not stop within %.0fs", timeout)
        self.store.dispose()

    # -- the hot path -----------------------------------------------------------------------------------
    def record(self, item: Prediction) -> bool:
        """Queue one answered request without waiting; False when it was dropped (or logging is off here)."""
        if self._pid != os.getpid():
            return False
        if len(self._items) < self.settings.ab_queue_size:  # racing threads may overshoot by a few records
            self._items.append(item)
        else:
            rows = max(1, len(item.request_ids))
            with self._lock:
                self.dropped += rows
            if self._on_dropped is not None:
                self._on_dropped(rows)
            return False
        if self._thread is None:
            self._spawn()
        return True

    def _spawn(self) -> None:
        with self._lock:
            if self._thread is None and self._pid == os.getpid():
                self._thread = threading.Thread(target=self._run, name="mlops-ab-writer", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything this process queued so far is written (False on timeout or when idle)."""
        if self._pid != os.getpid() or self._thread is None:
            return False
        marker = _Flush()
        with self._lock:
            self._flushes += 1
            self._items.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return sum(1 for item in list(self._items) if not isinstance(item, _Flush))

    def log_call(self, call, status: int, seconds: float) -> None:
        """Record one /predict answer (a ``server.predict.Call``); refused before routing: no arm, nothing."""
        if call.arm is None or not self.active:
            return
        ok = status < 400 and call.call_id is not None
        self.record(Prediction(call.call_id if ok else new_request_id(), call.request_ids if ok else (),
                               call.user_id if ok else None, call.arm, call.version,
                               call.predictions if ok else (), call.probabilities if ok else (),
                               status, round(seconds * 1000, 3), time.time(), task=call.task))

    # -- the writer -----------------------------------------------------------------------------------
    def _run(self) -> None:
        """Write a batch at a time: at once when a full batch, a flush or a stop waits, else after
        gathering for up to ``ab_flush_seconds`` (few, large transactions even when the store is slow)."""
        wait, size = self.settings.ab_flush_seconds, self.settings.ab_batch_size
        next_retention = time.monotonic()
        while True:
            if not (self._halt.is_set() or self._flushes or len(self._items) >= size):
                self._wake.wait(wait)
                self._wake.clear()
            batch: list[Prediction] = []
            marker = None
            while self._items and len(batch) < size:
                item = self._items.popleft()
                if isinstance(item, _Flush):  # everything queued before it is in this write or an earlier one
                    marker = item
                    break
                batch.append(item)
            if batch:
                self._write(batch)
            if marker is not None:
                with self._lock:
                    self._flushes -= 1
                marker.done.set()
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + _RETENTION_EVERY
                try:
                    self.store.apply_retention()
                except Exception:
                    log.exception("prediction store retention failed")
            if self._halt.is_set() and not self._items:
                return

    def _write(self, batch: list[Prediction]) -> None:
        try:
            rows = self.store.write(batch)
        except Exception as err:  # a slow or broken store must not stop the writer
            rows = sum(max(1, len(item.request_ids)) for item in batch)
            with self._lock:
                self.failed += rows
            log.warning("prediction store write failed, %d rows lost: %s", rows, first_line(err))
            if not self._halt.is_set():
                time.sleep(min(1.0, self.settings.ab_flush_seconds * 5))
            return
        with self._lock:
            self.written += rows
        if self._on_written is not None:
            self._on_written(rows)


# -- wiring ---------------------------------------------------------------------------------------------
def init_app(app: Flask, settings: Settings) -> PredictionLog:
    """Create this app's prediction log, the recording hook and the blueprint."""
    metrics = app.extensions.get("mlops_metrics")
    ab_log = PredictionLog(settings,
                           on_written=(lambda n: metrics.observe_ab_log(written=n)) if metrics else None,
                           on_dropped=(lambda n: metrics.observe_ab_log(dropped=n)) if metrics else None)
    app.extensions["mlops_ab"] = ab_log
    app.register_blueprint(bp)
    return ab_log


# -- endpoints -------------------------------------------------------------------------------------------
#: the longest label accepted (labels are stored as text)
MAX_LABEL_CHARS = 256


def _field(prefix: str, name: str = "") -> str:
    return ".".join(filter(None, (prefix, name))) or "body"


def _item(prefix: str, item: Any) -> tuple[str, Any]:
    if not isinstance(item, dict):
        raise ValidationError(_field(prefix), f"expected an object with 'request_id' and 'label', got {kind(item)} "
                                              "instead")
    extra = [k for k in item if k not in ("request_id", "label")]
    if extra:
        raise ValidationError(_field(prefix, str(extra[0])[:100]), "unknown field; expected only "
                                                                   "['request_id', 'label']")
    if "request_id" not in item:
        raise ValidationError(_field(prefix, "request_id"), "missing; expected the request_id of a /predict answer")
    request_id = item["request_id"]
    if not isinstance(request_id, str) or not request_id or len(request_id) > 64:
        raise ValidationError(_field(prefix, "request_id"), f"expected the request_id string of a /predict answer, "
                                                             f"got {kind(request_id)} instead")
    if "label" not in item:
        raise ValidationError(_field(prefix, "label"), "missing; expected the true label, one of the model's classes "
                                                        "(a regression's: the true value, a number)")
    label = item["label"]
    found = kind(label)
    if found not in ("string", "integer", "number", "boolean"):
        raise ValidationError(_field(prefix, "label"), f"expected the true label (a string, integer or boolean; a "
                                                        f"regression's: a number), got {found} instead")
    if found == "string" and (not label.strip() or len(label) > MAX_LABEL_CHARS):
        raise ValidationError(_field(prefix, "label"), f"expected a label of 1 to {MAX_LABEL_CHARS} characters, "
                                                        f"got {len(label)} {'blank ' if len(label) else ''}"
                                                        "characters instead")
    return request_id, label


def parse_feedback(body: Any, *, max_batch: int) -> tuple[list[tuple[str, Any]], str]:
    """``{"request_id", "label"}`` or ``{"feedback": [...]}`` as a list of (request id, label), and the field
    of the ``i``-th label (``"{}"`` formatted with ``i``)."""
    if isinstance(body, dict) and "feedback" in body:
        if len(body) != 1:
            raise ValidationError("feedback", "expected only 'feedback' beside it, or the single form "
                                              "{'request_id', 'label'}")
        items = body["feedback"]
        if not isinstance(items, list) or not items:
            raise ValidationError("feedback", f"expected a non-empty list of objects, got {kind(items)} instead")
        if len(items) > max_batch:
            raise ValidationError("feedback", f"batch of {len(items)} labels exceeds the cap of {max_batch}")
        return [_item(f"feedback[{i}]", item) for i, item in enumerate(items)], "feedback[{}].label"
    if not isinstance(body, dict):
        raise ValidationError("body", f"expected a JSON object, got {kind(body)} instead")
    return [_item("", body)], "label"


def served_classes(snapshot) -> Callable[[str | None], tuple | None]:
    """Version -> the classes a label for its answer must be one of: those of the version that answered when
    this worker serves it, else Production's (a version no longer served, one task: the same target); None,
    which stores a label unchecked, when no model is loaded here."""
    by_version = {m.version: labels_of(m) for m in (snapshot.staging, snapshot.production) if m is not None}
    default = labels_of(snapshot.production)

    def classes(version: str | None) -> tuple | None:
        labels = by_version.get(version) or default
        return labels.classes if labels is not None else None

    return classes


def warn_if_feedback_refused(settings: Settings, logger: Any = log) -> None:
    """Say at start-up that every POST /feedback will be refused, and why (once per server: see create_app)."""
    refusal = feedback_refusal(settings)
    if refusal:
        logger.warning("POST /feedback will answer 403: %s", refusal)


def _check_feedback_token(settings: Settings) -> None:
    """Labels can move an alias (live retirement, promotion): with MLOPS_FEEDBACK_TOKEN set, require it as a
    bearer token; without one, refuse feedback while retirement or promotion is on."""
    token = settings.feedback_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ValidationError("Authorization", "expected 'Bearer <MLOPS_FEEDBACK_TOKEN>'", status=401)
        return
    refusal = feedback_refusal(settings)
    if refusal:
        raise FeedbackRefusedError(f"feedback refused: {refusal}")


@bp.post("/feedback")
def feedback():
    """Join true labels to logged predictions: one ``{"request_id", "label"}`` or ``{"feedback": [...]}``.

    A label is the data's own value, matched to the classes of the version that answered (``1``, ``"1"`` and
    ``1.0`` name one class); one that is none of them is a 400 naming it and the classes. For a regression's
    prediction the label is the true value, a JSON number (not text, not a boolean), finite and at most
    :data:`~mlops_core.predictions.MAX_TRUE_VALUE` in size; anything else is a 400 naming it."""
    settings = current_app.config["MLOPS_SETTINGS"]
    ab_log: PredictionLog = current_app.extensions["mlops_ab"]
    _check_feedback_token(settings)
    labels, field = parse_feedback(read_json(request), max_batch=settings.max_batch)
    classes = served_classes(current_app.extensions["mlops_store"].snapshot)
    deadline = time.monotonic() + settings.ab_feedback_wait
    flushed = False
    while True:
        try:
            stored = ab_log.store.add_feedback(labels, classes=classes)
            break
        except InvalidLabelError as err:  # the field it names depends on the body's form
            extra = {"classes": err.classes} if err.classes is not None else {}  # a regression's has none
            raise ValidationError(field.format(err.index), err.args[0], **extra) from err
        except UnknownRequestError:
            # the prediction may still wait in a writer's queue: flush ours, give the others a moment
            if not flushed:
                flushed = True
                ab_log.flush(timeout=max(0.1, deadline - time.monotonic()))
            elif time.monotonic() >= deadline:
                raise
            else:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return jsonify({"accepted": stored, "request_ids": [i for i, _ in labels]}), 201


@bp.get("/ab/report")
def report():
    """Per arm and version: traffic, latency, labelled accuracy (a regression's: MAE and RMSE); the arms compared
    (this worker's view)."""
    ab_log: PredictionLog = current_app.extensions["mlops_ab"]
    snapshot = current_app.extensions["mlops_store"].snapshot
    ab_log.flush(timeout=1.0)
    out = ab.report(ab_log.store, production=snapshot.production.version if snapshot.production else None,
                    staging=snapshot.staging.version if snapshot.staging else None)
    out["log"] = {"worker_pid": os.getpid(), "enabled": ab_log.active,
                  "queued": ab_log.queued, "written": ab_log.written, "dropped": ab_log.dropped,
                  "failed": ab_log.failed}
    return jsonify(out)
