"""Airflow DAG over the same mlops_core calls: make_data → check_drift → train → register → promote.

Each task is a thin call into the library. Settings come from the environment
(``MLOPS_*``, ``MLFLOW_TRACKING_URI``) and, where set, the Airflow Variables
``mlops_home`` and ``mlops_tracking_uri``. One chain at a time: the DAG has
``max_active_runs=1`` and every task holds the library's lock while it works.
Nothing but the DAG's shape is built when Airflow parses this file.

Run config (``--conf``): ``{"make_data": false, "drift": 0.0, "seed": 0, "force": false}``;
``make_data`` writes a demo batch first (``mlops make-data``), else the task
uses whatever batch is at ``data/current.csv``.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.sdk import DAG, Param


def _settings():
    """Each task is an entry point: settings from the environment (or Variables), the process set up."""
    from airflow.sdk import Variable

    from mlops_core.config import Settings
    from mlops_core.runtime import prepare_process

    settings = Settings.from_env(home=Variable.get("mlops_home", default=None),
                                 tracking_uri=Variable.get("mlops_tracking_uri", default=None))
    prepare_process(settings)
    return settings


def make_data(params=None, **_):
    from mlops_core.data import make_datasets

    if not params.get("make_data"):
        return None
    settings = _settings()
    _, current = make_datasets(settings, drift=float(params.get("drift", 0.0)), seed=int(params.get("seed", 0)),
                               write_train=not settings.train_csv.exists())
    return str(current)


def check_drift(ti=None, params=None, **_):
    from mlops_core.chain import handoff
    from mlops_core.pipeline import pipeline_lock

    settings = _settings()
    with pipeline_lock(settings):
        out = handoff.start(settings, force=bool(params.get("force")))
    ti.xcom_push(key="run_id", value=out.run_id)
    ti.xcom_push(key="result", value=out.to_dict())
    return out.status == "drift"  # False short-circuits train, register and promote


def _run_id(ti) -> str:
    return ti.xcom_pull(task_ids="check_drift", key="run_id")


def _abort_on_failure(context) -> None:
    from mlops_core.chain import handoff

    run_id = context["ti"].xcom_pull(task_ids="check_drift", key="run_id")
    if run_id:
        handoff.abort(_settings(), run_id)


def train(ti=None, **_):
    from mlops_core.chain import handoff
    from mlops_core.pipeline import pipeline_lock

    settings = _settings()
    with pipeline_lock(settings):
        result = handoff.train(settings, _run_id(ti))
    return {"model": result.model_name, "cv_accuracy": result.cv_metrics.get("accuracy"), "rows": result.n_train}


def register(ti=None, **_):
    from mlops_core.chain import handoff
    from mlops_core.pipeline import pipeline_lock

    settings = _settings()
    with pipeline_lock(settings):
        return handoff.register(settings, _run_id(ti))


def promote(ti=None, **_):
    from mlops_core.chain import handoff
    from mlops_core.pipeline import pipeline_lock

    settings = _settings()
    with pipeline_lock(settings):
        return handoff.decide(settings, _run_id(ti), ti.xcom_pull(task_ids="register")).to_dict()


with DAG(
    dag_id="mlops_retraining",
    description="Drift check, AutoML retraining, MLflow registration and promotion (mlops_core)",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={"make_data": Param(False, type="boolean"), "drift": Param(0.0, type="number"),
            "seed": Param(0, type="integer"), "force": Param(False, type="boolean")},
    default_args={"retries": 0, "on_failure_callback": _abort_on_failure},
    tags=["mlops"],
) as dag:
    (
        PythonOperator(task_id="make_data", python_callable=make_data)
        >> ShortCircuitOperator(task_id="check_drift", python_callable=check_drift)
        >> PythonOperator(task_id="train", python_callable=train)
        >> PythonOperator(task_id="register", python_callable=register)
        >> PythonOperator(task_id="promote", python_callable=promote)
    )
