"""POST /predict: validate against the loaded model's schema, route by user_id parity, answer."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from flask import Blueprint, current_app, g, request

from mlops_core.registry import PRODUCTION, STAGING, LoadedModel

from .ab import stamp
from .errors import NoModelError, ValidationError
from .store import ARMS

__all__ = ["bp", "parse_body", "route", "to_frame"]

bp = Blueprint("predict", __name__)

_FLOATS = {"double", "float"}
_INTEGERS = {"long", "integer"}
_TOP_LEVEL = ("user_id", "features")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # user ids and integer columns: 64-bit
FLOAT32_MAX = 3.4028234663852886e38  # tree models work in float32


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_body(raw: bytes) -> Any:
    """Decode a JSON body strictly: UTF-8, no NaN/Infinity, no numbers out of range."""
    if not raw.strip():
        raise ValidationError("body", "expected a JSON object, got an empty body instead")
    try:  # what json.loads does, with one decoder built once instead of one per call
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise ValidationError("body", "JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, digit-limit errors
        raise ValidationError("body", f"malformed JSON: {str(err).splitlines()[0][:200]}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_value(field: str, dtype: str, value: Any) -> Any:
    """Return ``value`` as the column's type, or raise naming ``field``."""
    kind = _kind(value)
    if kind == "null":
        return None
    if dtype in _FLOATS:
        if kind in ("integer", "number"):
            try:
                number = float(value)
            except OverflowError:
                raise ValidationError(field, "number out of range") from None
            if math.isfinite(number) and abs(number) <= FLOAT32_MAX:  # tree models work in float32
                return number
            raise ValidationError(field, f"number out of range; expected at most {FLOAT32_MAX:.3g} in size")
        expected = "a number or null"
    elif dtype in _INTEGERS:
        if kind == "integer" or (kind == "number" and float(value).is_integer()):
            if INT64_MIN <= value <= INT64_MAX:
                return int(value)
            raise ValidationError(field, "integer out of range; expected a 64-bit integer")
        expected = "an integer or null"
    elif dtype == "string":
        if kind == "string":
            return value
        expected = "a string or null"
    elif dtype == "boolean":
        if kind == "boolean":
            return value
        expected = "true, false or null"
    else:  # a schema type we do not know: accept any scalar and let the pipeline judge
        if kind not in ("array", "object"):
            return value
        expected = "a scalar value or null"
    raise ValidationError(field, f"expected {expected} ({dtype} column), got {kind} instead")


def _check_row(prefix: str, row: Any, model: LoadedModel) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValidationError(prefix, f"expected an object of features, got {_kind(row)} instead")
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
        raise ValidationError("body", f"expected a JSON object with {list(_TOP_LEVEL)}, got {_kind(body)} instead")
    extra = [k for k in body if k not in _TOP_LEVEL]
    if extra:
        raise ValidationError(str(extra[0])[:100] or '""', f"unknown field; expected only {list(_TOP_LEVEL)}")
    if "user_id" not in body:
        raise ValidationError("user_id", "missing; expected a JSON integer")
    user_id = body["user_id"]
    kind = _kind(user_id)
    if kind != "integer" and not (kind == "number" and float(user_id).is_integer()):  # 2.0 is an integer too
        raise ValidationError("user_id", f"expected a JSON integer, got {kind} instead")
    if not INT64_MIN <= user_id <= INT64_MAX:  # the prediction log stores it as a 64-bit integer
        raise ValidationError("user_id", "out of range; expected a 64-bit integer")
    user_id = int(user_id)
    if "features" not in body:
        raise ValidationError("features", "missing; expected an object of features or a list of them")
    features = body["features"]
    if isinstance(features, dict):
        return user_id, [features], False
    if not isinstance(features, list):
        raise ValidationError("features", f"expected an object or a list of objects, got {_kind(features)} instead")
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


def to_frame(rows: list[dict[str, Any]], model: LoadedModel):
    """Rows as a DataFrame in the one normalised form the pipelines were trained on (``data.normalise``)."""
    import pandas as pd

    from mlops_core.data import CATEGORICAL, NUMERIC, normalise

    kinds = {c: NUMERIC if model.dtypes.get(c, "") in _FLOATS else CATEGORICAL
             for c in model.columns if model.dtypes.get(c, "") in _FLOATS or model.dtypes.get(c, "") == "string"}
    return normalise(pd.DataFrame.from_records(rows, columns=model.columns), kinds)


@bp.post("/predict")
def predict():
    """Answer predictions and P(class 1) for one row or a batch, from the arm the user is routed to."""
    app = current_app._get_current_object()  # proxies cost a lookup on every use: resolve them once
    req, ctx = request._get_current_object(), g._get_current_object()
    settings = app.config["MLOPS_SETTINGS"]
    if not req.is_json:
        raise ValidationError("Content-Type", f"expected application/json, got {req.mimetype or 'none'} "
                                              "instead", status=415)
    body = parse_body(req.get_data(cache=False))
    user_id, raw_rows, batch = check_request(body, max_batch=settings.max_batch)
    snapshot = app.extensions["mlops_store"].snapshot  # one read: the pair stays consistent for this request
    wanted, model, fallback = route(user_id, snapshot)
    stage = ctx.mlops_stage = ARMS[PRODUCTION] if fallback else ARMS[wanted]
    prefix = "features" if len(raw_rows) == 1 and isinstance(body["features"], dict) else "features[{}]"
    rows = [_check_row(prefix.format(i), row, model) for i, row in enumerate(raw_rows)]
    predictions, probabilities = app.extensions["mlops_serving"](model, rows)  # server/fastpath.py
    ctx.mlops_rows = len(rows)
    answer = {"predictions": predictions, "probabilities": probabilities, "stage": stage,
              "version": model.version, "model": settings.model_name, "requested_stage": ARMS[wanted],
              "fallback": fallback}
    stamp(answer, user_id=user_id, version=model.version, predictions=predictions, probabilities=probabilities,
          batch=batch)  # request_id(s); the A/B log's record
    # the bytes jsonify would send (compact, then a newline), without its per-call option handling
    return app.response_class(f"{json.dumps(answer, separators=(',', ':'))}\n", mimetype="application/json")


@bp.before_request
def _start_clock():
    g.mlops_started = time.perf_counter()


@bp.after_request
def _record(response):
    """Count every /predict answer (this blueprint's only route), errors included, by arm."""
    metrics = current_app.extensions.get("mlops_metrics")
    if metrics is not None:
        ctx = g._get_current_object()
        metrics.observe_request(getattr(ctx, "mlops_stage", None), response.status_code,
                                time.perf_counter() - getattr(ctx, "mlops_started", time.perf_counter()),
                                getattr(ctx, "mlops_rows", 0))
    return response
