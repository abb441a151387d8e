"""The compiled form of a version, stored with it at registration and served without the AutoML library.

At registration (:func:`export`) the chain compiles the pipeline, verifies it against the pipeline on rows of
the version's own training data plus edge rows, and stores one pickle: the compiled operations, the final
estimator, its ONNX graph (bytes, when skl2onnx converts it), the kernels ranked fastest first, those probe
rows and the pipeline's outputs on them (in one call, and on each row alone when a row-wise kernel was checked on
them), and the version's labels (its classes in the estimator's order, as the pipeline's ``predict`` gives them,
and the positive class); beside it a manifest with the pickle's SHA-256, the labels (``Labels.tags``: JSON), the
kernel chosen and why (each candidate's time a call, or why it was rejected), and every module the pickle
imports. A regression's (no labels) stores ``task: regression`` in both instead, so that a version served from
its artifact alone is known as one. A pickle that would import PyCaret is not stored. An artifact stored before
labels of any kind (no labels) answers with its estimator's classes, 0/1, as it did.

A server (:func:`load`) checks the manifest's format and hash, then unpickles refusing any module of
:data:`FORBIDDEN` before it is imported,
rebuilds the kernels in the registration's ranking until one reproduces the stored outputs on every probe row
(in one batch, and in the request sizes its kernel treats differently), and only then serves it; an ONNX graph
is loaded by ONNX Runtime alone (no skl2onnx, no onnx). Any failure raises :class:`ArtifactError` naming it;
the caller falls back to the pipeline.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from importlib import metadata
from typing import Any

from ..labels import Labels
from .compile import Expected, build_predictor, check_outputs, probe_rows, rows_of
from .kernels import candidates, choose_kernel
from .predictors import CompiledPredictor
from .versions import TESTED

__all__ = ["export", "load", "ArtifactError", "FORMAT", "PROBE_ROWS", "FORBIDDEN"]

FORMAT = 2  # 2: the ONNX graph and the kernels' ranking in the payload; the choice in the manifest
#: rows of the version's training data it is verified on (the edge rows come on top)
PROBE_ROWS = 1000
#: top-level packages a served artifact must not import (the point of it is to serve without them)
FORBIDDEN = frozenset({"pycaret"})


class ArtifactError(Exception):
    """The compiled artifact cannot be served (missing, damaged, another format, or answers differently)."""


class _Unpickler(pickle.Unpickler):
    """Unpickles recording every module the pickle names, and refuses one of :data:`FORBIDDEN` before importing
    it (the standard library's "restricting globals"; the C unpickler asks only for the globals, so this takes a
    few milliseconds where reading every opcode in Python took 20-45)."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()
        self.refused: str | None = None

    def find_class(self, module, name):
        self.modules.add(module)
        if module.split(".")[0] in FORBIDDEN:
            self.refused = module
            raise ArtifactError(f"the artifact would import {module}")
        return super().find_class(module, name)


