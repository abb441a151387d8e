"""The Airflow DAG runs the same library calls: `airflow dags test` in a temporary AIRFLOW_HOME."""

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_core.config import Settings
from mlops_core.registry import Registry

pytest.importorskip("airflow", reason="the [airflow] extra is not installed (pip install .[airflow])")

DAGS = Path(__file__).resolve().parent.parent / "deploy" / "airflow"
AIRFLOW = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"

pytestmark = pytest.mark.slow  # trains models and starts real services


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, bootstrapped):
    """Airflow's metadata database migrated, the DAG parsed without errors, and MLOPS_HOME a copy of the
    session's bootstrapped home (Production v1: bootstrapping is the library's, as tested in test_pipeline)."""
    root = tmp_path_factory.mktemp("airflow")
    shutil.copytree(bootstrapped.home, root / "home")
    env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
           "MLOPS_HOME": str(root / "home"), "MLOPS_MODELS": "lr,dt", "MLOPS_FOLD": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=root, check=True, capture_output=True, timeout=180)
    errors = subprocess.run([AIRFLOW, "dags", "list-import-errors", "--local"], env=env, cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert "mlops_dag.py" not in errors.stdout, errors.stdout
    return env, root, Settings(home=root / "home", models=("lr", "dt"), fold=2)


def _dags_test(env, cwd, day: str, conf: dict) -> dict[str, str]:
    """Run the DAG once with ``airflow dags test`` and return the state Airflow recorded for each task (read
    from its metadata database: two more CLI calls would cost seconds each, importing Airflow)."""
    proc = subprocess.run([AIRFLOW, "dags", "test", "mlops_retraining", day, "-c", json.dumps(conf)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with contextlib.closing(sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")) as db:
        rows = db.execute("SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr"
                          " ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id"
                          " WHERE ti.dag_id = 'mlops_retraining' AND dr.logical_date LIKE ?", (f"{day}%",)).fetchall()
    assert rows, f"no task instances recorded for the run of {day}"
    return dict(rows)


def test_no_drift_batch_skips_train_register_promote(airflow_env):
    env, root, settings = airflow_env
    states = _dags_test(env, root, "2026-01-16", {"make_data": True, "drift": 0.0, "seed": 0})
    assert states == {"make_data": "success", "check_drift": "success", "train": "skipped",
                      "register": "skipped", "promote": "skipped"}
    # the batch made no new version
    assert Registry(settings).aliases() == {"production": "1", "staging": "1"}
    assert [v["version"] for v in Registry(settings).versions()] == ["1"]


def test_drifted_batch_runs_every_task_and_registers_a_version(airflow_env):
    env, root, settings = airflow_env
    states = _dags_test(env, root, "2026-01-17", {"make_data": True, "drift": 0.5, "seed": 1})
    assert set(states.values()) == {"success"} and len(states) == 5
    reg = Registry(settings)
    assert [v["version"] for v in reg.versions()] == ["1", "2"]
    decision = reg.describe("2")["tags"]["decision"]
    assert decision in {"promoted", "staged"}
    assert reg.aliases()["staging"] == "2"
    assert reg.aliases()["production"] == ("2" if decision == "promoted" else "1")
