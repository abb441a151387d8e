"""The prediction service: Flask app factory for gunicorn (``server:create_app()``) and tests."""

from __future__ import annotations

from typing import Any

from flask import Flask

__all__ = ["create_app", "leave_start_to_gunicorn_hooks"]

_hooks_start_workers = False


def leave_start_to_gunicorn_hooks() -> None:
    """Called by ``server/gunicorn.conf.py`` in gunicorn's master, before it builds the app or forks: its
    ``post_worker_init`` hook starts each worker's model store and prediction log after the fork, so
    :func:`create_app` must not (with ``--preload`` it runs in the master, whose threads no worker inherits).
    The flag lives in this process and the workers it forks, nowhere else."""
    global _hooks_start_workers
    _hooks_start_workers = True


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, model store, metrics, blueprints and JSON errors.

    ``config`` keys beyond Flask's: ``MLOPS_SETTINGS`` (a Settings; default
    ``Settings.from_env()``), ``MLOPS_REGISTRY`` (an object with ``aliases()`` and
    ``load_model(version)``; default: mlops_core's Registry) and ``MLOPS_AUTOSTART`` (load the models and start the
    refresh scheduler now; default: yes, unless gunicorn's hooks do it after the fork, see
    :func:`leave_start_to_gunicorn_hooks`).
    """
    from mlops_core.config import Settings
    from mlops_core.runtime import prepare_process

    from . import health, hooks, live_ab, openapi, predict
    from .json_errors import register_error_handlers
    from .metrics import Metrics
    from .serving import Serving
    from .store import ModelStore

    app = Flask(__name__)
    app.config.from_mapping(MLOPS_AUTOSTART=not _hooks_start_workers,
                            JSON_SORT_KEYS=False)
    if config:
        app.config.update(config)
    settings = app.config.get("MLOPS_SETTINGS") or Settings.from_env()
    app.config["MLOPS_SETTINGS"] = settings
    prepare_process(None)  # unpickling a model imports PyCaret: its log file nowhere; MLflow's HTTP limits
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False

    metrics = Metrics(app)
    serving = app.extensions["mlops_serving"] = Serving.from_settings(settings)  # compiled path, micro-batching
    store = ModelStore(settings, registry=app.config.get("MLOPS_REGISTRY"), on_refresh=metrics.observe_refresh,
                       load=serving.load)
    app.extensions["mlops_store"] = store

    app.register_blueprint(predict.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)  # GET /openapi.json: the schema of POST /predict
    app.register_blueprint(hooks.bp)  # POST /hooks/mlflow: an MLflow server's webhooks refresh the models at once
    ab_log = live_ab.init_app(app, settings)  # POST /feedback, GET /ab/report, the prediction log
    register_error_handlers(app)
    if not _hooks_start_workers:  # under gunicorn its master says it once (when_ready), not every worker
        live_ab.warn_if_feedback_refused(settings)

    if app.config["MLOPS_AUTOSTART"]:
        store.start()
        ab_log.start()  # its writer thread starts with the first logged prediction
    return app
