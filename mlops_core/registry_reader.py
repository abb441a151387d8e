"""The registry's reads, one path for the serving workers and the :class:`~mlops_core.registry.Registry` alike,
without importing MLflow where the store can be reached without it (MLflow costs about 1.3 s and 100 MB a process).

A worker needs three things: the two aliases, a version's run and tags, and the bytes of two small artifacts of
that run (the compiled form and its manifest). :class:`RegistryReader` reads them

- from the **database** of the embedded registry (``sqlite:///…``, or any SQLAlchemy URL used as the tracking
  URI), in MLflow's own tables (``registered_model_aliases``, ``model_versions``, ``model_version_tags``, ``runs``);
- from an **MLflow server** (``http(s)://…``) through its documented REST API (``registered-models/get``,
  ``model-versions/get``, ``runs/get``) and, for proxied artifacts (``mlflow-artifacts:/``), its artifact API;

and the artifacts from a local path (``file://`` or a plain path) or that artifact API. Anything else (another
artifact store, a Databricks URI) goes through MLflow's client, and a version's pipeline through MLflow's model
API (:mod:`mlops_core.mlflow_api`), imported only then. Every failure is one :class:`RegistryError` naming
what was being read: :func:`registry_errors`, the one wrapper the Registry's writes use too.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Settings, redact
from .errors import RegistryError, first_line
from .forks import PerProcess
from .mlflow_api import LoadedModel, connect, load_pipeline

__all__ = ["RegistryReader", "registry_errors", "PRODUCTION", "STAGING", "LIFECYCLE", "COMPILED",
           "COMPILED_MANIFEST", "COMPILED_TAG"]

PRODUCTION, STAGING = "production", "staging"
LIFECYCLE = "lifecycle"  # version tag: staging | production | archived
COMPILED = "compiled/predictor.pkl"
COMPILED_MANIFEST = "compiled/manifest.json"
#: version tag: "true" when the run holds a compiled form, else why not (mlops_core.inference.artifact)
COMPILED_TAG = "mlops.compiled"

_SQL_DIALECTS = {"sqlite", "postgresql", "mysql", "mssql"}  # the database URIs MLflow accepts as tracking URIs
_DELETED = "Deleted_Internal"  # MLflow's stage of a deleted version whose row it keeps


class _NotHere(Exception):
    """This reader cannot reach it without MLflow: MLflow's client reads it."""


class _NoRegistry(Exception):
    """The embedded registry's database does not exist yet (or has no tables): nothing is registered."""


class registry_errors:  # noqa: N801 - used as a function: ``with registry_errors("reading aliases"):``
    """Turn MLflow, database, HTTP and file failures into one RegistryError naming the action, credentials
    hidden; a RegistryError raised inside passes unchanged."""

    def __init__(self, action: str):
        self.action = action

    def __enter__(self) -> registry_errors:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or isinstance(err, RegistryError | _NotHere):
            return False
        if isinstance(err, _NoRegistry):
            raise RegistryError(f"{self.action}: nothing registered yet ({redact(str(err))} has no tables)") from err
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: not a registry failure
            return False
        raise RegistryError(f"{self.action}: {redact(first_line(err, 1000))}") from err


def _is_missing(err: Exception) -> bool:
    """True when MLflow's client says the model or version does not exist."""
    text = str(err).lower()
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or \
        "not found" in text or "does not exist" in text


