"""Shared fixtures: every test gets its own home (files, SQLite registry, artifacts)."""

from __future__ import annotations

import os
import shutil

import pytest

from mlops_core.config import Settings

# small and fast PyCaret runs in tests: two models, two folds
FAST = {"models": ("lr", "dt"), "fold": 2}


def pytest_configure(config):
    """The test session is an entry point: the process set-up the CLI, watcher and server do."""
    from mlops_core.runtime import prepare_process

    prepare_process(None)


def pytest_collection_modifyitems(config, items):
    """Every test that needs trained models is slow (it trains, or shares a training): the session's
    bootstrapped registry, or test_inference's ``loaded`` pipelines."""
    for item in items:
        if {"bootstrapped", "loaded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No MLOPS_* or MLFLOW_TRACKING_URI from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("MLOPS_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", **FAST)


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory):
    """A home whose registry holds a bootstrapped Production version 1 (built once per session, read-only:
    a test that changes a home copies it first, as ``fresh`` does)."""
    from mlops_core.data import make_datasets
    from mlops_core.pipeline import run

    home = tmp_path_factory.mktemp("boot")
    settings = Settings(home=home, **FAST)
    make_datasets(settings)
    result = run(settings)
    assert result.bootstrapped == "1" and result.status == "no_drift"
    return settings


@pytest.fixture
def fresh(bootstrapped, tmp_path) -> Settings:
    """A private copy of the bootstrapped home that a test may change freely.

    The SQLite store records absolute artifact locations, so new runs of the copy
    write beside the original's artifacts under their own run ids; nothing collides.
    """
    dst = tmp_path / "copy"
    shutil.copytree(bootstrapped.home, dst)
    return Settings(home=dst, **FAST)


@pytest.fixture(scope="session")
def ab_home(bootstrapped, tmp_path_factory) -> Settings:
    """A home whose registry holds Production v1 and Staging v2 (a drifted batch's challenger); read-only."""
    from mlops_core.data import make_datasets
    from mlops_core.pipeline import run

    dst = tmp_path_factory.mktemp("ab") / "home"
    shutil.copytree(bootstrapped.home, dst)
    s = bootstrapped.replace(home=dst, tracking_uri="")
    make_datasets(s, seed=5, drift=0.5, write_train=False)
    result = run(s.replace(min_improvement=1.0))
    assert (result.production, result.staging) == ("1", "2")
    return s
