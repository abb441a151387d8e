"""server/store.py: Production and Staging in memory, refreshed from the registry on a tick and at once on an
alias-move notice; what a failing registry, a vanished alias or an unloadable version leave serving; the scheduler
and the notice watcher; the frozen heap."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from _registries import FakeRegistry

from mlops_core.config import Settings
from mlops_core.registry import Registry
from server import create_app

ROW = {"pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}


def _post(client, body):
    return client.post("/predict", json=body)


def test_refresh_loads_only_what_changed_and_shares_a_synced_version(ab_home):
    registry = FakeRegistry(Registry(ab_home), {"production": "1", "staging": "1"})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": ab_home, "MLOPS_REGISTRY": registry,
                      "MLOPS_AUTOSTART": False})
    store = app.extensions["mlops_store"]
    first = store.refresh()
    assert registry.loads == ["1"] and first.production is first.staging
    store.refresh()
    assert registry.loads == ["1"] and registry.alias_calls == 2
    registry.alias_map["staging"] = "2"
    second = store.refresh()
    assert registry.loads == ["1", "2"]
    assert second.production is first.production and second.staging.version == "2"
    registry.alias_map["production"] = "2"  # promotion: the loaded challenger is reused, not downloaded
    third = store.refresh()
    assert registry.loads == ["1", "2"] and third.production is second.staging
    assert registry.pipeline_loads == []  # both versions served from their compiled artifacts


def test_failing_registry_keeps_the_last_good_models(ab_home):
    registry = FakeRegistry(Registry(ab_home), {"production": "1", "staging": "2"})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": ab_home, "MLOPS_REGISTRY": registry,
                      "MLOPS_AUTOSTART": False})
    store, client = app.extensions["mlops_store"], app.test_client()
    good = store.refresh()
    registry.down = True
    bad = store.refresh()
    assert bad.production is good.production and bad.staging is good.staging
    assert bad.error and "connection refused" in bad.error and bad.failures == 1
    assert _post(client, {"user_id": 3, "features": ROW}).get_json()["version"] == "2"
    models = client.get("/models")
    text = models.get_data(as_text=True)
    assert "connection refused" in models.get_json()["refresh"]["error"] and "s3cret" not in text
    assert models.get_json()["refresh"]["ok"] is False
    assert "mlops_refresh_failures_total 1.0" in client.get("/metrics").get_data(as_text=True)
    registry.down = False
    recovered = store.refresh()
    assert recovered.error is None and recovered.last_error == bad.error and recovered.failures == 1
    assert client.get("/models").get_json()["refresh"]["ok"] is True


def test_a_vanished_production_alias_keeps_serving(ab_home):
    registry = FakeRegistry(Registry(ab_home), {"production": "1"})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": ab_home, "MLOPS_REGISTRY": registry,
                      "MLOPS_AUTOSTART": False})
    store = app.extensions["mlops_store"]
    store.refresh()
    registry.alias_map.clear()
    snapshot = store.refresh()
    assert snapshot.production.version == "1" and "no 'production' alias" in snapshot.error


def test_a_version_that_fails_to_load_keeps_the_old_one(ab_home):
    registry = FakeRegistry(Registry(ab_home), {"production": "1", "staging": "2"})
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": ab_home, "MLOPS_REGISTRY": registry,
                      "MLOPS_AUTOSTART": False})
    store = app.extensions["mlops_store"]
    store.refresh()
    registry.alias_map["staging"] = "99"
    snapshot = store.refresh()
    assert snapshot.staging.version == "2" and "version 99" in snapshot.error


# -- scheduler lifecycle ---------------------------------------------------------------------
def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_scheduler_ticks_and_no_thread_outlives_it(tmp_path):
    initial = set(threading.enumerate())
    registry = FakeRegistry(None, {})
    settings = Settings(home=tmp_path, refresh_seconds=0.2)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": registry})
    store = app.extensions["mlops_store"]
    try:
        assert store.running and registry.alias_calls == 1  # autostart: first refresh before serving
        store.start()  # a second start is a no-op, not a second scheduler
        assert _wait(lambda: registry.alias_calls >= 4, 5), "the scheduler does not tick"
        started = set(threading.enumerate()) - initial
        names = [t.name for t in started]
        assert names.count("APScheduler") == 1 and names.count("mlops-notices") == 1 and len(started) <= 3, started
        models = app.test_client().get("/models").get_json()
        assert models["scheduler_running"] is True and models["notices_watched"] is True
    finally:
        store.stop()
    assert not store.running
    assert _wait(lambda: set(threading.enumerate()) <= initial, 5), set(threading.enumerate()) - initial
    calls = registry.alias_calls
    time.sleep(0.5)
    assert registry.alias_calls == calls
    store.stop()  # stopping twice is harmless


def test_an_alias_move_notice_refreshes_at_once_and_a_poke_too(tmp_path):
    """The tick is a minute away: the notice another process writes after moving an alias (here: announce, as
    Registry.set_alias does), and a webhook's poke, each start a refresh within a few watcher intervals."""
    from mlops_core.notices import POLL_SECONDS, announce

    registry = FakeRegistry(None, {})
    settings = Settings(home=tmp_path, refresh_seconds=60)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": registry})
    store, client = app.extensions["mlops_store"], app.test_client()
    try:
        assert registry.alias_calls == 1 and store.snapshot.cause == "start"
        announce(settings.replace(model_name="another-model"), alias="production", version="7")
        time.sleep(5 * POLL_SECONDS)
        assert registry.alias_calls == 1  # another model's move: nothing to do
        started = time.monotonic()
        announce(settings, alias="staging", version="2")
        assert _wait(lambda: registry.alias_calls == 2, 2), "the notice did not start a refresh"
        assert time.monotonic() - started < 0.5 + POLL_SECONDS and store.snapshot.cause == "notice"
        store.changed("webhook")
        assert _wait(lambda: registry.alias_calls == 3, 2) and store.snapshot.cause == "webhook"
        assert client.get("/models").get_json()["refresh"]["cause"] == "webhook"
        text = client.get("/metrics").get_data(as_text=True)
        for cause in ("start", "notice", "webhook"):
            assert f'mlops_refresh_total{{cause="{cause}"}} 1.0' in text, text
        assert 'cause="poll"' not in text
    finally:
        store.stop()
    assert not store.watching


