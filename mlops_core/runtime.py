"""Process-wide set-up that only entry points call: library log files, progress bars, MLflow's HTTP limits."""

from __future__ import annotations

import os

from .config import Settings

__all__ = ["prepare_process"]


def prepare_process(settings: Settings | None = None, *, http_timeout: float = 5) -> None:
    """Set the environment the libraries read, once, before they are imported; explicit values win.

    - PyCaret writes its log file under ``settings.logs_dir`` (nowhere without settings), never ``./logs.log``;
    - MLflow shows no download progress bars and gives up on a registry that is down after one retry and
      ``http_timeout`` seconds, so a run fails in seconds instead of blocking for minutes (STACK-NOTES).
    """
    if "PYCARET_CUSTOM_LOGGING_PATH" not in os.environ:
        if settings is not None:
            settings.logs_dir.mkdir(parents=True, exist_ok=True)
            os.environ["PYCARET_CUSTOM_LOGGING_PATH"] = str(settings.logs_dir / "pycaret.log")
        else:
            os.environ["PYCARET_CUSTOM_LOGGING_PATH"] = os.devnull
    os.environ.setdefault("PYCARET_CUSTOM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{http_timeout:g}")
