"""MLflow registry: log, register, aliases, lifecycle tags, promote, archive, sync, rollback, load."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Settings
from .data import RowSet
from .drift import ReferenceProfile
from .errors import RegistryError
from .mlflow_api import LoadedModel, connect, fluent
from .notices import announce
from .registry_reader import COMPILED_TAG, LIFECYCLE, PRODUCTION, STAGING, RegistryReader, registry_errors

__all__ = ["PRODUCTION", "STAGING", "LIFECYCLE", "Registry", "LoadedModel", "COMPILED_TAG", "registry_errors"]

log = logging.getLogger(__name__)

_HISTORY = "mlops.production_history"
_PROFILE = "reference/profile.json"
_TRAINING_DATA = "reference/training_data.parquet"
_TRAINING_ROWS = "reference/training_rows.npz"


class Registry:
    """The registered model named by the settings: its writes through one MlflowClient, its reads through
    :class:`RegistryReader` (which reaches the embedded database or an MLflow server without MLflow)."""

    def __init__(self, settings: Settings, client=None):
        self.settings = settings
        self.name = settings.model_name
        self._client = client
        self.reader = RegistryReader(settings, client=lambda: self.client)

    @property
    def client(self):
        """MLflow's client, created (importing MLflow: about a second) when first needed."""
        if self._client is None:
            self._client = connect(self.settings)
        return self._client

    # -- reading ---------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        """Both aliases in one call: ``{"production": "3", "staging": "4"}`` (absent ones left out)."""
        return self.reader.aliases()

    def describe(self, version: str | int) -> dict:
        """Version, run id, lifecycle, creation time, tags (the recorded scores among them) and aliases."""
        return self.reader.describe(version)

    def load_compiled(self, version: str) -> tuple[bytes | None, dict[str, Any] | None, dict[str, Any]]:
        """``(artifact bytes, manifest, version info)``, as :meth:`RegistryReader.load_compiled`."""
        return self.reader.load_compiled(version)

    def load_model(self, version: str) -> LoadedModel:
        """Download and unpickle one version (one download), with its input schema."""
        return self.reader.load_model(version)

    def load_reference(self, version: str, *, with_data: bool = True) -> tuple[ReferenceProfile, pd.DataFrame | None]:
        """The reference profile (and training data) stored with ``version``'s run."""
        run_id = self.describe(version)["run_id"]
        profile = self.reader.run_artifact(run_id, _PROFILE)
        data = self.reader.run_artifact(run_id, _TRAINING_DATA) if with_data else None
        with registry_errors(f"loading the reference of version {version}"):
            return (ReferenceProfile.from_dict(json.loads(profile)),
                    pd.read_parquet(io.BytesIO(data)) if data is not None else None)

    def load_rows(self, version: str, *, kinds: dict[str, str]) -> RowSet:
        """The rows ``version`` was trained on, as hashes (from its training data when it stored none)."""
        run_id = self.describe(version)["run_id"]
        with contextlib.suppress(RegistryError):
            data = self.reader.run_artifact(run_id, _TRAINING_ROWS)
            with registry_errors(f"loading the training rows of version {version}"):
                return RowSet.from_bytes(data)
        frame = self.load_reference(version)[1]
        return RowSet.of(frame, frame.columns, kinds, self.settings.target)

    def status(self) -> dict:
        aliases = self.aliases()
        return {"model": self.name,
                PRODUCTION: self.describe(aliases[PRODUCTION]) if PRODUCTION in aliases else None,
                STAGING: self.describe(aliases[STAGING]) if STAGING in aliases else None}

    def versions(self) -> list[dict]:
        with registry_errors(f"listing versions of {self.name!r}"):
            found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(({"version": str(v.version), LIFECYCLE: v.tags.get(LIFECYCLE), "run_id": v.run_id}
                       for v in found), key=lambda d: int(d["version"]))

    # -- runs --------------------------------------------------------------------
    def experiment_id(self) -> str:
        with registry_errors(f"opening experiment {self.settings.experiment!r}"):
            exp = self.client.get_experiment_by_name(self.settings.experiment)
            if exp is not None:
                return exp.experiment_id
            location = self.settings.artifact_root.as_uri() if self.settings.is_local_store else None
            try:
                return self.client.create_experiment(self.settings.experiment, artifact_location=location)
            except Exception:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(self.settings.experiment)
                if exp is None:
                    raise
                return exp.experiment_id

    def create_run(self, run_name: str, tags: dict[str, str] | None = None) -> str:
        """Open a run in the loop's experiment and return its id (runs are addressed by id, not fluently)."""
        experiment_id = self.experiment_id()
        with registry_errors("starting an MLflow run"):
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={k: str(v) for k, v in (tags or {}).items()})
        return run.info.run_id

    def log_run(self, run_id: str, *, tags: dict | None = None, params: dict | None = None,
                metrics: dict | None = None, artifacts: dict[str, Path] | None = None,
                text: dict[str, str] | None = None) -> None:
        """Record tags, params, metrics and files on run ``run_id`` (artifacts: folder -> file)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        with registry_errors(f"recording on run {run_id}"):
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                                  params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
                                  tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])
            for path, folder in ((p, f) for f, ps in (artifacts or {}).items() for p in _as_list(ps)):
                self.client.log_artifact(run_id, str(path), artifact_path=folder or None)
            for name, content in (text or {}).items():
                self.client.log_text(run_id, content, name)

    def finish_run(self, run_id: str, *, ok: bool) -> None:
        with registry_errors(f"closing run {run_id}"):
            self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def run_tags(self, run_id: str) -> dict[str, str]:
        with registry_errors(f"reading run {run_id}"):
            return dict(self.client.get_run(run_id).data.tags)

    def processed_run(self, digest: str, production: str) -> str | None:
        """The id of a completed run of content ``digest`` judged against Production ``production`` or producing it.

        The key is the content and the Production version: after a rollback to, or a promotion of, another
        version, the same bytes are judged again against that one.
        """
        experiment_id = self.experiment_id()
        with registry_errors("searching processed batches"):
            runs = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`mlops.batch_sha256` = '{digest}' and "
                                               f"tags.`mlops.done` = 'true'", max_results=200)
        for found in runs:
            tags = found.data.tags
            if str(production) in (tags.get("mlops.production_before"), tags.get("mlops.production_after")):
                return found.info.run_id
        return None

    # -- writing -------------------------------------------------------------------
    def log_model(self, run_id: str, model, example: pd.DataFrame, *, metadata: dict[str, str] | None = None) -> str:
        """Log ``model`` to run ``run_id`` (signature, input example, explicit requirements, ``metadata``: what
        the model's loaders read back, e.g. its labels)."""
        from mlflow.models import infer_signature

        with registry_errors("logging the model"), fluent(self.settings.tracking_uri) as mlflow:
            signature = infer_signature(example, model.predict(example))
            with mlflow.start_run(run_id=run_id):
                info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                                signature=signature, input_example=example,
                                                pip_requirements=_requirements(model), metadata=metadata or None)
            self.client.update_run(run_id, status="RUNNING")  # the chain closes the run itself
        return info.model_uri

    def log_reference(self, run_id: str, profile: ReferenceProfile, frame: pd.DataFrame,
                      rows: RowSet | None = None) -> None:
        """Store the reference profile, training data (``frame``: the most recent rows, bounded by the caller)
        and the hashes of every training row (``rows``) with run ``run_id``."""
        with tempfile.TemporaryDirectory() as tmp, registry_errors("logging the reference"):
            folder = Path(tmp) / "reference"
            folder.mkdir()
            profile.save(folder / "profile.json")
            frame.to_parquet(folder / "training_data.parquet", index=False)
            if rows is not None:
                (folder / "training_rows.npz").write_bytes(rows.to_bytes())
            self.client.log_artifacts(run_id, str(folder), artifact_path="reference")

    def log_compiled(self, run_id: str, data: bytes | None, manifest: dict[str, Any]) -> None:
        """Store the compiled form of the run's model (mlops_core.inference.artifact), or only the manifest
        saying why there is none."""
        with tempfile.TemporaryDirectory() as tmp, registry_errors("logging the compiled model"):
            folder = Path(tmp) / "compiled"
            folder.mkdir()
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            if data is not None:
                (folder / "predictor.pkl").write_bytes(data)
            self.client.log_artifacts(run_id, str(folder), artifact_path="compiled")

    def register(self, model_uri: str, tags: dict[str, str]) -> str:
        """Create a new version of the logged model ``model_uri`` (no alias yet) and return its number."""
        chatter = io.StringIO()  # MLflow prints "Successfully registered model ..." to stderr: our log says it
        with registry_errors(f"registering a version of {self.name!r}"), contextlib.redirect_stderr(chatter), \
                fluent(self.settings.tracking_uri) as mlflow:
            mv = mlflow.register_model(model_uri, self.name, tags={k: str(v) for k, v in tags.items()})
        log.debug("mlflow: %s", " ".join(chatter.getvalue().split()))
        log.info("registered version %s of %s", mv.version, self.name)
        return str(mv.version)

    def tag_version(self, version: str, tags: dict[str, Any]) -> None:
        with registry_errors(f"tagging version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, str(version), key, str(value))

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``, then announce the move to the servers (mlops_core/notices.py)."""
        with registry_errors(f"pointing {alias!r} at version {version}"):
            self.client.set_registered_model_alias(self.name, alias, str(version))
        announce(self.settings, alias=alias, version=str(version))

    def _history(self) -> list[str]:
        with registry_errors("reading the production history"):
            model = self.client.get_registered_model(self.name)
        raw = model.tags.get(_HISTORY, "")
        return [v for v in raw.split(",") if v]

    def _set_history(self, history: list[str]) -> None:
        with registry_errors("writing the production history"):
            self.client.set_registered_model_tag(self.name, _HISTORY, ",".join(history[-50:]))

    def make_challenger(self, version: str) -> None:
        """Make ``version`` the live challenger; a superseded challenger is archived."""
        aliases = self.aliases()
        old = aliases.get(STAGING)
        self.tag_version(version, {LIFECYCLE: STAGING})
        self.set_alias(STAGING, version)
        if old and old != version and old != aliases.get(PRODUCTION):
            self.tag_version(old, {LIFECYCLE: "archived"})

    def promote(self, version: str) -> dict:
        """Point ``production`` at ``version``, archive the old one and sync ``staging``."""
        version = str(version)
        self.describe(version)  # fails clearly for an unknown version
        aliases = self.aliases()
        old_prod, old_staging = aliases.get(PRODUCTION), aliases.get(STAGING)
        self.tag_version(version, {LIFECYCLE: PRODUCTION})
        self.set_alias(PRODUCTION, version)
        self.set_alias(STAGING, version)
        for old in {old_prod, old_staging} - {None, version}:
            self.tag_version(old, {LIFECYCLE: "archived"})
        history = [v for v in self._history() if v != version]
        if old_prod and old_prod != version and (not history or history[-1] != old_prod):
            history.append(old_prod)
        self._set_history([*history, version])
        return {"production": version, "staging": version, "archived": old_prod if old_prod != version else None}

    def sync(self, *, lifecycle: str = "archived") -> dict:
        """Point ``staging`` at the Production version (the seed's sync_staging_with_production); the challenger
        it unaliases is tagged ``lifecycle`` first, so whoever sees the alias moved sees its final tag."""
        aliases = self.aliases()
        prod = aliases.get(PRODUCTION)
        if prod is None:
            raise RegistryError(f"{self.name!r} has no Production version to sync Staging to")
        old = aliases.get(STAGING)
        if old and old != prod:
            self.tag_version(old, {LIFECYCLE: lifecycle})
        self.set_alias(STAGING, prod)
        return {"production": prod, "staging": prod}

    def rollback(self) -> dict:
        """Restore the previous Production version; the current one is archived."""
        aliases = self.aliases()
        current = aliases.get(PRODUCTION)
        history = [v for v in self._history() if v != current]
        if current is None or not history:
            raise RegistryError(f"{self.name!r} has no previous Production version to restore")
        previous = history[-1]
        self.tag_version(previous, {LIFECYCLE: PRODUCTION})
        self.set_alias(PRODUCTION, previous)
        self.set_alias(STAGING, previous)
        for old in {current, aliases.get(STAGING)} - {None, previous}:  # a challenger loses its alias: archived
            self.tag_version(old, {LIFECYCLE: "archived"})
        self._set_history(history)
        return {"production": previous, "staging": previous, "archived": current}


def _requirements(model) -> list[str]:
    """Pinned requirements of a PyCaret pipeline, without MLflow's slow detection."""
    names = {"pycaret", "scikit-learn", "pandas", "numpy", "cloudpickle"}
    estimator = getattr(model, "steps", [[None, model]])[-1][1]
    root = type(estimator).__module__.split(".")[0]
    names.add({"sklearn": "scikit-learn"}.get(root, root))
    reqs = []
    for name in sorted(names):
        with contextlib.suppress(package_metadata.PackageNotFoundError):
            reqs.append(f"{name}=={package_metadata.version(name)}")
    return reqs


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
