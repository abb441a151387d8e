"""An empty registry: train on ``train.csv``, register version 1 and point both aliases at it."""

from __future__ import annotations

import contextlib
import logging

from ..data import infer_kinds, read_csv, validate_frame
from .context import Context, Run
from .register import register_model

__all__ = ["bootstrap"]

log = logging.getLogger("mlops_core.pipeline")


def bootstrap(ctx: Context, run: Run) -> Run:
    """Make version 1 from ``train.csv`` the Production the batch is then judged against."""
    from ..training import train

    settings, registry = ctx.settings, ctx.registry
    with ctx.timer("bootstrap_validate"):
        frame = validate_frame(read_csv(settings.train_csv), settings, source=str(settings.train_csv))
        kinds = infer_kinds(frame, settings.features)
    run_id = registry.create_run("bootstrap", tags={"mlops.kind": "bootstrap"})
    ok = False
    try:
        with ctx.timer("bootstrap_train"):
            candidate = train(frame, settings, kinds=kinds, progress=ctx.timer.progress)
        with ctx.timer("bootstrap_register"):
            version = register_model(ctx, run_id, candidate, training=frame, regime=frame, kinds=kinds,
                                     tags={"mlops.source": "bootstrap"})
        registry.promote(version)
        registry.log_run(run_id, tags={"mlops.status": "bootstrapped", "mlops.version": version})
        ok = True
    finally:
        with contextlib.suppress(Exception):
            registry.finish_run(run_id, ok=ok)
    log.info("bootstrapped %s version %s from %s", settings.model_name, version, settings.train_csv)
    run.production = run.result.bootstrapped = version
    run.profile = registry.load_reference(version, with_data=False)[0]  # fitted alike; what it stored
    return run
