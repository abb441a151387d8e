"""The watcher daemon: every way of dropping a batch runs the chain once, failures and SIGTERM are clean.

Integration tests start the real daemon (``python -m watcher``) on a private copy of a bootstrapped
home and count runs from its key=value log lines; unit tests drive :class:`watcher.Watcher`
in-process with a fake runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
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
from mlops_core.registry import PRODUCTION, STAGING, Registry

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 90.0  # one chain run in a child process: ~5 s without drift, ~10 s with training
_PAIR = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S+)')
slow = pytest.mark.slow  # starts the daemon, whose runs import MLflow (and PyCaret on drift) in a child


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def touch(path: Path) -> None:
    """What the ``touch`` command does to an existing file (open for writing, set times, close).

    ``Path.touch`` only sets the times (an Attrib event); the command also gives a Closed event.
    """
    subprocess.run(["touch", str(path)], check=True)


def parse(line: str) -> dict:
    """One key=value log line as a dict (quoted values unquoted)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _PAIR.findall(line)}


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


def seed_state(settings: Settings) -> None:
    """Record the home's current.csv as processed, as a daemon that ran before would have."""
    digest = sha(settings.current_csv.read_bytes())
    watcher.save_state(settings.home / "state" / "watcher.json",
                       {"target": str(settings.current_csv), "sha256": digest, "outcome": "processed"})


def registry_state(settings: Settings):
    reg = Registry(settings)
    return reg.aliases(), reg.versions()


def assert_registry_consistent(settings: Settings) -> dict:
    """Both aliases exist and point at existing versions whose lifecycle tag says what they are."""
    aliases, versions = registry_state(settings)
    by_version = {v["version"]: v for v in versions}
    assert set(aliases) == {PRODUCTION, STAGING}, aliases
    for alias, version in aliases.items():
        assert version in by_version, f"{alias} points at missing version {version}"
        assert by_version[version]["lifecycle"] in (PRODUCTION, STAGING), (alias, by_version[version])
    assert by_version[aliases[PRODUCTION]]["lifecycle"] == PRODUCTION
    live = {v for v, d in by_version.items() if d["lifecycle"] in (PRODUCTION, STAGING)}
    assert live <= set(aliases.values()), f"versions tagged live without an alias: {live - set(aliases.values())}"
    return aliases