class _CyclicModel:
    """A stand-in for a loaded version whose objects form a reference cycle, as real pipelines' do."""

    def __init__(self, version):
        self.version, self.run_id, self.me = str(version), "", self


class _CyclicRegistry:
    def __init__(self):
        self.alias_map = {"production": "1"}

    def aliases(self):
        return dict(self.alias_map)

    def load_model(self, version):
        return _CyclicModel(version)


@pytest.mark.parametrize("refreeze", [True, False])
def test_a_frozen_heap_still_frees_a_replaced_models_cycles_after_the_refreeze(tmp_path, monkeypatch, refreeze):
    import weakref

    from server import store as store_module
    from server.store import ModelStore

    monkeypatch.setattr(store_module, "REFREEZE_SECONDS", 0.0 if refreeze else 3600.0)
    registry = _CyclicRegistry()
    store = ModelStore(Settings(home=tmp_path), registry=registry)
    try:
        store.refresh()
        first = weakref.ref(store.snapshot.production)
        store.freeze_heap()
        assert gc.get_freeze_count() > 0
        registry.alias_map["production"] = "2"
        store.refresh()  # the change: requests may still hold version 1, nothing is collected yet
        assert store.snapshot.production.version == "2"
        store.refresh()  # the tick after: unfreeze, collect, freeze (when due)
        gc.collect()
        if refreeze:
            assert first() is None, "the replaced model's cycle was never collected"
            assert gc.get_freeze_count() > 0
        else:  # what the re-freeze is for: a frozen cycle outlives every collection
            assert first() is not None
    finally:
        gc.unfreeze()
        gc.collect()


