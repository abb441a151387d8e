"""mlops_core.inference.artifact and Serving.load: a version's compiled form, stored at registration, served
without PyCaret; anything wrong with it falls back to the pipeline, with the reason."""

from __future__ import annotations

import hashlib
import json
import pickle

import pandas as pd
import pytest

from mlops_core.inference import artifact
from mlops_core.inference.compile import rows_of
from mlops_core.inference.predictors import PipelinePredictor
from mlops_core.registry import COMPILED_TAG, Registry
from server.serving import Serving

from _services import python_json


@pytest.fixture(scope="module")
def stored(bootstrapped):
    """Version 1's compiled artifact and manifest, its pipeline, and 300 rows of its training data."""
    registry = Registry(bootstrapped)
    data, manifest, info = registry.load_compiled("1")
    model = registry.load_model("1")
    frame = pd.read_csv(bootstrapped.train_csv).sample(300, random_state=3)
    return registry, data, manifest, info, model, rows_of(frame, model)


class Tampered:
    """The real registry, with the artifact bytes (or the manifest) changed on the way."""

    def __init__(self, real: Registry, *, data=None, manifest=None, missing=False):
        self.real, self.data, self.manifest, self.missing = real, data, manifest, missing
        self.pipeline_loads = 0

    def load_compiled(self, version):
        data, manifest, info = self.real.load_compiled(version)
        if self.missing:
            return None, None, info
        manifest = self.manifest or manifest
        if not manifest.get("compiled"):  # as the registry answers for a version that could not be compiled
            return None, manifest, info
        return (self.data if self.data is not None else data), manifest, info

    def load_model(self, version):
        self.pipeline_loads += 1
        return self.real.load_model(version)


def _same_as_pipeline(predictor, model, rows):
    assert predictor(rows) == PipelinePredictor(model)(rows)


def test_a_registered_version_carries_its_verified_compiled_form(stored, bootstrapped):
    registry, data, manifest, info, model, rows = stored
    assert info["tags"][COMPILED_TAG] == "true"
    assert manifest["compiled"] and manifest["kernel"] in ("logistic", "decision_tree", "onnx")
    assert manifest["kernel_reason"].startswith(f"{manifest['kernel_kind']} ({manifest['kernel']}) fastest verified")
    assert {"onnx", "hand", "generic"} <= set(manifest["kernels"])  # every candidate, timed or rejected
    n_train = len(pd.read_csv(bootstrapped.train_csv))
    assert manifest["probe_rows"] > min(n_train, artifact.PROBE_ROWS)  # its own rows, then the edge rows
    assert "pycaret" not in manifest["modules"] and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    _same_as_pipeline(artifact.load(data, manifest), model, rows)


def test_a_compiled_version_loads_and_answers_in_a_process_without_pycaret(stored, bootstrapped):
    registry, data, manifest, info, model, rows = stored
    code = (
        "import json, sys\n"
        "from mlops_core.config import Settings\n"
        "from mlops_core.registry import Registry\n"
        "from server.serving import Serving\n"
        f"served = Serving().load(Registry(Settings(home={str(bootstrapped.home)!r})), '1')\n"
        f"answer = served.predictor(json.loads({json.dumps(json.dumps(rows[:50]))}))\n"
        "heavy = sorted(m for m in ('pycaret', 'category_encoders', 'lightgbm', 'skl2onnx', 'onnx')"
        " if m in sys.modules)\n"
        "print(json.dumps({'source': served.source, 'answer': answer, 'heavy': heavy}))\n")
    result = python_json(code)
    assert result["source"] == "artifact" and result["heavy"] == []
    assert tuple(result["answer"]) == tuple(PipelinePredictor(model)(rows[:50]))


def test_the_artifact_carries_the_versions_labels_and_answers_them(stored):
    """The manifest and the payload hold the labels (``Labels.tags``, JSON): the classes, the positive one."""
    registry, data, manifest, info, model, rows = stored
    assert manifest["labels"] == {"classes": "[0, 1]", "positive_label": "1"} == model.labels.tags()
    predictor = artifact.load(data, manifest)
    assert predictor.labels == model.labels
    predictions, _ = predictor(rows)
    assert {type(p) for p in predictions} == {int}


def test_an_artifact_stored_before_labels_of_any_kind_still_loads_and_answers_0_1(stored):
    """No labels in the payload or the manifest: the estimator's classes, 0/1, with P(class 1), as before."""
    registry, data, manifest, info, model, rows = stored
    payload = pickle.loads(data)
    del payload["labels"], payload["classes"]
    old = pickle.dumps(payload, protocol=5)
    predictor = artifact.load(old, {k: v for k, v in manifest.items() if k != "labels"}
                              | {"sha256": hashlib.sha256(old).hexdigest()})
    assert predictor.labels.classes == (0, 1) and predictor.labels.positive == 1
    _same_as_pipeline(predictor, model, rows)


