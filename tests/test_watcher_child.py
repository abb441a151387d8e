"""The run child (mlops_watcher.child): the watcher never hangs on a run.

- the run child's result is read while it runs: a batch whose cells are 70 KB each is rejected in seconds
  with a bounded reason (the child used to block in its pipe write, and the daemon never ran again);
- a run has a wall time: past ``max_seconds`` the child is terminated and the run fails with ``Timeout``,
  and the watcher waits at least as long as that run took before it retries;
- :class:`DataValidationError` bounds each problem it lists (problems quote cell values).

These start real run children (``python -m mlops_watcher.child``), which import MLflow and PyCaret:
a few seconds each.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from _watching import FakeRunner, acquire

from mlops_core.data import make_datasets
from mlops_core.errors import MAX_PROBLEM_CHARS, DataValidationError, shorten
from mlops_core.pipeline import pipeline_lock
from mlops_watcher.child import MAX_REASON, ChildRunner
from mlops_watcher.daemon import Watcher

HUGE = 70_000  # characters in one cell: more than a pipe's buffer (64 KiB on Linux)


def child_pids(caplog) -> list[int]:
    """The run children started, from the runner's ``run=child pid=N`` log lines."""
    return [int(pid) for pid in re.findall(r"run=child pid=(\d+)", caplog.text)]


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture
def runner():
    r = ChildRunner(spare=False, grace=2.0)
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_a_refused_batch_imports_neither_mlflow_nor_pycaret_and_a_valid_one_no_pycaret(fresh, runner):
    """A run child imports what its batch needs: validation reads the registry without MLflow; a batch without
    drift records its run (MLflow) but trains nothing (no PyCaret)."""
    good = fresh.current_csv.read_bytes()
    bad = fresh.current_csv.with_name("bad.csv")
    bad.write_bytes(b"pclass,sex,survived\n" + b"1,male,0\n" * 20)
    refused = runner(fresh, threading.Event(), bad)
    assert refused.outcome == "rejected" and "missing column(s)" in refused.reason, refused
    assert refused.result["imported"] == []
    plain = fresh.current_csv.with_name("plain.csv")
    plain.write_bytes(good)
    kept = runner(fresh, threading.Event(), plain)
    assert kept.outcome == "processed" and kept.status in ("skipped", "no_drift"), kept
    assert kept.result["imported"] == ["mlflow"]


@pytest.mark.timeout(90)
def test_a_batch_with_70kb_cells_is_rejected_promptly_with_a_bounded_reason(settings, runner, caplog):
    caplog.set_level("INFO", logger="watcher")
    make_datasets(settings)
    frame = pd.read_csv(settings.current_csv)
    frame["age"] = frame["age"].astype(object)
    frame.loc[[0, 5, 9], "age"] = ["x" * HUGE, "y" * HUGE, "z" * HUGE]  # three examples: 210 KB quoted
    frame.to_csv(settings.current_csv, index=False)
    assert settings.current_csv.stat().st_size > 3 * HUGE

    outcome = runner(settings, threading.Event(), settings.current_csv)  # bounded by the test's timeout

    assert outcome.outcome == "rejected" and outcome.error == "DataValidationError", outcome
    assert len(outcome.reason) <= MAX_REASON
    assert str(settings.current_csv) in outcome.reason
    assert "column 'age': 3 non-numeric value(s)" in outcome.reason
    assert "xxxxx" in outcome.reason and "chars]" in outcome.reason  # the cell, shortened, with its length
    [pid] = child_pids(caplog)
    assert_gone(pid)


