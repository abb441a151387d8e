"""The training step on a Dask cluster: the comparison through PyCaret's Fugue backend, a large LightGBM fit
through ``lightgbm.dask``.

Nothing distributed is written here: this module connects to the scheduler (bounded in time), checks that the
workers hold what the comparison unpickles, hands the comparison to PyCaret's own ``FugueBackend`` (one Dask task
a model: its cross-validation on the sample the trainer sends) and follows it in the scheduler's task stream.
Dask, Fugue and LightGBM are imported only when a cluster is used (the optional ``[dask]`` extra).

Faults: an unreachable scheduler, a cluster with no workers, workers lacking a package, or a comparison the
cluster lost (every worker that ran a task died, the scheduler went away) raise :class:`ClusterError`, which the
watcher retries like a registry outage. A worker killed while the others live costs only time: the scheduler
runs its tasks again on the others.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from .errors import MlopsError, first_line
from .progress import Progress

__all__ = ["ClusterError", "connect", "needed_packages", "check_workers", "compare_models", "fit_lightgbm",
           "CONNECT_TIMEOUT", "MODEL_TASK"]

log = logging.getLogger(__name__)

#: how long reaching the scheduler (and finding a worker there) may take before the run fails
CONNECT_TIMEOUT = 10.0
#: the name Fugue's Dask engine gives the task that runs one partition of a transform: here, one model's
#: cross-validation (``batch_size=1``: a partition a model)
MODEL_TASK = "_map-"
#: what every comparison task unpickles or runs on a worker, beside the model's own library
_BASE_PACKAGES = ("pycaret", "fugue", "scikit-learn", "pandas", "numpy", "cloudpickle")
#: the distribution a PyCaret model id needs beyond scikit-learn
_MODEL_PACKAGES = {"lightgbm": "lightgbm", "xgboost": "xgboost", "catboost": "catboost"}


class ClusterError(MlopsError, RuntimeError):
    """The Dask cluster cannot run the training step: unreachable, no workers, packages missing, work lost."""


@contextlib.contextmanager
def connect(address: str, *, timeout: float | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address`` with at least one worker, current for Dask
    collections within the block, closed after it."""
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    try:
        from distributed import Client
    except ImportError as err:
        raise ClusterError(f"MLOPS_DASK_SCHEDULER is {address!r} but Dask is not installed here: install the "
                           f"[dask] extra (pip install -c constraints.txt '.[dask]')") from err
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"cannot reach the Dask scheduler {address} (MLOPS_DASK_SCHEDULER) within "
                           f"{timeout:g} s: {first_line(err)}") from err
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"the Dask scheduler {address} has no worker (waited {timeout:g} s)") from err
        with client.as_current():
            yield client
    finally:
        client.close()


