"""What the serving benchmarks share: servers on 127.0.0.1 (ours, a no-op Flask app) and the load they are driven by.

``bench/serve`` and ``bench/matrix`` import this module (they put ``bench/`` on ``sys.path``).
Nothing happens on import.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["REPO", "BIN", "ROW", "NOOP_APP", "free_port", "wait_http", "stop", "post", "get", "ensure_wrk",
           "drive_wrk", "drive_python", "measure", "server_env", "noop_command", "ours_command", "running"]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROW = {"pclass": 3, "sex": "male", "age": 22.0, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}  # Titanic
NOOP_APP = '''
from flask import Flask, jsonify, request
app = Flask(__name__)

@app.post("/predict")
def predict():
    request.get_json()
    return jsonify({"predictions": [0], "probabilities": [0.5]})

@app.get("/health")
def health():
    return "ok"
'''
LUA = '''wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:  # noqa: BLE001 - keep polling
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the process group ``proc`` leads (it was started with ``start_new_session``)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def post(url: str, body: dict, *, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def get(url: str, *, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def ensure_wrk() -> str | None:
    """The path of wrk, installed with apt-get when missing and possible; None: use the Python client."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing wrk (apt-get install -y wrk)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, timeout=300)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, timeout=300)
    return shutil.which("wrk")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def drive_wrk(wrk: str, url: str, body: str, connections: int, seconds: float, folder: Path) -> dict:
    """``connections`` keep-alive connections POSTing ``body`` for ``seconds``: req/s, p50, p99 (ms), errors."""
    script = folder / "post.lua"
    script.write_text(LUA.format(body=body))
    duration = f"{max(1, round(seconds))}s"
    command = [wrk, "-t", str(min(connections, 2)), "-c", str(connections), "-d", duration, "--latency",
               "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    if "Requests/sec:" not in out:
        raise RuntimeError(f"wrk gave no result:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rate, "p50": p50, "p99": p99, "errors": errors,
            "socket": socket_errors.group(1) if socket_errors else ""}


def drive_python(url: str, body: str, connections: int, seconds: float) -> dict:
    """A bounded keep-alive client: ``connections`` threads, each one connection, for ``seconds``."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run():
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        this_connection = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            this_connection.append(time.perf_counter() - started)
            if resp.status != 200:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(this_connection)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    begun = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    n = len(latencies)
    if not n:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": errors[0], "socket": "no answer"}
    return {"rps": n / (time.monotonic() - begun), "p50": latencies[n // 2] * 1e3,
            "p99": latencies[min(n - 1, int(n * 0.99))] * 1e3, "errors": errors[0], "socket": ""}


def measure(wrk: str | None, url: str, body: str, connections: int, seconds: float, folder: Path) -> dict:
    """Drive ``url`` with wrk when there is one, else with the Python client."""
    if wrk:
        return drive_wrk(wrk, url, body, connections, seconds, folder)
    return drive_python(url, body, connections, seconds)


def server_env(settings, *, workers: int, threads: int, **extra: str) -> dict[str, str]:
    """The environment of a server of ``settings``' home: this process's, without its own MLOPS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_") and k != "MLFLOW_TRACKING_URI"}
    env.update(MLOPS_HOME=str(settings.home), MLFLOW_TRACKING_URI=settings.tracking_uri,
               MLOPS_MODEL_NAME=settings.model_name, PYCARET_CUSTOM_LOGGING_PATH=os.devnull,
               MLOPS_WORKERS=str(workers), MLOPS_THREADS=str(threads), PYTHONWARNINGS="ignore",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # mlflow runs uvicorn from PATH
    env.update(extra)
    return env


def noop_command(folder: Path, port: int, *, workers: int, threads: int) -> list[str]:
    """gunicorn serving :data:`NOOP_APP` (written to ``folder``) with our server's worker settings."""
    (folder / "noop_app.py").write_text(NOOP_APP)
    return [str(BIN / "gunicorn"), "--chdir", str(folder), "-b", f"127.0.0.1:{port}", "-w", str(workers),
            "-k", "gthread", "--threads", str(threads), "--keep-alive", "5", "--log-level", "warning",
            "noop_app:app"]


def ours_command() -> list[str]:
    """Our server, as deployed (``MLOPS_BIND`` and the other settings come from the environment)."""
    return [str(BIN / "gunicorn"), "-c", str(REPO / "server" / "gunicorn.conf.py")]


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], ready: str, log_path: Path,
            timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own session, wait for ``ready`` to answer 200, and stop it on leaving.

    The server's output goes to ``log_path``; its tail is printed when it fails to become ready.
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log, stderr=log, start_new_session=True)
        try:
            try:
                wait_http(ready, proc, timeout=timeout)
            except Exception:
                log.flush()
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            yield proc
        finally:
            stop(proc)
