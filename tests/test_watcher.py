"""The watcher daemon (watcher.py, mlops_watcher.daemon, .state, .logs): every way of dropping a batch runs the
chain once, failures and SIGTERM are clean.

Integration tests start the real daemon (``python -m watcher``) on a private copy of a bootstrapped
home and count runs from its key=value log lines; unit tests drive :class:`mlops_watcher.daemon.Watcher`
in-process with a fake runner. The run child (mlops_watcher.child) has its own module, test_watcher_child.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from _watching import (
    Daemon,
    FakeRunner,
    acquire,
    assert_registry_consistent,
    parse,
    registry_state,
    seed_state,
    sha,
    touch,
)
from conftest import FAST
from watchdog.events import (
    DirModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

import watcher
from mlops_core.config import Settings
from mlops_core.data import make_datasets
from mlops_core.registry import PRODUCTION, Registry
from mlops_watcher import logs
from mlops_watcher.daemon import TargetHandler, Watcher

slow = pytest.mark.slow  # starts the daemon, whose runs import MLflow (and PyCaret on drift) in a child


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Distinct batch contents (bytes): ``("plain", seed)`` without drift, ``("drift", seed)`` drifted."""
    scratch = Settings(home=tmp_path_factory.mktemp("batches"), **FAST)
    cache: dict[tuple[str, int], bytes] = {}

    def make(kind: str, seed: int) -> bytes:
        if (kind, seed) not in cache:
            make_datasets(scratch, seed=seed, drift=0.5 if kind == "drift" else 0.0, write_train=False)
            cache[kind, seed] = scratch.current_csv.read_bytes()
        return cache[kind, seed]

    return make


@pytest.fixture
def daemon(fresh, tmp_path):
    """A started daemon on a fresh home whose current.csv was already processed; stopped afterwards."""
    seed_state(fresh)
    d = Daemon(fresh, tmp_path / "watcher.log")
    try:
        yield d.start()
    finally:
        d.stop()


