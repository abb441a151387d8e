"""Bring the whole loop up in the foreground: watcher, gunicorn server and MLflow UI (``mlops up``)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .live import feedback_refusal
from .processes import terminate

__all__ = ["Service", "services", "up"]

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    name: str
    argv: list[str]
    url: str = ""


def _bin(name: str) -> str:
    """A console script of this environment (beside the running interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def services(settings: Settings, *, port: int = 8000, ui_port: int = 5000, ui: bool = True) -> list[Service]:
    out = [Service("watcher", [sys.executable, "-m", "watcher"]),
           Service("server", [_bin("gunicorn"), "-c", str(_REPO / "server" / "gunicorn.conf.py"),
                              "--bind", f"127.0.0.1:{port}", "server:create_app()"],
                   f"http://127.0.0.1:{port}")]
    if ui and settings.is_local_store:  # a remote registry is an `mlflow server` with its own UI
        argv = [_bin("mlflow"), "server", "--backend-store-uri", settings.tracking_uri, "--host", "127.0.0.1",
                "--port", str(ui_port), "--workers", "1", "--default-artifact-root", settings.artifact_root.as_uri()]
        out.append(Service("mlflow-ui", argv, f"http://127.0.0.1:{ui_port}"))
    return out


def _example(settings: Settings) -> str:
    """A /predict body for the first row of train.csv (any data set: the settings' features)."""
    import pandas as pd

    row = pd.read_csv(settings.train_csv, nrows=1)[list(settings.features)].iloc[0]
    values = {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    return json.dumps({"user_id": 2, "features": values}).replace("'", "'\\''")  # inside '...' in a shell


def _feedback_hint(settings: Settings, port: int, *, made_up: bool) -> str:
    """How to post a label to this stack: with the token it made up (shown here only), the operator's own, or none."""
    auth = ' -H "Authorization: Bearer $MLOPS_FEEDBACK_TOKEN"' if settings.feedback_token else ""
    curl = (f"  curl -s -X POST http://127.0.0.1:{port}/feedback -H 'Content-Type: application/json'{auth} "
            """-d '{"request_id": "<request_id of an answer>", "label": 1}'""")
    if made_up:
        return ("Feedback can move an alias (live retirement or promotion is on), so it needs a token; this run "
                "made one up (a new one at every `mlops up`: set MLOPS_FEEDBACK_TOKEN to choose it). In another "
                f"terminal:\n  export MLOPS_FEEDBACK_TOKEN={settings.feedback_token}\n{curl}")
    if settings.feedback_token:
        return f"Feedback needs your MLOPS_FEEDBACK_TOKEN:\n{curl}"
    return f"Feedback moves no alias (MLOPS_AB_RETIRE and MLOPS_AB_PROMOTE are off) and needs no token:\n{curl}"


def up(settings: Settings, *, port: int = 8000, ui_port: int = 5000, ui: bool = True) -> int:
    """Prepare data and Production, start every service, wait; Ctrl-C stops them all."""
    from .data import make_datasets
    from .pipeline import run

    if not settings.train_csv.exists() or not settings.current_csv.exists():
        make_datasets(settings)
        print(f"wrote demo data to {settings.data_dir}", flush=True)
    result = run(settings)  # initialises the store once and bootstraps Production before anyone polls
    print(f"chain: {result.status} (production={result.production}, staging={result.staging})", flush=True)
    env = {**os.environ, "MLOPS_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.tracking_uri,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}
    made_up = feedback_refusal(settings) is not None  # the server would refuse every label: one token for this run
    if made_up:
        settings = settings.replace(feedback_token=secrets.token_urlsafe(24))
        env["MLOPS_FEEDBACK_TOKEN"] = settings.feedback_token  # the server requires it; the watcher shares it
    procs: list[tuple[Service, subprocess.Popen]] = []
    stopping = False

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    logs: dict[str, Path] = {}
    try:
        for svc in services(settings, port=port, ui_port=ui_port, ui=ui):
            output = None
            if svc.name == "mlflow-ui":  # the UI's web-server chatter goes to its log file, not the terminal
                settings.logs_dir.mkdir(parents=True, exist_ok=True)
                logs[svc.name] = settings.logs_dir / "mlflow-ui.log"
                output = open(logs[svc.name], "ab")  # noqa: SIM115 - the child holds it; closed below
            try:
                procs.append((svc, subprocess.Popen(svc.argv, env=env, cwd=settings.home, start_new_session=True,
                                                    stdout=output, stderr=output)))
            finally:
                if output is not None:
                    output.close()
            print(f"started {svc.name} (pid {procs[-1][1].pid})" + (f" on {svc.url}" if svc.url else "")
                  + (f", log {logs[svc.name]}" if svc.name in logs else ""), flush=True)
        print(f"\nDrop a labelled batch at {settings.current_csv} (e.g. `mlops make-data --drift 0.5 --seed 1 "
              f"--no-train`) and watch it flow. Try:\n  curl -s -X POST http://127.0.0.1:{port}/predict "
              f"-H 'Content-Type: application/json' -d '{_example(settings)}'"
              f"\n  curl -s http://127.0.0.1:{port}/models\n{_feedback_hint(settings, port, made_up=made_up)}"
              "\nCtrl-C stops everything.", flush=True)
        while not stopping:
            for svc, proc in procs:
                if proc.poll() is not None:
                    print(f"{svc.name} exited with {proc.returncode}; stopping the others", flush=True)
                    if svc.name in logs:
                        print(_tail(logs[svc.name]), flush=True)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        terminate([p for _, p in procs], 15.0, group=True)  # each service's own children stop with it


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:])
