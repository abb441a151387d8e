"""The watchdog daemon: events on ``data/current.csv`` → settle → hash → ``pipeline.run``, one run at a time.

Three parts, one concern each:

- :class:`TargetHandler` only turns filesystem events into "the target may have changed";
- :class:`Watcher` owns the observer and one worker thread that waits for the file to settle
  (a quiet period, size and mtime stable around the hash), skips content it already processed
  and runs the chain on anything new; events arriving during a run coalesce into one follow-up;
- :class:`ChildRunner` runs the chain in a child process, so a shutdown can stop a run
  mid-way (SIGTERM, then SIGKILL) and PyCaret's memory goes away with each run; it reads the
  child's result while the child runs and stops a run that outlives its wall time.

Nothing happens on import: ``main()`` builds the settings, logging and signal handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from mlops_core.runtime import prepare_process

__all__ = ["TargetHandler", "Watcher", "ChildRunner", "Outcome", "main"]

log = logging.getLogger("watcher")

#: the events that can mean "new content at the target" (STACK-NOTES: watchdog on Linux)
_EVENTS = [FileClosedEvent, FileMovedEvent, FileCreatedEvent, FileModifiedEvent, FileDeletedEvent]
_KINDS = {FileClosedEvent: "closed", FileMovedEvent: "moved", FileCreatedEvent: "created",
          FileModifiedEvent: "modified", FileDeletedEvent: "deleted"}

#: a "modified" with no "closed" after it means a writer still holds the file open; wait this long at most
OPEN_WRITER_WAIT = 30.0
#: retries of a run that failed for a reason other than its content (registry down, lock busy, crash)
RETRY_FIRST, RETRY_MAX = 30.0, 600.0
#: how long a run gets to stop after SIGTERM before it is killed
TERM_GRACE = 5.0
#: a run's wall time (imports included) before it is terminated and fails with ``Timeout``;
#: the daemon takes it from ``settings.run_timeout_seconds`` (MLOPS_RUN_TIMEOUT_SECONDS)
RUN_TIMEOUT = Settings.run_timeout_seconds
#: the longest reason a run reports (log line, state file): validation reasons quote cell values
MAX_REASON = 2000
#: the most bytes of result kept from a run child; more is drained (so the child never blocks) and dropped
MAX_RESULT_BYTES = 4 << 20


# -- logging: one key=value line per record ---------------------------------------------------------
_LOGFMT = re.compile(r"^[A-Za-z_][\w.-]*=")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def kv(value: object) -> str:
    """Format one logfmt value: bare when it has no space, quote or ``=``, JSON-quoted otherwise."""
    text = str(value)
    if text and not re.search(r'[\s"=\\]', text):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=watcher pid=1 event=closed ...``; ``journal`` drops ts and prefixes ``<6>``."""

    def __init__(self, style: str = "text"):
        super().__init__()
        self.journal = style == "journal"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body = message if _LOGFMT.match(message) else f"msg={kv(message)}"
        head = f"level={record.levelname.lower()} logger={record.name} pid={record.process}"
        if record.exc_info:
            body += f" exc={kv(self.formatException(record.exc_info))}"
        if self.journal:  # journald reads the priority prefix and adds its own timestamp
            return f"<{_PRIORITY.get(record.levelno, 6)}>{head} {body}"
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return f"ts={ts} {head} {body}"


def _journal_attached() -> bool:
    """True when stderr is the journal stream systemd set up (JOURNAL_STREAM names its device:inode)."""
    with contextlib.suppress(OSError, ValueError):
        dev, ino = os.environ.get("JOURNAL_STREAM", "").split(":")
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    return False


def setup_logging(style: str = "auto", level: str = "INFO") -> str:
    """Send key=value lines to stderr (no colours); return the style used."""
    if style == "auto":
        style = "journal" if _journal_attached() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party chatter only when it matters
    for name in ("watcher", "mlops_core"):
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    return style


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


# -- what one run decided -------------------------------------------------------------------------------
@dataclass
class Outcome:
    """How a run ended: ``processed`` (any RunResult), ``rejected`` (the content is at fault: not
    retried), ``failed`` (anything else: retried with backoff; a run past its wall time fails with
    error ``Timeout`` and is retried no sooner than it ran) or ``aborted`` (shutdown)."""

    outcome: str
    digest: str = ""
    status: str = ""
    reason: str = ""
    error: str = ""
    result: dict = field(default_factory=dict)


