"""What the watcher tests share: the real daemon as a process, a fake runner, log parsing, registry checks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST

from mlops_core.config import Settings
from mlops_core.registry import PRODUCTION, STAGING, Registry
from mlops_watcher.child import Outcome
from mlops_watcher.state import save_state

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 90.0  # one chain run in a child process: ~5 s without drift, ~10 s with training
_PAIR = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S+)')


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


def seed_state(settings: Settings) -> None:
    """Record the home's current.csv as processed, as a daemon that ran before would have."""
    digest = sha(settings.current_csv.read_bytes())
    save_state(settings.home / "state" / "watcher.json",
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

    def __call__(self, settings, stop, batch, digest):
        assert digest == sha(batch.read_bytes()), "the watcher's digest is of the copy the run reads"
        self.digests.append(digest)
        self.started.set()
        while not self.release.wait(0.05):
            if stop.is_set():
                return Outcome("aborted")
        self.finished.append(sha(batch.read_bytes()))
        self.done.release()
        return Outcome(self.outcome, digest=digest, status="no_drift" if self.outcome == "processed" else "")


def acquire(sem: threading.Semaphore, timeout: float = 20.0) -> None:
    assert sem.acquire(timeout=timeout), "timed out waiting for a run to finish"
