"""GET /openapi.json: the service's OpenAPI 3.1 contract, every endpoint, built from the served models: the rows
from Production's columns, the answers and labels from each arm's classes (a regression arm: numbers)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from flask import Blueprint, current_app, jsonify

from mlops_core.labels import Labels, label_key
from mlops_core.predictions import MAX_TRUE_VALUE

from .live_ab import MAX_LABEL_CHARS
from .predict import FLOAT32_MAX, INT64_MAX, INT64_MIN
from .serving import REGRESSION, labels_of, task_of

__all__ = ["bp", "document"]

bp = Blueprint("openapi", __name__)

#: MLflow schema type -> JSON Schema of one value (every feature may also be null: the pipeline imputes it),
#: with the bounds the server enforces (tree models work in float32; integers are stored as 64-bit)
_NUMBER = {"type": ["number", "null"], "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
_INTEGER = {"type": ["integer", "null"], "minimum": INT64_MIN, "maximum": INT64_MAX}
_TYPES = {"double": _NUMBER, "float": _NUMBER, "long": _INTEGER, "integer": _INTEGER,
          "string": {"type": ["string", "null"]}, "boolean": {"type": ["boolean", "null"]}}
_ANY_SCALAR = {"anyOf": [_NUMBER, {"type": ["string", "boolean", "null"]}]}

_ERRORS = {
    "400": "the request breaks the schema (a missing or unknown field, a wrong type, a value out of range, a "
           "batch over its cap, malformed JSON, a label that is none of the classes, a regression's true value "
           "that is no finite number); `field` names the offending part (and `classes` lists the classes for a "
           "label)",
    "401": "MLOPS_FEEDBACK_TOKEN is set and the bearer token is missing or wrong",
    "403": "labels could move an alias (MLOPS_AB_RETIRE or MLOPS_AB_PROMOTE on) and no MLOPS_FEEDBACK_TOKEN is "
           "set: feedback is refused (`feedback_refused`)",
    "404": "no logged prediction has this request id (`request_ids` lists them)",
    "409": "a request id already has a label (`request_ids` lists them)",
    "413": "the body is over MLOPS_MAX_BODY_BYTES",
    "415": "the body is not application/json",
    "503": "no Production model loaded yet (`Retry-After` says when to try again)",
}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*codes: str) -> dict:
    out = {}
    for code in codes:
        out[code] = {"description": _ERRORS[code], "content": _json({"$ref": "#/components/schemas/Error"})}
        if code == "503":
            out[code]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return out


def _object(required: list[str], properties: dict | None = None) -> dict:
    return {"type": "object", "required": required, "properties": properties or {}}


def _ready() -> dict:
    ready = _object(["status", "production"], {"status": {"const": "ready"}, "production": {"type": "string"},
                                                "staging": {"type": ["string", "null"]}})
    not_ready = _object(["status", "message"], {"status": {"const": "not ready"}, "message": {"type": "string"},
                                                "error": {"type": ["string", "null"]}})
    return {"get": {"operationId": "ready", "summary": "Production is loaded: predictions can be answered",
                    "responses": {"200": {"description": "ready", "content": _json(ready)},
                                  "503": {"description": "no Production model loaded yet",
                                          "content": _json(not_ready)}}}}


def _kind(classes: Sequence) -> dict:
    """The JSON Schema type of labels like ``classes`` (they have one type: ``labels.canonical``)."""
    if all(isinstance(c, bool) for c in classes):
        return {"type": "boolean"}
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return {"type": "integer"}
    return {"type": "string"}


#: what an arm answers with: its labels (a classifier), REGRESSION (numbers), or None (not known)
Answering = Labels | str | None

_TRUE_VALUE = {"type": "number", "minimum": -MAX_TRUE_VALUE, "maximum": MAX_TRUE_VALUE}
_ABSENT = {"not": {}}  # a property that must not be there


def _shape(arm: Answering) -> tuple | str | None:
    """What makes two arms' answers alike: their classes (``1`` is not ``True`` here) and positive class; a
    regression's numbers."""
    if arm is None or arm == REGRESSION:
        return arm
    return tuple((type(c).__name__, label_key(c)) for c in arm.classes), repr(arm.positive)