class _Collector:
    """Read a stream to its end in a thread, keeping at most ``limit`` bytes; the thread closes the stream.

    Reading while the child runs means a large result never blocks the child in its pipe write; closing
    from this thread only means nobody blocks on closing a stream another thread is reading.
    """

    def __init__(self, stream, limit: int = MAX_RESULT_BYTES):
        self.stream = stream
        self.limit = limit
        self.dropped = 0  # bytes read beyond the limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name="run-result-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            fd = self.stream.fileno()
            while chunk := os.read(fd, 1 << 16):  # raw reads: nothing waits in a buffer
                with self._lock:
                    if self._size + len(chunk) <= self.limit:
                        self._chunks.append(chunk)
                        self._size += len(chunk)
                    else:
                        self.dropped += len(chunk)
        except (OSError, ValueError):  # closed under us: nothing more to read
            pass
        finally:
            with contextlib.suppress(OSError):
                self.stream.close()

    def result(self, timeout: float) -> tuple[bytes, bool]:
        """The bytes read (after waiting up to ``timeout`` for the end) and whether all of them were kept."""
        self.thread.join(timeout)
        with self._lock:
            return b"".join(self._chunks), not self.dropped


class ChildRunner:
    """Run ``pipeline.run(settings)`` in a child Python process that a shutdown can stop.

    A spare child is started ahead of time: it imports MLflow and PyCaret (seconds) while
    the daemon waits for data, then blocks until a batch arrives, so a run starts warm.
    A run that takes longer than ``max_seconds`` (``None``: no limit) is terminated and fails with
    ``Timeout``.
    """

    def __init__(self, *, log_style: str = "text", grace: float = TERM_GRACE, spare: bool = True,
                 max_seconds: float | None = RUN_TIMEOUT):
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive (or None for no limit), not {max_seconds!r}")
        self.log_style = log_style
        self.grace = grace
        self.spare = spare
        self.max_seconds = max_seconds
        self._spare: tuple[subprocess.Popen, threading.Thread] | None = None

    def _spawn(self, settings: Settings) -> tuple[subprocess.Popen, threading.Thread]:
        cmd = [sys.executable, os.path.abspath(__file__), "--run-child"]
        settings.logs_dir.mkdir(parents=True, exist_ok=True)  # PyCaret's log file, set before it is imported
        env = {"PYCARET_CUSTOM_LOGGING_PATH": str(settings.logs_dir / "pycaret.log"), **os.environ}
        # stdin stays open for the whole run: the child stops itself if it ever reads EOF (we died)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True, env=env)
        relay = threading.Thread(target=_relay, args=(proc.stderr, proc.pid), name="run-log-relay", daemon=True)
        relay.start()
        return proc, relay

    def warm(self, settings: Settings) -> None:
        """Start the spare child now (if spares are on and none is alive)."""
        if self.spare and (self._spare is None or self._spare[0].poll() is not None):
            if self._spare is not None:
                self._reap(*self._spare)
            self._spare = self._spawn(settings)

    def close(self) -> None:
        """Stop the spare child (an idle one just exits on SIGTERM)."""
        if self._spare is not None:
            proc, relay = self._spare
            self._spare = None
            if proc.poll() is None:
                self._terminate(proc, quiet=True)
            self._reap(proc, relay)

    @staticmethod
    def _reap(proc: subprocess.Popen, relay: threading.Thread) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        relay.join(5.0)
        # stderr is the relay's to close (at its end): closing a stream another thread reads blocks the closer
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def __call__(self, settings: Settings, stop: threading.Event, batch: Path) -> Outcome:
        payload = pickle.dumps({"settings": settings, "batch": batch, "log_style": self.log_style})
        spare, self._spare = self._spare, None
        if spare is not None and spare[0].poll() is None:
            proc, relay = spare
        else:
            if spare is not None:
                self._reap(*spare)
            proc, relay = self._spawn(settings)
        log.info("run=child pid=%s warm=%s", proc.pid, str(spare is not None and proc is spare[0]).lower())
        deadline = time.monotonic() + (self.max_seconds if self.max_seconds is not None else float("inf"))
        collector = _Collector(proc.stdout)  # from now on the child's result is read as it comes
        try:
            proc.stdin.write(payload)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            return self._wait(proc, relay, collector, stop, deadline)
        finally:
            if not stop.is_set():
                self.warm(settings)  # the next run starts warm too

    def _wait(self, proc: subprocess.Popen, relay: threading.Thread, collector: _Collector,
              stop: threading.Event, deadline: float) -> Outcome:
        try:
            while proc.poll() is None:
                if stop.wait(0.1):
                    self._terminate(proc)
                    return Outcome("aborted", reason="shutdown requested")
                if time.monotonic() >= deadline:
                    log.error("run=timeout pid=%s max_seconds=%g", proc.pid, self.max_seconds)
                    self._terminate(proc)
                    return Outcome("failed", error="Timeout", reason=f"run exceeded {self.max_seconds:g} s")
            out, whole = collector.result(5.0)  # the child has exited: its result is in the pipe already
        finally:
            relay.join(5.0)
            with contextlib.suppress(OSError):
                proc.stdin.close()  # stdout and stderr: their reader threads close them at their end
        if not whole:
            return Outcome("failed", error="ResultTooLarge",
                           reason=f"run process sent more than {MAX_RESULT_BYTES} bytes of result")
        try:
            data = json.loads(out.decode() or "null")
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("outcome"), str):
            code = proc.returncode
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            return Outcome("failed", error="ChildDied", reason=f"run process ended with {how} and no result")
        return Outcome(data.pop("outcome"), digest=str(data.pop("digest", "")), status=str(data.pop("status", "")),
                       reason=shorten(data.pop("reason", "") or "", MAX_REASON),
                       error=shorten(data.pop("error", "") or "", 200), result=data)

    def _terminate(self, proc: subprocess.Popen, *, quiet: bool = False) -> None:
        """SIGTERM (the run unwinds: MLflow run FAILED, no alias moved), SIGKILL after the grace period."""
        if not quiet:
            log.info("run=terminate pid=%s grace_seconds=%s", proc.pid, self.grace)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            log.warning("run=kill pid=%s reason=%s", proc.pid, kv(f"still running {self.grace}s after SIGTERM"))
            proc.kill()
            proc.wait()


