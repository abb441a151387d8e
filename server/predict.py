"""POST /predict: validate against the loaded model's schema, route by user_id parity, answer."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, request

from mlops_core.registry import PRODUCTION, STAGING, LoadedModel

from .ids import new_request_ids
from .json_errors import NoModelError, ValidationError
from .jsonbody import kind, read_json
from .serving import REGRESSION, labels_of, task_of
from .store import ARMS

__all__ = ["bp", "route", "check_request"]

bp = Blueprint("predict", __name__)

_FLOATS = {"double", "float"}
_INTEGERS = {"long", "integer"}
_TOP_LEVEL = ("user_id", "features")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # user ids and integer columns: 64-bit
FLOAT32_MAX = 3.4028234663852886e38  # tree models work in float32


def _check_value(field: str, dtype: str, value: Any) -> Any:
    """Return ``value`` as the column's type, or raise naming ``field``."""
    found = kind(value)
    if found == "null":
        return None
    if dtype in _FLOATS:
        if found in ("integer", "number"):
            try:
                number = float(value)
            except OverflowError:
                raise ValidationError(field, "number out of range") from None
            if math.isfinite(number) and abs(number) <= FLOAT32_MAX:  # tree models work in float32
                return number
            raise ValidationError(field, f"number out of range; expected at most {FLOAT32_MAX:.3g} in size")
        expected = "a number or null"
    elif dtype in _INTEGERS:
        if found == "integer" or (found == "number" and float(value).is_integer()):
            if INT64_MIN <= value <= INT64_MAX:
                return int(value)
            raise ValidationError(field, "integer out of range; expected a 64-bit integer")
        expected = "an integer or null"
    elif dtype == "string":
        if found == "string":
            return value
        expected = "a string or null"
    elif dtype == "boolean":
        if found == "boolean":
            return value
        expected = "true, false or null"
    else:  # a schema type we do not know: accept any scalar and let the pipeline judge
        if found not in ("array", "object"):
            return value
        expected = "a scalar value or null"
    raise ValidationError(field, f"expected {expected} ({dtype} column), got {found} instead")


def _check_row(prefix: str, row: Any, model: LoadedModel) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValidationError(prefix, f"expected an object of features, got {kind(row)} instead")
    unknown = [k for k in row if k not in model.dtypes and k not in model.columns]
    if unknown:
        raise ValidationError(f"{prefix}.{unknown[0]}", f"unknown feature; expected exactly {model.columns}")
    missing = [c for c in model.columns if c not in row]
    if missing:
        raise ValidationError(f"{prefix}.{missing[0]}", f"missing feature; expected exactly {model.columns}")
    return {c: _check_value(f"{prefix}.{c}", model.dtypes.get(c, ""), row[c]) for c in model.columns}


def check_request(body: Any, *, max_batch: int) -> tuple[int, list[Any], bool]:
    """Check the request's shape; return the user id, the raw rows and whether it was a batch."""
    if not isinstance(body, dict):
        raise ValidationError("body", f"expected a JSON object with {list(_TOP_LEVEL)}, got {kind(body)} instead")
    extra = [k for k in body if k not in _TOP_LEVEL]
    if extra:
        raise ValidationError(str(extra[0])[:100] or '""', f"unknown field; expected only {list(_TOP_LEVEL)}")
    if "user_id" not in body:
        raise ValidationError("user_id", "missing; expected a JSON integer")
    user_id = body["user_id"]
    found = kind(user_id)
    if found != "integer" and not (found == "number" and float(user_id).is_integer()):  # 2.0 is an integer too
        raise ValidationError("user_id", f"expected a JSON integer, got {found} instead")
    if not INT64_MIN <= user_id <= INT64_MAX:  # the prediction log stores it as a 64-bit integer
        raise ValidationError("user_id", "out of range; expected a 64-bit integer")
    user_id = int(user_id)
    if "features" not in body:
        raise ValidationError("features", "missing; expected an object of features or a list of them")
    features = body["features"]
    if isinstance(features, dict):
        return user_id, [features], False
    if not isinstance(features, list):
        raise ValidationError("features", f"expected an object or a list of objects, got {kind(features)} instead")
    if not features:
        raise ValidationError("features", "empty batch; expected at least one row")
    if len(features) > max_batch:
        raise ValidationError("features", f"batch of {len(features)} rows exceeds the cap of {max_batch}")
    return user_id, features, True


