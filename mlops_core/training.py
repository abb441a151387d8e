"""AutoML with a PyCaret experiment (classification, or regression): compare on a sample, pick the best, fit the
winner on all.

The comparison (models x folds of cross-validation) runs on a stratified, seeded sample of at most
``select_rows`` rows (all of them when there are fewer); the winner's whole pipeline (PyCaret's preprocessing and
the estimator) is then fitted on every row. Labels of any kind (see :mod:`mlops_core.labels`).

With ``dask_scheduler`` set, the comparison runs on that Dask cluster instead (PyCaret's Fugue backend: the sample
travels to the workers, a task a model; see :mod:`mlops_core.cluster`); the final fit stays here, or, for a
LightGBM winner on more than ``dask_fit_rows`` rows, goes through ``lightgbm.dask`` across the workers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.base import clone

from .cluster import ClusterError, compare_models, connect, fit_lightgbm
from .config import NO_PROBABILITIES, Settings
from .data import NUMERIC, normalise
from .errors import TrainingError
from .files import atomic_write
from .labels import Labels, label_key, task_labels
from .progress import Progress

__all__ = ["TrainResult", "train", "stratified_sample", "import_pycaret_classification"]

log = logging.getLogger(__name__)


def import_pycaret_classification():
    """Import PyCaret's classification module (its log file is placed by ``runtime.prepare_process``)."""
    from pycaret import classification

    _memoise_tuning_grids()
    return classification


def _memoise_tuning_grids() -> None:
    """PyCaret builds every model's tuning grids again on each set-up, comparison and final fit (eight times a
    training): ``np_list_arange`` rounds each of their values one by one, about 130,000 calls and 0.8 s of CPU
    a training that never tunes. The grids depend on their arguments only: kept once built, each caller given
    its own copy. (Its containers modules import the function by name, so it is replaced there.)"""
    import importlib

    from pycaret.utils import generic

    if getattr(generic.np_list_arange, "memoised", False):
        return
    build, built = generic.np_list_arange, {}

    def np_list_arange(start, stop, step, inclusive=False):
        key = (type(start), start, type(stop), stop, type(step), step, bool(inclusive))
        if key not in built:
            built[key] = build(start, stop, step, inclusive=inclusive)
        return list(built[key])

    np_list_arange.memoised = True
    generic.np_list_arange = np_list_arange
    for name in ("classification", "regression"):
        module = importlib.import_module(f"pycaret.containers.models.{name}")
        if getattr(module, "np_list_arange", None) is build:
            module.np_list_arange = np_list_arange


#: per task: PyCaret's experiment, the comparison's column for each promotion metric, whether higher is better
SORT_COLUMN = {"accuracy": "Accuracy", "f1": "Accuracy", "auc": "Accuracy", "precision": "Accuracy",
               "recall": "Accuracy", "rmse": "RMSE", "mae": "MAE", "r2": "R2"}


def _experiment(settings: Settings):
    """A new PyCaret experiment for the settings' task."""
    if settings.task == "regression":
        from pycaret.regression import RegressionExperiment

        _memoise_tuning_grids()
        return RegressionExperiment()
    return import_pycaret_classification().ClassificationExperiment()


@dataclass
class TrainResult:
    """The finalised best pipeline and how the comparison went."""

    model: object  # a fitted sklearn-compatible pipeline (preprocessing + estimator)
    model_id: str
    model_name: str
    comparison: pd.DataFrame
    cv_metrics: dict[str, float]
    model_path: Path
    comparison_path: Path
    seconds: float
    n_train: int  # rows the final pipeline was fitted on
    labels: Labels | None  # the classes it was trained on and, for two, the positive one (None: a regression)
    n_select: int = 0  # rows the comparison selected the model on (a stratified sample when < n_train)


def _metrics(row: pd.Series) -> dict[str, float]:
    """The comparison row's scores as ``accuracy``, ``auc``, ``f1``… (the timing column left out)."""
    return {re.sub(r"[^a-z0-9]+", "_", str(k).lower()).strip("_"): float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and k != "TT (Sec)"}


