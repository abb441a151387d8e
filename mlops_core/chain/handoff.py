"""The chain's stages as separate calls, for the Airflow DAG (deploy/airflow/mlops_dag.py) and only for it.

Each DAG task is its own process, so the run's in-memory :class:`~.context.Run` is stored between tasks under
``<models>/candidate/<run_id>/run.joblib`` (a folder of its own: runs of other trainers cannot mix in) and
removed once the decision is made. The watcher and ``mlops run`` chain the stages in one process and never
come here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import Settings
from ..files import atomic_write
from ..registry import Registry
from . import decide as deciding
from . import register as registering
from . import train as training
from .context import Context, Run, RunResult
from .detect import illustrate

__all__ = ["start", "train", "register", "decide", "abort"]


def start(settings: Settings, *, force: bool = False, registry: Registry | None = None) -> RunResult:
    """Validate, bootstrap an empty registry, score drift; a run left open (``drift``) is stored for the next task."""
    from .. import pipeline

    ctx = Context(settings, registry or Registry(settings))
    run = pipeline.start(ctx, force=force)
    if run.open:
        _save(settings, run)
    else:
        illustrate(ctx, run)
    return run.result


def train(settings: Settings, run_id: str, *, registry: Registry | None = None):
    """Train the stored run's candidate; returns what was trained (its ``TrainResult``)."""
    ctx, run = _load(settings, run_id, registry)
    run = training.train(ctx, run)
    _save(settings, run)
    return run.candidate


def register(settings: Settings, run_id: str, *, registry: Registry | None = None) -> str:
    """Judge the stored run's candidate and register it with that evidence; returns the new version."""
    ctx, run = _load(settings, run_id, registry)
    run = registering.register(ctx, deciding.judge(ctx, run))
    _save(settings, run)
    return run.version


def decide(settings: Settings, run_id: str, version: str | None = None, *,
           registry: Registry | None = None) -> RunResult:
    """Act on the stored run's verdict (promote, stage or archive); the stored run is then removed."""
    ctx, run = _load(settings, run_id, registry)
    if version is not None and str(version) != run.version:
        raise ValueError(f"run {run_id} registered version {run.version}, not {version}")
    run = illustrate(ctx, deciding.act(ctx, run))
    shutil.rmtree(_folder(settings, run_id), ignore_errors=True)
    return run.result


def abort(settings: Settings, run_id: str, *, registry: Registry | None = None) -> None:
    """Mark an open run failed (its batch is processed again next time) and remove what was stored of it."""
    from ..pipeline import abort as abort_run

    abort_run(Context(settings, registry or Registry(settings)), run_id)
    shutil.rmtree(_folder(settings, run_id), ignore_errors=True)


def _folder(settings: Settings, run_id: str) -> Path:
    return settings.models_dir / "candidate" / run_id


def _save(settings: Settings, run: Run) -> None:
    import joblib

    run.models.clear()  # loaded versions are loaded again by the task that needs them
    atomic_write(_folder(settings, run.run_id) / "run.joblib", lambda fh: joblib.dump(run, fh))


def _load(settings: Settings, run_id: str, registry: Registry | None) -> tuple[Context, Run]:
    import joblib

    path = _folder(settings, run_id) / "run.joblib"
    if not path.exists():
        raise FileNotFoundError(f"no stored chain run {run_id} at {path} (start stores it when drift is found)")
    run = joblib.load(path)
    ctx = Context(settings, registry or Registry(settings))
    run.result.timings = ctx.timer.seconds
    return ctx, run