class RegistryReader:
    """Aliases, versions and artifacts of the settings' registered model; a version's pipeline through MLflow.

    ``client``: a function returning MLflow's client, called the first time a read needs it (a store this
    reader cannot reach itself); default: a client for the settings' URI (:func:`mlops_core.mlflow_api.connect`).
    """

    def __init__(self, settings: Settings, *, timeout: float | None = None, client: Callable[[], Any] | None = None):
        self.settings = settings
        self.name = settings.model_name
        self.uri = settings.tracking_uri
        self.timeout = timeout if timeout is not None else float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 5))
        scheme = urllib.parse.urlsplit(self.uri).scheme.split("+")[0]
        self.kind = "http" if scheme in ("http", "https") else "sql" if scheme in _SQL_DIALECTS else "other"
        self._engine = PerProcess(self._connect)
        self._new_client = client or functools.partial(connect, settings)
        self._client = None

    @property
    def direct(self) -> bool:
        """True when this reader reaches the registry itself (a database or an MLflow server)."""
        return self.kind in ("sql", "http")

    @property
    def client(self):
        """MLflow's client, for a store this reader cannot reach itself; created (importing MLflow) on first use."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    # -- reads ---------------------------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        """Both aliases in one read: ``{"production": "3", "staging": "4"}`` (absent ones left out)."""
        with self._errors(f"reading aliases of {self.name!r}"):
            if self.kind == "sql":
                try:
                    rows = self._sql("SELECT alias, version FROM registered_model_aliases WHERE name = :name",
                                     name=self.name)
                except _NoRegistry:
                    return {}
            elif self.kind == "http":
                found = self._rest("registered-models/get", name=self.name, missing_ok=True)
                rows = [(a["alias"], a["version"])
                        for a in (found or {}).get("registered_model", {}).get("aliases", [])]
            else:
                try:
                    rows = self.client.get_registered_model(self.name).aliases.items()
                except Exception as err:
                    if _is_missing(err):
                        return {}
                    raise
        return {alias: str(version) for alias, version in rows if alias in (PRODUCTION, STAGING)}

    def describe(self, version: str | int) -> dict[str, Any]:
        """``{"version", "run_id", "lifecycle", "created", "tags", "aliases"}`` of one version (``created``: Unix
        seconds)."""
        action = f"reading version {version} of {self.name!r}"
        with self._errors(action):
            if self.kind == "sql":
                rows = self._sql(f"SELECT run_id, creation_time FROM model_versions WHERE name = :name AND "
                                 f"version = :version AND current_stage != '{_DELETED}'",
                                 name=self.name, version=int(version))
                if not rows:
                    raise RegistryError(f"{action}: no such version")
                run_id, created = rows[0]
                tags = dict(self._sql("SELECT key, value FROM model_version_tags WHERE name = :name AND "
                                      "version = :version", name=self.name, version=int(version)))
                aliases = [a for (a,) in self._sql("SELECT alias FROM registered_model_aliases WHERE name = :name "
                                                   "AND version = :version", name=self.name, version=int(version))]
            elif self.kind == "http":
                mv = self._rest("model-versions/get", name=self.name, version=str(version))["model_version"]
                run_id, created, aliases = mv.get("run_id"), mv.get("creation_timestamp"), mv.get("aliases", [])
                tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
            else:
                mv = self.client.get_model_version(self.name, str(version))
                run_id, created, aliases = mv.run_id, mv.creation_timestamp, list(getattr(mv, "aliases", []) or [])
                tags = dict(mv.tags)
        return {"version": str(version), "run_id": run_id, LIFECYCLE: tags.get(LIFECYCLE),
                "created": int(created or 0) // 1000, "tags": tags, "aliases": sorted(aliases)}

    def run_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of one artifact of a run."""
        with self._errors(f"reading {path} of run {run_id}"):
            return self._artifact(run_id, path)

    def load_compiled(self, version: str) -> tuple[bytes | None, dict[str, Any] | None, dict[str, Any]]:
        """``(artifact bytes, manifest, version info)``; (None, None, info) for a version registered without
        one, (None, manifest, info) for one that could not be compiled."""
        info = self.describe(version)
        if COMPILED_TAG not in info["tags"]:  # registered before versions carried their compiled form
            return None, None, info
        with self._errors(f"loading the compiled form of version {version}"):
            manifest = json.loads(self._artifact(info["run_id"], COMPILED_MANIFEST))
            if not manifest.get("compiled"):
                return None, manifest, info
            return self._artifact(info["run_id"], COMPILED), manifest, info

    def load_model(self, version: str) -> LoadedModel:
        """The version's pipeline, through MLflow (which imports the AutoML library to unpickle it)."""
        run_id = self.describe(version)["run_id"]
        with self._errors(f"loading version {version}"):
            return load_pipeline(self.settings, str(version), run_id=run_id)

    def _errors(self, action: str) -> registry_errors:
        """Failures as one RegistryError naming the action, and the server (credentials hidden) over HTTP."""
        return registry_errors(f"{action} at {redact(self.uri)}" if self.kind == "http" else action)

    # -- artifacts ---------------------------------------------------------------------------------------
    def _artifact(self, run_id: str, path: str) -> bytes:
        try:
            root = self._artifact_root(run_id)
            parts = urllib.parse.urlsplit(root)
            if parts.scheme in ("", "file"):
                return (Path(urllib.parse.unquote(parts.path if parts.scheme else root)) / path).read_bytes()
            if parts.scheme == "mlflow-artifacts" and self.kind == "http":
                return self._get(f"api/2.0/mlflow-artifacts/artifacts/{parts.path.lstrip('/')}/{path}")
            raise _NotHere(root)
        except _NotHere:
            return self._download(run_id, path)

    def _download(self, run_id: str, path: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def _artifact_root(self, run_id: str) -> str:
        if self.kind == "sql":
            rows = self._sql("SELECT artifact_uri FROM runs WHERE run_uuid = :run_id", run_id=run_id)
            if not rows:
                raise RegistryError(f"no run {run_id}")
            return rows[0][0]
        if self.kind == "http":
            return self._rest("runs/get", run_id=run_id)["run"]["info"]["artifact_uri"]
        raise _NotHere(self.uri)

    # -- the two backends ---------------------------------------------------------------------------------
    def _connect(self):
        from sqlalchemy import create_engine

        return create_engine(self.uri, pool_pre_ping=not self.uri.startswith("sqlite"))

    def _sql(self, query: str, **params) -> list[tuple]:
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///"):]).exists():
            raise _NoRegistry(self.uri)  # never create the file: MLflow does, with its tables, when it first writes
        try:
            with self._engine.get().connect() as conn:
                return [tuple(row) for row in conn.execute(text(query), params)]
        except OperationalError as err:
            if "no such table" in str(err):
                raise _NoRegistry(self.uri) from err
            raise

    def _rest(self, endpoint: str, *, missing_ok: bool = False, **params) -> dict | None:
        try:
            return json.loads(self._get(f"api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"))
        except urllib.error.HTTPError as err:
            if missing_ok and err.code == 404:
                return None
            raise

    def _get(self, path: str) -> bytes:
        parts = urllib.parse.urlsplit(self.uri)
        base = urllib.parse.urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""),
                                        parts.path.rstrip("/"), "", ""))
        request = urllib.request.Request(f"{base}/{path}")
        user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
        elif user:
            token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}".encode())
            request.add_header("Authorization", f"Basic {token.decode()}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code >= 500:  # one retry, as the MLflow client is configured (runtime.prepare_process)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            raise
