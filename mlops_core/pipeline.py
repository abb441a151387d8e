"""The chain: intake → (bootstrap) → drift → train → judge → register → act, one run at a time.

This module only chains the stages of :mod:`mlops_core.chain`; each takes the run's in-memory
:class:`~mlops_core.chain.context.Run` and returns it with what it made.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .chain.bootstrap import bootstrap
from .chain.context import Context, Run, RunResult, StepTimer
from .chain.decide import act, judge
from .chain.detect import check_drift, detect, illustrate
from .chain.intake import intake
from .chain.register import register
from .chain.train import train
from .config import Settings
from .errors import BusyError
from .progress import Progress
from .registry import Registry

__all__ = ["RunResult", "run", "start", "abort", "check_drift", "pipeline_lock"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def pipeline_lock(settings: Settings, timeout: float = 900.0) -> Iterator[None]:
    """Hold the home's file lock: one pipeline run at a time per registry home."""
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as err:
        raise BusyError(f"another pipeline run holds {settings.lock_path} (waited {timeout:.0f}s)") from err
    try:
        yield
    finally:
        lock.release()


def run(settings: Settings, *, force: bool = False, current: Path | None = None, registry: Registry | None = None,
        lock_timeout: float = 900.0, source: Path | None = None, digest: str | None = None,
        progress: Progress | None = None) -> RunResult:
    """Process one batch through the whole chain under the lock and return the decision.

    ``source`` names the batch in messages and records when ``current`` is a private copy of it; ``digest``
    is the SHA-256 of ``current``'s bytes when the caller has it (the watcher), so they are hashed once;
    ``progress`` is told each step and the training's models and folds as they are done.
    """
    with pipeline_lock(settings, timeout=lock_timeout):
        ctx = Context(settings, registry or Registry(settings), StepTimer(progress))
        state = start(ctx, current=current, source=source, digest=digest, force=force)
        if state.open:
            try:
                state = act(ctx, register(ctx, judge(ctx, train(ctx, state))))
            except BaseException:
                abort(ctx, state.run_id)
                raise
        return illustrate(ctx, state).result


def start(ctx: Context, *, current: Path | None = None, source: Path | None = None, digest: str | None = None,
          force: bool = False) -> Run:
    """Intake, bootstrap an empty registry, drift: a run that stays open goes on to training."""
    state = intake(ctx, Path(current or ctx.settings.current_csv), source=str(source or current or
                   ctx.settings.current_csv), digest=digest, force=force)
    if not state.open:
        return state
    if state.production is None:
        state = bootstrap(ctx, state)
    try:
        return detect(ctx, state)
    except BaseException:
        abort(ctx, state.run_id)
        raise


def abort(ctx: Context, run_id: str | None) -> None:
    """Mark an open chain run failed (its batch is then processed again next time); a decided run stays."""
    if run_id is None:
        return
    with contextlib.suppress(Exception):
        if ctx.registry.run_tags(run_id).get("mlops.done") != "true":
            ctx.registry.finish_run(run_id, ok=False)
