"""The MLflow registry wrapper against a real embedded registry: aliases, lifecycle tags, history, lookups."""

from __future__ import annotations

import pytest

from mlops_core.config import Settings
from mlops_core.drift import PREDICTION
from mlops_core.errors import RegistryError
from mlops_core.files import sha256_file
from mlops_core.registry import LIFECYCLE, Registry


def _copy_of_v1(registry: Registry) -> str:
    """A new version of version 1's logged model: a cheap extra version (no training)."""
    return registry.register(f"models:/{registry.name}/1", {"mlops.source": "test"})


def _lifecycle(registry: Registry) -> dict[str, str | None]:
    return {v["version"]: v[LIFECYCLE] for v in registry.versions()}


def test_stage_promote_sync_and_rollback_keep_aliases_tags_and_history(fresh):
    registry = Registry(fresh)
    v2, v3 = _copy_of_v1(registry), _copy_of_v1(registry)
    registry.make_challenger(v2)
    assert registry.aliases() == {"production": "1", "staging": v2}
    assert _lifecycle(registry)[v2] == "staging"
    assert registry.promote(v3) == {"production": v3, "staging": v3, "archived": "1"}
    assert registry.aliases() == {"production": v3, "staging": v3}
    assert _lifecycle(registry) == {"1": "archived", v2: "archived", v3: "production"}  # the challenger too
    registry.make_challenger(v2)
    assert registry.sync() == {"production": v3, "staging": v3}
    assert _lifecycle(registry)[v2] == "archived"
    assert registry.rollback() == {"production": "1", "staging": "1", "archived": v3}
    assert registry.aliases() == {"production": "1", "staging": "1"}
    assert _lifecycle(registry) == {"1": "production", v2: "archived", v3: "archived"}
    with pytest.raises(RegistryError, match="no previous Production version"):
        registry.rollback()  # version 1 was the first: nothing older to restore


def test_processed_run_is_keyed_on_content_and_the_production_version(bootstrapped):
    registry = Registry(bootstrapped)
    digest, _ = sha256_file(bootstrapped.current_csv)  # processed against version 1 when the home was bootstrapped
    assert registry.processed_run(digest, "1")
    assert registry.processed_run(digest, "2") is None  # another Production judges the same bytes again
    assert registry.processed_run("0" * 64, "1") is None


def test_unknown_versions_are_registry_errors_naming_the_action(bootstrapped):
    registry = Registry(bootstrapped)
    with pytest.raises(RegistryError, match="reading version 99 of 'titanic-survival'"):
        registry.describe("99")
    with pytest.raises(RegistryError, match="version 99"):
        registry.promote("99")
    assert registry.aliases() == {"production": "1", "staging": "1"}  # nothing moved


def test_a_version_loads_with_its_schema_and_its_reference(bootstrapped):
    registry = Registry(bootstrapped)
    loaded = registry.load_model("1")
    assert loaded.version == "1" and loaded.columns == list(bootstrapped.features)
    assert loaded.dtypes["sex"] == "string" and hasattr(loaded.model, "predict_proba")
    profile, data = registry.load_reference("1")
    assert set(profile.features) == set(bootstrapped.features) and PREDICTION in profile.outputs
    assert list(data.columns) == [*bootstrapped.features, bootstrapped.target] and len(data) == 785


def test_an_empty_registry_has_no_aliases_and_no_versions(tmp_path):
    registry = Registry(Settings(home=tmp_path))
    assert registry.aliases() == {} and registry.versions() == []
    with pytest.raises(RegistryError, match="no Production version to sync"):
        registry.sync()


@pytest.mark.parametrize("outside", [None, "http://127.0.0.1:1/unused"])
def test_the_registry_leaves_mlflows_process_wide_uri_as_it_found_it(bootstrapped, monkeypatch, outside):
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI to every child started later: a process that used
    a Registry (the bench, a test, the CLI) would hand its registry to the servers and daemons it starts."""
    import os

    if outside is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", outside)
    registry = Registry(bootstrapped)
    registry.load_model("1")
    registry.aliases()
    assert os.environ.get("MLFLOW_TRACKING_URI") == outside
    assert os.environ.get("MLFLOW_REGISTRY_URI") is None