def _common(required: list[str], properties: dict) -> dict:
    """An answer of POST /predict: ``properties`` first, then what every answer carries."""
    return _object([*required, "stage", "version", "model"], {
        **properties,
        "stage": {"enum": ["Production", "Staging"]}, "version": {"type": "string"}, "model": {"type": "string"},
        "requested_stage": {"enum": ["Production", "Staging"]}, "fallback": {"type": "boolean"},
        "request_id": {"type": "string", "description": "for POST /feedback (when the prediction log is on)"},
        "request_ids": {"type": "array", "items": {"type": "string"}, "description": "one per row of a batch"}})


def _answer(labels: Answering) -> dict:
    """The 200 answer of POST /predict from a model with ``labels`` (a regression's: numbers, no probabilities;
    any shape while none is loaded)."""
    if labels == REGRESSION:
        return _common(["predictions"], {
            "predictions": {"type": "array", "description": "one per row",
                            "items": {"type": ["number", "null"],
                                      "description": "the predicted value (null only when the model's answer is "
                                                     "not a finite number)"}},
            "probabilities": {**_ABSENT, "description": "absent: a regression answers numbers, no probabilities"},
            "classes": {**_ABSENT, "description": "absent: a regression has no classes"}})
    if labels is None:
        prediction = {"type": ["string", "integer", "number", "boolean"]}
        probability = {"type": ["number", "array", "null"], "items": {"type": "number"}}
        extra = {"classes": {"type": "array", "items": prediction,
                             "description": "three classes or more: every label, in the order of each row's "
                                            "probabilities"}}
        required = []
    elif labels.multiclass:
        prediction = {**_kind(labels.classes), "enum": list(labels.classes)}
        k = len(labels.classes)
        probability = {"type": "array", "minItems": k, "maxItems": k, "items": {"type": "number"},
                       "description": "each class's probability, in the order of `classes`"}
        extra = {"classes": {"const": list(labels.classes), "description": "every label, in the order of each "
                                                                              "row's probabilities"}}
        required = ["classes"]
    else:
        prediction = {**_kind(labels.classes), "enum": list(labels.classes)}
        probability = {"type": ["number", "null"],
                       "description": f"the probability of the positive class {labels.positive!r}"}
        extra, required = {}, []
    return _common(["predictions", "probabilities", *required], {
        "predictions": {"type": "array", "items": prediction, "description": "the labels, as in the data"},
        "probabilities": {"type": "array", "items": probability, "description": "one per row"},
        **extra})


def _spellings(cls) -> str:
    """A regular expression of the texts that name ``cls`` (``labels.canonical_value``): the class with blanks
    around it, an integer with a sign, leading zeros or a zero fraction, a boolean in any case."""
    if isinstance(cls, bool):
        return "".join(f"[{c.upper()}{c}]" for c in str(cls).lower())
    if isinstance(cls, int):
        sign = "[+-]?" if cls == 0 else "-" if cls < 0 else "[+]?"
        return f"{sign}0*{abs(cls)}(?:\\.0*)?"
    return re.escape(str(cls))


