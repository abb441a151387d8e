"""The libraries a serving worker needs, imported once in gunicorn's master (``when_ready``) before it forks."""

from __future__ import annotations

import importlib

__all__ = ["import_serving_libraries", "SERVING_LIBRARIES"]

#: what a worker imports to serve compiled artifacts: the registry reader, the estimators' libraries, the app.
#: Neither MLflow nor PyCaret: a worker imports them only for a version that must be served through its pipeline.
#: Nor ONNX Runtime: imported before the fork, it left the workers' exit hanging until gunicorn killed them
#: (graceful_timeout, 20 s) or aborting ("std::system_error: Invalid argument"); each worker imports its own.
SERVING_LIBRARIES = ("sqlalchemy", "sklearn.linear_model", "sklearn.tree", "sklearn.ensemble", "lightgbm",
                     "flask", "prometheus_client", "apscheduler.schedulers.background", "server",
                     "server.predict", "server.store", "mlops_core.inference.artifact", "mlops_core.registry_reader")


def import_serving_libraries() -> list[str]:
    """Import each of :data:`SERVING_LIBRARIES` that is installed; the names imported."""
    done = []
    for name in SERVING_LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        done.append(name)
    return done