def route(user_id: int, snapshot) -> tuple[str, LoadedModel, bool]:
    """Even users to Production, odd to Staging (Production when none is loaded)."""
    if snapshot.production is None:
        raise NoModelError("no Production model is loaded yet; the registry may be empty or unreachable")
    wanted = STAGING if user_id % 2 else PRODUCTION
    model = snapshot.arm(wanted)
    if model is None:
        return wanted, snapshot.production, True
    return wanted, model, False


def _numbers(predictions) -> list[float | None]:
    """A regression's predictions as JSON numbers: a value that is not finite (a model overflowing on an extreme
    row) is null, which JSON can carry, never ``NaN`` or ``Infinity``, which it cannot."""
    values = [float(p) for p in predictions]
    if all(map(math.isfinite, values)):
        return values
    return [v if math.isfinite(v) else None for v in values]


@dataclass
class Call:
    """What one /predict call did, filled in as it goes: the metrics and the prediction log read it."""

    started: float
    arm: str | None = None  # the arm that served (None: refused before routing)
    version: str | None = None
    user_id: int | None = None
    rows: int = 0
    request_ids: tuple[str, ...] = ()
    call_id: str | None = None
    predictions: list | None = None
    probabilities: list | None = None
    task: str = "classification"  # what the serving version answers: a regression's predictions are numbers


@bp.post("/predict")
def predict():
    """Answer predictions and probabilities for one row or a batch, from the arm the user is routed to.

    Predictions are the labels as in the data. Probabilities: the positive class's per row (two classes), or
    one list per row aligned with ``classes``, which the answer then carries (three classes or more). A
    regression version answers the predicted numbers and no ``probabilities`` (each arm by its own task).

    The flow, top to bottom: parse and validate → route → predict → answer; then, for every answer
    (errors too), one explicit call each to the metrics and to the prediction log.
    """
    app = current_app._get_current_object()  # proxies cost a lookup on every use: resolve them once
    call = Call(started=time.perf_counter())
    try:
        response = _answer(app, request._get_current_object(), call)
    except Exception as err:  # the app's JSON error handlers (server/json_errors.py) build the answer
        response = app.make_response(app.handle_user_exception(err))
    seconds = time.perf_counter() - call.started
    app.extensions["mlops_metrics"].observe_request(call.arm, response.status_code, seconds, call.rows)
    app.extensions["mlops_ab"].log_call(call, response.status_code, seconds)
    return response


def _answer(app: Flask, req, call: Call):
    settings = app.config["MLOPS_SETTINGS"]
    body = read_json(req)
    user_id, raw_rows, batch = check_request(body, max_batch=settings.max_batch)
    snapshot = app.extensions["mlops_store"].snapshot  # one read: the pair stays consistent for this request
    wanted, model, fallback = route(user_id, snapshot)
    call.arm, call.version, call.user_id = ARMS[PRODUCTION] if fallback else ARMS[wanted], model.version, user_id
    call.task = task_of(model)
    prefix = "features" if len(raw_rows) == 1 and isinstance(body["features"], dict) else "features[{}]"
    rows = [_check_row(prefix.format(i), row, model) for i, row in enumerate(raw_rows)]
    predictions, probabilities = app.extensions["mlops_serving"](model, rows)  # server/serving.py
    if call.task == REGRESSION:
        predictions, probabilities = _numbers(predictions), None
    call.rows, call.predictions, call.probabilities = len(rows), predictions, probabilities
    call.call_id, call.request_ids = new_request_ids(len(rows) if batch else None)
    if call.task == REGRESSION:  # the predicted numbers; nothing is a probability
        answer = {"predictions": predictions}
    else:
        answer = {"predictions": predictions, "probabilities": probabilities}
        labels = labels_of(model)  # read after the call: a compiled predictor may learn its labels on the first one
        if labels is not None and labels.multiclass:  # probabilities are one list per row, in this order
            answer["classes"] = list(labels.classes)
    answer.update({"stage": call.arm, "version": model.version, "model": settings.model_name,
                   "requested_stage": ARMS[wanted], "fallback": fallback, "request_id": call.call_id})
    if batch:
        answer["request_ids"] = list(call.request_ids)
    # the bytes jsonify would send (compact, then a newline), without its per-call option handling
    return app.response_class(f"{json.dumps(answer, separators=(',', ':'))}\n", mimetype="application/json")
