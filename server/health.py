"""GET /health, /ready, /models and /metrics: what operators and load balancers ask."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify

from mlops_core.config import redact_uri
from mlops_core.registry import PRODUCTION, STAGING, LoadedModel

from .serving import task_of

__all__ = ["bp"]

bp = Blueprint("health", __name__)

HEAVY_MODULES = ("pycaret", "mlflow", "sklearn", "lightgbm", "pandas", "category_encoders", "scipy", "onnxruntime",
                 "skl2onnx")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None


def _arm(model: LoadedModel | None) -> dict | None:
    if model is None:
        return None
    predictor = getattr(model, "predictor", None)  # a ServedModel: the predictor chosen at load
    inference = None if predictor is None else {
        "path": "compiled" if predictor.compiled else "pipeline",
        "kernel": predictor.kernel.__name__ if predictor.compiled else None,
        # why that kernel (onnx, a hand kernel or the estimator's own methods): the candidates' times, rejections
        "kernel_reason": _kernel_reason(predictor),
        "reason": predictor.reason or None,  # why the pipeline answers, when it does
        # compiled steps the compiler has no operation for, run by their own fitted transformer
        "own_transformers": getattr(predictor, "own_transformers", None) or None,
        "source": getattr(model, "source", None),  # artifact: loaded without the AutoML library
        "note": getattr(model, "note", "") or None}  # why the compiled artifact was not used
    return {"version": model.version, "run_id": model.run_id, "task": task_of(model),
            "loaded_at": _iso(model.loaded_at), "loaded_at_epoch": model.loaded_at, "columns": list(model.columns),
            "dtypes": dict(model.dtypes),
            "inference": inference}


def _kernel_reason(predictor) -> str | None:
    choice = getattr(predictor, "kernel_choice", None) if predictor.compiled else None
    return getattr(choice, "reason", None)


@bp.get("/health")
def health():
    """Say the process is alive (nothing else is checked)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    """Say whether the process can answer predictions: 200 only with Production loaded."""
    snapshot = current_app.extensions["mlops_store"].snapshot
    if snapshot.production is None:
        body = {"status": "not ready", "message": "no Production model loaded", "error": snapshot.error}
        return jsonify(body), 503
    return jsonify({"status": "ready", "production": snapshot.production.version,
                    "staging": snapshot.staging.version if snapshot.staging else None})


@bp.get("/models")
def models():
    """Describe each arm, the last refresh and its error, as seen by this worker."""
    store = current_app.extensions["mlops_store"]
    settings = store.settings
    s = store.snapshot
    return jsonify({
        "model": settings.model_name,
        "tracking_uri": redact_uri(settings.tracking_uri),
        "worker_pid": os.getpid(),
        # which heavy libraries this worker has imported (a worker serving compiled artifacts has no AutoML one)
        "worker_imports": {name: name in sys.modules for name in HEAVY_MODULES},
        "scheduler_running": store.running,
        "notices_watched": store.watching,  # alias-move notices (mlops_core/notices.py) refresh at once
        "refresh_seconds": settings.refresh_seconds,
        "production": _arm(s.production),
        "staging": _arm(s.staging),
        "refresh": {
            "ok": s.attempted_at is not None and s.error is None,
            "cause": s.cause,  # what started it: start, poll, notice or webhook
            "last_attempt_at": _iso(s.attempted_at),
            "last_success_at": _iso(s.refreshed_at),
            "last_success_epoch": s.refreshed_at,
            "error": s.error,
            "last_error": s.last_error,
            "last_error_at": _iso(s.error_at),
            "failures": s.failures,
        },
        "aliases": [PRODUCTION, STAGING],
    })


@bp.get("/metrics")
def metrics():
    """Prometheus exposition text (every worker's values under gunicorn)."""
    body, content_type = current_app.extensions["mlops_metrics"].render()
    return Response(body, content_type=content_type)
