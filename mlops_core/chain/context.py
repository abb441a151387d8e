"""What one pass of the chain carries from stage to stage, in memory."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..progress import Progress

if TYPE_CHECKING:
    import pandas as pd

    from ..config import Settings
    from ..data import RowSet
    from ..drift import DriftReport, ReferenceProfile
    from ..evidence import Comparison
    from ..registry import Registry
    from ..training import TrainResult

__all__ = ["RunResult", "Run", "Context", "Judgement", "StepTimer", "OPEN"]

log = logging.getLogger("mlops_core.pipeline")

#: the status of a run still under way (drift found, labels usable): the next stage has work to do
OPEN = "drift"


@dataclass
class RunResult:
    """What one pass of the chain decided (the JSON of ``mlops run --json``)."""

    status: str  # no_drift | promoted | staged | archived | skipped | refused (``drift`` while under way)
    drift: dict | None = None
    version: str | None = None
    production: str | None = None
    staging: str | None = None
    reason: str = ""
    run_id: str | None = None
    bootstrapped: str | None = None
    scores: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # the paired tests behind a decision (see evidence.py)
    timings: dict = field(default_factory=dict)
    digest: str = ""
    notes: list = field(default_factory=list)  # what the run left out and why (unlabelled rows, rare classes)

    def to_dict(self) -> dict:
        return asdict(self)


class StepTimer:
    """Time each step of the chain and log one line per step; tell ``progress`` each step as it starts."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress or Progress()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.progress.step(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 4)
            log.info("step=%s seconds=%.3f", name, took)


@dataclass
class Context:
    """What every stage works with: the settings, the registry and the step timer."""

    settings: Settings
    registry: Registry
    timer: StepTimer = field(default_factory=StepTimer)


@dataclass
class Judgement:
    """The candidate against its rivals on the unseen holdout rows, before any alias moves."""

    rivals: dict[str, str]  # alias -> version compared with (production, and a staged challenger)
    verdicts: dict[str, Comparison]  # alias -> the paired test against that version
    scored: int  # holdout rows scored
    dropped: int  # holdout rows left out as seen in a compared model's training
    tags: dict[str, Any] = field(default_factory=dict)  # the evidence the version is registered with


@dataclass
class Run:
    """One batch's way through the chain: each stage reads what the earlier ones set and adds its own."""

    source: str  # the batch's name in messages and records
    digest: str  # SHA-256 of the batch's bytes, computed once (by the watcher, or by intake)
    batch: pd.DataFrame  # validated rows: the settings' features (normalised) and the labels when present
    kinds: dict[str, str]  # numeric | categorical, per feature
    result: RunResult
    production: str | None = None  # the Production version this run is judged against
    profile: ReferenceProfile | None = None  # Production's drift reference
    run_id: str | None = None  # the MLflow run recording this pass
    report: DriftReport | None = None
    fit_rows: pd.DataFrame | None = None  # the batch's rows a candidate may learn from
    holdout: pd.DataFrame | None = None  # ... and those only used to judge it
    training: pd.DataFrame | None = None  # what the candidate was trained on (history rows included)
    seen: RowSet | None = None  # ... as one hash a row (built once: judged against, then stored with the version)
    candidate: TrainResult | None = None
    judgement: Judgement | None = None
    version: str | None = None  # the candidate's registered version
    models: dict[str, Any] = field(default_factory=dict, repr=False)  # loaded versions (LoadedModel), by number

    @property
    def open(self) -> bool:
        """True while a later stage has work to do (drift found on a usable batch)."""
        return self.result.status == OPEN
