"""What a serving worker reads from the registry, without importing MLflow (about 1.3 s and 100 MB a process).

A worker needs three things: the two aliases, a version's run and tags, and the bytes of two small artifacts of
that run (the compiled form and its manifest). :class:`RegistryReader` reads them

- from the **database** of the embedded registry (``sqlite:///…``, or any SQLAlchemy URL used as the tracking
  URI), in MLflow's own tables (``registered_model_aliases``, ``model_versions``, ``model_version_tags``, ``runs``);
- from an **MLflow server** (``http(s)://…``) through its documented REST API (``registered-models/get``,
  ``model-versions/get``, ``runs/get``) and, for proxied artifacts (``mlflow-artifacts:/``), its artifact API;

and the artifacts from a local path (``file://`` or a plain path) or that artifact API. Anything else (another
artifact store, a Databricks URI), and loading a pipeline, goes through :class:`~mlops_core.registry.Registry`,
imported only then. Failures raise :class:`RegistryError` naming what was being read, as Registry does.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .config import Settings, redact
from .errors import RegistryError, first_line
from .forks import PerProcess

__all__ = ["RegistryReader", "COMPILED", "COMPILED_MANIFEST", "COMPILED_TAG"]

COMPILED = "compiled/predictor.pkl"
COMPILED_MANIFEST = "compiled/manifest.json"
#: version tag: "true" when the run holds a compiled form, else why not (mlops_core.inference.artifact)
COMPILED_TAG = "mlops.compiled"


_SQL_DIALECTS = {"sqlite", "postgresql", "mysql", "mssql"}  # the database URIs MLflow accepts as tracking URIs


class _NotHere(Exception):
    """This reader cannot reach it without MLflow: the caller uses the full client."""


class _NoRegistry(Exception):
    """The embedded registry's database does not exist yet (or has no tables): nothing is registered."""


class RegistryReader:
    """Aliases, versions and small artifacts of the settings' registered model; the pipeline through MLflow."""

    def __init__(self, settings: Settings, *, timeout: float | None = None):
        self.settings = settings
        self.name = settings.model_name
        self.uri = settings.tracking_uri
        self.timeout = timeout if timeout is not None else float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 5))
        scheme = urllib.parse.urlsplit(self.uri).scheme.split("+")[0]
        self.kind = "http" if scheme in ("http", "https") else "sql" if scheme in _SQL_DIALECTS else "other"
        self._engine = PerProcess(self._connect)
        self._full = None

    # -- what the store and Serving call ----------------------------------------------------------------
    @property
    def direct(self) -> bool:
        """True when this reader reaches the registry itself (a database or an MLflow server)."""
        return self.kind in ("sql", "http")

    def aliases(self) -> dict[str, str]:
        """Both aliases in one read: ``{"production": "3", "staging": "4"}`` (absent ones left out)."""
        with self._errors(f"reading aliases of {self.name!r}"):
            if self.kind == "sql":
                try:
                    rows = self._sql("SELECT alias, version FROM registered_model_aliases WHERE name = :name",
                                     name=self.name)
                except _NoRegistry:
                    return {}
                return {alias: str(version) for alias, version in rows}
            if self.kind == "http":
                found = self._rest("registered-models/get", name=self.name, missing_ok=True)
                model = (found or {}).get("registered_model", {})
                return {a["alias"]: str(a["version"]) for a in model.get("aliases", [])}
            return self.full.aliases()

    def describe(self, version: str) -> dict[str, Any]:
        """``{"version", "run_id", "tags"}`` of one version."""
        with self._errors(f"reading version {version} of {self.name!r}"):
            if self.kind == "sql":
                rows = self._sql("SELECT run_id FROM model_versions WHERE name = :name AND version = :version",
                                 name=self.name, version=int(version))
                if not rows:
                    raise RegistryError(f"reading version {version} of {self.name!r}: no such version")
                tags = dict(self._sql("SELECT key, value FROM model_version_tags WHERE name = :name AND "
                                      "version = :version", name=self.name, version=int(version)))
                return {"version": str(version), "run_id": rows[0][0], "tags": tags}
            if self.kind == "http":
                mv = self._rest("model-versions/get", name=self.name, version=str(version))["model_version"]
                return {"version": str(version), "run_id": mv.get("run_id"),
                        "tags": {t["key"]: t.get("value", "") for t in mv.get("tags", [])}}
            return self.full.describe(version)

    def load_compiled(self, version: str) -> tuple[bytes | None, dict[str, Any] | None, dict[str, Any]]:
        """As :meth:`Registry.load_compiled <mlops_core.registry.Registry.load_compiled>`, without MLflow."""
        info = self.describe(version)
        if COMPILED_TAG not in info["tags"]:  # registered before versions carried their compiled form
            return None, None, info
        try:
            with self._errors(f"loading the compiled form of version {version}"):
                manifest = json.loads(self._artifact(info["run_id"], COMPILED_MANIFEST))
                if not manifest.get("compiled"):
                    return None, manifest, info
                return self._artifact(info["run_id"], COMPILED), manifest, info
        except _NotHere:
            return self.full.load_compiled(version)

    def run_artifact(self, run_id: str, path: str) -> bytes | None:
        """The bytes of one artifact of a run; None when only MLflow's client can reach the artifact store."""
        try:
            with self._errors(f"reading {path} of run {run_id}"):
                return self._artifact(run_id, path)
        except _NotHere:
            return None

    def load_model(self, version: str):
        """The version's pipeline, through MLflow (which imports the AutoML library to unpickle it)."""
        return self.full.load_model(version)

    @property
    def full(self):
        """The MLflow client, for what this reader does not do; imported on first use."""
        if self._full is None:
            from .registry import Registry

            self._full = Registry(self.settings)
        return self._full

    def _errors(self, action: str) -> _errors:
        """Failures as one RegistryError naming the action, and the server (credentials hidden) over HTTP."""
        return _errors(f"{action} at {redact(self.uri)}" if self.kind == "http" else action)

    # -- artifacts ---------------------------------------------------------------------------------------
    def _artifact(self, run_id: str, path: str) -> bytes:
        root = self._artifact_root(run_id)
        parts = urllib.parse.urlsplit(root)
        if parts.scheme in ("", "file"):
            local = Path(urllib.parse.unquote(parts.path if parts.scheme else root)) / path
            return local.read_bytes()
        if parts.scheme == "mlflow-artifacts" and self.kind == "http":
            return self._get(f"api/2.0/mlflow-artifacts/artifacts/{parts.path.lstrip('/')}/{path}")
        raise _NotHere(root)

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


class _errors:
    """Turn database, HTTP and file failures into one RegistryError naming the action (credentials hidden)."""

    def __init__(self, action: str):
        self.action = action

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, RegistryError | _NotHere):
            return False
        if isinstance(err, _NoRegistry):
            raise RegistryError(f"{self.action}: nothing registered yet ({redact(str(err))} has no tables)") from err
        raise RegistryError(f"{self.action}: {redact(first_line(err, 1000))}") from err
