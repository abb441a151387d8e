"""Start and stop real services for tests: a throwaway PostgreSQL cluster, `mlflow server`, gunicorn.

Everything binds 127.0.0.1 on a free port, is bounded in time, and is stopped by
its own pid / process group, never by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "server" / "gunicorn.conf.py"
ROW = {"pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}
REFRESH = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 2xx (or the process dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except Exception as err:  # noqa: BLE001 - keep polling
            last = err
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last error: {last})")


def stop(proc: subprocess.Popen, *, group: bool = False, timeout: float = 20) -> None:
    """Stop a process we started (or its process group), by id: TERM, bounded wait, then KILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(timeout=10)


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop the process group of a process started with ``start_new_session=True``."""
    stop(proc, group=True, timeout=timeout)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install -y postgresql")
    return found[-1]


@contextmanager
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a SQLAlchemy URL of database ``mlflow``."""
    folder = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data = folder / "data"
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(folder, "postgres", "postgres")
    os.chmod(folder, 0o700)
    subprocess.run([*as_pg, _pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30",
                    "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off", "start"],
                   check=True, capture_output=True, timeout=60)
    try:
        subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True, timeout=30)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def start_mlflow_server(backend_uri: str, artifacts: Path, port: int | None = None,
                        env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` with proxied artifacts (``env``: more variables for it); returns the process and its URL
    once it answers. A new SQLite database starts from the migrated template, as the embedded registry's does
    (``mlflow server`` would run MLflow's ~60 migrations itself: 2-3 s of CPU)."""
    from mlops_core.mlflow_api import seed_sqlite

    seed_sqlite(backend_uri)
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(Path(artifacts).parent / f"mlflow-server-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
                             "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=90, proc=proc)
    except Exception:
        stop_group(proc)
        raise
    return proc, url


# -- gunicorn serving server:create_app() and a steady load on it ---------------------------------
def wait_for(predicate, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            value = predicate()
            if value:
                return value
        time.sleep(step)
    return predicate()


def python_json(code: str, timeout: float = 120, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh Python process (this interpreter; ``env``, default this one's) and return the JSON
    it printed last."""
    import json

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLOPS_") and k not in ("MLFLOW_TRACKING_URI", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


STOP_WAIT = 60  # seconds a stopped master may take (its workers exit in about a second)


class Gunicorn:
    """One gunicorn master serving ``server:create_app()`` from a scratch working directory."""

    def __init__(self, home: Path, workdir: Path, *, preload: bool = False, tracking_uri: str | None = None,
                 env: dict[str, str] | None = None):
        self.home, self.workdir, self.preload = home, workdir, preload
        self.extra = {**({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}), **(env or {})}
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "gunicorn.log"
        self.start()

    def start(self) -> None:
        """Start the master on a new free port (the log file is appended to)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env(**{"MLOPS_HOME": str(self.home), "MLOPS_REFRESH_SECONDS": str(REFRESH), "MLOPS_WORKERS": "2",
                          "MLOPS_BIND": f"127.0.0.1:{self.port}",
                          "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / "metrics"), **self.extra})
        # no forced kill at the end of the graceful shutdown: a worker that cannot exit keeps the master up (stop)
        args = [sys.executable, "-m", "gunicorn", "-c", str(CONF), *(["--preload"] if self.preload else []),
                "--graceful-timeout", "300", "server:create_app()"]
        self.log = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        def ready():
            assert self.proc.poll() is None, self.tail()
            return requests.get(self.url + "/ready", timeout=5).status_code == 200
        assert wait_for(ready, timeout, 0.25), f"gunicorn not ready within {timeout}s\n{self.tail()}"

    def worker_pids(self) -> set[int]:
        text = requests.get(self.url + "/metrics", timeout=5).text
        return {int(p) for p in re.findall(r'mlops_refresh_last_success_timestamp_seconds\{pid="(\d+)"\}', text)}

    def gauge(self, name: str) -> dict[tuple[str, ...], float]:
        """Samples of a per-worker gauge: {(pid, labels...): value}."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        out = {}
        for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, flags=re.M):
            out[tuple(sorted(labels.split(",")))] = float(value)
        return out

    def refreshes(self) -> dict[str, float]:
        """Refreshes of all workers by what started them (start, poll, notice, webhook)."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        return {cause: float(value) for cause, value in
                re.findall(r'^mlops_refresh_total\{cause="(\w+)"\} (\S+)$', text, flags=re.M)}

    def serves(self, production: str | None, staging: str | None, workers: int = 2) -> bool:
        """True when every worker has loaded these versions (from the per-worker version gauge)."""
        want = {"Production": float(production or 0), "Staging": float(staging or 0)}
        versions = self.gauge("mlops_model_version")
        per_stage = {stage: [v for k, v in versions.items() if f'arm="{stage}"' in k] for stage in want}
        return all(len(vs) == workers and all(v == want[stage] for v in vs) for stage, vs in per_stage.items())

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        return ""

    def stop(self) -> list[str]:
        """Stop the master: TERM, a bounded wait, then KILL. Returns what shows that a worker did not exit by
        itself (a signal gunicorn reported, a C++ runtime's abort, a master still waiting for its workers at
        the end of the wait), for a caller to assert on."""
        problems = []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                problems.append(f"the master still waited for a worker {STOP_WAIT} s after SIGTERM")
                stop(self.proc)
        self.log.close()
        with contextlib.suppress(OSError):
            problems += [line for line in self.log_path.read_text().splitlines()
                         if re.search(r"was sent SIG|terminate called", line)]
        return problems


class Load(threading.Thread):
    """A steady request load on /predict; records every answer and every failure.

    One request at a time, :attr:`PAUSE` seconds apart: a steady stream (about 20 answers a second), each one
    timed; without the pause one thread took a third of a core (itself and the worker answering it) from the
    trainings and servers under test on a 2-core runner.
    """

    PAUSE = 0.05

    def __init__(self, url: str, *, user_ids=(0, 1, 2, 3)):
        super().__init__(daemon=True)
        self.url, self.user_ids = url + "/predict", user_ids
        self.answers: list[tuple[float, int, str, str]] = []  # (time, user_id, stage, version)
        self.failures: list[str] = []
        self._halt = threading.Event()

    KEEPALIVE = 5.0  # server/gunicorn.conf.py: the server closes a connection idle this long

    def run(self):
        session, i, last = requests.Session(), 0, time.monotonic()
        self.stale = 0  # retries on a kept-alive connection the server had closed while this thread was starved
        while not self._halt.is_set():
            user_id = self.user_ids[i % len(self.user_ids)]
            i += 1
            try:
                try:
                    response = session.post(self.url, json={"user_id": user_id, "features": ROW}, timeout=10)
                except requests.ConnectionError:
                    # a training in this process can hold the GIL for seconds: a connection left idle past the
                    # server's keep-alive was closed by it, as HTTP allows; that is not a server failure
                    if time.monotonic() - last < self.KEEPALIVE:
                        raise
                    self.stale += 1
                    session = requests.Session()
                    response = session.post(self.url, json={"user_id": user_id, "features": ROW}, timeout=10)
                last = time.monotonic()
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                body = response.json()
                self.answers.append((time.time(), user_id, body["stage"], body["version"]))
            except requests.RequestException as err:
                self.failures.append(repr(err))
            self._halt.wait(self.PAUSE)

    def stop(self):
        self._halt.set()
        self.join(timeout=15)
        assert not self.is_alive()