def export(model, frame) -> tuple[bytes | None, dict[str, Any]]:
    """Compile ``model`` (a LoadedModel of a new version) and verify it on up to :data:`PROBE_ROWS` rows of
    ``frame`` (its training data) plus edge rows. Returns the artifact's bytes and its manifest, or None and
    a manifest saying why the version must be served through its pipeline."""
    sample = frame.sample(n=min(len(frame), PROBE_ROWS), random_state=0) if len(frame) > PROBE_ROWS else frame
    probe = probe_rows(model, rows_of(sample, model))
    predictor = build_predictor(model, probe=probe)
    if not predictor.compiled:
        return None, {"format": FORMAT, "compiled": False, "reason": predictor.reason}
    choice, expected = predictor.kernel_choice, predictor.expected
    ranking = choice.ranking
    payload = {"format": FORMAT, "columns": predictor.columns, "dtypes": predictor.dtypes, "ops": predictor.ops,
               "layout": predictor.layout, "dtype": predictor.dtype.str, "estimator": predictor.estimator,
               "onnx": predictor.onnx if "onnx" in ranking else None,  # a rejected graph is not stored
               "kernels": ranking, "probe": probe,
               "predictions": list(expected.predictions), "probabilities": expected.probabilities,
               "row_wise": expected.row_wise_computed,  # computed when a row-wise kernel was checked
               "own_transformers": predictor.own_transformers}
    if predictor.task == "regression":
        payload["task"] = "regression"
    else:
        payload.update(classes=list(predictor.labels.classes), labels=predictor.labels.tags())
    try:
        data = pickle.dumps(payload, protocol=5)
    except Exception as err:  # e.g. an op that is a closure
        return None, {"format": FORMAT, "compiled": False, "reason": f"the compiled form does not pickle: {err}"}
    reader = _Unpickler(data)  # read back as a server will: what it imports, and that it loads at all
    try:
        reader.load()
    except ArtifactError:
        return None, {"format": FORMAT, "compiled": False,
                      "reason": f"the compiled form would import {reader.refused} to load"}
    except Exception as err:
        return None, {"format": FORMAT, "compiled": False, "reason": f"the compiled form does not unpickle: {err}"}
    modules = reader.modules
    return data, {"format": FORMAT, "compiled": True, "sha256": hashlib.sha256(data).hexdigest(),
                  "task": predictor.task, "labels": None if predictor.labels is None else predictor.labels.tags(),
                  "kernel": predictor.kernel.__name__, "kernel_kind": choice.kind, "kernel_reason": choice.reason,
                  "kernels": choice.report, "own_transformers": predictor.own_transformers,
                  "probe_rows": len(probe), "columns": predictor.columns,
                  "dtypes": predictor.dtypes, "modules": sorted({m.split(".")[0] for m in modules}),
                  "libraries": {name: _version(name) for name in sorted(TESTED)}}


def load(data: bytes, manifest: dict[str, Any], *, fallback=None) -> CompiledPredictor:
    """The verified predictor stored in ``data``; :class:`ArtifactError` when it cannot be served as stored."""
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"format {manifest.get('format')!r}, this server reads {FORMAT}")
    if not manifest.get("compiled"):
        raise ArtifactError(f"not compiled at registration: {manifest.get('reason', 'no reason recorded')}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise ArtifactError(f"content hash {digest[:12]}… differs from the manifest's "
                            f"{str(manifest.get('sha256'))[:12]}…")
    try:
        payload = _Unpickler(data).load()  # raises ArtifactError before importing a forbidden module
        # artifacts stored before labels of any kind have neither: their estimator's classes are the labels
        task = payload.get("task", "classification")
        if task != manifest.get("task", "classification"):
            raise ArtifactError(f"the manifest's task is {manifest.get('task', 'classification')!r}, the "
                                f"artifact's {task!r}")
        labels = Labels.from_tags(payload["labels"], payload["classes"]) if "classes" in payload else None
        compiled = CompiledPredictor(payload["columns"], payload["dtypes"], payload["ops"], payload["layout"],
                                     payload["dtype"], payload["estimator"], fallback=fallback,
                                     own_transformers=payload.get("own_transformers"), labels=labels, task=task)
        probe = payload["probe"]
        # artifacts stored before issue 26 hold the answers row by row under "alone"
        row_wise = payload["row_wise"] if "row_wise" in payload else payload.get("alone")
        expected = Expected(payload["predictions"], payload["probabilities"], row_wise)
        compiled.onnx, ranking = payload["onnx"], payload["kernels"]
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"unreadable: {type(err).__name__}: {err}") from err
    makers = candidates(compiled.estimator, compiled.onnx)
    choice = choose_kernel(compiled, lambda c: check_outputs(c, probe, expected), makers, order=ranking)
    if choice.kind is None:
        raise ArtifactError(f"does not reproduce the pipeline's outputs on its {len(probe)} probe rows: "
                            f"{choice.reason}")
    if manifest.get("kernel_reason"):
        choice.reason = f"{choice.reason}; at registration: {manifest['kernel_reason']}"
    compiled.kernel_choice = choice
    compiled.onnx = None  # the graph's bytes: an ONNX Runtime session holds its own copy
    return compiled


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
