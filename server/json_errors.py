"""JSON errors for every failure, registered in one place."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from mlops_core.predictions import FeedbackError, UnknownRequestError

__all__ = ["ValidationError", "NoModelError", "FeedbackRefusedError", "register_error_handlers"]

log = logging.getLogger(__name__)


class ValidationError(ValueError):
    """A request that does not match the API; ``field`` names the offending part."""

    status = 400

    def __init__(self, field: str, message: str, *, status: int = 400, **extra):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status
        self.extra = extra  # more keys of the JSON answer (e.g. ``classes`` for a label that is none of them)


class NoModelError(RuntimeError):
    """No Production model is loaded yet: the service cannot answer predictions."""


class FeedbackRefusedError(PermissionError):
    """Feedback that could move an alias while no token guards it: the settings, not the request, are at fault."""


def _answer(status: int, error: str, message: str, field: str | None = None, **extra):
    body = {"error": error, "message": message, "status": status}
    if field is not None:
        body["field"] = field
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    return response


def _validation(err: ValidationError):
    return _answer(err.status, "invalid_request", str(err), err.field, **err.extra)


def _no_model(err: NoModelError):
    response = _answer(503, "no_model", str(err))
    response.headers["Retry-After"] = "5"
    return response


def _feedback_refused(err: FeedbackRefusedError):
    return _answer(403, "feedback_refused", str(err))


def _http(err: HTTPException):
    name = (err.name or "error").lower().replace(" ", "_")
    field = "body" if err.code == 413 else None
    response = _answer(err.code or 500, name, err.description or err.name, field)
    if err.code == 405 and getattr(err, "valid_methods", None):
        response.headers["Allow"] = ", ".join(err.valid_methods)
    return response


def _feedback(err: FeedbackError):
    """Unknown request ids: 404; labels given before: 409. Both name the ids."""
    status, name = (404, "unknown_request_id") if isinstance(err, UnknownRequestError) else (409, "duplicate_feedback")
    return _answer(status, name, str(err), "request_id", request_ids=err.ids[:100])


def _unexpected(err: Exception):
    log.exception("unhandled error while serving a request")
    return _answer(500, "internal_error", "the server failed to answer this request; see its log")


def register_error_handlers(app: Flask) -> None:
    """Answer every error as JSON: validation, no model, feedback, HTTP errors, anything else."""
    app.register_error_handler(ValidationError, _validation)
    app.register_error_handler(NoModelError, _no_model)
    app.register_error_handler(FeedbackError, _feedback)
    app.register_error_handler(FeedbackRefusedError, _feedback_refused)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)