def needed_packages(model_ids: Sequence[str]) -> list[str]:
    """The distributions a worker needs to cross-validate ``model_ids`` and send them back."""
    extra = sorted({_MODEL_PACKAGES[m] for m in model_ids if m in _MODEL_PACKAGES})
    return [*_BASE_PACKAGES, *extra]


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_workers(client: Any, packages: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """Raise one :class:`ClusterError` naming every package a worker lacks or holds in another version than
    this process (models travel pickled both ways); return each worker's versions."""
    answer = client.get_versions(packages=list(packages))
    workers = {addr: (info or {}).get("packages", {}) if isinstance(info, dict) else {}
               for addr, info in answer.get("workers", {}).items()}
    here = {name: _installed(name) for name in packages}
    missing, differ = collections.defaultdict(list), collections.defaultdict(list)
    for addr, versions in sorted(workers.items()):
        for name in packages:
            theirs = versions.get(name)
            if theirs is None:
                missing[name].append(addr)
            elif here[name] is not None and theirs != here[name]:
                differ[name].append(f"{theirs} on {addr}")
    problems = [f"{name} is not installed on {', '.join(addrs)}" for name, addrs in missing.items()]
    problems += [f"{name} is {', '.join(found)} where the trainer has {here[name]}" for name, found in differ.items()]
    if problems:
        raise ClusterError("the Dask workers cannot run the comparison: " + "; ".join(problems) +
                           " (install the trainer's versions on every worker: pip install -c constraints.txt "
                           "'mlops-loop[dask]')")
    return workers


def _lost(err: BaseException) -> bool:
    """Whether ``err`` says the cluster lost the work (Dask's own errors: a task's workers killed, no worker left
    within the scheduler's ``no-workers-timeout``, the scheduler gone) rather than PyCaret failing in a task."""
    from concurrent.futures import CancelledError

    return (type(err).__module__.split(".")[0] == "distributed"
            or isinstance(err, (CancelledError, OSError, TimeoutError)))


class _Follow:
    """Count the comparison's finished model tasks in the scheduler's task stream once a second (a thread), and
    advance ``progress`` by ``fold`` for each; relative times, so the scheduler's clock is its own."""

    def __init__(self, client: Any, models: int, fold: int, progress: Progress):
        self.client, self.models, self.fold, self.progress = client, models, fold, progress
        self.done = 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-progress", daemon=True)

    def __enter__(self) -> _Follow:
        self.client.get_task_stream(count=0)  # the scheduler records its task stream from the first ask on
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # progress only: a missed poll is caught up by the next
                since = time.monotonic() - self._started + 1.0
                records = self.client.get_task_stream(start=f"{since:.1f}s")
                finished = min(len({str(_name(r["key"])) for r in records if _is_model_task(r["key"])}),
                               self.models)
                if finished > self.done:
                    self.progress.advance((finished - self.done) * self.fold,
                                          f"{finished}/{self.models} models cross-validated on the cluster")
                    self.done = finished


def _name(key: Any) -> Any:
    return key if isinstance(key, str) else tuple(key)


def _is_model_task(key: Any) -> bool:
    first = key[0] if isinstance(key, (tuple, list)) else key
    return str(first).startswith(MODEL_TASK)


def compare_models(exp: Any, ids: Sequence[str], *, client: Any, sort: str, fold: int,
                   progress: Progress) -> tuple[dict[str, Any], pd.DataFrame, dict[str, int]]:
    """PyCaret's comparison of ``ids`` on ``exp``'s data by ``sort`` (a column of its table), one task a model on
    ``client``'s workers.

    Returns the fitted model of each id, PyCaret's table (index: model ids, in ``ids``' order: the caller
    sorts) and how many model tasks each worker ran. ``progress`` advances by ``fold`` as each model returns.
    """
    from distributed import get_task_stream
    from pycaret.parallel import FugueBackend

    check_workers(client, needed_packages(ids))
    progress.advance(0, f"cross-validating {len(ids)} models on {len(client.scheduler_info()['workers'])} "
                        f"Dask workers")
    # display_remote=False: PyCaret's live table needs Fugue's RPC server; the task stream is followed instead.
    # n_select=all: every fitted model comes back, so the winner is picked here as in-process (ties in ids' order)
    backend = FugueBackend(client, batch_size=1, display_remote=False)
    try:
        with get_task_stream(client) as stream, _Follow(client, len(ids), fold, progress) as follow:
            models = exp.compare_models(include=list(ids), sort=sort, n_select=len(ids), errors="ignore",
                                        verbose=False, parallel=backend)
            table = exp.pull()
    except Exception as err:
        if _lost(err):
            raise ClusterError(f"the Dask cluster lost the comparison: {type(err).__name__}: "
                               f"{first_line(err)}") from err
        raise
    models = models if isinstance(models, list) else [models]
    fitted = dict(zip((str(i) for i in table.index), models))
    table = table.loc[[i for i in ids if i in table.index]]
    spread = collections.Counter(r["worker"] for r in stream.data if _is_model_task(r["key"]))
    progress.advance(max(len(ids) - follow.done, 0) * fold)
    log.info("compared %d models on the Dask cluster %s: model tasks per worker %s", len(ids),
             client.scheduler.address, dict(sorted(spread.items())))
    return fitted, table, dict(sorted(spread.items()))


def fit_lightgbm(client: Any, pipeline: Any, X: pd.DataFrame, y: pd.Series) -> Any:
    """``pipeline`` (PyCaret's preprocessing then a LightGBM classifier or regressor) fitted on ``X``, ``y``: the
    preprocessing here, LightGBM through ``lightgbm.dask`` across the workers, brought back as the plain local
    estimator (``to_local()``), so the pipeline registers, compiles and serves like any other."""
    import dask.dataframe as dd
    from lightgbm import LGBMRegressor
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRegressor
    from sklearn.base import clone

    pipe = clone(pipeline)
    name, estimator = pipe.steps[-1]
    pipe.steps[-1] = (name, "passthrough")  # fit and apply the preprocessing only
    Xt, yt = pipe.fit_transform(X, y)
    workers = max(len(client.scheduler_info()["workers"]), 1)
    target = "__mlops_target__"
    frame = dd.from_pandas(Xt.assign(**{target: pd.Series(yt, index=Xt.index)}), npartitions=workers, sort=False)
    frame = client.persist(frame)  # the rows on the workers, one part each when the scheduler spreads them
    params = {k: v for k, v in estimator.get_params().items() if k != "client"}
    try:
        kind = DaskLGBMRegressor if isinstance(estimator, LGBMRegressor) else DaskLGBMClassifier
        model = kind(client=client, **params).fit(frame.drop(columns=[target]), frame[target])
    except Exception as err:
        if _lost(err):
            raise ClusterError(f"the Dask cluster lost the LightGBM fit: {type(err).__name__}: "
                               f"{first_line(err)}") from err
        raise
    pipe.steps[-1] = (name, model.to_local())
    return pipe
