"""Settings: one frozen object built in entry points and passed down."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Settings"]

_ENV_PREFIX = "MLOPS_"


def _tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class Settings:
    """Everything the loop needs to know, resolved once at construction.

    Paths are absolute after construction; relative ones are taken against
    ``home``, which itself defaults to the working directory at start-up.
    """

    home: Path = field(default_factory=Path.cwd)
    data_dir: Path = Path("data")
    models_dir: Path = Path("models")
    logs_dir: Path = Path("logs")
    tracking_uri: str = ""  # default: sqlite:///<home>/mlflow.db
    artifact_root: Path = Path("mlartifacts")
    model_name: str = "titanic-survival"
    experiment: str = "titanic-retraining"
    task: str = "classification"  # or "regression": the target is a number to predict
    target: str = "survived"
    positive_label: str = ""  # two classes: the positive one (default: the one reading 1/true/yes); see labels.py
    max_classes: int = 50  # a label column with more distinct values is refused (an id or a number, not classes)
    features: tuple[str, ...] = ("pclass", "sex", "age", "fare", "sibsp", "parch", "embarked")
    drift_features: tuple[str, ...] = ("age", "fare")
    psi_threshold: float = 0.2
    bins: int = 10
    models: tuple[str, ...] | None = None  # None: the task's default list (DEFAULT_MODELS); empty: every model
    fold: int = 5
    select_rows: int = 50_000  # the comparison runs on a stratified sample of this many rows; the winner fits on all
    n_jobs: int = 1
    budget_minutes: float = 0.0  # 0: no time budget for the comparison
    dask_scheduler: str = ""  # a Dask scheduler (tcp://host:8786): the comparison runs on its workers; empty: here
    dask_fit_rows: int = 1_000_000  # with a scheduler: a LightGBM winner on more rows fits via lightgbm.dask; 0: never
    holdout_fraction: float = 0.3
    history_rows: int = 0  # rows of Production's training data added to a candidate's; 0: the new batch alone
    promotion_metric: str = ""  # empty: the task's default (accuracy; rmse for a regression)
    min_improvement: float = 0.0  # the candidate must be better by more than this on the holdout
    promotion_alpha: float = 0.05  # ... with a one-sided paired test p-value below this; 1: no test
    min_rows: int = 10
    seed: int = 42
    refresh_seconds: float = 5.0
    settle_seconds: float = 1.0
    max_batch: int = 1000
    max_body_bytes: int = 1_048_576
    fastpath: str = "compiled"  # serving: "compiled" (verified accelerated kernels) or "pipeline"
    batch_wait_ms: str = "1"  # serving: micro-batching wait per worker in milliseconds, or "off"
    preload_libraries: bool = True  # serving: gunicorn's master imports the serving libraries before forking
    # live A/B evidence (mlops_core.ab): the prediction store, its writer, the statistics, live promotion
    ab_store_url: str = ""  # default: sqlite:///<home>/predictions.db; any SQLAlchemy URL
    ab_log: bool = True  # record every prediction (off: answers still carry request ids)
    ab_queue_size: int = 10_000  # requests waiting for the writer, per worker; beyond it they are dropped
    ab_batch_size: int = 500  # requests written per transaction
    ab_flush_seconds: float = 0.2  # the writer's longest wait before writing what it holds
    ab_retention_days: float = 30.0  # predictions (and their labels) older than this are deleted; 0: keep
    ab_max_rows: int = 1_000_000  # most recent predicted rows kept; 0: no limit
    ab_feedback_wait: float = 1.0  # how long feedback waits for a prediction not yet written
    ab_alpha: float = 0.05  # error rate of the always-valid sequential test (any number of looks)
    ab_power: float = 0.8  # power used for the samples still needed
    ab_min_labels: int = 200  # labelled requests per arm before a verdict (and a live decision)
    ab_min_effect: float = 0.05  # smallest accuracy difference worth detecting (the test's mixing scale; a
    # regression: the smallest MAE difference, as a share of the arms' pooled MAE)
    ab_promote: bool = False  # promote Staging on live evidence from the watcher's schedule
    ab_retire: bool = True  # retire a Staging challenger that live evidence shows worse (Staging synced back)
    ab_promote_minutes: float = 15.0  # how often the watcher evaluates the live A/B (promote, retire)
    run_timeout_seconds: float = 3600.0  # the watcher stops a chain run that takes longer
    log_format: str = "auto"  # watcher: text (key=value with a timestamp), journal, or auto (journal under journald)
    log_level: str = "INFO"  # watcher and server: DEBUG, INFO, WARNING or ERROR
    feedback_token: str = field(default="", repr=False)  # bearer token POST /feedback requires, if set
    webhook_secret: str = field(default="", repr=False)  # MLflow webhooks' secret POST /hooks/mlflow checks; empty: off

    def __post_init__(self) -> None:
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        for name in ("data_dir", "models_dir", "logs_dir", "artifact_root"):
            path = Path(getattr(self, name)).expanduser()
            object.__setattr__(self, name, (path if path.is_absolute() else home / path).resolve())
        if not self.tracking_uri:
            object.__setattr__(self, "tracking_uri", f"sqlite:///{home / 'mlflow.db'}")
        if self.models is None:
            object.__setattr__(self, "models", DEFAULT_MODELS.get(self.task, ()))
        if not self.promotion_metric:
            object.__setattr__(self, "promotion_metric", DEFAULT_METRIC.get(self.task, "accuracy"))
        object.__setattr__(self, "promotion_metric", str(self.promotion_metric).lower())
        for name in ("features", "drift_features", "models"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        object.__setattr__(self, "log_level", str(self.log_level).upper())
        self._check()

    def _check(self) -> None:
        problems = []
        if not self.features:
            problems.append("features must name at least one column")
        if self.target in self.features:
            problems.append(f"target {self.target!r} must not be one of the features")
        if self.dask_scheduler and not _DASK_ADDRESS.fullmatch(self.dask_scheduler):
            problems.append(f"dask_scheduler must be a scheduler address like tcp://10.0.0.5:8786, got "
                            f"{self.dask_scheduler!r}")
        if self.dask_fit_rows < 0:
            problems.append(f"dask_fit_rows must be >= 0 (0: never through lightgbm.dask), got {self.dask_fit_rows}")
        if self.select_rows < 0:
            problems.append(f"select_rows must be >= 0 (0: compare on every row), got {self.select_rows}")
        if self.max_classes < 2:
            problems.append(f"max_classes must be at least 2, got {self.max_classes}")
        if self.bins < 2:
            problems.append(f"bins must be at least 2, got {self.bins}")
        if not 0.0 < self.holdout_fraction < 1.0:
            problems.append(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.fold < 2:
            problems.append(f"fold must be at least 2, got {self.fold}")
        if self.task not in DEFAULT_MODELS:
            problems.append(f"task must be classification or regression, got {self.task!r}")
        metrics = _METRICS.get(self.task, set())
        if self.promotion_metric not in metrics:
            problems.append(f"promotion_metric of a {self.task} must be one of {sorted(metrics)}, got "
                            f"{self.promotion_metric!r}")
        if not 0.0 < self.ab_alpha < 1.0:
            problems.append(f"ab_alpha must be in (0, 1), got {self.ab_alpha}")
        if not 0.0 < self.ab_power < 1.0:
            problems.append(f"ab_power must be in (0, 1), got {self.ab_power}")
        if self.ab_min_labels < 1:
            problems.append(f"ab_min_labels must be at least 1, got {self.ab_min_labels}")
        if not 0.0 < self.ab_min_effect < 1.0:
            problems.append(f"ab_min_effect must be in (0, 1), got {self.ab_min_effect}")
        if self.ab_queue_size < 1 or self.ab_batch_size < 1:
            problems.append(f"ab_queue_size and ab_batch_size must be at least 1, got {self.ab_queue_size} "
                            f"and {self.ab_batch_size}")
        if self.task == "regression" and self.min_improvement < 0:
            problems.append(f"min_improvement must be >= 0 (in the metric's units; a negative one would promote "
                            f"worse models), got {self.min_improvement}")
        elif self.task != "regression" and not 0.0 <= self.min_improvement <= 1.0:
            problems.append(f"min_improvement must be in [0, 1] (a negative one would promote worse models), "
                            f"got {self.min_improvement}")
        if not 0.0 < self.promotion_alpha <= 1.0:
            problems.append(f"promotion_alpha must be in (0, 1], got {self.promotion_alpha}")
        if self.history_rows < 0:
            problems.append(f"history_rows must be >= 0, got {self.history_rows}")
        if self.fastpath not in ("compiled", "pipeline"):
            problems.append(f"fastpath must be 'compiled' or 'pipeline', got {self.fastpath!r}")
        try:
            self.batch_wait_seconds  # noqa: B018 - parsed once here so a bad value is named at start-up
        except ValueError:
            problems.append(f"batch_wait_ms must be 'off' or milliseconds >= 0, got {self.batch_wait_ms!r}")
        if self.log_format not in ("auto", "text", "journal"):
            problems.append(f"log_format must be auto, text or journal, got {self.log_format!r}")
        if str(self.log_level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            problems.append(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.run_timeout_seconds <= 0:
            problems.append(f"run_timeout_seconds must be > 0, got {self.run_timeout_seconds}")
        ids = REGRESSION_MODEL_IDS if self.task == "regression" else MODEL_IDS
        unknown = [m for m in self.models if m not in ids]
        if unknown:
            problems.append(f"unknown model id(s) {unknown} for a {self.task}; expected PyCaret ids among "
                            f"{sorted(ids)}")
        no_proba = [m for m in self.models if m in NO_PROBABILITIES and self.task != "regression"]
        if no_proba:
            problems.append(f"model(s) {no_proba} give no probabilities (no predict_proba), which serving and the "
                            f"auc metric need; choose others")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    @property
    def batch_wait_seconds(self) -> float | None:
        """The serving micro-batch wait in seconds; None: no micro-batching."""
        text = str(self.batch_wait_ms).strip().lower()
        if text in ("off", "none", ""):
            return None
        value = float(text)
        if not value >= 0:
            raise ValueError(text)
        return value / 1000.0

    # -- derived paths -------------------------------------------------------
    @property
    def train_csv(self) -> Path:
        return self.data_dir / "train.csv"

    @property
    def current_csv(self) -> Path:
        return self.data_dir / "current.csv"

    @property
    def lock_path(self) -> Path:
        return self.home / ".mlops.lock"

    @property
    def is_local_store(self) -> bool:
        """True for the embedded registry (a SQLite file), false for a server."""
        return self.tracking_uri.startswith("sqlite:")

    # -- construction --------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``MLOPS_<FIELD>`` variables; keywords win over both."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_ENV_PREFIX + f.name.upper())
            if raw is not None and (raw != "" or f.name == "models"):  # MLOPS_MODELS= means every model
                values[f.name] = _coerce(f, raw)
        if "tracking_uri" not in values and env.get("MLFLOW_TRACKING_URI"):
            values["tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; a new ``home`` carries along the paths (and the embedded registry) under it."""
        new_home = changes.get("home")
        if new_home is not None:
            new_home = Path(new_home).expanduser().resolve()
            for name in ("data_dir", "models_dir", "logs_dir", "artifact_root"):
                path = getattr(self, name)
                if name not in changes and path.is_relative_to(self.home):
                    changes[name] = new_home / path.relative_to(self.home)
            if "tracking_uri" not in changes and self.tracking_uri == f"sqlite:///{self.home / 'mlflow.db'}":
                changes["tracking_uri"] = ""
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-friendly values, with credentials removed from the URI."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
        out["tracking_uri"] = redact_uri(self.tracking_uri)
        out["ab_store_url"] = redact_uri(self.ab_store_url)
        out["feedback_token"] = "***" if self.feedback_token else ""
        out["webhook_secret"] = "***" if self.webhook_secret else ""
        return out