@pytest.mark.timeout(60)
def test_a_run_past_its_wall_time_is_terminated_and_fails_with_timeout(settings, caplog):
    caplog.set_level("INFO", logger="watcher")
    make_datasets(settings)  # an empty registry: the run would bootstrap (train) after its imports
    runner = ChildRunner(spare=False, grace=2.0, max_seconds=2.0)
    try:
        started = time.monotonic()
        outcome = runner(settings, threading.Event(), settings.current_csv)
        seconds = time.monotonic() - started
    finally:
        runner.close()

    assert (outcome.outcome, outcome.error, outcome.reason) == ("failed", "Timeout", "run exceeded 2 s"), outcome
    assert 2.0 <= seconds < 2.0 + 2.0 + 3.0  # the wall time, at most the SIGTERM grace, some slack
    [pid] = child_pids(caplog)
    assert_gone(pid)
    assert "run=timeout" in caplog.text


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _servers() -> list[int]:
    """Our child processes that are run servers (``python -m mlops_watcher.child --serve FD``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _parent(int(stat.parent.name)) == os.getpid() and b"--serve" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.timeout(120)
def test_runs_are_forked_from_one_run_server_and_stopped_by_their_pid(settings, caplog):
    """With spares on, each run is a fork of one warm run server, not a process the watcher starts: a shutdown stops
    the run by its pid, the server forks the next, and closing the runner ends the server."""
    caplog.set_level("INFO", logger="watcher")
    make_datasets(settings)
    bad = settings.current_csv.with_name("bad.csv")
    bad.write_bytes(b"pclass,sex,survived\n" + b"1,male,0\n" * 20)
    runner, stop, outcomes = ChildRunner(grace=2.0), threading.Event(), []
    try:
        runner.warm(settings)
        [server] = _servers()
        outcomes.append(runner(settings, threading.Event(), bad))
        with pipeline_lock(settings):  # the next run waits for the home's lock: it runs until it is stopped
            waiting = threading.Thread(target=lambda: outcomes.append(runner(settings, stop, settings.current_csv)))
            waiting.start()
            deadline = time.monotonic() + 60
            while len(child_pids(caplog)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _parent(child_pids(caplog)[1]) == server  # forked by the server, while it runs
            stop.set()
            waiting.join(30)
        assert _servers() == [server]
    finally:
        runner.close()

    rejected, stopped = outcomes
    assert rejected.outcome == "rejected" and "missing column(s)" in rejected.reason, rejected
    assert stopped.outcome == "aborted" and "run=terminate" in caplog.text, stopped
    runs = child_pids(caplog)
    assert len(set(runs)) == 2 and server not in runs
    for pid in (*runs, server):
        assert_gone(pid)


class SlowTimeout(FakeRunner):
    """A run that takes ``seconds`` and then reports what ChildRunner reports past its wall time."""

    def __init__(self, seconds: float):
        super().__init__("failed")
        self.seconds = seconds
        self.starts: list[float] = []

    def __call__(self, settings, stop, batch, digest):
        self.starts.append(time.monotonic())
        outcome = super().__call__(settings, stop, batch, digest)
        stop.wait(self.seconds)
        outcome.error, outcome.reason = "Timeout", f"run exceeded {self.seconds:g} s"
        return outcome


def test_a_timed_out_run_is_retried_no_sooner_than_it_ran(settings):
    quick = settings.replace(settle_seconds=0.1)
    quick.data_dir.mkdir(parents=True)
    runner = SlowTimeout(0.8)
    with Watcher(quick, runner=runner, retry_first=0.05) as w:  # the plain backoff would be 0.05 s
        quick.current_csv.write_bytes(b"slow\n")
        acquire(runner.done)
        acquire(runner.done)  # retried by itself
        assert w.state["outcome"] == "failed" and w.state["error"] == "Timeout"
    first, second = runner.starts[:2]
    assert second - first >= 2 * 0.8  # the run's 0.8 s, then at least 0.8 s of waiting


def test_the_watcher_gives_its_runner_the_configured_wall_time(settings):
    w = Watcher(settings)
    assert w.runner.max_seconds == settings.run_timeout_seconds == 3600.0
    with pytest.raises(ValueError):
        ChildRunner(max_seconds=0)
    assert Watcher(settings.replace(run_timeout_seconds=7.5)).runner.max_seconds == 7.5
    with pytest.raises(ValueError, match="run_timeout_seconds must be > 0"):
        settings.replace(run_timeout_seconds=0)


def test_the_watcher_bounds_any_runner_reason(settings):
    quick = settings.replace(settle_seconds=0.1)
    quick.data_dir.mkdir(parents=True)

    class Loud(FakeRunner):
        def __call__(self, settings, stop, batch, digest):
            outcome = super().__call__(settings, stop, batch, digest)
            outcome.reason = "r" * 1_000_000
            return outcome

    runner = Loud("rejected")
    with Watcher(quick, runner=runner) as w:
        quick.current_csv.write_bytes(b"loud\n")
        acquire(runner.done)
        deadline = time.monotonic() + 10
        while w.state.get("outcome") != "rejected" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert w.state["outcome"] == "rejected"
    assert len(w.state["reason"]) <= MAX_REASON and w.state["reason"].endswith("[1,000,000 chars]")


def test_data_validation_error_bounds_each_problem():
    long = f"column 'age': 1 non-numeric value(s) such as ['{'x' * HUGE}']"
    err = DataValidationError("batch.csv", [long, "missing column(s) ['fare']"])
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in err.problems)
    assert err.problems[0].startswith("column 'age': 1 non-numeric value(s) such as ['xxx")
    assert err.problems[0].endswith(f"… [{len(long):,} chars]")
    assert err.problems[1] == "missing column(s) ['fare']"  # short problems are kept as they are
    assert str(err) == "batch.csv: " + "; ".join(err.problems) and len(str(err)) < 2 * MAX_PROBLEM_CHARS

    many = DataValidationError("batch.csv", [f"problem {i}" for i in range(1000)])
    assert len(str(many)) < 5_000 and many.problems[-1] == "… and 951 more problem(s)"

    assert shorten("abc", 10) == "abc" and shorten("a" * 20, 20) == "a" * 20
    assert len(shorten("a" * 21, 20)) == 20 and shorten("a" * 21, 20).endswith("… [21 chars]")