_FORMATTED = re.compile(r"^(ts=\S+ |<\d>)level=")


def _relay(stream, pid: int) -> None:
    """Copy the run's stderr to ours: its log lines as they are, anything else (prints, tracebacks) as kv.

    Closes ``stream`` at its end (nobody else may: closing a stream this thread reads would block the closer).
    """
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if _FORMATTED.match(line):
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            elif line.strip():
                log.info("child=%s out=%s", pid, kv(line))
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def _warm_imports() -> None:
    """Import what a run needs (MLflow, PyCaret: seconds) before the batch arrives."""
    import mlflow.sklearn  # noqa: F401

    from mlops_core import pipeline  # noqa: F401
    from mlops_core.training import import_pycaret_classification

    import_pycaret_classification()


def _child_main() -> int:
    """Entry point of the run process: settings in on stdin, one JSON outcome out on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal Ctrl-C reaches us too
    prepare_process(None)  # the parent's environment is inherited; the log filters are per process

    def _on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
        # the exception unwinds the run (MLflow run FAILED, lock released); but one raised while the main
        # thread runs a finaliser is swallowed, so make sure we are gone before the parent's SIGKILL anyway
        killer = threading.Timer(max(TERM_GRACE - 1.0, 0.5), os._exit, args=(128 + signum,))
        killer.daemon = True
        killer.start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_term)
    result_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints from libraries go to the log, not into the result
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # our formatter, not MLflow's own handler
    _warm_imports()  # a spare child does this while the daemon still waits for a batch
    try:
        request = pickle.load(sys.stdin.buffer)
    except EOFError:  # a spare that was never used: the daemon stopped or died
        return 0
    setup_logging(request["log_style"])

    def _orphan_guard():
        while os.read(0, 4096):  # raw reads (no buffer lock at exit); b"" at EOF: the parent died
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=_orphan_guard, name="orphan-guard", daemon=True).start()

    from mlops_core.errors import DataValidationError, TrainingError
    from mlops_core.pipeline import run

    try:
        result = run(request["settings"], current=request["batch"], source=request["settings"].current_csv)
        answer = {"outcome": "processed", **result.to_dict()}
    except (DataValidationError, TrainingError) as err:  # the content is at fault: same bytes, same failure
        answer = {"outcome": "rejected", "error": type(err).__name__, "reason": str(err)}
    except Exception as err:  # registry down, lock busy, a bug: worth retrying later
        log.debug("run failed", exc_info=True)
        answer = {"outcome": "failed", "error": type(err).__name__, "reason": str(err).splitlines()[0] if str(err)
                  else type(err).__name__}
    answer["reason"] = shorten(answer.get("reason") or "", MAX_REASON)  # a reason may quote a cell of any size
    data = json.dumps(answer, default=str).encode()
    with contextlib.suppress(BrokenPipeError):  # the parent is gone: nobody to tell
        while data:
            data = data[os.write(result_fd, data):]
    return 0


# -- the state a restart finds ----------------------------------------------------------------------------
def load_state(path: Path, target: Path) -> dict:
    """The last outcome recorded for ``target`` (empty when none or unreadable)."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("state=unreadable path=%s reason=%s", kv(path), kv(err))
        return {}
    return state if isinstance(state, dict) and state.get("target") == str(target) else {}


