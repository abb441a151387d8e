"""The comparison in-process vs on a local Dask cluster (issue 29): ``bench/scale --dask``; run by hand.

    .venv/bin/python bench/scale --dask                              # 50k rows, 4 models x 5 folds, 1 and 2 workers
    .venv/bin/python bench/scale --dask 1,2,4 --select-rows 20000
    .venv/bin/python bench/_dask_compare.py --rows 20000 --workers 2 --models lr,dt --fold 2

Data: the Titanic table resampled to ``--rows`` rows with noise on age and fare (bench/scale's rows): what
travels to the workers is the comparison's sample, MLOPS_SELECT_ROWS (50,000) rows by default, so the default
measures a full-size sample. The same frame and settings (the models, fold, seed, n_jobs 1, every row selected)
are trained by ``mlops_core.training.train``:

- **in-process**: ``dask_scheduler`` empty, each model compared here;
- **cluster, w workers**: a ``dask scheduler`` and ``w`` ``dask worker --nthreads 1`` processes on 127.0.0.1
  (started here, stopped by pid), ``dask_scheduler`` set: every model in one PyCaret call, a task a model.
  Each size runs twice: **cold** (the workers import PyCaret in their first task) and **warm**.

The comparison's seconds are taken between the training's progress plan (after PyCaret's setup here) and
the final fit's announcement, so both paths are timed over the same work; the final fit is timed on its own.
From the scheduler's task stream: the model tasks per worker and each task's compute seconds (a task = one
model's remote ``setup`` + its k folds + the fit on the training split). The machine is shared: the load
average is printed with every measurement.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DASK = Path(sys.executable).with_name("dask")


class _Clock:
    """A Progress that notes when the comparison starts (its plan) and ends (the final fit's note)."""

    def __init__(self):
        from mlops_core.progress import Progress

        clock = self

        class Noting(Progress):
            def plan(self, units, what):
                clock.start = time.perf_counter()

            def advance(self, units=1, note=""):
                if note.startswith("fitting ") and clock.fit is None:
                    clock.fit = time.perf_counter()

        self.start = self.fit = None
        self.progress = Noting()


class LocalCluster:
    """A scheduler and ``workers`` one-thread worker processes on 127.0.0.1, as an operator starts them."""

    def __init__(self, workers: int, folder: Path):
        self.workers, self.folder, self.procs, self.address = workers, folder, [], ""

    def __enter__(self) -> LocalCluster:
        import distributed

        env = {**os.environ, "PYCARET_CUSTOM_LOGGING_PATH": str(self.folder / "pycaret.log")}
        info = self.folder / "scheduler.json"

        def start(*args, log):
            out = open(self.folder / log, "wb")  # noqa: SIM115 - the process holds it; closed at exit
            self.procs.append(subprocess.Popen([str(DASK), *args], cwd=self.folder, env=env, stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            out.close()

        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(info), log="scheduler.log")
        deadline = time.monotonic() + 90
        while not info.exists() or not info.stat().st_size:
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError(f"the scheduler did not start; see {self.folder / 'scheduler.log'}")
            time.sleep(0.1)
        self.address = json.loads(info.read_text())["address"]
        for i in range(self.workers):
            start("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                  "--local-directory", str(self.folder / f"w{i}"), log=f"worker-{i}.log")
        with distributed.Client(self.address, timeout=90, set_as_default=False) as client:
            client.wait_for_workers(self.workers, timeout=180)
        return self

    def __exit__(self, *exc) -> None:
        from mlops_core.processes import terminate

        terminate(reversed(self.procs), grace=10.0)


def _rows(n: int, *, seed: int):
    """``n`` rows of the Titanic table drawn with replacement, age and fare made distinct by noise (as in
    bench/scale)."""
    import numpy as np

    from mlops_core.config import Settings
    from mlops_core.data import load_titanic

    settings = Settings(home=Path(tempfile.gettempdir()))
    table = load_titanic()[[*settings.features, settings.target]]
    rng = np.random.default_rng(seed)
    frame = table.iloc[rng.integers(0, len(table), size=n)].reset_index(drop=True)
    frame["age"] = (frame["age"] + rng.normal(0.0, 2.0, size=n)).clip(lower=0.1).round(2)
    frame["fare"] = (frame["fare"] * np.exp(rng.normal(0.0, 0.1, size=n))).round(4)
    return frame


def _train(frame, settings) -> dict:
    from mlops_core.training import train

    clock = _Clock()
    started = time.perf_counter()
    result = train(frame, settings, progress=clock.progress)
    ended = time.perf_counter()
    return {"compare": clock.fit - clock.start, "fit": ended - clock.fit, "total": ended - started,
            "winner": result.model_id, "accuracy": dict(result.comparison["Accuracy"].round(4)),
            "load": os.getloadavg()[0]}


def dask_comparison(*, rows: int, models: tuple[str, ...], fold: int, workers: list[int], seed: int = 0,
                    keep: bool = False) -> dict:
    """The comparison's seconds in-process and on local clusters of each size in ``workers``, with the model
    tasks' spread over the workers; a dict, printed by :func:`report`."""
    import distributed

    from mlops_core.cluster import _is_model_task
    from mlops_core.config import Settings
    from mlops_core.data import validate_frame

    root = Path(tempfile.mkdtemp(prefix="mlops-dask-bench-"))
    base = Settings(home=root / "home", models=models, fold=fold, select_rows=0, seed=42)
    frame = validate_frame(_rows(rows, seed=seed), base)
    out = {"rows": rows, "models": list(models), "fold": fold, "cpus": os.cpu_count(),
           "in_process": _train(frame, base), "clusters": []}
    print(f"in-process: {out['in_process']['compare']:.1f} s", flush=True)
    for w in workers:
        folder = root / f"cluster-{w}"
        folder.mkdir()
        with LocalCluster(w, folder) as cluster, \
                distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
            runs = {}
            for phase in ("cold", "warm"):
                with distributed.get_task_stream(client) as stream:
                    runs[phase] = _train(frame, base.replace(dask_scheduler=cluster.address))
                tasks = [r for r in stream.data if _is_model_task(r["key"])]
                runs[phase]["tasks_per_worker"] = dict(collections.Counter(r["worker"] for r in tasks))
                runs[phase]["task_seconds"] = sorted(
                    round(sum(s["stop"] - s["start"] for s in r["startstops"] if s["action"] == "compute"), 2)
                    for r in tasks)
                print(f"{w} worker(s), {phase}: {runs[phase]['compare']:.1f} s", flush=True)
        out["clusters"].append({"workers": w, **runs})
    if not keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return out


def report(out: dict) -> None:
    """The measurements as a table (and the raw dict as JSON on the last line)."""
    here = out["in_process"]
    print(f"\ncomparison of {len(out['models'])} models ({','.join(out['models'])}) x {out['fold']} folds on "
          f"{out['rows']:,} rows, {out['cpus']} CPUs on this machine")
    print(f"{'path':<30}{'compare s':>10}{'final fit s':>12}{'winner':>10}  model tasks per worker "
          f"(task compute s)")
    print(f"{'in-process':<30}{here['compare']:>10.1f}{here['fit']:>12.1f}{here['winner']:>10}  -  "
          f"(load {here['load']:.1f})")
    for c in out["clusters"]:
        for phase in ("cold", "warm"):
            r = c[phase]
            spread = ", ".join(f"port {addr.rsplit(':', 1)[-1]}: {n}"
                               for addr, n in sorted(r["tasks_per_worker"].items()))
            path = f"cluster, {c['workers']} worker(s), {phase}"
            seconds = ", ".join(map(str, r["task_seconds"]))
            print(f"{path:<30}{r['compare']:>10.1f}{r['fit']:>12.1f}{r['winner']:>10}  {spread} ({seconds}) "
                  f"(load {r['load']:.1f})")
    same = all(c[p]["accuracy"] == here["accuracy"] for c in out["clusters"] for p in ("cold", "warm"))
    print(f"same cross-validated accuracy per model on every path: {same}")
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows compared (the sample that travels)")
    parser.add_argument("--models", default="lr,dt,rf,lightgbm")
    parser.add_argument("--fold", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="cluster sizes, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args()
    from mlops_core.runtime import prepare_process

    prepare_process(None)
    report(dask_comparison(rows=args.rows, models=tuple(args.models.split(",")), fold=args.fold,
                           workers=[int(w) for w in args.workers.split(",")], keep=args.keep))


if __name__ == "__main__":
    main()