def _label(arms: Sequence[Answering]) -> dict:
    """A true label for POST /feedback: a class of the version that answered, as in the data (``1``, ``true``) or
    as text (``"1"``, ``" True"``); for a regression's prediction the true value, a finite number. The schema
    names every loaded arm's classes (and numbers when an arm is a regression); the server checks the label
    against the version that answered its request."""
    known = [labels for labels in arms if labels is not None and labels != REGRESSION]
    numbers = REGRESSION in arms
    if not known and not numbers:  # no model loaded: labels are stored unchecked (a regression's: numbers)
        return {"type": ["string", "integer", "number", "boolean"], "maxLength": MAX_LABEL_CHARS, "pattern": "\\S",
                "description": "the true label, as in the data"}
    value = {**_TRUE_VALUE, "description": "a regression's true value: a JSON number (not text), finite, at most "
                                           f"{MAX_TRUE_VALUE:.8g} in size"}
    if not known:
        return value
    classes = list({(type(c), label_key(c)): c for labels in known for c in labels.classes}.values())  # 1 != True
    texts = "|".join(_spellings(c) for c in classes)
    return {"anyOf": [{"enum": classes}, {"type": "string", "maxLength": MAX_LABEL_CHARS,
                                          "pattern": f"^\\s*(?:{texts})\\s*$"}, *([value] if numbers else [])],
            "description": f"the true label: one of the classes of the version that answered "
                          f"({', '.join(repr(c) for c in classes)}), as in the data or as text: `1`, `\"1\"` and "
                          "`1.0` name one class, `true` and `\"True\"` another"
                          + ("; for a regression's prediction, the true value (a number)" if numbers else ""),
            "examples": classes}


