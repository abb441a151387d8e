"""One chain run in a child process: the parent's :class:`ChildRunner`, the run server and the run's :func:`main`.

The protocol: the parent writes the pickled request (settings, the batch's private copy, the log style) to the
run's stdin and keeps stdin open for the whole run (EOF tells the run its parent died); the run writes one JSON
outcome to stdout and its log lines to stderr, which the parent relays.

Runs are forked from a run server the parent keeps: the server imports the chain while the daemon waits for
data, then MLflow and PyCaret once it has been idle a while, then what registering needs, once for the
daemon's life; each run is a fork of it, so it starts warm however soon it follows the last one (and a run that
arrives before a step imports what it needs itself: MLflow only if its batch is valid, PyCaret only if it
trains). The parent hands the server a run's three pipes over a Unix socket; the server answers with the run's
pid and, once it has reaped it, its exit code. A shutdown or a run past its wall time stops the run (SIGTERM,
then SIGKILL, by its pid). Without a server (``spare=False``) each run is a fresh process.

    python -m mlops_watcher.child               # one run (ChildRunner(spare=False))
    python -m mlops_watcher.child --serve FD    # the run server, on the socket FD (ChildRunner)
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pickle
import re
import select
import signal
import socket
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

#: the run server, idle for these many seconds, imports MLflow, then PyCaret, so any batch starts warm
WARM_REGISTRY_AFTER, WARM_TRAINING_AFTER = 0.5, 2.0
#: ... and what registering needs once idle this much longer (about a second of CPU, once for the daemon's life)
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

    With ``spare`` (the default) each run is forked from a run server started ahead of time, which imports the
    chain (then, once idle long enough, MLflow and PyCaret) while the daemon waits for data, so a run starts
    warm; without it, each run is a fresh process. A run that takes longer than ``max_seconds`` (``None``: no
    limit) is terminated and fails with ``Timeout``.
    """

    def __init__(self, *, log_style: str = "text", grace: float = TERM_GRACE, spare: bool = True,
                 max_seconds: float | None = Settings.run_timeout_seconds):
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive (or None for no limit), not {max_seconds!r}")
        self.log_style = log_style
        self.grace = grace
        self.spare = spare
        self.max_seconds = max_seconds
        self._server: _RunServer | None = None

    @staticmethod
    def _env(settings: Settings) -> dict[str, str]:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)  # PyCaret's log file, set before it is imported
        return {"PYCARET_CUSTOM_LOGGING_PATH": str(settings.logs_dir / "pycaret.log"), **os.environ}

    def _spawn(self, settings: Settings) -> tuple[subprocess.Popen, threading.Thread]:
        """A fresh run process (no server): it imports what its run needs itself."""
        # stdin stays open for the whole run: the child stops itself if it ever reads EOF (we died)
        proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, env=self._env(settings))
        return proc, _start_relay(proc.stderr, proc.pid)

    def warm(self, settings: Settings) -> None:
        """Start the run server now (if spares are on and none is alive)."""
        if self.spare and (self._server is None or not self._server.alive()):
            if self._server is not None:
                self._server.close(self.grace)
            self._server = _RunServer.start(self._env(settings))

    def close(self) -> None:
        """Stop the run server (an idle one just exits on SIGTERM)."""
        server, self._server = self._server, None
        if server is not None:
            server.close(self.grace)

    @staticmethod
    def _reap(proc, relay: threading.Thread) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        relay.join(5.0)
        # stderr is the relay's to close (at its end): closing a stream another thread reads blocks the closer
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __call__(self, settings: Settings, stop: threading.Event, batch: Path, digest: str | None = None) -> Outcome:
        """Run the chain on ``batch`` (``digest``: the SHA-256 of its bytes, when known, so it is not hashed again)."""
        payload = pickle.dumps({"settings": settings, "batch": batch, "digest": digest, "log_style": self.log_style})
        deadline = time.monotonic() + (self.max_seconds if self.max_seconds is not None else float("inf"))
        warm = self._server is not None and self._server.alive()
        proc = None
        if self.spare:
            self.warm(settings)
            proc = self._server.fork(stop, deadline)
            if proc is None:
                if stop.is_set():
                    return Outcome("aborted", reason="shutdown requested")
                if time.monotonic() >= deadline:
                    log.error("run=timeout pid=- max_seconds=%g", self.max_seconds)
                    return Outcome("failed", error="Timeout", reason=f"run exceeded {self.max_seconds:g} s")
                log.warning("run=server pid=%s reason=%s", self._server.proc.pid, kv("gone: a fresh process runs"))
                self.close()
        if proc is None:
            warm = False
            proc, relay = self._spawn(settings)
        else:
            relay = _start_relay(proc.stderr, proc.pid)
        log.info("run=child pid=%s warm=%s", proc.pid, str(warm).lower())
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

    def _wait(self, proc, relay: threading.Thread, collector: _Collector,
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

    def _terminate(self, proc, *, quiet: bool = False) -> None:
        """SIGTERM (the run unwinds: MLflow run FAILED, no alias moved), SIGKILL after the grace period."""
        if not quiet:
            log.info("run=terminate pid=%s grace_seconds=%s", proc.pid, self.grace)
        terminate([proc], self.grace, on_kill=lambda p: log.warning(
            "run=kill pid=%s reason=%s", p.pid, kv(f"still running {self.grace}s after SIGTERM")))


# -- the run server, seen from the parent ----------------------------------------------------------------
class _RunServer:
    """The parent's side of the run server: its process, the socket runs are asked for on, the relay of its log.

    On the socket the parent sends one byte with a run's three pipe ends (stdin, stdout, stderr) attached; the
    server answers ``pid N`` once it has forked the run and ``exit N CODE`` once it has reaped it.
    """

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, relay: threading.Thread):
        self.proc, self.sock, self.relay = proc, sock, relay
        self.lost = False  # the socket closed: the server is gone
        self._buffer = b""
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}

    @classmethod
    def start(cls, env: dict[str, str]) -> _RunServer:
        ours, theirs = socket.socketpair()
        with theirs:
            proc = subprocess.Popen([sys.executable, "-m", __name__, "--serve", str(theirs.fileno())],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    pass_fds=(theirs.fileno(),), env=env)
        return cls(proc, ours, _start_relay(proc.stderr, proc.pid))

    def alive(self) -> bool:
        return not self.lost and self.proc.poll() is None

    def fork(self, stop: threading.Event, deadline: float) -> _ForkedRun | None:
        """Ask for a run: its handle once the server has forked it (None: a shutdown, the run's deadline or the
        server's end came first; the pipes are closed, so a run forked after all reads EOF and ends)."""
        (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = os.pipe(), os.pipe(), os.pipe()
        try:
            socket.send_fds(self.sock, [b"R"], [stdin_r, stdout_w, stderr_w])
        except OSError:
            self.lost = True
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):  # the server has its own copies now
                os.close(fd)
        while not (self._pids or self.lost or stop.is_set() or time.monotonic() >= deadline):
            self._read(0.1)
        if not self._pids:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            return None
        return _ForkedRun(self, self._pids.pop(0), open(stdin_w, "wb"), open(stdout_r, "rb"), open(stderr_r, "rb"))

    def _read(self, timeout: float) -> None:
        """Take in what the server said within ``timeout`` seconds: runs forked, runs reaped."""
        if self.lost:
            time.sleep(timeout)
            return
        if not select.select([self.sock], [], [], timeout)[0]:
            return
        try:
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.lost = True
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            kind, *numbers = line.split()
            if kind == b"pid":
                self._pids.append(int(numbers[0]))
            elif kind == b"exit":
                self._exits[int(numbers[0])] = int(numbers[1])

    def exit_code(self, pid: int) -> int | None:
        """The exit code of run ``pid`` once the server reaped it (-N: signal N); None while it runs."""
        code = self._exits.pop(pid, None)
        if code is None and self.lost and not _exists(pid):
            code = 255  # its server is gone, and whoever reaped the run kept its status
        return code

    def close(self, grace: float) -> None:
        """Stop the server (it holds no run: SIGTERM ends it at once) and reap it."""
        if self.proc.poll() is None:
            terminate(self.proc, grace)
        ChildRunner._reap(self.proc, self.relay)
        self.sock.close()


