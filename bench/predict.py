#!/usr/bin/env python
"""One row through the compiled path against the PyCaret pipeline, for every model type of a list.

    .venv/bin/python bench/predict.py                  # the default model list; about a minute
    .venv/bin/python bench/predict.py --models lr,rf
    .venv/bin/python bench/predict.py --own-step       # plus a step the compiler has no operation for

For each model id, trains a pipeline on the Titanic training set (two folds) in a
temporary home, builds its predictor the way the server does at load time
(``mlops_core.inference.compile.build_predictor``: compiled and verified, or the pipeline) and
times one single-row call, in-process, against the pipeline's own
``predict`` + ``predict_proba`` on the same row (the baseline), in the same run; and the same on 32 rows.

``--own-step`` inserts before the estimator a step the compiler has no operation for (scikit-learn's
``PowerTransformer`` on the numeric columns, wrapped as PyCaret wraps its steps, as its ``transformation=True``
would): the compiled path then runs that step's own transformer between its operations (``ops.Transform``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROW = {"pclass": 3, "sex": "male", "age": 22.0, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}


def per_call(fn, seconds: float = 1.0) -> float:
    """Seconds a call, over at least ``seconds`` of calls (after one warm-up call)."""
    fn()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        fn()
        calls += 1
    return elapsed / calls


def main() -> None:
    from mlflow.models import infer_signature

    from mlops_core.config import Settings
    from mlops_core.data import load_batch, make_datasets
    from mlops_core.inference.compile import build_predictor
    from mlops_core.inference.predictors import PipelinePredictor
    from mlops_core.registry import LoadedModel
    from mlops_core.training import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(Settings().models), help="PyCaret model ids")
    parser.add_argument("--own-step", action="store_true", help="insert a step the compiler does not know")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        for kind in args.models.split(","):
            settings = Settings(home=Path(folder) / kind, models=(kind,), fold=2)
            make_datasets(settings)
            frame = load_batch(settings.train_csv, settings, require_target=True)
            model = train(frame, settings).model
            schema = infer_signature(frame[list(settings.features)].head(5)).inputs
            loaded = LoadedModel(version=kind, run_id="", model=model, columns=list(schema.input_names()),
                                 dtypes={c.name: c.type.name for c in schema.inputs})
            if args.own_step:
                loaded.model = model = with_own_step(model, frame[list(settings.features)])
            predictor = build_predictor(loaded)
            ours = per_call(lambda p=predictor: p([ROW]))
            base = per_call(lambda p=PipelinePredictor(loaded): p([ROW]))
            ours32 = per_call(lambda p=predictor: p([ROW] * 32))
            base32 = per_call(lambda p=PipelinePredictor(loaded): p([ROW] * 32))
            path = f"compiled ({predictor.kernel.__name__})" if predictor.compiled else f"pipeline: {predictor.reason}"
            if getattr(predictor, "own_transformers", None):
                path += f"; own transformer: {', '.join(predictor.own_transformers)}"
            lines.append(f"{kind:>10} {type(model.steps[-1][1]).__name__:>24} {ours * 1e3:>9.3f} {base * 1e3:>9.2f} "
                         f"{base / ours:>8.0f}x {ours32 * 1e3:>9.3f} {base32 * 1e3:>9.2f} {base32 / ours32:>8.0f}x  "
                         f"{path}")
            print(lines[-1], flush=True)
    print(f"\n{'model':>10} {'estimator':>24} {'ours ms':>9} {'pipe ms':>9} {'ratio':>9} {'ours 32':>9} "
          f"{'pipe 32':>9} {'ratio':>9}  path")
    print("\n".join(lines))


def with_own_step(pipeline, features):
    """``pipeline`` with scikit-learn's PowerTransformer on its numeric columns inserted before the estimator."""
    import copy

    from pycaret.internal.preprocess.transformers import TransformerWrapper
    from sklearn.preprocessing import PowerTransformer

    pipeline = copy.deepcopy(pipeline)
    before = pipeline[:-1].transform(features)
    numeric = [c for c in before.columns if before[c].dtype.kind == "f"]
    pipeline.steps.insert(len(pipeline.steps) - 1, ("power", TransformerWrapper(PowerTransformer(), include=numeric)
                                                     .fit(before)))
    return pipeline


if __name__ == "__main__":
    main()
