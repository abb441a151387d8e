"""MLflow's own API for one registry: its client, its module-level functions pointed at that registry, and a
version's pipeline loaded through them.

MLflow (about a second and 170 MB a process) is imported when one of these is first called, never on import:
:mod:`mlops_core.registry_reader` reaches most registries without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "mlflow", "connect", "fluent", "load_pipeline", "seed_sqlite"]


@dataclass
class LoadedModel:
    """A registered version in memory, with what serving needs to know about it."""

    version: str
    run_id: str
    model: Any
    columns: list[str]
    dtypes: dict[str, str]  # MLflow schema types: double, long, string, boolean...
    loaded_at: float = field(default_factory=time.time)
    metadata: dict[str, str] = field(default_factory=dict)  # the MLflow model's metadata: ``labels.Labels.tags``

    @property
    def task(self) -> str:
        """``classification`` or ``regression`` (the MLflow model's ``task`` metadata; none: classification)."""
        return self.metadata.get("task", "classification")

    @property
    def labels(self):
        """The version's classes (in its ``predict_proba`` order) and positive class (:class:`labels.Labels`);
        None for a regression."""
        from .labels import Labels, pipeline_classes

        if self.task == "regression":
            return None
        return Labels.from_tags(self.metadata, pipeline_classes(self.model))


def mlflow():
    """The ``mlflow`` module, imported on first use."""
    import mlflow

    return mlflow


def connect(settings: Settings):
    """MLflow's client for the settings' tracking and registry URI."""
    seed_sqlite(settings.tracking_uri)
    return mlflow().MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def seed_sqlite(uri: str) -> None:
    """Start a new embedded (SQLite) registry from a copy of an empty one whose schema MLflow has migrated.

    MLflow creates a new database by running its ~60 schema migrations (2-3 s of CPU, each new home); the
    result is the same for every home of one MLflow version, so it is built once into the user's cache
    (``$XDG_CACHE_HOME/mlops`` or ``~/.cache/mlops``, one file per MLflow version) and copied. It holds tables
    only: MLflow adds the default experiment, with this home's artifact root, when it first opens the copy (and
    verifies the schema, as on any database). Any problem with the cache (not writable, say) leaves MLflow to
    create the database itself."""
    if not uri.startswith("sqlite:///"):
        return
    target = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not target or target == ":memory:" or os.path.exists(target) or not os.path.isdir(
            os.path.dirname(os.path.abspath(target))):
        return  # a folder that is not there: MLflow says so, as without the template
    try:
        template = _template(mlflow().__version__)
        partial = f"{target}.{os.getpid()}.seeding"
        shutil.copyfile(template, partial)
        try:
            os.link(partial, target)  # never over a database another process has just created
        except FileExistsError:
            pass
        finally:
            os.unlink(partial)
    except Exception as err:  # noqa: BLE001 - a cache is an optimisation: MLflow migrates a new file itself
        log.debug("no migrated SQLite template for %s (%s: %s); MLflow creates it", uri, type(err).__name__, err)


def _template(version: str) -> str:
    """The migrated empty database of MLflow ``version`` in the user's cache, built when missing."""
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                         "mlops")
    path = os.path.join(cache, f"mlflow-{version}-schema.db")
    if not os.path.exists(path):
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables

        os.makedirs(cache, exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial"
        engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
        try:
            _initialize_tables(engine)  # what MLflow runs on a new database, before adding its default experiment
        finally:
            engine.dispose()
        os.replace(partial, path)  # whole or not at all, whoever builds it at the same time
    return path


@contextlib.contextmanager
def fluent(uri: str) -> Iterator[Any]:
    """MLflow's module-level API (``start_run``, ``sklearn.log_model``, ``register_model``, ``models:/`` URIs),
    pointed at ``uri`` for the duration only.

    ``mlflow.set_tracking_uri`` is process-wide and exports ``MLFLOW_TRACKING_URI`` to every child process
    started afterwards (a server or a daemon started by this process would use this registry instead of its
    own settings); both are put back as they were on the way out.
    """
    module = mlflow()
    seed_sqlite(uri)
    before = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
    module.set_tracking_uri(uri)
    module.set_registry_uri(uri)
    try:
        yield module
    finally:
        module.set_tracking_uri(before[0])  # None: back to unset, and the variable removed
        module.set_registry_uri(before[1])
        for name, value in zip(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"), before, strict=True):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_pipeline(settings: Settings, version: str, *, run_id: str) -> LoadedModel:
    """Download and unpickle the pipeline of ``version`` (run ``run_id``), with its input schema: one download.

    Unpickling imports the AutoML library the pipeline was built with (seconds, hundreds of MB).
    """
    with tempfile.TemporaryDirectory() as tmp, fluent(settings.tracking_uri) as module:
        local = module.artifacts.download_artifacts(artifact_uri=f"models:/{settings.model_name}/{version}",
                                                    dst_path=tmp)  # a models:/ URI resolves through the registry URI
        meta = module.models.Model.load(local)
        model = module.sklearn.load_model(local)
    schema = meta.signature.inputs if meta.signature is not None else None
    columns = list(schema.input_names()) if schema is not None else list(settings.features)
    dtypes = ({c.name: str(c.type.name if hasattr(c.type, "name") else c.type) for c in schema.inputs}
              if schema is not None else {})
    return LoadedModel(version=str(version), run_id=run_id, model=model, columns=columns, dtypes=dtypes,
                       metadata={str(k): str(v) for k, v in (meta.metadata or {}).items()})
