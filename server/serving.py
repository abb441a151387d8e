"""How this app predicts: a predictor chosen per version when it is loaded, called directly or micro-batched."""

from __future__ import annotations

import logging
from typing import Any

from mlops_core.errors import first_line
from mlops_core.inference.predictors import LazyPipeline, PipelinePredictor, ServedModel
from mlops_core.labels import Labels
from mlops_core.registry import LoadedModel

from .batching import Batcher

__all__ = ["Serving", "labels_of", "task_of", "REGRESSION"]

log = logging.getLogger(__name__)

REGRESSION = "regression"


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

    def load(self, registry, version: str) -> ServedModel:
        """Load ``version`` to serve it (the store calls this for every version it loads).

        Compiled serving loads the version's compiled artifact (stored at registration, verified here
        against the pipeline's stored outputs) without importing the AutoML library. Without an artifact
        (a version registered before artifacts, or one that could not be compiled) or when it fails its
        checks, the pipeline is loaded, which imports the library, and (for an old version) compiled here.
        """
        note = ""
        if self.compiled and hasattr(registry, "load_compiled"):
            from mlops_core.inference import artifact

            data, manifest, info = registry.load_compiled(version)
            if data is not None:
                try:
                    predictor = artifact.load(data, manifest,
                                              fallback=LazyPipeline(lambda: registry.load_model(version)))
                except Exception as err:  # ArtifactError, or a loader bug: the pipeline serves
                    note = f"compiled artifact not used: {first_line(err, 300)}"
                    if not isinstance(err, artifact.ArtifactError):
                        log.exception("version %s: reading its compiled artifact failed", version)
                    log.warning("version %s: %s; loading its pipeline", version, note)
                else:
                    model = LoadedModel(version=str(version), run_id=info["run_id"], model=None,
                                        columns=predictor.columns, dtypes=predictor.dtypes,
                                        metadata=_task_metadata(predictor))
                    log.info("version %s: serving its compiled artifact (%s kernel)", version,
                             predictor.kernel.__name__)
                    return ServedModel.of(model, predictor, source="artifact")
            elif manifest is not None:
                note = f"not compiled at registration: {manifest.get('reason', '')}"
            else:
                note = "registered without a compiled artifact"
        model = registry.load_model(version)
        return ServedModel.of(model, self._predictor(model, manifest_reason=note), source="pipeline", note=note)

    def _predictor(self, model: LoadedModel, *, manifest_reason: str = ""):
        if not self.compiled:
            return PipelinePredictor(model, "MLOPS_FASTPATH=pipeline")
        if manifest_reason.startswith("not compiled at registration"):  # compiling again gives the same answer
            return PipelinePredictor(model, manifest_reason)
        try:
            from mlops_core.inference.compile import build_predictor

            return build_predictor(model)  # the pipeline itself when the compiled path does not verify
        except Exception as err:  # a compiler bug must never stop a version from serving
            log.exception("version %s: compiling failed; serving its pipeline", model.version)
            return PipelinePredictor(model, f"compiling failed: {type(err).__name__}: {first_line(err, 300)}")

    @staticmethod
    def _direct(model: LoadedModel, rows):
        if isinstance(model, ServedModel):
            return model.predictor(rows)
        return PipelinePredictor(model)(rows)  # a version loaded without load(): the pipeline answers

    def __call__(self, model: LoadedModel, rows: list[dict[str, Any]]) -> tuple[list, list | None]:
        """Predictions (the data's labels) and probabilities (6 places) of ``rows`` by ``model``: the positive
        class's per row for two classes, one list per row aligned with ``labels_of(model).classes`` for more.
        A regression: the predicted numbers and None."""
        return self._call(model, rows)


def _task_metadata(predictor) -> dict[str, str]:
    """The ``task`` a compiled predictor answers for, as a LoadedModel's metadata (empty: classification)."""
    task = getattr(predictor, "task", None)
    if task is None and getattr(predictor, "labels", ()) is None:  # a compiled predictor without classes
        task = REGRESSION
    return {"task": str(task)} if task else {}


def task_of(model: LoadedModel | None) -> str | None:
    """``classification`` or ``regression``: what ``model`` answers (None without a model)."""
    if model is None:
        return None
    try:
        return model.task
    except AttributeError:  # an object standing in for a model, without metadata
        return "classification"


def labels_of(model: LoadedModel | None) -> Labels | None:
    """The classes ``model`` answers with (``probabilities``' order) and its positive class; None without a model,
    or while its predictor cannot tell yet."""
    if model is None:
        return None
    try:
        return model.labels  # a ServedModel: its predictor's; a LoadedModel: read from its pipeline
    except (AttributeError, ValueError):  # a predictor without labels; a model that is no fitted classifier
        return None
