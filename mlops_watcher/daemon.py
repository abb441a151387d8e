"""The daemon: events on the target → settle → hash → a run of the chain, one run at a time.

- :class:`TargetHandler` only turns filesystem events into "the target may have changed";
- :class:`Watcher` owns the observer and one worker thread that waits for the file to settle (a quiet period,
  size and mtime stable around the hash), skips content it already processed and runs the chain on a private
  copy of anything new; events arriving during a run coalesce into one follow-up; failures are retried with
  backoff; the live A/B decision runs on its own schedule between runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from mlops_core.config import Settings
from mlops_core.errors import shorten
from mlops_core.files import copy_hashing

from .child import MAX_REASON, ChildRunner, Outcome
from .logs import kv
from .state import SNAPSHOT_PREFIX, load_state, save_state

__all__ = ["TargetHandler", "Watcher", "OPEN_WRITER_WAIT", "RETRY_FIRST", "RETRY_MAX"]

log = logging.getLogger("watcher")

#: the events that can mean "new content at the target": on Linux (inotify) a writer's close gives Closed, an
#: ``os.replace`` from the same folder only Moved, a move from another folder only Created
_EVENTS = [FileClosedEvent, FileMovedEvent, FileCreatedEvent, FileModifiedEvent, FileDeletedEvent]
_KINDS = {FileClosedEvent: "closed", FileMovedEvent: "moved", FileCreatedEvent: "created",
          FileModifiedEvent: "modified", FileDeletedEvent: "deleted"}

#: a "modified" with no "closed" after it means a writer still holds the file open; wait this long at most
OPEN_WRITER_WAIT = 30.0
#: retries of a run that failed for a reason other than its content (registry down, lock busy, crash)
RETRY_FIRST, RETRY_MAX = 30.0, 600.0


#: the quiet time after a rename onto the target (a complete file) before it is read
RENAME_SETTLE_SECONDS = 0.05


# -- the handler: events in, "the target may have changed" out ----------------------------------------
class TargetHandler(FileSystemEventHandler):
    """Call ``notify(kind)`` for events that may have changed ``target``; ignore everything else."""

    def __init__(self, target: Path, notify: Callable[[str], None]):
        super().__init__()
        self.target = os.fspath(target)
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(type(event))
        if kind is None or event.is_directory:  # opened, closed-no-write (our own reads), attrib, dirs
            return
        path = event.dest_path if kind == "moved" else event.src_path
        if os.fsdecode(path) == self.target:
            self.notify(kind)


# -- the watcher -----------------------------------------------------------------------------------------
class Watcher:
    """Watch ``settings.current_csv`` and run the chain once per new, settled content.

    ``runner(settings, stop_event, batch, digest) -> Outcome`` runs the chain on ``batch``, a private copy of
    the settled content (so a writer starting on the target meanwhile cannot hand the run a half-written
    file); it defaults to :class:`ChildRunner`, tests pass a fake.
    """

    def __init__(self, settings: Settings, *,
                 runner: Callable[[Settings, threading.Event, Path, str], Outcome] | None = None,
                 state_path: Path | None = None, observer_factory: Callable = Observer,
                 open_writer_wait: float = OPEN_WRITER_WAIT, retry_first: float = RETRY_FIRST):
        self.settings = settings
        self.target = settings.current_csv
        self.state_path = Path(state_path or settings.home / "state" / "watcher.json")
        self.snapshots = self.state_path.parent
        self.runner = runner or ChildRunner(max_seconds=settings.run_timeout_seconds)
        self.settle = max(float(settings.settle_seconds), 0.05)
        self.open_writer_wait = max(open_writer_wait, self.settle)
        self.retry_first = retry_first
        self._observer_factory = observer_factory
        self._observer = None
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something may have changed: check the target
        self._stop = threading.Event()
        self._last_event = 0.0
        self._last_kind = ""
        self._running = False
        self._expect_close = False
        self._retry_at: float | None = None
        # live A/B promotion on a schedule, when switched on
        self._ab_at: float | None = (time.monotonic() + 60.0 * settings.ab_promote_minutes
                                     if settings.ab_promote or settings.ab_retire else None)
        self._failures = 0
        self.state: dict = {}
        self.runs = 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the state, start the observer and the worker; check the target once (missed while down)."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.state = load_state(self.state_path, self.target)
        for stale in self.snapshots.glob(f"{SNAPSHOT_PREFIX}*"):  # left by a daemon that was killed mid-run
            stale.unlink(missing_ok=True)
        self._observer = self._observer_factory()
        self._observer.schedule(TargetHandler(self.target, self.notify), str(self.target.parent),
                                recursive=False, event_filter=_EVENTS)
        self._observer.start()
        # inotify ends every write with "closed"; other backends never say "closed"
        self._expect_close = type(self._observer).__name__.startswith("Inotify")
        self._worker = threading.Thread(target=self._loop, name="watcher-worker")
        self._worker.start()
        if hasattr(self.runner, "warm"):
            self.runner.warm(self.settings)
        log.info("watcher=started target=%s settle_seconds=%s state=%s last_sha256=%s last_outcome=%s",
                 kv(self.target), self.settle, kv(self.state_path), self.state.get("sha256", "-"),
                 self.state.get("outcome", "-"))
        if self.target.exists():
            self.notify("startup")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; a run in progress is terminated. Joins every thread it started."""
        self._stop.set()
        self._wake.set()
        if self._observer is not None and self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout)
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout)
        if hasattr(self.runner, "close"):
            self.runner.close()
        log.info("watcher=stopped runs=%s", self.runs)

    def alive(self) -> bool:
        """True while both the observer and the worker are running."""
        return bool(self._observer and self._observer.is_alive() and self._worker and self._worker.is_alive())

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- events (observer thread) --------------------------------------------------------------------------
    def notify(self, kind: str) -> None:
        """Record that the target may have changed; the worker takes it from here."""
        if kind == "deleted":
            log.info("event=deleted path=%s decision=ignore", kv(self.target))
            return
        with self._lock:
            self._last_event = time.monotonic()
            self._last_kind = kind
            decision = "coalesce" if self._running else "schedule"
            self._wake.set()
        log.info("event=%s path=%s decision=%s", kind, kv(self.target), decision)

    # -- the worker --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._wait_for_wake() and self._wait_until_settled():
                    self._check()
        except Exception:  # a bug here must not leave a zombie daemon: main() sees the dead thread and exits 1
            log.exception("watcher=crashed")
            raise

    def _wait_for_wake(self) -> bool:
        while not self._stop.is_set():
            deadlines = [t for t in (self._retry_at, self._ab_at) if t is not None]
            timeout = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else 3600.0
            if self._wake.wait(timeout):
                return not self._stop.is_set()
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._retry_at = None
                log.info("retry=due sha256=%s failures=%s", self.state.get("sha256", "-"), self._failures)
                self.notify("retry")
            if self._ab_at is not None and time.monotonic() >= self._ab_at:
                self._ab_at = time.monotonic() + 60.0 * self.settings.ab_promote_minutes
                self._live_decision()
        return False

    def _live_decision(self) -> None:
        """Act on the live A/B's sequential test (promote: MLOPS_AB_PROMOTE, retire: MLOPS_AB_RETIRE), between runs."""
        from mlops_core.live import decide_live

        try:
            out = decide_live(self.settings)
        except Exception as err:  # the store or the registry is down: try again at the next tick
            log.error("ab=failed error=%s reason=%s", type(err).__name__, kv(err))
            return
        log.info("ab=%s version=%s production=%s staging=%s reason=%s", out["status"], out.get("version") or "-",
                 out.get("production") or "-", out.get("staging") or "-", kv(out.get("reason", "")))

    def _wait_until_settled(self) -> bool:
        """Wait for a quiet period; longer while a writer seems to hold the file open."""
        while not self._stop.is_set():
            with self._lock:
                last, kind = self._last_event, self._last_kind
                quiet = time.monotonic() - last
                # inotify ends every write with "closed": a trailing "modified" means the writer paused mid-file
                open_writer = kind == "modified" and self._expect_close
                # a file renamed onto the target (temp file + rename, the way to drop a batch) lands whole:
                # only a short window to gather a burst of drops, not the settle time a writer needs
                need = (self.open_writer_wait if open_writer else
                        min(self.settle, RENAME_SETTLE_SECONDS) if kind == "moved" else self.settle)
                if quiet >= need:
                    if open_writer:
                        log.info("check=proceed reason=no-close-event quiet_seconds=%.1f", quiet)
                    self._wake.clear()  # events from now on ask for another check
                    return True
            self._stop.wait(min(max(need - quiet, 0.01), max(self.settle, 0.05)))
        return False

    def _check(self) -> None:
        """Hash the settled target and run the chain when its content is new."""
        if self._stop.is_set():
            return
        pending = self.snapshots / f"{SNAPSHOT_PREFIX}pending.csv"
        try:
            before = self.target.stat()
            if before.st_size == 0:
                log.info("check=settled path=%s decision=skip reason=empty-file", kv(self.target))
                return
            # one read of the batch: copied to a private file and hashed as it is copied; the digest travels
            # with the run, which reads that copy and does not hash it again
            digest = copy_hashing(self.target, pending)
            size = pending.stat().st_size
            after = self.target.stat()
        except FileNotFoundError:
            pending.unlink(missing_ok=True)
            log.info("check=settled path=%s decision=skip reason=missing", kv(self.target))
            return
        except OSError as err:
            pending.unlink(missing_ok=True)
            log.error("check=snapshot path=%s decision=wait reason=%s", kv(pending), kv(err))
            return
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
            pending.unlink(missing_ok=True)
            log.info("check=settled sha256=%s decision=wait reason=changed-while-hashing", digest)
            self.notify("unstable")
            return
        seen, outcome = self.state.get("sha256"), self.state.get("outcome")
        if digest == seen and outcome in ("processed", "rejected"):
            pending.unlink(missing_ok=True)
            log.info("check=settled sha256=%s size=%s decision=skip reason=unchanged-hash last_outcome=%s",
                     digest, size, outcome)
            return
        retry = digest == seen and outcome == "failed"
        log.info("check=settled sha256=%s size=%s decision=run reason=%s", digest, size,
                 "retry-after-failure" if retry else "new-content")
        if not retry:
            self._failures = 0
        snapshot = self.snapshots / f"{SNAPSHOT_PREFIX}{digest[:16]}.csv"
        try:
            os.replace(pending, snapshot)
            self._run(digest, snapshot)
        except OSError as err:
            log.error("check=snapshot path=%s decision=wait reason=%s", kv(snapshot), kv(err))
        finally:
            pending.unlink(missing_ok=True)
            snapshot.unlink(missing_ok=True)

    def _run(self, digest: str, snapshot: Path) -> None:
        with self._lock:
            self._running = True
        self.runs += 1
        started = time.monotonic()
        log.info("run=start sha256=%s", digest)
        try:
            outcome = self.runner(self.settings, self._stop, snapshot, digest)
        except Exception as err:  # the runner itself broke: treat like a failed run
            log.exception("run=error sha256=%s", digest)
            outcome = Outcome("failed", error=type(err).__name__, reason=str(err))
        finally:
            with self._lock:
                self._running = False
        seconds = time.monotonic() - started
        # the run read our private copy; its messages are about the content of the target
        outcome.reason = shorten(str(outcome.reason or "").replace(str(snapshot), str(self.target)), MAX_REASON)
        outcome.error = shorten(outcome.error or "", 200)
        self._record(outcome, digest, seconds)

    def _record(self, outcome: Outcome, digest: str, seconds: float) -> None:
        if outcome.outcome == "aborted":
            log.info("run=aborted sha256=%s seconds=%.2f reason=%s", digest, seconds, kv(outcome.reason))
            return  # the state is unchanged: a restart processes this content again
        processed = outcome.digest or digest  # the bytes the chain actually read
        if outcome.outcome == "processed":
            r = outcome.result
            steps = ",".join(f"{k}:{v:.2f}" for k, v in r.get("timings", {}).items())
            log.info("run=done status=%s sha256=%s seconds=%.2f version=%s production=%s staging=%s steps=%s "
                     "reason=%s", outcome.status, processed, seconds, r.get("version") or "-",
                     r.get("production") or "-", r.get("staging") or "-", steps or "-", kv(outcome.reason))
            self._failures, self._retry_at = 0, None
        elif outcome.outcome == "rejected":
            log.error("run=rejected sha256=%s seconds=%.2f error=%s reason=%s", processed, seconds, outcome.error,
                      kv(outcome.reason))
            self._failures, self._retry_at = 0, None
        else:
            self._failures += 1
            delay = min(self.retry_first * 2 ** (self._failures - 1), RETRY_MAX)
            if outcome.error == "Timeout":  # a run that hit its wall time: the retry waits at least that long,
                delay = max(delay, seconds)  # so one stuck batch never takes more than half of the daemon's time
            self._retry_at = time.monotonic() + delay
            log.error("run=failed sha256=%s seconds=%.2f error=%s retry_in_seconds=%.0f reason=%s", processed,
                      seconds, outcome.error or "-", delay, kv(outcome.reason))
        self.state = {"target": str(self.target), "sha256": processed, "outcome": outcome.outcome,
                      "status": outcome.status, "error": outcome.error, "reason": outcome.reason,
                      "at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            save_state(self.state_path, self.state)
        except OSError as err:
            log.error("state=unwritable path=%s reason=%s", kv(self.state_path), kv(err))
