"""Process set-up, and the arrow it keeps out of serving: the server never imports the trainer."""

import os
import subprocess
import sys

from mlops_core.config import Settings
from mlops_core.runtime import prepare_process


def test_prepare_process_sets_defaults_and_keeps_explicit_values(tmp_path, monkeypatch):
    for key in ("PYCARET_CUSTOM_LOGGING_PATH", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    settings = Settings(home=tmp_path)
    prepare_process(settings, http_timeout=10)
    assert os.environ["PYCARET_CUSTOM_LOGGING_PATH"] == str(settings.logs_dir / "pycaret.log")
    assert settings.logs_dir.is_dir()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"  # the caller's value wins


def test_the_server_imports_neither_the_trainer_nor_pycaret(tmp_path):
    code = ("import sys; from server import create_app; from mlops_core.config import Settings; "
            f"create_app({{'MLOPS_SETTINGS': Settings(home={str(tmp_path)!r}), 'MLOPS_AUTOSTART': False}}); "
            "import server.predict, server.store, server.health, server.live_ab, server.openapi, server.serving; "
            "print(sorted(m for m in ('mlops_core.training', 'pycaret') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
