"""Live A/B under real gunicorn: a weak Production and a good Staging, traffic on Titanic rows with
feedback from the true labels, the report checked against a direct computation, live promotion once,
the store surviving a restart of the server; then the watcher's schedule retiring a worse challenger
and leaving an equal one alone over many looks."""

from __future__ import annotations

import math
import re
import shutil
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from click.testing import CliRunner

import watcher
from mlops_core.cli import main
from mlops_core.config import Settings
from mlops_core.live import decide_live
from mlops_core.proportions import two_proportion_test
from mlops_core.registry import Registry

from _services import Gunicorn, wait_for

pytestmark = pytest.mark.slow

MIN_LABELS = 100
TOKEN = "ab-gunicorn-feedback-token"  # retirement is on: feedback needs one
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _register_weak(settings: Settings) -> str:
    """Register a majority-class model (about 62% accurate on Titanic) as a new version."""
    from sklearn.dummy import DummyClassifier

    from mlops_core.data import read_csv, validate_frame

    frame = validate_frame(read_csv(settings.train_csv), settings)
    X = frame[list(settings.features)]
    model = DummyClassifier(strategy="most_frequent").fit(X, frame[settings.target].astype(int))
    registry = Registry(settings)
    run_id = registry.create_run("weak", tags={"mlops.kind": "test-weak"})
    uri = registry.log_model(run_id, model, X.head(5).reset_index(drop=True))
    version = registry.register(uri, {"mlops.model": "DummyClassifier", "mlops.source": "test"})
    registry.finish_run(run_id, ok=True)
    return version


@pytest.fixture(scope="module")
def live_home(bootstrapped, tmp_path_factory) -> Settings:
    """Production: the weak v2; Staging: the bootstrapped v1 (about 80% accurate)."""
    dst = tmp_path_factory.mktemp("live") / "home"
    shutil.copytree(bootstrapped.home, dst)
    s = bootstrapped.replace(home=dst, tracking_uri="", ab_min_labels=MIN_LABELS)
    weak = _register_weak(s)
    registry = Registry(s)
    registry.promote(weak)
    registry.make_challenger("1")
    assert registry.aliases() == {"production": weak, "staging": "1"}
    return s


@pytest.fixture(scope="module")
def served(live_home, tmp_path_factory):
    server = Gunicorn(live_home.home, tmp_path_factory.mktemp("cwd"),
                      env={"MLOPS_AB_MIN_LABELS": str(MIN_LABELS), "MLOPS_AB_FEEDBACK_WAIT": "3",
                           "MLOPS_FEEDBACK_TOKEN": TOKEN})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def titanic():
    from mlops_core.data import load_titanic

    frame = load_titanic().sample(frac=1.0, random_state=3).reset_index(drop=True)
    features = ["pclass", "sex", "age", "fare", "sibsp", "parch", "embarked"]
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in frame[features].to_dict(orient="records")]
    return rows, [int(y) for y in frame["survived"]]