def train(frame: pd.DataFrame, settings: Settings, *, kinds: dict[str, str] | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Compare ``settings.models`` on a sample of ``frame`` (by Accuracy; a regression by its promotion metric,
    RMSE, MAE or R²) and fit the best on all of it.

    Writes ``best_model.pkl`` and ``pycaret_compare_results.csv`` under
    ``settings.models_dir``, whatever the working directory.
    """
    started = time.perf_counter()
    features = list(settings.features)
    kinds = kinds or {}
    numeric = [c for c in features if kinds.get(c, NUMERIC if pd.api.types.is_numeric_dtype(frame[c]) else "")
               == NUMERIC]
    categorical = [c for c in features if c not in numeric]
    data = normalise(frame[[*features, settings.target]].dropna(subset=[settings.target]).reset_index(drop=True),
                     {**{c: NUMERIC for c in numeric}, **{c: "categorical" for c in categorical}})
    labels = None
    if settings.task == "regression":
        data[settings.target] = data[settings.target].astype(float)
        if data[settings.target].nunique() < 2:
            raise TrainingError(f"{settings.target!r} has fewer than two distinct values to learn from")
        # strata for the sample: the target's deciles, so the sample spans its whole range
        strata = pd.qcut(data[settings.target], 10, labels=False, duplicates="drop")
    else:
        # the labels as one typed column (ints, booleans or strings): PyCaret label-encodes anything but 0..k-1
        data[settings.target] = data[settings.target].infer_objects()
        labels = task_labels(data[settings.target], settings)
        if len(labels.classes) < 2:
            raise TrainingError(f"expected at least two classes in {settings.target!r} to train on, got "
                                f"{list(labels.classes)}")
        strata = data[settings.target]
    progress = progress or Progress()
    select = stratified_sample(data, strata, settings.select_rows, seed=settings.seed, at_least=2 * settings.fold)
    with _cluster(settings) as client, _frozen_heap():
        final, comparison = _compare_and_finalise(_experiment(settings), select, settings, numeric, categorical,
                                                  progress, fit_all=data if len(select) < len(data) else None,
                                                  client=client)
    top = comparison.iloc[0]
    if labels is not None and not hasattr(final, "predict_proba"):
        raise TrainingError(f"{top.get('Model')} gives no probabilities (no predict_proba); serving needs them")
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    model_path = settings.models_dir / "best_model.pkl"
    comparison_path = settings.models_dir / "pycaret_compare_results.csv"
    comparison.to_csv(comparison_path, index_label="model_id")
    atomic_write(model_path, lambda fh: joblib.dump(final, fh))
    metrics = _metrics(top)
    seconds = time.perf_counter() - started
    log.info("trained %s (cv %s %.4f) selected on %d rows, fitted on %d, in %.1fs", top.get("Model"),
             settings.promotion_metric, metrics.get(settings.promotion_metric, math.nan), len(select), len(data),
             seconds)
    return TrainResult(model=final, model_id=str(comparison.index[0]), model_name=str(top.get("Model")),
                       comparison=comparison, cv_metrics=metrics, model_path=model_path,
                       comparison_path=comparison_path, seconds=seconds, n_train=len(data), labels=labels,
                       n_select=len(select))


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collector's full collections while the block runs.

    PyCaret calls ``gc.collect()`` after every model it fits; each walked the whole heap of the libraries
    imported so far (PyCaret, MLflow, scikit-learn: about 0.2 s a call on this machine, 1.5 s of an 8.5 s
    comparison of four models). Frozen, those objects are skipped; unfrozen afterwards, nothing is kept that
    would otherwise be freed.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def stratified_sample(frame: pd.DataFrame, strata: str | pd.Series, rows: int, *, seed: int,
                      at_least: int = 10) -> pd.DataFrame:
    """At most ``rows`` rows of ``frame`` (all of them when it is not larger; 0: all), drawn per stratum (a class;
    ``strata`` is a column name or a Series aligned with ``frame``) in proportion (each keeps at least
    ``at_least`` rows, or all it has), seeded, in their original order."""
    if rows <= 0 or len(frame) <= rows:
        return frame
    rng = np.random.default_rng(seed)
    share = rows / len(frame)
    chosen = []
    keys = frame[strata] if isinstance(strata, str) else pd.Series(np.asarray(strata), index=frame.index)
    groups = keys.groupby(keys, sort=False).indices
    for _, positions in sorted(groups.items(), key=lambda kv: label_key(kv[0])):
        take = min(len(positions), max(int(round(len(positions) * share)), at_least))
        chosen.append(rng.choice(positions, size=take, replace=False))
    return frame.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def _model_ids(exp, settings: Settings) -> list[str]:
    """The ids compared: the settings' list, or every model PyCaret compares by default (its "turbo" ones) that
    gives probabilities."""
    if settings.models:
        return list(settings.models)
    table = exp.models(internal=True)
    return [i for i in table.index if bool(table.loc[i, "Turbo"])
            and (settings.task == "regression" or i not in NO_PROBABILITIES)]


def _compare_and_finalise(exp, data: pd.DataFrame, settings: Settings, numeric: list[str],
                          categorical: list[str], progress: Progress, *, fit_all: pd.DataFrame | None = None,
                          client=None):
    """PyCaret's comparison of ``settings.models`` on ``data`` (by Accuracy; a regression by RMSE, MAE or R²,
    its promotion metric); the best pipeline finalised (refitted
    on ``fit_all`` when given: every row, ``data`` being a sample of them; its target column is taken out of it,
    in place, for that fit), and the table.

    Each model is compared in a call of its own (the same setup, so the same folds as one call over all of them)
    so that ``progress`` can follow models x folds; the table is then sorted as PyCaret sorts it.
    With a Dask ``client``, every model is compared in one call instead, a task each on its workers
    (:func:`mlops_core.cluster.compare_models`), and the table sorted the same way.
    """
    column = SORT_COLUMN[settings.promotion_metric]
    lower_better = column in ("RMSE", "MAE")
    try:
        exp.setup(data=data, target=settings.target, session_id=settings.seed, fold=settings.fold,
                  n_jobs=settings.n_jobs, numeric_features=numeric, categorical_features=categorical,
                  verbose=False, html=False, log_experiment=False, system_log=False, memory=False)
        ids = _model_ids(exp, settings)
        progress.plan(len(ids) * settings.fold + 1, f"{len(ids)} models x {settings.fold} folds on {len(data)} rows, "
                                                    f"then the final fit")
        deadline = time.monotonic() + settings.budget_minutes * 60 if settings.budget_minutes else None
        fitted, rows = {}, []
        if client is not None:  # on the cluster: every model in one call, a Dask task each
            fitted, table, _ = compare_models(exp, ids, client=client, sort=column, fold=settings.fold,
                                                      progress=progress)
            rows = [table]
        for model_id in ids if client is None else ():
            left = None if deadline is None else (deadline - time.monotonic()) / 60
            if left is not None and left <= 0:
                break
            progress.advance(0, f"cross-validating {model_id}")
            model = exp.compare_models(include=[model_id], sort=column, n_select=1, budget_time=left,
                                       errors="ignore", verbose=False)
            table = exp.pull()
            if isinstance(model, list):
                model = model[0] if model else None
            if model is not None and table is not None and not table.empty:
                fitted[model_id] = model
                rows.append(table.loc[[model_id]] if model_id in table.index else table.iloc[:1])
            progress.advance(settings.fold)
        comparison = (pd.concat(rows).sort_values(column, ascending=lower_better, kind="stable") if rows
                      else pd.DataFrame())
    except ClusterError:  # the cluster, not the data: retried
        raise
    except Exception as err:  # PyCaret raises bare ValueErrors and more from deep inside
        raise TrainingError(f"PyCaret comparison failed: {err}") from err
    if comparison.empty or not np.isfinite(comparison[column].astype(float)).any() or (
            column == "Accuracy" and float(comparison[column].max()) <= 0.0):
        raise TrainingError(f"no model of {ids or 'all'} trained successfully")
    best = fitted.pop(str(comparison.index[0]))
    fitted.clear()  # the other models' memory, before the final fit needs its own
    progress.advance(0, f"fitting {comparison.index[0]} on {len(fit_all) if fit_all is not None else len(data)} rows")
    try:
        final = exp.finalize_model(best)
        if fit_all is not None:
            # the caller's own frame: its target column taken out in place rather than the features copied
            y = fit_all.pop(settings.target)
            if _through_lightgbm_dask(client, final, len(fit_all), settings):
                final = fit_lightgbm(client, final, fit_all, y)
            else:
                final = clone(final).fit(fit_all, y)
    except ClusterError:
        raise
    except Exception as err:
        raise TrainingError(f"finalising {type(best).__name__} failed: {err}") from err
    progress.advance(1)
    return final, comparison


def _cluster(settings: Settings) -> contextlib.AbstractContextManager:
    """The Dask cluster's client while the block runs when ``settings.dask_scheduler`` names one, else None."""
    if not settings.dask_scheduler:
        return contextlib.nullcontext(None)
    return connect(settings.dask_scheduler)


def _through_lightgbm_dask(client, final, rows: int, settings: Settings) -> bool:
    """Whether the final fit of ``final`` on ``rows`` rows goes through lightgbm.dask: with a cluster, for a
    LightGBM estimator, on more than ``settings.dask_fit_rows`` rows (0: never)."""
    if client is None or not 0 < settings.dask_fit_rows < rows:
        return False
    from lightgbm import LGBMModel

    return isinstance(final.steps[-1][1], LGBMModel)
