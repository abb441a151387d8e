"""mlops_core/notices.py: every alias move writes a notice; a watcher acts on it within its interval, skips
another model's and leaves no thread behind; under real gunicorn every worker serves a move within seconds while
its poll is a minute away."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import requests

from mlops_core.config import Settings
from mlops_core.notices import POLL_SECONDS, NoticeWatcher, announce, notice_path, read_notice
from mlops_core.registry import Registry

from _services import Gunicorn, wait_for


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_the_notice_sits_beside_the_embedded_database_else_under_the_home(tmp_path):
    assert notice_path(Settings(home=tmp_path)) == tmp_path / ".mlops" / "registry-changed"
    elsewhere = Settings(home=tmp_path / "a", tracking_uri=f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}")
    assert notice_path(elsewhere) == tmp_path / "shared" / ".mlops" / "registry-changed"  # every home using it
    remote = Settings(home=tmp_path / "b", tracking_uri="http://127.0.0.1:5000")
    assert notice_path(remote) == tmp_path / "b" / ".mlops" / "registry-changed"


def test_a_notice_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, caplog):
    settings = Settings(home=tmp_path)
    (tmp_path / ".mlops").write_text("a file where the folder would be")
    assert announce(settings, alias="staging", version="2") is False
    assert "next poll" in caplog.text


def test_the_watcher_reports_each_replacement_and_pokes_skips_other_models_and_stops(tmp_path):
    settings = Settings(home=tmp_path)
    path = notice_path(settings)
    announce(settings, alias="production", version="1")  # before the watcher: not reported
    seen: list[tuple[str, float]] = []
    initial = set(threading.enumerate())
    watcher = NoticeWatcher(path, lambda cause: seen.append((cause, time.monotonic())), model=settings.model_name)
    watcher.start()
    try:
        time.sleep(3 * POLL_SECONDS)
        assert seen == []
        for version in ("2", "3"):  # two moves in a row: a new file each, both seen
            moved, count = time.monotonic(), len(seen)
            announce(settings, alias="staging", version=version)
            assert _wait(lambda count=count: len(seen) > count, 2)
            assert seen[-1][0] == "notice" and seen[-1][1] - moved < 0.5
        assert read_notice(path)["version"] == "3"
        announce(settings.replace(model_name="someone-else"), alias="staging", version="9")
        time.sleep(3 * POLL_SECONDS)
        assert len(seen) == 2
        watcher.poke("webhook")
        assert _wait(lambda: len(seen) == 3, 2) and seen[-1][0] == "webhook"
        announce(settings, alias="staging", version="4", source="webhook")  # a webhook's receiver wrote it
        assert _wait(lambda: len(seen) == 4, 2) and seen[-1][0] == "webhook"
        assert [t.name for t in set(threading.enumerate()) - initial] == ["mlops-notices"]
    finally:
        watcher.stop()
    assert not watcher.running and set(threading.enumerate()) <= initial


def test_every_alias_move_of_the_registry_writes_a_notice(fresh):
    registry = Registry(fresh)
    path = notice_path(fresh)
    assert json.loads(path.read_text())["version"] == "1"  # the bootstrap pointed both aliases at version 1
    path.unlink()
    v2 = registry.register(f"models:/{registry.name}/1", {"mlops.source": "test"})
    assert not path.exists()  # registering moves no alias
    moves = {"make_challenger": lambda: registry.make_challenger(v2), "sync": registry.sync,
             "promote": lambda: registry.promote(v2), "rollback": registry.rollback}
    for name, move in moves.items():
        before = path.stat().st_mtime_ns if path.exists() else None
        move()
        notice = json.loads(path.read_text())
        assert path.stat().st_mtime_ns != before, name
        assert notice["model"] == fresh.model_name and notice["source"] == "registry", notice
        assert registry.aliases()[notice["alias"]] == notice["version"], (name, notice)  # the last move's


@pytest.fixture
def moving_home(ab_home, tmp_path) -> Settings:
    """A private copy of ab_home (Production v1, Staging v2) whose aliases a test may move."""
    dst = tmp_path / "home"
    shutil.copytree(ab_home.home, dst)
    return ab_home.replace(home=dst)


@pytest.mark.slow
def test_every_gunicorn_worker_serves_an_alias_move_within_seconds_with_the_poll_a_minute_away(moving_home, tmp_path):
    server = Gunicorn(moving_home.home, tmp_path / "cwd", env={"MLOPS_REFRESH_SECONDS": "60"})
    took = []
    try:
        server.wait_ready()
        assert wait_for(lambda: server.serves("1", "2"), 30), server.tail()
        registry = Registry(moving_home)
        # Staging synced to Production (loaded already), then a challenger each worker must load again
        for move, want in ((registry.sync, ("1", "1")), (lambda: registry.make_challenger("2"), ("1", "2"))):
            moved = time.monotonic()
            move()
            assert wait_for(lambda want=want: server.serves(*want), 10, 0.05), (want, server.tail())
            took.append(time.monotonic() - moved)
        assert max(took) < 3.0, took  # the poll is 60 s away: only the notice can have done it
        refreshes = server.refreshes()
        assert refreshes.get("poll", 0) == 0 and refreshes["notice"] >= 4, refreshes  # 2 workers x 2 moves
        assert requests.get(server.url + "/models", timeout=5).json()["notices_watched"] is True
    finally:
        abnormal = server.stop()
    assert not abnormal, abnormal
    print(f"alias move -> every worker serving it: {', '.join(f'{t:.2f} s' for t in took)}")