def document(columns: list[str], dtypes: dict[str, str], *, model: str, max_batch: int, version: str | None,
             arms: Sequence[Answering] = ()) -> dict:
    """The OpenAPI 3.1 document of the whole API for a model with these input columns, served by arms with these
    labels (``REGRESSION`` for an arm that predicts numbers; each arm's answer shape; any shape when none is
    given)."""
    row = {"type": "object", "additionalProperties": False, "required": list(columns),
           "properties": {c: _TYPES.get(dtypes.get(c, ""), _ANY_SCALAR) for c in columns}}
    request = {"type": "object", "additionalProperties": False, "required": ["user_id", "features"],
               "properties": {"user_id": {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX,
                                          "description": "even: Production, odd: Staging"},
                              "features": {"oneOf": [{"$ref": "#/components/schemas/Row"},
                                                     {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                      "items": {"$ref": "#/components/schemas/Row"}}]}}}
    shapes = {_shape(labels): labels for labels in arms} or {None: None}  # each arm's; the same labels once
    answers = [_answer(labels) for labels in shapes.values()]
    answer = answers[0] if len(answers) == 1 else {"anyOf": answers}
    label = _object(["request_id", "label"], {"request_id": {"type": "string", "minLength": 1, "maxLength": 64},
                                              "label": _label(arms)})
    label["additionalProperties"] = False
    feedback = {"oneOf": [{"$ref": "#/components/schemas/Label"},
                          {"type": "object", "additionalProperties": False, "required": ["feedback"],
                           "properties": {"feedback": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                       "items": {"$ref": "#/components/schemas/Label"}}}}]}
    error = _object(["error", "message", "status"], {
        "error": {"type": "string"}, "message": {"type": "string"}, "status": {"type": "integer"},
        "field": {"type": "string"}, "request_ids": {"type": "array", "items": {"type": "string"}}})
    arm = {"type": ["object", "null"], "required": ["version", "run_id", "columns", "dtypes"],
           "properties": {"version": {"type": "string"}, "run_id": {"type": "string"},
                          "columns": {"type": "array", "items": {"type": "string"}}, "dtypes": {"type": "object"},
                          "task": {"enum": ["classification", "regression"]}}}
    comparison = _object(["verdict", "reason", "decision_allowed"], {
        "metric": {"enum": ["accuracy", "mae", None], "description": "what the arms are compared on (mae: a "
                                                                      "regression's mean absolute error)"},
        "lower_is_better": {"type": ["boolean", "null"]},
        "verdict": {"enum": ["nothing_to_compare", "insufficient_labels", "staging_better", "staging_worse",
                             "keep_collecting"]},
        "reason": {"type": "string"}, "decision_allowed": {"type": "boolean"},
        "action": {"enum": ["promote", "retire", None]}, "difference": {"type": ["number", "null"]},
        "p_value": {"type": ["number", "null"]}, "cs_low": {"type": ["number", "null"]},
        "cs_high": {"type": ["number", "null"]}, "samples_needed_per_arm": {"type": ["integer", "null"]}})

    def get(operation: str, summary: str, schema: dict, *, content=None) -> dict:
        ok = {"description": summary, "content": content or _json(schema)}
        return {"get": {"operationId": operation, "summary": summary, "responses": {"200": ok}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": f"{model} prediction service", "version": version or "none"},
        "paths": {
            "/predict": {"post": {
                "operationId": "predict", "summary": "predictions of the arm the user is routed to",
                "requestBody": {"required": True, "content": _json(request)},
                "responses": {"200": {"description": "predictions (the data's labels) and probabilities per row "
                                                     "(the positive class's for two classes, every class's for "
                                                     "more, in the order of `classes`), with request ids; a "
                                                     "regression's: the predicted numbers, no probabilities",
                                      "content": _json(answer)}, **_errors("400", "413", "415", "503")}}},
            "/feedback": {"post": {
                "operationId": "feedback", "summary": "true labels (a regression's true values) joined to logged "
                                                      "predictions",
                "security": [{}, {"feedbackToken": []}],
                "requestBody": {"required": True, "content": _json(feedback)},
                "responses": {"201": {"description": "labels stored", "content": _json(_object(
                    ["accepted", "request_ids"], {"accepted": {"type": "integer"},
                                                  "request_ids": {"type": "array", "items": {"type": "string"}}}))},
                              **_errors("400", "401", "403", "404", "409", "413", "415")}}},
            "/ab/report": get("abReport", "per arm and version: traffic, latency, labelled accuracy (a "
                                          "regression's MAE and RMSE); the arms compared by the always-valid "
                                          "sequential test",
                              _object(["groups", "comparison", "settings"], {
                                  "groups": {"type": "array", "items": {"type": "object"}},
                                  "comparison": {"$ref": "#/components/schemas/Comparison"},
                                  "settings": {"type": "object"}, "log": {"type": "object"}})),
            "/models": get("models", "each arm as loaded by this worker, and the last refresh",
                           _object(["model", "production", "staging", "refresh"], {
                               "model": {"type": "string"}, "production": {"$ref": "#/components/schemas/Arm"},
                               "staging": {"$ref": "#/components/schemas/Arm"}, "refresh": {"type": "object"}})),
            "/health": get("health", "the process is alive", _object(["status"], {"status": {"const": "ok"}})),
            "/ready": _ready(),
            "/metrics": get("metrics", "Prometheus exposition text (every worker's values)", {},
                            content={"text/plain": {"schema": {"type": "string"}}}),
        },
        "components": {
            "schemas": {"Row": row, "Label": label, "Error": error, "Arm": arm, "Comparison": comparison},
            "securitySchemes": {"feedbackToken": {
                "type": "http", "scheme": "bearer",
                "description": "MLOPS_FEEDBACK_TOKEN: required while labels can move an alias (live retirement, "
                               "on by default, or promotion); with both off and no token, feedback needs none"}},
        },
    }


@bp.get("/openapi.json")
def openapi():
    """Describe the API for the models loaded now: Production's columns (the settings' features before one is),
    each arm's answer and labels (a regression arm's: numbers)."""
    settings = current_app.config["MLOPS_SETTINGS"]
    snapshot = current_app.extensions["mlops_store"].snapshot
    production = snapshot.production
    columns = list(production.columns) if production else list(settings.features)
    dtypes = dict(production.dtypes) if production else {}
    arms = [REGRESSION if task_of(m) == REGRESSION else labels_of(m)
            for m in (production, snapshot.staging) if m is not None]
    return jsonify(document(columns, dtypes, model=settings.model_name, max_batch=settings.max_batch,
                            version=production.version if production else None, arms=arms))
