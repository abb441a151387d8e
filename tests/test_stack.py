"""`mlops up` for real: it brings the watcher and the server up on a home, and Ctrl-C stops every process
it started (by the pids and process groups it printed, never by name)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from _services import base_env, free_port, stop_group, wait_for

pytestmark = pytest.mark.slow


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process on the machine, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(stat.parent.name)] = int(fields[1])
    return out


def _descendants(root: int) -> set[int]:
    parents, found, frontier = _parents(), set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and pid in _parents()}


def test_mlops_up_serves_and_ctrl_c_stops_everything_it_started(bootstrapped, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(bootstrapped.home, home)
    port = free_port()
    env = base_env(MLOPS_HOME=str(home), MLOPS_MODELS="lr,dt", MLOPS_FOLD="2", MLOPS_REFRESH_SECONDS="1")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlops"), "up", "--port", str(port), "--no-ui"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        while len(re.findall(r"started (\w[\w-]*) \(pid (\d+)\)", "".join(lines))) < 2:
            line = proc.stdout.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
        started = {name: int(pid) for name, pid in re.findall(r"started (\w[\w-]*) \(pid (\d+)\)", "".join(lines))}
        assert set(started) == {"watcher", "server"}
        assert wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200, 120)
        answer = requests.post(f"http://127.0.0.1:{port}/predict", timeout=10, json={"user_id": 2, "features": {
            "pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}}).json()
        assert answer["version"] == "1"
        # retirement is on and no token was set: `mlops up` made one up for the server and the watcher, and said it
        while not (made := re.search(r"export MLOPS_FEEDBACK_TOKEN=(\S+)", "".join(lines))):
            line = proc.stdout.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
        token = made[1]
        label = {"request_id": answer["request_id"], "label": 0}
        assert requests.post(f"http://127.0.0.1:{port}/feedback", json=label, timeout=10).status_code == 401
        response = requests.post(f"http://127.0.0.1:{port}/feedback", json=label, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
        # the watcher shares it (gunicorn's master rewrites its own environ block with its title: not read there)
        environ = Path(f"/proc/{started['watcher']}/environ").read_bytes().split(b"\0")
        assert f"MLOPS_FEEDBACK_TOKEN={token}".encode() in environ
        ours = _descendants(proc.pid)  # the watcher and its spare run child, gunicorn and its 2 workers
        assert set(started.values()) <= ours and len(ours) >= 5, ours
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 20
        while (left := _alive(ours)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running after mlops up stopped: {sorted(left)}"
    finally:
        if proc.poll() is None:
            stop_group(proc)