class Daemon:
    """The real ``python -m watcher`` process on a home, logging to a file the test reads."""

    def __init__(self, settings: Settings, log_path: Path):
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        env = {**os.environ, "MLOPS_MODELS": ",".join(FAST["models"]), "MLOPS_FOLD": str(FAST["fold"]),
               "MLOPS_SETTLE_SECONDS": "0.5", "MLOPS_LOG_FORMAT": "text"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "watcher", "--home", str(self.settings.home)],
                                         cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log)
        self.wait_for(lambda r: r.get("watcher") == "started", after=self.mark())
        return self

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still there after 15 s; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def records(self) -> list[dict]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [parse(line) for line in text.splitlines()]

    def mark(self) -> int:
        return len(self.records())

    def wait_for(self, predicate, *, after: int, timeout: float = RUN_TIMEOUT) -> dict:
        """The first log record after index ``after`` that matches, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records()[after:]:
                if predicate(record):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"watcher exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no matching log line within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def runs(self, after: int = 0) -> list[dict]:
        return [r for r in self.records()[after:] if r.get("logger") == "watcher" and r.get("run") == "start"]

    def ended(self, digest: str, *, after: int, timeout: float = RUN_TIMEOUT) -> dict:
        """The record that ends the run on ``digest`` (done, rejected or failed)."""
        return self.wait_for(lambda r: r.get("run") in ("done", "rejected", "failed") and r.get("sha256") == digest,
                             after=after, timeout=timeout)

    def barrier(self) -> None:
        """Touch the target and wait for its skip: the worker is serial, so earlier work is finished."""
        mark = self.mark()
        touch(self.settings.current_csv)
        self.wait_for(lambda r: r.get("reason") == "unchanged-hash", after=mark)

    def tail(self, n: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])


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


@slow
def test_two_batches_within_a_second_give_at_most_two_runs_last_on_newest(daemon, batches):
    target = daemon.settings.current_csv
    first, second = batches("drift", 201), batches("drift", 202)
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
    aliases = assert_registry_consistent(daemon.settings)
    assert aliases[PRODUCTION] == (last["production"])


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
    # the drift stage is logged when it ends: a drifted batch goes straight into training
    daemon.wait_for(lambda r: r.get("stage") == "drift", after=mark)

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
class FakeRunner:
    """Record the content of each run; optionally hold a run open until released."""

    def __init__(self, outcome: str = "processed"):
        self.outcome = outcome
        self.digests: list[str] = []
        self.finished: list[str] = []  # the batch's content again when the run ends
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.done = threading.Semaphore(0)

    def __call__(self, settings, stop, batch):
        digest = sha(batch.read_bytes())
        self.digests.append(digest)
        self.started.set()
        while not self.release.wait(0.05):
            if stop.is_set():
                return watcher.Outcome("aborted")
        self.finished.append(sha(batch.read_bytes()))
        self.done.release()
        return watcher.Outcome(self.outcome, digest=digest, status="no_drift" if self.outcome == "processed" else "")


@pytest.fixture
def quick(settings):
    settings = settings.replace(settle_seconds=0.2)
    settings.data_dir.mkdir(parents=True)
    return settings


def _acquire(sem: threading.Semaphore, timeout: float = 20.0) -> None:
    assert sem.acquire(timeout=timeout), "timed out waiting for a run to finish"


def test_watcher_start_stop_leaves_no_thread(quick):
    before = set(threading.enumerate())
    runner = FakeRunner()
    w = watcher.Watcher(quick, runner=runner)
    w.start()
    assert w.alive() and set(threading.enumerate()) > before
    quick.current_csv.write_bytes(b"a,b\n1,2\n")
    _acquire(runner.done)
    w.stop()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) == before


def test_events_during_a_run_coalesce_into_one_follow_up_on_the_newest_content(quick):
    runner = FakeRunner()
    runner.release.clear()
    target = quick.current_csv
    with watcher.Watcher(quick, runner=runner) as w:
        target.write_bytes(b"first\n")
        assert runner.started.wait(20)
        for text in (b"second\n", b"third\n", b"fourth\n"):
            target.write_bytes(text)
        runner.release.set()
        _acquire(runner.done)
        _acquire(runner.done)
        assert w.runs == 2
    assert runner.digests == [sha(b"first\n"), sha(b"fourth\n")]
    # the run read a private copy: rewriting the target during the run did not change its input
    assert runner.finished == runner.digests
    assert list(quick.home.glob("state/batch-*")) == []


def test_rejected_content_is_not_retried_but_a_failed_run_is(quick):
    target = quick.current_csv
    rejecting = FakeRunner("rejected")
    with watcher.Watcher(quick, runner=rejecting) as w:
        target.write_bytes(b"bad\n")
        _acquire(rejecting.done)
        touch(target)
        target.write_bytes(b"bad\n")  # same bytes again
        target.write_bytes(b"other\n")  # new bytes
        _acquire(rejecting.done)
        assert w.state["outcome"] == "rejected"
    assert rejecting.digests == [sha(b"bad\n"), sha(b"other\n")]

    failing = FakeRunner("failed")
    with watcher.Watcher(quick, runner=failing, retry_first=600) as w:  # restarted: the state is read back
        assert w.state["sha256"] == sha(b"other\n")
        target.write_bytes(b"flaky\n")
        _acquire(failing.done)
        touch(target)  # the same bytes after a failure are worth another try
        _acquire(failing.done)
    assert failing.digests == [sha(b"flaky\n")] * 2

    with watcher.Watcher(quick, runner=failing, retry_first=0.2) as w:  # and a failure retries by itself
        _acquire(failing.done)  # at start: the remembered outcome is "failed"
        _acquire(failing.done)  # 0.2 s later, with no event at all
    assert failing.digests == [sha(b"flaky\n")] * 4


def test_handler_keeps_only_writes_that_land_on_the_target(tmp_path):
    target = tmp_path / "current.csv"
    other = tmp_path / "train.csv"
    seen: list[str] = []
    handler = watcher.TargetHandler(target, seen.append)
    for event in (FileOpenedEvent(str(target)), FileClosedNoWriteEvent(str(target)), FileAttribEvent(str(target)),
                  DirModifiedEvent(str(tmp_path)), FileClosedEvent(str(other)), FileModifiedEvent(str(other)),
                  FileMovedEvent(str(target), str(other)),
                  FileClosedEvent(str(target)), FileModifiedEvent(str(target)), FileCreatedEvent(str(target)),
                  FileMovedEvent(str(tmp_path / ".tmp"), str(target))):
        handler.dispatch(event)
    assert seen == ["closed", "modified", "created", "moved"]


def test_log_lines_are_key_value_and_parse_back():
    fmt = watcher.LogfmtFormatter("text")
    record = watcher.log.makeRecord("watcher", 40, __file__, 1, "run=rejected reason=%s",
                                    (watcher.kv('bad "file"\nsecond line'),), None)
    line = fmt.format(record)
    assert "\n" not in line and line.startswith("ts=")
    assert parse(line)["reason"] == 'bad "file"\nsecond line' and parse(line)["level"] == "error"
    journal = watcher.LogfmtFormatter("journal").format(record)
    assert journal.startswith("<3>level=error") and "ts=" not in journal
    plain = watcher.log.makeRecord("mlops_core.x", 20, __file__, 1, "bootstrapped %s", ("v1",), None)
    assert parse(fmt.format(plain))["msg"] == "bootstrapped v1"


def test_live_ab_promotion_is_evaluated_on_its_schedule_between_runs(fresh, caplog):
    """With MLOPS_AB_PROMOTE on, the worker asks mlops_core.live.decide_live every ab_promote_minutes."""
    settings = fresh.replace(settle_seconds=0.2, ab_promote=True, ab_promote_minutes=0.01)  # every 0.6 s
    caplog.set_level("INFO", logger="watcher")
    w = watcher.Watcher(settings, runner=FakeRunner())
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


OURS = re.compile(r"^ts=\S+ level=\w+ logger=(watcher|mlops_core(\.\w+)*) ")


@slow
def test_a_drifted_run_through_the_watcher_prints_only_our_own_lines(fresh, tmp_path):
    """No library chatter a user cannot act on: MLflow's pickle caution and registration prints, PyCaret's
    FutureWarnings, MLflow's database set-up lines. Every line is one of ours, in our format."""
    d = Daemon(fresh, tmp_path / "watcher.log").start()
    try:
        make_datasets(fresh, drift=0.5, concept=0.5, seed=2, write_train=False)
        assert d.ended(sha(fresh.current_csv.read_bytes()), after=0)["status"] in {"promoted", "staged"}
    finally:
        assert d.stop() == 0
    lines = [line for line in d.log_path.read_text().splitlines() if line.strip()]
    assert any("registered version 2" in line for line in lines)  # what MLflow printed, said once, by us
    foreign = [line for line in lines if not OURS.match(line)]
    assert not foreign, "\n".join(foreign[:20])
