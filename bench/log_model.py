#!/usr/bin/env python
"""Time logging a trained PyCaret pipeline to MLflow: explicit requirements vs MLflow's detection.

    .venv/bin/python bench/log_model.py

Trains once (two models, two folds) in a temporary home, then logs the same
pipeline three times the way ``mlops_core`` does (explicit pinned
requirements) and once with MLflow's default requirement detection, the
baseline, in the same run; prints seconds and the ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> None:
    import mlflow
    from mlflow.models import infer_signature

    from mlops_core.config import Settings
    from mlops_core.data import load_batch, make_datasets
    from mlops_core.registry import Registry
    from mlops_core.training import train

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=home, models=("lr", "dt"), fold=2)
        make_datasets(settings)
        frame = load_batch(settings.train_csv, settings, require_target=True)
        result = train(frame, settings)
        registry = Registry(settings)
        example = frame[list(settings.features)].head(5)
        ours = []
        with registry.start_run("bench"):
            for _ in range(3):
                t = time.perf_counter()
                registry.log_model(result.model, example)
                ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            mlflow.sklearn.log_model(result.model, name="baseline", serialization_format="cloudpickle",
                                     signature=infer_signature(example, result.model.predict(example)),
                                     input_example=example)
            baseline = time.perf_counter() - t
    median = statistics.median(ours)
    print(f"{'case':<46}{'seconds':>9}")
    print(f"{'log_model, explicit requirements (median of 3)':<46}{median:>9.3f}")
    print(f"{'log_model, MLflow requirement detection':<46}{baseline:>9.3f}")
    print(f"speed-up: {baseline / median:.1f}x")


if __name__ == "__main__":
    main()
