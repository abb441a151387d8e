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


#: the modules that take longest, longest first (``pytest --durations=0``, summed per module). ``make test``
#: runs pytest-xdist with ``--dist loadfile --no-loadscope-reorder``, which hands whole modules to its workers in
#: collection order (by default it would order them by their number of tests): starting the long ones first
#: keeps one worker from finishing long after the other
LONGEST_FIRST = ("test_reliability_watcher.py", "test_watcher.py", "test_decisions.py", "test_airflow_dag.py",
                 "test_server_gunicorn.py", "test_scale_out.py", "test_end_to_end.py", "test_reliability_faults.py",
                 "test_bad_data.py", "test_ab_gunicorn.py", "test_hooks.py", "test_notices.py", "test_pipeline.py",
                 "test_openapi.py", "test_inference.py", "test_kernels.py")


def pytest_collection_modifyitems(config, items):
    """Every test that needs trained models is slow (it trains, or shares a training): the session's
    bootstrapped registry, or test_inference's ``loaded`` pipelines. The longest modules run first."""
    for item in items:
        if {"bootstrapped", "loaded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module keeps its own order


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
