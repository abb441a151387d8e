"""Shared fixtures: every test gets its own home (files, SQLite registry, artifacts)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from mlops_core.config import Settings

# small and fast PyCaret runs in tests: two models, two folds
FAST = {"models": ("lr", "dt"), "fold": 2}


def pytest_configure(config):
    """The test session is an entry point: the process set-up the CLI, watcher and server do."""
    from mlops_core.runtime import prepare_process

    prepare_process(None)


#: the modules that take longest, longest first (seconds of a full run, summed per module): ``make test`` runs
#: pytest-xdist with ``--dist loadfile --no-loadscope-reorder``, which hands out work in collection order as a
#: worker frees up. The long ones first and the many short tests last keep the workers busy to the end;
#: test_kernels first, as it needs no bootstrapped home: another worker builds that one for all meanwhile
LONGEST_FIRST = ("test_kernels.py", "test_airflow_dag.py", "test_reliability_watcher.py", "test_watcher.py",
                 "test_labels.py", "test_decisions.py", "test_dask.py", "test_server_labels.py", "test_scale_out.py",
                 "test_server_gunicorn.py", "test_openapi.py", "test_kernels_regression.py", "test_end_to_end.py",
                 "test_reliability_faults.py", "test_ab_gunicorn.py", "test_pipeline.py", "test_reliability_http.py",
                 "test_regression.py", "test_server_regression.py", "test_inference.py", "test_hooks.py",
                 "test_bad_data.py", "test_watcher_child.py", "test_stack.py", "test_store.py", "test_cli.py")

#: long modules whose tests share no module-scoped fixture: under ``--dist loadfile`` their tests go to the workers
#: one by one, not the module whole (a module-scoped fixture added to one of them would be built on each worker
#: that runs its tests: slower, still correct). Every other module stays whole, as loadfile has it
TEST_BY_TEST = frozenset({"test_reliability_watcher.py", "test_watcher.py", "test_decisions.py", "test_labels.py",
                          "test_pipeline.py", "test_end_to_end.py", "test_reliability_faults.py", "test_bad_data.py",
                          "test_watcher_child.py", "test_cli.py", "test_notices.py", "test_hooks.py"})


def pytest_collection_modifyitems(config, items):
    """Every test that needs trained models is slow (it trains, or shares a training): the session's
    bootstrapped registry, or test_inference's ``loaded`` pipelines. The longest modules run first, then the
    other slow tests, then the rest."""
    for item in items:
        if {"bootstrapped", "loaded"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # stable: a module keeps its own order
    items.sort(key=lambda item: rank.get(item.path.name, len(rank) + (item.get_closest_marker("slow") is None)))


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, except that the tests of :data:`TEST_BY_TEST` are handed out one by one.

    (``--dist loadgroup`` would do it with marks, but pytest-xdist 3.8 does not group on pytest 9.2:
    pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class _Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module.rsplit("/", 1)[-1] in TEST_BY_TEST else module

    return _Scheduling(config, log)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No MLOPS_* or MLFLOW_TRACKING_URI from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("MLOPS_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", **FAST)


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``build(folder)`` made, built once per test session even across pytest-xdist's workers: under a
    lock in the folder they share, the first to ask builds it and the others wait for it (a build is seconds of
    CPU: imports, training, registration)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's own is <the session's>/popen-gwN
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def bootstrapped(tmp_path_factory):
    """A home whose registry holds a bootstrapped Production version 1 (built once per session, read-only:
    a test that changes a home copies it first, as ``fresh`` does)."""

    def bootstrap(home: Path) -> None:
        from mlops_core.data import make_datasets
        from mlops_core.pipeline import run

        settings = Settings(home=home, **FAST)
        make_datasets(settings)
        result = run(settings)
        assert result.bootstrapped == "1" and result.status == "no_drift"

    return Settings(home=_built_once(tmp_path_factory, "boot", bootstrap), **FAST)


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

    def stage(home: Path) -> None:
        from mlops_core.data import make_datasets
        from mlops_core.pipeline import run

        shutil.copytree(bootstrapped.home, home)
        s = bootstrapped.replace(home=home, tracking_uri="")
        make_datasets(s, seed=5, drift=0.5, write_train=False)
        result = run(s.replace(min_improvement=1.0))
        assert (result.production, result.staging) == ("1", "2")

    return bootstrapped.replace(home=_built_once(tmp_path_factory, "ab-home", stage), tracking_uri="")