# -- the real daemon --------------------------------------------------------------------------------------
@slow
def test_each_way_of_dropping_a_batch_runs_once_on_complete_content(daemon, batches, tmp_path):
    target = daemon.settings.current_csv
    start = daemon.mark()
    chunked, copied, rewritten, renamed = (batches("plain", s) for s in (101, 102, 103, 104))

    # a slow writer: four chunks over two seconds through one open handle
    mark = daemon.mark()
    size = len(chunked)
    with open(target, "wb") as fh:
        for i in range(4):
            fh.write(chunked[i * size // 4:(i + 1) * size // 4])
            fh.flush()
            if i < 3:
                time.sleep(2 / 3)
    assert daemon.ended(sha(chunked), after=mark)["status"] == "no_drift"

    mark = daemon.mark()  # cp
    (tmp_path / "copied.csv").write_bytes(copied)
    shutil.copyfile(tmp_path / "copied.csv", target)
    assert daemon.ended(sha(copied), after=mark)["status"] == "no_drift"

    mark = daemon.mark()  # rewrite in place
    target.write_bytes(rewritten)
    assert daemon.ended(sha(rewritten), after=mark)["status"] == "no_drift"

    mark = daemon.mark()  # temp file in the same folder, then rename over the target
    tmp = target.with_name(".current.csv.part")
    tmp.write_bytes(renamed)
    os.replace(tmp, target)
    assert daemon.ended(sha(renamed), after=mark)["status"] == "no_drift"

    daemon.barrier()  # touch: settles, hashes, skips
    mark = daemon.mark()  # the same bytes copied again
    (tmp_path / "again.csv").write_bytes(renamed)
    shutil.copyfile(tmp_path / "again.csv", target)
    daemon.wait_for(lambda r: r.get("reason") == "unchanged-hash", after=mark)
    daemon.barrier()

    assert [r["sha256"] for r in daemon.runs(after=start)] == [sha(c) for c in (chunked, copied, rewritten, renamed)]


#: a line of ours: key=value with a timestamp, from the watcher or the library
OURS = re.compile(r"^ts=\S+ level=\w+ logger=(watcher|mlops_core(\.\w+)*) ")


@slow
def test_two_drifted_batches_within_a_second_give_at_most_two_runs_last_on_newest_and_print_only_our_lines(
        fresh, batches, tmp_path):
    """Coalescing on the real daemon, and no library chatter a user cannot act on while it trains and registers:
    MLflow's pickle caution and registration prints, PyCaret's FutureWarnings, MLflow's database set-up lines.
    Every line of the daemon's log is one of ours, in our format (one daemon for both: each drifted run trains)."""
    seed_state(fresh)
    daemon = Daemon(fresh, tmp_path / "watcher.log").start()
    target = fresh.current_csv
    first, second = batches("drift", 201), batches("drift", 202)
    try:
        mark = daemon.mark()
        for content in (first, second):
            tmp = target.with_name(".incoming.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, target)
            # the second lands within a second of the first, typically while the first run is under way
            time.sleep(0.9)
        last = daemon.ended(sha(second), after=mark, timeout=180)
        assert last["run"] == "done" and last["status"] in ("promoted", "staged", "archived", "no_drift")
        daemon.barrier()

        runs = [r["sha256"] for r in daemon.runs(after=mark)]
        assert 1 <= len(runs) <= 2 and runs[-1] == sha(second)
        aliases = assert_registry_consistent(fresh)
        assert aliases[PRODUCTION] == (last["production"])
    finally:
        assert daemon.stop() == 0
    lines = [line for line in daemon.log_path.read_text().splitlines() if line.strip()]
    assert any("registered version 2" in line for line in lines)  # what MLflow printed, said once, by us
    foreign = [line for line in lines if not OURS.match(line)]
    assert not foreign, "\n".join(foreign[:20])


@slow
def test_bad_csv_is_rejected_registry_untouched_and_next_good_batch_runs(daemon, batches):
    target = daemon.settings.current_csv
    before = registry_state(daemon.settings)
    bad = b"pclass,sex,survived\n" + b"1,male,0\n" * 20
    mark = daemon.mark()
    target.write_bytes(bad)
    rejected = daemon.ended(sha(bad), after=mark)
    assert rejected["run"] == "rejected" and rejected["level"] == "error"
    assert rejected["error"] == "DataValidationError" and str(target) in rejected["reason"]
    assert "missing column(s) ['age', 'fare', 'sibsp', 'parch', 'embarked']" in rejected["reason"]
    assert registry_state(daemon.settings) == before

    mark = daemon.mark()
    daemon.barrier()  # the same bad bytes are not retried
    assert daemon.runs(after=mark) == []

    good = batches("plain", 301)
    mark = daemon.mark()
    shutil.copyfile(_write(daemon.settings.home / "good.csv", good), target)
    assert daemon.ended(sha(good), after=mark)["status"] == "no_drift"
    assert registry_state(daemon.settings)[0] == before[0]


@slow
def test_a_batch_dropped_while_down_is_processed_at_start(fresh, batches, tmp_path):
    d = Daemon(fresh, tmp_path / "watcher.log")
    state = fresh.home / "state" / "watcher.json"
    try:
        # no state yet: the daemon checks current.csv; the library knows it was processed at bootstrap
        d.start()
        first = sha(fresh.current_csv.read_bytes())
        assert d.ended(first, after=0)["status"] == "skipped"
        assert d.stop() == 0
        assert json.loads(state.read_text())["sha256"] == first

        missed = batches("plain", 401)
        fresh.current_csv.write_bytes(missed)
        mark = d.mark()
        d.start()
        assert d.ended(sha(missed), after=mark)["status"] == "no_drift"
        assert d.stop() == 0

        mark = d.mark()  # nothing new: the remembered hash spares a run
        d.start()
        d.wait_for(lambda r: r.get("reason") == "unchanged-hash", after=mark)
        assert d.runs(after=mark) == []
    finally:
        d.stop()


@slow
def test_sigterm_mid_run_exits_within_10s_and_leaves_registry_consistent(daemon, batches):
    target = daemon.settings.current_csv
    drifted = batches("drift", 501)
    mark = daemon.mark()
    target.write_bytes(drifted)
    daemon.wait_for(lambda r: r.get("run") == "start" and r.get("sha256") == sha(drifted), after=mark)
    # the drift step is logged when it ends: a drifted batch goes straight into training
    daemon.wait_for(lambda r: r.get("step") == "drift", after=mark)

    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(10)
    assert time.monotonic() - started < 10
    assert code == 0
    assert any(r.get("run") == "aborted" for r in daemon.records()[mark:]), daemon.tail()
    assert_registry_consistent(daemon.settings)
    state = json.loads((daemon.settings.home / "state" / "watcher.json").read_text())
    assert state["sha256"] != sha(drifted)  # not remembered: a restart processes it again


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# -- the watcher in-process, with a fake runner -------------------------------------------------------------
@pytest.fixture
def quick(settings):
    settings = settings.replace(settle_seconds=0.2)
    settings.data_dir.mkdir(parents=True)
    return settings





def test_watcher_start_stop_leaves_no_thread(quick):
    before = set(threading.enumerate())
    runner = FakeRunner()
    w = Watcher(quick, runner=runner)
    w.start()
    assert w.alive() and set(threading.enumerate()) > before
    quick.current_csv.write_bytes(b"a,b\n1,2\n")
    acquire(runner.done)
    w.stop()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) == before


def test_events_during_a_run_coalesce_into_one_follow_up_on_the_newest_content(quick):
    runner = FakeRunner()
    runner.release.clear()
    target = quick.current_csv
    with Watcher(quick, runner=runner) as w:
        target.write_bytes(b"first\n")
        assert runner.started.wait(20)
        for text in (b"second\n", b"third\n", b"fourth\n"):
            target.write_bytes(text)
        runner.release.set()
        acquire(runner.done)
        acquire(runner.done)
        assert w.runs == 2
    assert runner.digests == [sha(b"first\n"), sha(b"fourth\n")]
    # the run read a private copy: rewriting the target during the run did not change its input
    assert runner.finished == runner.digests
    assert list(quick.home.glob("state/batch-*")) == []


def test_rejected_content_is_not_retried_but_a_failed_run_is(quick):
    target = quick.current_csv
    rejecting = FakeRunner("rejected")
    with Watcher(quick, runner=rejecting) as w:
        target.write_bytes(b"bad\n")
        acquire(rejecting.done)
        touch(target)
        target.write_bytes(b"bad\n")  # same bytes again
        target.write_bytes(b"other\n")  # new bytes
        acquire(rejecting.done)
        assert w.state["outcome"] == "rejected"
    assert rejecting.digests == [sha(b"bad\n"), sha(b"other\n")]

    failing = FakeRunner("failed")
    with Watcher(quick, runner=failing, retry_first=600) as w:  # restarted: the state is read back
        assert w.state["sha256"] == sha(b"other\n")
        target.write_bytes(b"flaky\n")
        acquire(failing.done)
        touch(target)  # the same bytes after a failure are worth another try
        acquire(failing.done)
    assert failing.digests == [sha(b"flaky\n")] * 2

    with Watcher(quick, runner=failing, retry_first=0.2) as w:  # and a failure retries by itself
        acquire(failing.done)  # at start: the remembered outcome is "failed"
        acquire(failing.done)  # 0.2 s later, with no event at all
    assert failing.digests == [sha(b"flaky\n")] * 4


def test_handler_keeps_only_writes_that_land_on_the_target(tmp_path):
    target = tmp_path / "current.csv"
    other = tmp_path / "train.csv"
    seen: list[str] = []
    handler = TargetHandler(target, seen.append)
    for event in (FileOpenedEvent(str(target)), FileClosedNoWriteEvent(str(target)), FileAttribEvent(str(target)),
                  DirModifiedEvent(str(tmp_path)), FileClosedEvent(str(other)), FileModifiedEvent(str(other)),
                  FileMovedEvent(str(target), str(other)),
                  FileClosedEvent(str(target)), FileModifiedEvent(str(target)), FileCreatedEvent(str(target)),
                  FileMovedEvent(str(tmp_path / ".tmp"), str(target))):
        handler.dispatch(event)
    assert seen == ["closed", "modified", "created", "moved"]


def test_log_lines_are_key_value_and_parse_back():
    fmt = logs.LogfmtFormatter("text")
    record = watcher.log.makeRecord("watcher", 40, __file__, 1, "run=rejected reason=%s",
                                    (logs.kv('bad "file"\nsecond line'),), None)
    line = fmt.format(record)
    assert "\n" not in line and line.startswith("ts=")
    assert parse(line)["reason"] == 'bad "file"\nsecond line' and parse(line)["level"] == "error"
    journal = logs.LogfmtFormatter("journal").format(record)
    assert journal.startswith("<3>level=error") and "ts=" not in journal
    plain = watcher.log.makeRecord("mlops_core.x", 20, __file__, 1, "bootstrapped %s", ("v1",), None)
    assert parse(fmt.format(plain))["msg"] == "bootstrapped v1"


def test_live_ab_promotion_is_evaluated_on_its_schedule_between_runs(fresh, caplog):
    """With MLOPS_AB_PROMOTE on, the worker asks mlops_core.live.decide_live every ab_promote_minutes."""
    settings = fresh.replace(settle_seconds=0.2, ab_promote=True, ab_promote_minutes=0.01)  # every 0.6 s
    caplog.set_level("INFO", logger="watcher")
    w = Watcher(settings, runner=FakeRunner())
    w.start()
    try:
        deadline = time.monotonic() + 60
        while not [r for r in caplog.records if r.getMessage().startswith("ab=")] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        w.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ab=")]
    # no labelled traffic yet: the evaluation keeps the aliases as they are
    assert lines and lines[0].startswith("ab=kept version=- production=1 staging=1"), lines
    assert Registry(settings).aliases() == {"production": "1", "staging": "1"}
