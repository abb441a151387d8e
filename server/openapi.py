"""GET /openapi.json: an OpenAPI 3 description of ``POST /predict`` built from the served model's columns."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

__all__ = ["bp", "document"]

bp = Blueprint("openapi", __name__)

#: MLflow schema type -> JSON Schema type (every feature may also be null: the pipeline imputes it)
_TYPES = {"double": "number", "float": "number", "long": "integer", "integer": "integer", "string": "string",
          "boolean": "boolean"}


def _feature(dtype: str) -> dict:
    kind = _TYPES.get(dtype)
    return {"type": [kind, "null"]} if kind else {"type": ["number", "integer", "string", "boolean", "null"]}


def document(columns: list[str], dtypes: dict[str, str], *, model: str, max_batch: int, version: str | None) -> dict:
    """The OpenAPI 3.1 document of the prediction API for a model with these input columns."""
    row = {"type": "object", "additionalProperties": False, "required": list(columns),
           "properties": {c: _feature(dtypes.get(c, "")) for c in columns}}
    request = {"type": "object", "additionalProperties": False, "required": ["user_id", "features"],
               "properties": {"user_id": {"type": "integer", "description": "even: Production, odd: Staging"},
                              "features": {"oneOf": [{"$ref": "#/components/schemas/Row"},
                                                     {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                      "items": {"$ref": "#/components/schemas/Row"}}]}}}
    answer = {"type": "object", "required": ["predictions", "probabilities", "stage", "version", "model"],
              "properties": {"predictions": {"type": "array", "items": {"type": "integer"}},
                             "probabilities": {"type": "array", "items": {"type": "number"}},
                             "stage": {"enum": ["Production", "Staging"]}, "version": {"type": "string"},
                             "model": {"type": "string"}}}
    error = {"type": "object", "required": ["error", "message", "status"],
             "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                            "status": {"type": "integer"}, "field": {"type": "string"}}}
    as_error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    errors = {code: {"description": text, "content": as_error}
              for code, text in (("400", "malformed request; `field` names the offending part"),
                                 ("413", "body or batch over its cap"), ("415", "not application/json"),
                                 ("503", "no Production model loaded"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{model} prediction service", "version": version or "none"},
        "paths": {"/predict": {"post": {
            "operationId": "predict",
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": {"description": "predictions of the arm the user is routed to",
                                  "content": {"application/json": {"schema": answer}}}, **errors}}}},
        "components": {"schemas": {"Row": row, "Error": error}},
    }


@bp.get("/openapi.json")
def openapi():
    """Describe POST /predict for the Production model loaded now (the settings' features before one is)."""
    settings = current_app.config["MLOPS_SETTINGS"]
    production = current_app.extensions["mlops_store"].snapshot.production
    columns = list(production.columns) if production else list(settings.features)
    dtypes = dict(production.dtypes) if production else {}
    return jsonify(document(columns, dtypes, model=settings.model_name, max_batch=settings.max_batch,
                            version=production.version if production else None))
