"""Process-wide set-up that only entry points call: library log files, progress bars, MLflow's HTTP limits,
and the library messages a user cannot act on sent to the log at debug level."""

from __future__ import annotations

import logging
import os
import re

from .config import Settings

__all__ = ["prepare_process", "KNOWN_NOISE"]

#: (logger, start of the message): library log lines about our own choices, demoted to DEBUG
KNOWN_NOISE = (
    # we log models with cloudpickle on purpose (PyCaret pipelines); the caution repeats on every registration
    ("mlflow.sklearn", "Saving scikit-learn models in the pickle or cloudpickle format"),
)


class _Demote(logging.Filter):
    """Turn the known messages of one logger into DEBUG records (dropped unless DEBUG is on)."""

    def __init__(self, name: str, prefixes: tuple[str, ...]):
        super().__init__(name)
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class _LibraryWarnings(logging.Filter):
    """Deprecation and future warnings attributed to an installed library's own code: DEBUG records."""

    _WARNING = re.compile(r"^(?P<file>.+?):\d+: (?P<category>\w+): ")
    _CATEGORIES = {"DeprecationWarning", "FutureWarning", "PendingDeprecationWarning"}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        match = self._WARNING.match(text)
        if (record.levelno > logging.DEBUG and match and match["category"].endswith(tuple(self._CATEGORIES))
                and ("site-packages" in match["file"] or "dist-packages" in match["file"])):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def prepare_process(settings: Settings | None = None, *, http_timeout: float = 5) -> None:
    """Set the environment the libraries read, once, before they are imported; explicit values win.

    - PyCaret writes its log file under ``settings.logs_dir`` (nowhere without settings), never ``./logs.log``;
    - MLflow shows no download progress bars, logs through our handlers (not its own), and gives up on a
      registry that is down after one retry and ``http_timeout`` seconds (under MLflow's default retry policy one
      call blocked for 246 s);
    - library messages about choices we made on purpose (:data:`KNOWN_NOISE`, and deprecation/future
      warnings attributed to installed libraries' own code, e.g. PyCaret's ``Styler.applymap``) go to the
      log at DEBUG, not the terminal; every other warning is still shown.
    """
    if "PYCARET_CUSTOM_LOGGING_PATH" not in os.environ:
        if settings is not None:
            settings.logs_dir.mkdir(parents=True, exist_ok=True)
            os.environ["PYCARET_CUSTOM_LOGGING_PATH"] = str(settings.logs_dir / "pycaret.log")
        else:
            os.environ["PYCARET_CUSTOM_LOGGING_PATH"] = os.devnull
    os.environ.setdefault("PYCARET_CUSTOM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{http_timeout:g}")
    for name in {name for name, _ in KNOWN_NOISE}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Demote) for f in logger.filters):
            logger.addFilter(_Demote(name, tuple(p for n, p in KNOWN_NOISE if n == name)))
    logging.captureWarnings(True)  # warnings become records of the "py.warnings" logger, in our format
    warned = logging.getLogger("py.warnings")
    if not any(isinstance(f, _LibraryWarnings) for f in warned.filters):
        warned.addFilter(_LibraryWarnings("py.warnings"))
