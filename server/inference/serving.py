"""How this app predicts: a predictor chosen per version when it is loaded, called directly or micro-batched."""

from __future__ import annotations

from typing import Any

from mlops_core.registry import LoadedModel

from .batching import Batcher
from .compile import build_predictor
from .predictors import PipelinePredictor, ServedModel

__all__ = ["Serving"]


class Serving:
    """From the settings ``fastpath`` (``compiled``, the default, or ``pipeline``) and ``batch_wait_ms``
    (micro-batching; ``off`` or a wait in milliseconds)."""

    def __init__(self, *, compiled: bool = True, batch_wait: float | None = None):
        self.compiled = compiled
        self.batch_wait = batch_wait
        self._call = Batcher(self._direct, wait=batch_wait) if batch_wait is not None else self._direct

    @classmethod
    def from_settings(cls, settings) -> Serving:
        return cls(compiled=settings.fastpath == "compiled", batch_wait=settings.batch_wait_seconds)

    def prepare(self, model: LoadedModel) -> ServedModel:
        """The version with its predictor, built once at load time (the store calls this for every version)."""
        predictor = build_predictor(model) if self.compiled else PipelinePredictor(model, "MLOPS_FASTPATH=pipeline")
        return ServedModel.of(model, predictor)

    @staticmethod
    def _direct(model: LoadedModel, rows):
        if isinstance(model, ServedModel):
            return model.predictor(rows)
        return PipelinePredictor(model)(rows)  # a version loaded without prepare(): the pipeline answers

    def __call__(self, model: LoadedModel, rows: list[dict[str, Any]]) -> tuple[list, list[float]]:
        """Predictions and P(class 1) (6 places) of ``rows`` by ``model``."""
        return self._call(model, rows)
