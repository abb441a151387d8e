"""mlops_core.registry_reader: what a worker reads from the registry, without MLflow, agrees with MLflow's client.

The MLflow server case (REST API, proxied artifacts) runs in test_end_to_end, whose workers read through it."""

from __future__ import annotations

import shutil

import pytest

from mlops_core.errors import RegistryError
from mlops_core.registry import COMPILED_TAG, Registry
from mlops_core.registry_reader import RegistryReader

from _services import python_json


def test_the_reader_sees_what_mlflows_client_sees(bootstrapped):
    reader, registry = RegistryReader(bootstrapped), Registry(bootstrapped)
    assert reader.kind == "sql"
    assert reader.aliases() == registry.aliases() == {"production": "1", "staging": "1"}
    by_reader, by_registry = reader.describe("1"), registry.describe("1")
    assert (by_reader["run_id"], by_reader["tags"]) == (by_registry["run_id"], by_registry["tags"])
    assert by_reader["tags"][COMPILED_TAG] == "true"
    (data, manifest, info), (data2, manifest2, _) = reader.load_compiled("1"), registry.load_compiled("1")
    assert data == data2 and manifest == manifest2 and info["run_id"] == by_registry["run_id"]


def test_an_empty_registry_has_no_aliases_and_a_missing_version_is_a_registry_error(bootstrapped, tmp_path):
    reader = RegistryReader(bootstrapped)
    with pytest.raises(RegistryError, match="reading version 99 of 'titanic-survival'"):
        reader.describe("99")
    other = RegistryReader(bootstrapped.replace(model_name="nobody-registered-this"))
    assert other.aliases() == {}


def test_an_unreachable_registry_is_a_registry_error_naming_the_read_without_credentials(bootstrapped, tmp_path):
    down = RegistryReader(bootstrapped.replace(tracking_uri="http://alice:s3cret@127.0.0.1:9"), timeout=2)
    with pytest.raises(RegistryError, match="reading aliases of 'titanic-survival'") as err:
        down.aliases()
    assert "s3cret" not in str(err.value)
    copy = tmp_path / "db"
    copy.mkdir()
    shutil.copy(bootstrapped.home / "mlflow.db", copy / "mlflow.db")
    (copy / "mlflow.db").write_bytes(b"not a database")
    broken = RegistryReader(bootstrapped.replace(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}"))
    with pytest.raises(RegistryError, match="reading aliases"):
        broken.aliases()


def test_the_registry_reads_through_its_reader_and_the_reader_imports_neither_registry_nor_mlflow(bootstrapped):
    """One read path: the Registry's reads are its reader's. The reader's module imports neither the Registry's
    (no import cycle, lazy imports included) nor MLflow, and reading aliases and a compiled form imports no MLflow."""
    import ast
    import inspect

    import mlops_core.registry_reader as module

    registry = Registry(bootstrapped)
    assert registry.describe("1") == registry.reader.describe("1")
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or "", *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not {name for name in imported if name.split(".")[0] in ("registry", "mlflow")}, imported
    code = (
        "import json, sys\n"
        "from mlops_core.config import Settings\n"
        "from mlops_core.registry_reader import RegistryReader\n"
        f"reader = RegistryReader(Settings(home={str(bootstrapped.home)!r}))\n"
        "aliases = reader.aliases()\n"
        "data, manifest, info = reader.load_compiled(aliases['production'])\n"
        "print(json.dumps({'aliases': aliases, 'compiled': data is not None, 'run_id': info['run_id'],\n"
        "                  'imported': sorted(m for m in ('mlflow', 'pycaret') if m in sys.modules)}))\n")
    seen = python_json(code)
    assert seen["aliases"] == {"production": "1", "staging": "1"} and seen["compiled"]
    assert seen["run_id"] == registry.describe("1")["run_id"] and seen["imported"] == []


def test_what_the_reader_cannot_reach_goes_through_mlflows_client(bootstrapped, tmp_path):
    """A store the reader cannot reach itself (here: a file store's URI, as another scheme would be) is read
    through the client it is given; the pipeline always loads through MLflow."""
    reader = RegistryReader(bootstrapped)
    assert reader.load_model("1").version == "1"  # the pipeline: always MLflow's model API

    class Client:  # what the reader asks of MLflow's client, answered from the embedded registry
        calls: list[str] = []

        def __init__(self):
            self.real = Registry(bootstrapped).client

        def __getattr__(self, name):
            self.calls.append(name)
            return getattr(self.real, name)

    other = RegistryReader(bootstrapped.replace(tracking_uri="databricks://nowhere"), client=Client)
    assert other.kind == "other" and not other.direct
    assert other.aliases() == {"production": "1", "staging": "1"}
    (data, manifest, info), (data2, manifest2, info2) = other.load_compiled("1"), reader.load_compiled("1")
    assert (data, manifest) == (data2, manifest2) and info == info2
    assert {"get_registered_model", "get_model_version", "download_artifacts"} <= set(Client.calls)
    assert other.client is other.client  # created once
