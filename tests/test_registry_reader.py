"""mlops_core.registry_reader: what a worker reads from the registry, without MLflow, agrees with MLflow's client.

The MLflow server case (REST API, proxied artifacts) runs in test_end_to_end, whose workers read through it."""

from __future__ import annotations

import shutil

import pytest

from mlops_core.errors import RegistryError
from mlops_core.registry import COMPILED_TAG, Registry
from mlops_core.registry_reader import RegistryReader


def test_the_reader_sees_what_mlflows_client_sees(bootstrapped):
    reader, registry = RegistryReader(bootstrapped), Registry(bootstrapped)
    assert reader.kind == "sql"
    assert reader.aliases() == registry.aliases() == {"production": "1", "staging": "1"}
    mine, theirs = reader.describe("1"), registry.describe("1")
    assert (mine["run_id"], mine["tags"]) == (theirs["run_id"], theirs["tags"]) and mine["tags"][COMPILED_TAG] == "true"
    (data, manifest, info), (data2, manifest2, _) = reader.load_compiled("1"), registry.load_compiled("1")
    assert data == data2 and manifest == manifest2 and info["run_id"] == theirs["run_id"]


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


def test_what_the_reader_cannot_reach_goes_through_mlflows_client(bootstrapped):
    reader = RegistryReader(bootstrapped)
    assert reader.load_model("1").version == "1"  # the pipeline: always MLflow's client
    assert reader.full is reader.full  # created once