def test_an_artifact_of_another_format_is_refused_and_the_pipeline_serves(stored):
    """Format 1 (before the ONNX graph and the kernels' ranking were stored): compiled again from the pipeline."""
    registry, data, manifest, info, model, rows = stored
    old = Tampered(registry, manifest={**manifest, "format": 1})
    served = Serving().load(old, "1")
    assert served.source == "pipeline" and f"format 1, this server reads {artifact.FORMAT}" in served.note
    assert served.predictor.compiled and old.pipeline_loads == 1
    _same_as_pipeline(served.predictor, model, rows)


def test_a_damaged_artifact_is_refused_and_the_pipeline_serves(stored):
    registry, data, manifest, info, model, rows = stored
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(artifact.ArtifactError, match="content hash"):
        artifact.load(bytes(damaged), manifest)
    tampered = Tampered(registry, data=bytes(damaged))
    served = Serving().load(tampered, "1")
    assert served.source == "pipeline" and "content hash" in served.note and tampered.pipeline_loads == 1
    assert served.predictor.compiled  # compiled again here, from the pipeline, and verified against it
    _same_as_pipeline(served.predictor, model, rows)


def test_an_artifact_that_no_longer_answers_as_recorded_is_refused(stored):
    registry, data, manifest, info, model, rows = stored
    payload = pickle.loads(data)
    payload["probabilities"] = payload["probabilities"] + 1e-6  # what the pipeline answered, as recorded
    skewed = pickle.dumps(payload, protocol=5)
    resealed = {**manifest, "sha256": hashlib.sha256(skewed).hexdigest()}
    with pytest.raises(artifact.ArtifactError, match="does not reproduce the pipeline's outputs"):
        artifact.load(skewed, resealed)


def test_an_artifact_that_would_import_pycaret_is_refused_before_pycaret_is_imported(stored, tmp_path):
    registry, data, manifest, info, model, rows = stored
    payload = pickle.loads(data)
    payload["ops"] = [*payload["ops"], model.model.steps[0][1]]  # a PyCaret step smuggled in
    smuggled = pickle.dumps(payload, protocol=5)
    assert b"pycaret." in smuggled  # the step's class is named by its PyCaret module
    sealed = {**manifest, "sha256": hashlib.sha256(smuggled).hexdigest()}
    with pytest.raises(artifact.ArtifactError, match="would import pycaret"):
        artifact.load(smuggled, sealed)
    # in a process without PyCaret (as a server's worker): refused, and PyCaret never imported
    (tmp_path / "smuggled.pkl").write_bytes(smuggled)
    (tmp_path / "manifest.json").write_text(json.dumps(sealed))
    seen = python_json(f"""
import json, pathlib, sys
from mlops_core.inference import artifact
folder = pathlib.Path({str(tmp_path)!r})
try:
    artifact.load((folder / "smuggled.pkl").read_bytes(), json.loads((folder / "manifest.json").read_text()))
    error = None
except artifact.ArtifactError as err:
    error = str(err)
print(json.dumps({{"error": error, "pycaret": "pycaret" in sys.modules}}))
""")
    assert seen["error"].startswith("the artifact would import pycaret") and seen["pycaret"] is False


def test_a_version_registered_before_artifacts_is_compiled_at_load(stored):
    registry, data, manifest, info, model, rows = stored
    old = Tampered(registry, missing=True)
    served = Serving().load(old, "1")
    assert served.source == "pipeline" and served.note == "registered without a compiled artifact"
    assert served.predictor.compiled and old.pipeline_loads == 1
    _same_as_pipeline(served.predictor, model, rows)


def test_a_version_that_could_not_be_compiled_is_served_by_its_pipeline_without_recompiling(stored):
    registry, data, manifest, info, model, rows = stored
    refused = Tampered(registry, manifest={"format": artifact.FORMAT, "compiled": False,
                                           "reason": "not compiled: step _AddOne"})
    served = Serving().load(refused, "1")
    assert not served.predictor.compiled and served.predictor.reason.endswith("not compiled: step _AddOne")
    _same_as_pipeline(served.predictor, model, rows)


def test_pipeline_serving_never_reads_the_artifact(stored):
    registry, data, manifest, info, model, rows = stored
    served = Serving(compiled=False).load(Tampered(registry, data=b"not a pickle"), "1")
    assert served.source == "pipeline" and not served.predictor.compiled
    assert served.predictor.reason == "MLOPS_FASTPATH=pipeline"


def test_export_refuses_a_form_that_does_not_pickle(stored, monkeypatch):
    """An op that is a closure (a compiler bug) cannot be stored: the version is served by its pipeline."""
    registry, data, manifest, info, model, rows = stored
    from mlops_core.inference import compile as compiler

    real = compiler._imputer
    monkeypatch.setattr(compiler, "_imputer", lambda t, include: (lambda op: lambda cols: op(cols))(real(t, include)))
    frame = pd.DataFrame(rows)
    stored_bytes, refused = artifact.export(model, frame)
    assert stored_bytes is None and not refused["compiled"] and "does not pickle" in refused["reason"]
