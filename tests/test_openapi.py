"""The published contract, checked from outside: schemathesis (coverage and fuzzing phases, every check)
against real gunicorn serving a loaded registry, every endpoint of /openapi.json."""

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


def test_schemathesis_finds_no_contract_break(served, tmp_path):
    out = subprocess.run(
        [str(ST), "run", f"{served.url}/openapi.json", "--checks", "all", "--phases", "coverage,fuzzing",
         "--seed", "1", "--max-examples", str(EXAMPLES), "--generation-database", "none", "--workers", "1",
         "--no-color", "--output-truncate", "true", "--request-timeout", "10",
         "--header", f"Authorization: Bearer {TOKEN}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    summary = re.search(r"(\d+) generated, (.*)", out.stdout)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Tested: 7" in out.stdout, out.stdout[-3000:]
    assert summary and int(summary[1]) >= 7 * EXAMPLES, out.stdout[-3000:]
    print(f"\nschemathesis: {summary[0]}")
