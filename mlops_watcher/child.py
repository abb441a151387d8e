"""One chain run in a child process: the parent's :class:`ChildRunner` and the child's :func:`main`.

The protocol: the parent writes the pickled request (settings, the batch's private copy, the log style) to the
child's stdin and keeps stdin open for the whole run (EOF tells the child its parent died); the child writes one
JSON outcome to stdout and its log lines to stderr, which the parent relays. A spare child imports the chain
while the daemon waits for data, then MLflow and PyCaret once it has been idle a while, so a run starts warm
(and a run that arrives at once imports MLflow only if its batch is valid, PyCaret only if it trains); a
shutdown or a run past its wall time stops the child (SIGTERM, then SIGKILL).

    python -m mlops_watcher.child    # started by ChildRunner only
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlops_core.config import Settings
from mlops_core.errors import first_line, shorten
from mlops_core.processes import terminate
from mlops_core.runtime import prepare_process

from .logs import kv, setup_logging

__all__ = ["Outcome", "ChildRunner", "main", "TERM_GRACE", "MAX_REASON", "MAX_RESULT_BYTES"]

log = logging.getLogger("watcher")

#: a spare child still idle after these many seconds imports MLflow, then PyCaret, so any batch starts warm
WARM_REGISTRY_AFTER, WARM_TRAINING_AFTER = 0.5, 2.0
#: ... and what registering needs once idle this much longer (seconds of CPU: only for a daemon that waits for
#: batches minutes apart, not for one handed batches back to back)
WARM_REGISTRATION_AFTER = 8.0
#: how long a run gets to stop after SIGTERM before it is killed
TERM_GRACE = 5.0
#: the longest reason a run reports (log line, state file): validation reasons quote cell values
MAX_REASON = 2000
#: a step of a run that runs longer logs a progress line this often (which step, how long, how far)
PROGRESS_SECONDS = 10.0
#: the most bytes of result kept from a run child; more is drained (so the child never blocks) and dropped
MAX_RESULT_BYTES = 4 << 20


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

    A spare child is started ahead of time: it imports the chain (then, once idle long enough, MLflow and
    PyCaret) while the daemon waits for data, then blocks until a batch arrives, so a run starts warm.
    A run that takes longer than ``max_seconds`` (``None``: no limit) is terminated and fails with
    ``Timeout``.
    """

    def __init__(self, *, log_style: str = "text", grace: float = TERM_GRACE, spare: bool = True,
                 max_seconds: float | None = Settings.run_timeout_seconds):
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive (or None for no limit), not {max_seconds!r}")
        self.log_style = log_style
        self.grace = grace
        self.spare = spare
        self.max_seconds = max_seconds
        self._spare: tuple[subprocess.Popen, threading.Thread] | None = None

    def _spawn(self, settings: Settings) -> tuple[subprocess.Popen, threading.Thread]:
        cmd = [sys.executable, "-m", __name__]
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

    def __call__(self, settings: Settings, stop: threading.Event, batch: Path, digest: str | None = None) -> Outcome:
        """Run the chain on ``batch`` (``digest``: the SHA-256 of its bytes, when known, so it is not hashed again)."""
        payload = pickle.dumps({"settings": settings, "batch": batch, "digest": digest, "log_style": self.log_style})
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
        terminate(proc, self.grace, on_kill=lambda p: log.warning(
            "run=kill pid=%s reason=%s", p.pid, kv(f"still running {self.grace}s after SIGTERM")))


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


def _warm_validation() -> None:
    """Import what every run needs first: the chain and its validation (pandas), the registry reader."""
    import pyarrow.csv  # noqa: F401
    import sqlalchemy  # noqa: F401

    from mlops_core import pipeline  # noqa: F401


def _warm_registry() -> None:
    """Import MLflow (about two seconds) and matplotlib: a batch that passes validation records a run, with
    its drift report drawn."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401 - the client's first call imports them: 2 s
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401

    from mlops_core.inference import artifact  # noqa: F401 - Production's compiled form scores the batch


def _warm_registration() -> None:
    """Import what registering a candidate needs (about a second and a half, else inside the run): MLflow's
    model logging (pyfunc and its scoring server, which check the input example; the git lookup of a run's
    source) and the compiler's ONNX converter and runtime."""
    import git  # noqa: F401
    import mlflow.models.utils  # noqa: F401
    import mlflow.pyfunc.scoring_server  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_workspace_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401
    import mlflow.tracing.processor.otel  # noqa: F401
    import onnxruntime  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401 - the drift picture
    import pyarrow.dataset  # noqa: F401 - the reference data stored with a version
    import pyarrow.parquet  # noqa: F401
    import skl2onnx  # noqa: F401
    from mlflow.utils import requirements_utils

    # logging a model checks its requirements against the installed distributions; MLflow maps them once per
    # process (1.4 s) and keeps the map: made here, while idle. A private function: without it, only slower
    with contextlib.suppress(Exception):
        requirements_utils._init_packages_to_modules_map()


def _warm_training() -> None:
    """Import PyCaret (seconds, and the bulk of a run's memory): only a drifted batch trains."""
    import lightgbm  # noqa: F401 - imported by the comparison's first LightGBM fit
    import uvicorn  # noqa: F401 - ... and by PyCaret's set-up, through MLflow

    from mlops_core.training import import_pycaret_classification

    import_pycaret_classification()


def _request_within(seconds: float) -> bool:
    """True when the daemon has written a request (or closed stdin) within ``seconds``."""
    import select

    return bool(select.select([sys.stdin.buffer], [], [], seconds)[0])


def main() -> int:
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
    # a spare child gets ready while the daemon waits for a batch, each step once idle that long: a batch that
    # arrives at once starts at once, and imports MLflow only if it is valid and PyCaret only if it trains
    for idle, warm in ((0.0, _warm_validation), (WARM_REGISTRY_AFTER, _warm_registry),
                       (WARM_TRAINING_AFTER, _warm_training), (WARM_REGISTRATION_AFTER, _warm_registration)):
        if idle and _request_within(idle):
            break
        warm()
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

    from mlops_core.errors import DataValidationError, SettingsError, TrainingError
    from mlops_core.pipeline import run
    from mlops_core.progress import LogLines

    progress = LogLines(logging.getLogger("mlops_core.pipeline"), every=PROGRESS_SECONDS)
    try:
        result = run(request["settings"], current=request["batch"], source=request["settings"].current_csv,
                     digest=request.get("digest"), progress=progress)
        answer = {"outcome": "processed", **result.to_dict()}
    except (DataValidationError, SettingsError, TrainingError) as err:  # the content is at fault: same failure again
        answer = {"outcome": "rejected", "error": type(err).__name__, "reason": str(err)}
    except Exception as err:  # registry down, lock busy, a bug: worth retrying later
        log.debug("run failed", exc_info=True)
        answer = {"outcome": "failed", "error": type(err).__name__, "reason": first_line(err, MAX_REASON)}
    finally:
        progress.close()
    answer["reason"] = shorten(answer.get("reason") or "", MAX_REASON)  # a reason may quote a cell of any size
    answer["imported"] = [name for name in ("mlflow", "pycaret") if name in sys.modules]  # what the run cost
    data = json.dumps(answer, default=str).encode()
    with contextlib.suppress(BrokenPipeError):  # the parent is gone: nobody to tell
        while data:
            data = data[os.write(result_fd, data):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