#: a Dask scheduler's address: [protocol://]host:port
_DASK_ADDRESS = re.compile(r"((tcp|tls|ws|wss|ucx)://)?(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+)(:\d+)?")
_METRICS = {"classification": {"accuracy", "f1", "auc", "precision", "recall"}, "regression": {"rmse", "mae", "r2"}}
#: the model lists compared by default (fast and good on 2 cores; bench/decisions and bench/scale measure them)
DEFAULT_MODELS = {"classification": ("lr", "dt", "rf", "lightgbm"),
                  "regression": ("lr", "ridge", "dt", "rf", "lightgbm")}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}
# PyCaret 3.3's classification model ids; those without predict_proba are refused (serving answers probabilities)
MODEL_IDS = frozenset({"lr", "knn", "nb", "dt", "svm", "rbfsvm", "gpc", "mlp", "ridge", "rf", "qda", "ada", "gbc",
                       "lda", "et", "xgboost", "lightgbm", "catboost", "dummy"})
NO_PROBABILITIES = frozenset({"svm", "ridge"})
# PyCaret 3.3's regression model ids
REGRESSION_MODEL_IDS = frozenset({"lr", "lasso", "ridge", "en", "lar", "llar", "omp", "br", "ard", "par", "ransac",
                                  "tr", "huber", "kr", "svm", "knn", "dt", "rf", "et", "ada", "gbr", "mlp", "xgboost",
                                  "lightgbm", "catboost", "dummy"})


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("tuple"):
            return _tuple(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return _bool(raw)
    except ValueError as err:
        raise ValueError(f"{_ENV_PREFIX}{f.name.upper()}: expected {kind}, got {raw!r} instead") from err
    return raw


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")


_CREDENTIALS = re.compile(r"(\w+://[^/@\s:]*:)[^/\s]*@")


def redact(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URI in ``text`` (a URI or a message)."""
    return _CREDENTIALS.sub(r"\1***@", text)


redact_uri = redact  # the name callers of a single URI read best
