"""The published contract, checked from outside: schemathesis (coverage and fuzzing phases, every check)
against real gunicorn serving a loaded registry (a classifier; briefly, a regression), every endpoint of
/openapi.json."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from _services import Gunicorn

pytestmark = pytest.mark.slow

ST = Path(sys.executable).parent / "st"
EXAMPLES = 40  # per operation and phase: enough to reach every status, small enough for CI
EXAMPLES_REGRESSION = 5  # the regression server's run: the operations whose schemas follow the task, briefly
TOKEN = "contract-feedback-token"  # retirement is on: without it every POST /feedback would be a 403


@pytest.fixture(scope="module")
def served(bootstrapped, tmp_path_factory):
    home = tmp_path_factory.mktemp("contract") / "home"
    shutil.copytree(bootstrapped.home, home)
    server = Gunicorn(home, tmp_path_factory.mktemp("cwd"),
                      env={"MLOPS_AB_FEEDBACK_WAIT": "0.05", "MLOPS_FEEDBACK_TOKEN": TOKEN})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_the_document_describes_every_endpoint_with_its_statuses(served):
    doc = requests.get(served.url + "/openapi.json", timeout=10).json()
    statuses = {path: set(op["responses"]) for path, ops in doc["paths"].items() for op in ops.values()}
    assert statuses["/predict"] == {"200", "400", "413", "415", "503"}
    assert statuses["/feedback"] == {"201", "400", "401", "403", "404", "409", "413", "415"}  # a bad label: 400
    assert statuses["/ready"] == {"200", "503"}
    assert {"/ab/report", "/models", "/health", "/metrics"} <= set(statuses)
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    fare = doc["components"]["schemas"]["Row"]["properties"]["fare"]
    assert fare["maximum"] == pytest.approx(3.4028234663852886e38)  # the bound the server enforces
    # Titanic's survived: the integers 0 and 1, 1 the positive class; a label may be given as 1 or "1"
    answer = doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["predictions"]["items"] == {"type": "integer", "enum": [0, 1]}
    assert "classes" not in answer["properties"] and "1" in answer["properties"]["probabilities"]["items"][
        "description"]
    label = doc["components"]["schemas"]["Label"]["properties"]["label"]
    assert label["anyOf"][0] == {"enum": [0, 1]} and label["examples"] == [0, 1]


def _schemathesis(url: str, cwd: Path, examples: int, *, paths: str | None = None, operations: int = 7) -> str:
    """Run schemathesis (coverage and fuzzing, every check) against ``url`` (the operations whose path matches
    ``paths``, default all); the summary line."""
    out = subprocess.run(
        [str(ST), "run", f"{url}/openapi.json", "--checks", "all", "--phases", "coverage,fuzzing",
         "--seed", "1", "--max-examples", str(examples), "--generation-database", "none", "--workers", "1",
         "--no-color", "--output-truncate", "true", "--request-timeout", "10",
         "--header", f"Authorization: Bearer {TOKEN}", *(["--include-path-regex", paths] if paths else [])],
        cwd=cwd, capture_output=True, text=True, timeout=300)
    summary = re.search(r"(\d+) generated, (.*)", out.stdout)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert f"Tested: {operations}" in out.stdout, out.stdout[-3000:]
    assert summary and int(summary[1]) >= operations * examples, out.stdout[-3000:]
    return summary[0]


def test_schemathesis_finds_no_contract_break(served, tmp_path):
    print(f"\nschemathesis: {_schemathesis(served.url, tmp_path, EXAMPLES)}")


# -- a regression server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_regression(bootstrapped, tmp_path_factory):
    """gunicorn serving a regression as Production (no Staging: odd users get it too): a scikit-learn pipeline on
    two columns of the bundled diabetes table (few columns: a short coverage phase), registered with ``task:
    regression`` under a model name of its own in a copy of the session's registry; one worker."""
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    from mlops_core.config import Settings
    from mlops_core.registry import Registry

    home = tmp_path_factory.mktemp("contract-regression") / "home"
    shutil.copytree(bootstrapped.home, home)
    frame = load_diabetes(as_frame=True).frame
    x = frame[["bmi", "s5"]]
    model = Pipeline([("impute", SimpleImputer()), ("lr", LinearRegression())]).fit(x, frame["target"])
    registry = Registry(Settings(home=home, model_name="diabetes", experiment="diabetes"))
    run_id = registry.create_run("diabetes")
    registry.register(registry.log_model(run_id, model, x.head(5), metadata={"task": "regression"}), {})
    registry.finish_run(run_id, ok=True)
    registry.set_alias("production", "1")
    server = Gunicorn(home, tmp_path_factory.mktemp("cwd-regression"),
                      env={"MLOPS_AB_FEEDBACK_WAIT": "0.05", "MLOPS_FEEDBACK_TOKEN": TOKEN,
                           "MLOPS_MODEL_NAME": "diabetes", "MLOPS_WORKERS": "1"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_regression_server_publishes_numbers_and_schemathesis_finds_no_break(served_regression, tmp_path):
    """The answer: numbers (or null), no probabilities, no classes; a label: a finite number within float32's
    range. A shorter run than the classifier's, on the operations whose schemas follow the served task (the
    answer, the label, the report, the arms); the others are the same on any server."""
    doc = requests.get(served_regression.url + "/openapi.json", timeout=10).json()
    answer = doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["predictions"]["items"]["type"] == ["number", "null"]
    assert answer["properties"]["probabilities"]["not"] == {} and answer["properties"]["classes"]["not"] == {}
    label = doc["components"]["schemas"]["Label"]["properties"]["label"]
    assert label["type"] == "number" and label["maximum"] == pytest.approx(3.4028234663852886e38)
    summary = _schemathesis(served_regression.url, tmp_path, EXAMPLES_REGRESSION,
                            paths="^/(predict|feedback|ab/report|models)$", operations=4)
    print(f"\nschemathesis (regression): {summary}")