class _ForkedRun:
    """A run the server forked, as much of a ``Popen`` as the runner needs: its pid, its pipes, ``poll``,
    ``wait`` and signals. Signalled by pid only until its exit code came: till then the server has not reaped
    it, so the pid is still this run's."""

    def __init__(self, server: _RunServer, pid: int, stdin, stdout, stderr):
        self.server, self.pid = server, pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server._read(0)
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"run {self.pid}", timeout)
            self.server._read(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _exists(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _start_relay(stream, pid: int) -> threading.Thread:
    relay = threading.Thread(target=_relay, args=(stream, pid), name="run-log-relay", daemon=True)
    relay.start()
    return relay


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
    """Import MLflow (about two seconds): a batch that passes validation records a run."""
    import mlflow.sklearn  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401 - the client's first call imports them: 2 s
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401

    from mlops_core.inference import artifact  # noqa: F401 - Production's compiled form scores the batch


def _warm_registration() -> None:
    """Import what registering a candidate needs (about a second, else inside the run): MLflow's model logging
    (pyfunc and its scoring server, which check the input example; the git lookup of a run's source) and the
    compiler's ONNX converter. Not ONNX Runtime: it starts a thread when imported, which a forked run would not
    have (server/preload.py keeps it out of gunicorn's master for that reason); a run imports it itself."""
    import git  # noqa: F401
    import mlflow.models.utils  # noqa: F401
    import mlflow.pyfunc.scoring_server  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_workspace_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401
    import mlflow.tracing.processor.otel  # noqa: F401
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


#: what a spare warms, each step once it has been idle that long: a batch that arrives at once starts at once, and
#: imports MLflow only if it is valid and PyCaret only if it trains
_WARM_STEPS = ((0.0, _warm_validation), (WARM_REGISTRY_AFTER, _warm_registry),
               (WARM_TRAINING_AFTER, _warm_training), (WARM_REGISTRATION_AFTER, _warm_registration))


def _readable(source, seconds: float) -> bool:
    """True when ``source`` has something to read (or its end) within ``seconds``."""
    return bool(select.select([source], [], [], seconds)[0])


def _on_term(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
    # the exception unwinds the run (MLflow run FAILED, lock released); but one raised while the main
    # thread runs a finaliser is swallowed, so make sure we are gone before the parent's SIGKILL anyway
    killer = threading.Timer(max(TERM_GRACE - 1.0, 0.5), os._exit, args=(128 + signum,))
    killer.daemon = True
    killer.start()
    raise SystemExit(128 + signum)


def _result_fd() -> int:
    """A private copy of stdout for the result; stdout itself then goes to the log (stray prints from libraries)."""
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


def _run(result_fd: int) -> int:
    """Read the request on stdin, run the chain, write one JSON outcome to ``result_fd``."""
    held = {name for name in ("mlflow", "pycaret") if name in sys.modules}  # imported before this run
    try:
        request = pickle.load(sys.stdin.buffer)
    except EOFError:  # a run never asked for: the daemon stopped or died
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
    # what the run cost: the libraries it had to import itself
    answer["imported"] = [name for name in ("mlflow", "pycaret") if name in sys.modules and name not in held]
    data = json.dumps(answer, default=str).encode()
    with contextlib.suppress(BrokenPipeError):  # the parent is gone: nobody to tell
        while data:
            data = data[os.write(result_fd, data):]
    return 0


def _serve(sock: socket.socket) -> int:
    """The run server: warm up step by step while idle; for each request fork a run, say its pid, reap it and
    say its exit code. It ends when the parent closes the socket (or dies), or on SIGTERM."""
    os.dup2(2, 1)  # stray prints from libraries go to the log
    steps = list(_WARM_STEPS)
    while True:
        if steps and not (steps[0][0] and _readable(sock, steps[0][0])):
            steps.pop(0)[1]()
            # what the imports made is for good: out of the collector's sight, a run's collections never walk it
            # (0.4-0.6 s of CPU a run) nor copy its pages
            gc.collect()
            gc.freeze()
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1, 3)
        except OSError:
            return 0
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            if not data:  # the parent is gone
                return 0
            continue
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here is written again by the run
            stream.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            os._exit(_forked(fds))
        for fd in fds:
            os.close(fd)
        try:
            sock.sendall(b"pid %d\n" % pid)
            _, status = os.waitpid(pid, 0)
            sock.sendall(b"exit %d %d\n" % (pid, os.waitstatus_to_exitcode(status)))
        except OSError:  # the parent is gone; a run still going stops itself (its stdin reads EOF)
            return 0


def _forked(fds: list[int]) -> int:
    """A run forked by the server: its three pipes become its stdin, stdout and stderr. Its exit code is
    returned for ``os._exit`` (as multiprocessing ends a forked process): nothing the server set up is torn
    down in the run."""
    signal.signal(signal.SIGTERM, _on_term)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    try:
        return _run(_result_fd())
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a run process (settings in on stdin, one JSON outcome out on stdout), or with
    ``--serve FD`` of the run server on the socket FD."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal Ctrl-C reaches us too
    prepare_process(None)  # the parent's environment is inherited; the log filters are per process
    if argv[:1] == ["--serve"]:
        return _serve(socket.socket(fileno=int(argv[1])))
    signal.signal(signal.SIGTERM, _on_term)
    result_fd = _result_fd()
    for idle, warm in _WARM_STEPS:  # a fresh run process warms only until its request is there
        if idle and _readable(sys.stdin.buffer, idle):
            break
        warm()
    return _run(result_fd)


if __name__ == "__main__":
    sys.exit(main())