def save_state(path: Path, state: dict) -> None:
    """Write the state file atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_SNAPSHOT = "batch-"


def _copy(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` and return the SHA-256 of the bytes copied."""
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def _hash(path: Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        return digest.hexdigest(), fh.tell()


# -- the watcher -----------------------------------------------------------------------------------------
class Watcher:
    """Watch ``settings.current_csv`` and run the chain once per new, settled content.

    ``runner(settings, stop_event, batch) -> Outcome`` runs the chain on ``batch``, a private copy of
    the settled content (so a writer starting on the target meanwhile cannot hand the run a half-written
    file); it defaults to :class:`ChildRunner`, tests pass a fake.
    """

    def __init__(self, settings: Settings, *,
                 runner: Callable[[Settings, threading.Event, Path], Outcome] | None = None,
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
        for stale in self.snapshots.glob(f"{_SNAPSHOT}*"):  # left by a daemon that was killed mid-run
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
                need = self.open_writer_wait if open_writer else self.settle
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
        try:
            before = self.target.stat()
            if before.st_size == 0:
                log.info("check=settled path=%s decision=skip reason=empty-file", kv(self.target))
                return
            digest, size = _hash(self.target)
            after = self.target.stat()
        except FileNotFoundError:
            log.info("check=settled path=%s decision=skip reason=missing", kv(self.target))
            return
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
            log.info("check=settled sha256=%s decision=wait reason=changed-while-hashing", digest)
            self.notify("unstable")
            return
        seen, outcome = self.state.get("sha256"), self.state.get("outcome")
        if digest == seen and outcome in ("processed", "rejected"):
            log.info("check=settled sha256=%s size=%s decision=skip reason=unchanged-hash last_outcome=%s",
                     digest, size, outcome)
            return
        retry = digest == seen and outcome == "failed"
        log.info("check=settled sha256=%s size=%s decision=run reason=%s", digest, size,
                 "retry-after-failure" if retry else "new-content")
        if not retry:
            self._failures = 0
        snapshot = self.snapshots / f"{_SNAPSHOT}{digest[:16]}.csv"
        try:
            if _copy(self.target, snapshot) != digest:
                log.info("check=snapshot sha256=%s decision=wait reason=changed-while-copying", digest)
                self.notify("unstable")
                return
            self._run(digest, snapshot)
        except OSError as err:
            log.error("check=snapshot path=%s decision=wait reason=%s", kv(snapshot), kv(err))
        finally:
            snapshot.unlink(missing_ok=True)

    def _run(self, digest: str, snapshot: Path) -> None:
        with self._lock:
            self._running = True
        self.runs += 1
        started = time.monotonic()
        log.info("run=start sha256=%s", digest)
        try:
            outcome = self.runner(self.settings, self._stop, snapshot)
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
            stages = ",".join(f"{k}:{v:.2f}" for k, v in r.get("timings", {}).items())
            log.info("run=done status=%s sha256=%s seconds=%.2f version=%s production=%s staging=%s stages=%s "
                     "reason=%s", outcome.status, processed, seconds, r.get("version") or "-",
                     r.get("production") or "-", r.get("staging") or "-", stages or "-", kv(outcome.reason))
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


# -- entry point ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlops-watcher", description="Run the retraining chain whenever a new, "
                                "complete batch lands at <data>/current.csv.")
    p.add_argument("--home", type=Path, help="project home (default: MLOPS_HOME or the working directory)")
    p.add_argument("--log-format", choices=("auto", "text", "journal"),
                   default=os.environ.get("MLOPS_LOG_FORMAT", "auto"),
                   help="text: key=value lines with a timestamp; journal: syslog priority prefix, no timestamp; "
                        "auto: journal when stderr is connected to journald (default: MLOPS_LOG_FORMAT or auto)")
    p.add_argument("--log-level", default=os.environ.get("MLOPS_LOG_LEVEL", "INFO"),
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Watch the drop folder until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    if args.run_child:
        return _child_main()
    style = setup_logging(args.log_format, args.log_level)
    try:
        settings = Settings.from_env(home=args.home)
    except ValueError as err:
        log.error("watcher=config-error reason=%s", kv(err))
        return 2
    prepare_process(settings, http_timeout=10)  # the run children inherit it

    stop = threading.Event()

    def _on_signal(signum, frame):
        log.info("watcher=stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)

    try:
        runner = ChildRunner(log_style=style, max_seconds=settings.run_timeout_seconds)
    except (TypeError, ValueError) as err:
        log.error("watcher=config-error reason=%s", kv(f"run timeout: {err}"))
        return 2
    watcher = Watcher(settings, runner=runner)
    try:
        watcher.start()
        while not stop.wait(1.0):
            if not watcher.alive():
                log.error("watcher=dead reason=%s", kv("the observer or the worker thread stopped"))
                return 1
    except OSError as err:  # e.g. the drop folder cannot be created or watched (inotify limits)
        log.error("watcher=failed reason=%s", kv(err))
        return 1
    finally:
        watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