class Traffic:
    """Requests sent, their answers, and the true label of every answered row."""

    def __init__(self, url: str):
        self.url = url
        self.answered: list[tuple[str, str, str, int, int]] = []  # (request id, arm, version, prediction, label)
        self.requests: dict[tuple[str, str], int] = defaultdict(int)

    def send(self, rows, labels, *, start_user: int, batch: int = 1) -> list[tuple[str, int]]:
        chunks = [(start_user + i, rows[j:j + batch], labels[j:j + batch])
                  for i, j in enumerate(range(0, len(rows), batch))]

        def post(chunk):
            user_id, part, truth = chunk
            body = {"user_id": user_id, "features": part if batch > 1 else part[0]}
            response = requests.post(self.url + "/predict", json=body, timeout=10)
            assert response.status_code == 200, response.text
            answer = response.json()
            ids = answer["request_ids"] if batch > 1 else [answer["request_id"]]
            return answer["stage"], answer["version"], list(zip(ids, answer["predictions"], truth))

        new = []
        with ThreadPoolExecutor(4) as pool:
            for stage, version, triples in pool.map(post, chunks):
                self.requests[(stage, version)] += 1
                for request_id, prediction, label in triples:
                    self.answered.append((request_id, stage, version, int(prediction), label))
                    new.append((request_id, label))
        return new

    def feedback(self, labels: list[tuple[str, int]]) -> None:
        single, rest = labels[:10], labels[10:]
        for request_id, label in single:  # the single form, at once
            response = requests.post(self.url + "/feedback", json={"request_id": request_id, "label": label},
                                     headers=AUTH, timeout=10)
            assert response.status_code == 201, response.text
        for j in range(0, len(rest), 100):
            body = {"feedback": [{"request_id": i, "label": y} for i, y in rest[j:j + 100]]}
            response = requests.post(self.url + "/feedback", json=body, headers=AUTH, timeout=30)
            assert response.status_code == 201, response.text

    def expected(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(labelled, correct) per arm and version, computed from the answers and the true labels."""
        out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for _, stage, version, prediction, label in self.answered:
            out[(stage, version)][0] += 1
            out[(stage, version)][1] += int(prediction == label)
        return {k: tuple(v) for k, v in out.items()}


def _report(url: str) -> dict:
    response = requests.get(url + "/ab/report", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _check_against_direct(report: dict, traffic: Traffic) -> None:
    groups = {(g["arm"], g["version"]): g for g in report["groups"]}
    for key, (labelled, correct) in traffic.expected().items():
        g = groups[key]
        assert (g["labelled"], g["correct"]) == (labelled, correct), (key, g)
        assert g["accuracy"] == pytest.approx(correct / labelled, abs=1e-6)
        assert g["requests"] == traffic.requests[key] and g["errors"] == 0
        assert g["latency_ms"]["p50"] is not None and g["latency_ms"]["p99"] >= g["latency_ms"]["p50"]
        low, high = g["accuracy_ci95"]
        assert low < g["accuracy"] < high


def test_live_ab_report_significance_and_promotion_once(served, live_home, titanic):
    rows, labels = titanic
    registry = Registry(live_home)
    weak = registry.aliases()["production"]
    traffic = Traffic(served.url)

    # a first trickle: Staging answers first (the comparison starts when it first serves), then 20 per arm
    traffic.feedback(traffic.send(rows[:1], labels[:1], start_user=1))
    traffic.feedback(traffic.send(rows[1:41], labels[1:41], start_user=2))
    report = _report(served.url)
    _check_against_direct(report, traffic)
    c = report["comparison"]
    assert (c["production_version"], c["staging_version"]) == (weak, "1")
    assert (c["production_requests"], c["staging_requests"]) == (20, 21)
    assert c["verdict"] == "insufficient_labels" and c["samples_still_needed"]["staging"] > 0
    assert decide_live(live_home.replace(ab_promote=True))["status"] == "kept"

    # enough labels: single rows and batches, feedback from the true labels
    traffic.feedback(traffic.send(rows[41:900], labels[41:900], start_user=100))
    traffic.feedback(traffic.send(rows[900:1020], labels[900:1020], start_user=2000, batch=30))
    report = _report(served.url)
    _check_against_direct(report, traffic)
    c = report["comparison"]
    expected = traffic.expected()
    (n1, x1), (n2, x2) = expected[("Production", weak)], expected[("Staging", "1")]
    assert n1 >= MIN_LABELS and n2 >= MIN_LABELS and n1 + n2 == 1020
    assert (c["production_labelled"], c["staging_labelled"]) == (n1, n2)
    assert c["fixed_horizon"]["p_value"] == pytest.approx(two_proportion_test(x1, n1, x2, n2)[1], rel=1e-9)
    assert c["staging_accuracy"] > c["production_accuracy"] + 0.1  # good v1 vs the majority class
    assert c["p_value"] < 0.05 and c["cs_low"] > 0 and c["verdict"] == "staging_better", c
    assert c["action"] == "promote" and not c["decision_allowed"]  # live promotion is off by default

    # every row logged, none dropped, whichever worker served it (metrics add up all workers)
    metrics = requests.get(served.url + "/metrics", timeout=10).text
    assert re.search(r"^mlops_ab_log_written_total 1020\.0$", metrics, re.M), metrics[-2000:]
    assert not re.search(r"^mlops_ab_log_dropped_total [1-9]", metrics, re.M)

    # promotion on live evidence: off by default, a dry run changes nothing, then exactly once
    off = decide_live(live_home)
    assert off["status"] == "kept" and "promote is off" in off["reason"]
    dry = CliRunner().invoke(main, ["--home", str(live_home.home), "ab-promote", "--dry-run", "--json"])
    assert dry.exit_code == 0 and '"status": "would_promote"' in dry.output, dry.output
    assert registry.aliases() == {"production": weak, "staging": "1"}
    first = decide_live(live_home.replace(ab_promote=True))
    assert (first["status"], first["version"], first["production"], first["staging"]) == \
        ("promoted", "1", "1", "1"), first
    assert registry.aliases() == {"production": "1", "staging": "1"}
    tags = registry.describe("1")["tags"]
    assert tags["decision_source"] == "live_ab" and float(tags["live_p_value"]) < 0.05
    assert registry.describe(weak)["lifecycle"] == "archived"
    run_tags = registry.run_tags(first["run_id"])
    assert run_tags["mlops.kind"] == "ab-promote" and run_tags["mlops.status"] == "promoted"
    again = CliRunner().invoke(main, ["--home", str(live_home.home), "ab-promote", "--json"])
    assert again.exit_code == 0 and '"status": "kept"' in again.output, again.output
    assert decide_live(live_home.replace(ab_promote=True))["status"] == "kept"
    assert registry.aliases() == {"production": "1", "staging": "1"}

    # the server follows: every user now gets version 1, and there is nothing left to compare
    def both_arms_on_1():
        answers = [requests.post(served.url + "/predict", json={"user_id": u, "features": rows[0]},
                                 headers={"Connection": "close"}, timeout=10).json() for u in range(8)]
        return all(a["version"] == "1" for a in answers)

    assert wait_for(both_arms_on_1, 20, 0.5)
    assert wait_for(lambda: served.serves("1", "1"), 20), served.gauge("mlops_model_version")  # every worker
    assert _report(served.url)["comparison"]["verdict"] == "nothing_to_compare"

    # a restart loses no logged or labelled row
    before = {(g["arm"], g["version"]): (g["rows"], g["labelled"], g["correct"]) for g in report["groups"]}
    served.restart()
    after = {(g["arm"], g["version"]): (g["rows"], g["labelled"], g["correct"])
             for g in _report(served.url)["groups"]}
    for key, (rows_before, labelled, correct) in before.items():
        assert after[key][1:] == (labelled, correct) and after[key][0] >= rows_before, (key, after[key])
    assert sum(r for r, _, _ in before.values()) == 1020


def _labels_with_accuracy(answered, accuracy: dict[str, float]) -> list[tuple[str, int]]:
    """Feedback that makes each arm exactly as accurate as asked, in every round (first share right)."""
    out, seen = [], defaultdict(int)
    for request_id, arm, _, prediction, _ in answered:
        k = seen[arm]
        seen[arm] += 1
        right = (k % 20) < round(accuracy[arm] * 20)
        out.append((request_id, prediction if right else 1 - prediction))
    return out


def _never_called(settings, stop, batch):
    raise AssertionError("no batch was dropped: the watcher must not run the chain")


def test_the_watchers_schedule_retires_a_worse_challenger_and_leaves_an_equal_one(served, live_home, titanic):
    rows, labels = titanic
    settings = live_home.replace(ab_promote=True, ab_promote_minutes=0.005, settle_seconds=0.2)  # a look each 0.3 s
    registry = Registry(settings)
    production = registry.aliases()["production"]

    def staged(version):
        registry.make_challenger(version)
        assert wait_for(lambda: served.serves(production, version), 30), served.gauge("mlops_model_version")

    def run_traffic(accuracy, rounds, until=None):
        """Rounds of 60 requests per arm with feedback at the given accuracies; the watcher looks meanwhile."""
        for r in range(rounds):
            traffic = Traffic(served.url)
            traffic.send(rows[:120], labels[:120], start_user=10_000 + 200 * r)
            traffic.feedback(_labels_with_accuracy(traffic.answered, accuracy))
            time.sleep(0.5)  # at least one look of the watcher's schedule
            if until is not None and until():
                return r + 1
        return rounds

    settings.current_csv.unlink(missing_ok=True)  # no batch for the daemon to process: only its A/B schedule
    daemon = watcher.Watcher(settings, runner=_never_called)
    daemon.start()
    try:
        # a clearly worse challenger (60% vs 85%) is retired by the schedule, within the configured labels
        worse = _register_weak(settings)
        staged(worse)
        needed = _report(served.url)["comparison"]["samples_needed_per_arm"]
        rounds = run_traffic({"Production": 0.85, "Staging": 0.60}, 12,
                             until=lambda: registry.aliases()["staging"] == production)
        assert registry.aliases() == {"production": production, "staging": production}, rounds
        assert rounds * 60 <= max(needed, 600)
        tags = registry.describe(worse)["tags"]
        assert (tags["lifecycle"], tags["decision"], tags["decision_source"]) == ("retired", "retired", "live_ab")
        assert float(tags["live_p_value"]) < 0.05 and float(tags["live_cs_high"]) < 0
        # an equal challenger (80% and 80%) is neither promoted nor retired over many looks
        equal = _register_weak(settings)
        staged(equal)
        run_traffic({"Production": 0.80, "Staging": 0.80}, 8)
        assert registry.aliases() == {"production": production, "staging": equal}
        c = _report(served.url)["comparison"]
        # Production's answers from before the challenger first served (a few, in the first round) are left out
        assert c["staging_requests"] == 480 and 470 <= c["production_requests"] <= 480
        assert abs(c["difference"]) < 0.02
        assert c["verdict"] == "keep_collecting" and c["cs_low"] < 0 < c["cs_high"]
    finally:
        daemon.stop()
    assert not daemon.alive()
