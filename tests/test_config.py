import os
from pathlib import Path

import pytest

from mlops_core.config import Settings, redact_uri


def test_defaults_are_absolute_and_resolved_against_home(tmp_path):
    s = Settings(home=tmp_path)
    assert s.data_dir == tmp_path.resolve() / "data"
    assert s.models_dir == tmp_path.resolve() / "models"
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert s.current_csv == tmp_path.resolve() / "data" / "current.csv"
    assert s.features == ("pclass", "sex", "age", "fare", "sibsp", "parch", "embarked")
    assert s.drift_features == ("age", "fare") and s.psi_threshold == 0.2 and s.bins == 10


def test_home_defaults_to_working_directory_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    monkeypatch.chdir("/")
    assert s.home == tmp_path.resolve()
    assert s.data_dir == tmp_path.resolve() / "data"  # not re-read from the new cwd


def test_from_env_reads_prefixed_variables_and_keywords_win(tmp_path):
    env = {"MLOPS_HOME": str(tmp_path), "MLOPS_BINS": "7", "MLOPS_MODELS": "lr, rf",
           "MLOPS_PSI_THRESHOLD": "0.35", "MLOPS_DATA_DIR": "drop", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    s = Settings.from_env(env, bins=12)
    assert s.bins == 12 and s.models == ("lr", "rf") and s.psi_threshold == 0.35
    assert s.data_dir == tmp_path.resolve() / "drop"
    assert s.tracking_uri == "http://127.0.0.1:5000" and not s.is_local_store


def test_mlops_tracking_uri_wins_over_mlflow_variable(tmp_path):
    s = Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_TRACKING_URI": "sqlite:///x.db",
                           "MLFLOW_TRACKING_URI": "http://h:1"})
    assert s.tracking_uri == "sqlite:///x.db"


def test_settings_are_frozen(tmp_path):
    s = Settings(home=tmp_path)
    with pytest.raises(AttributeError):
        s.bins = 3  # type: ignore[misc]


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="MLOPS_BINS: expected int, got 'ten'"):
        Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_BINS": "ten"})
    with pytest.raises(ValueError, match="holdout_fraction must be in"):
        Settings(home=tmp_path, holdout_fraction=1.5)
    with pytest.raises(ValueError, match="target 'age' must not be one of the features"):
        Settings(home=tmp_path, target="age")


def test_redact_uri_hides_password():
    assert redact_uri("postgresql://bob:s3cret@db:5432/mlflow") == "postgresql://bob:***@db:5432/mlflow"
    assert redact_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "s3cret" not in str(Settings(home=Path(os.sep), tracking_uri="http://u:s3cret@h").public_dict())


def test_replacing_home_moves_the_paths_under_it_but_keeps_explicit_ones(tmp_path):
    base = Settings(home=tmp_path / "a", logs_dir=tmp_path / "elsewhere")
    moved = base.replace(home=tmp_path / "b")
    assert moved.current_csv == (tmp_path / "b" / "data" / "current.csv").resolve()
    assert moved.models_dir == (tmp_path / "b" / "models").resolve()
    assert moved.tracking_uri == f"sqlite:///{(tmp_path / 'b' / 'mlflow.db').resolve()}"
    assert moved.logs_dir == (tmp_path / "elsewhere").resolve()  # not under the old home: kept
    remote = base.replace(tracking_uri="http://127.0.0.1:5000").replace(home=tmp_path / "c")
    assert remote.tracking_uri == "http://127.0.0.1:5000"
