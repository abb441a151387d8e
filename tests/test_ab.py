"""Live A/B without servers: the statistics, the prediction store, the per-worker log, /feedback and /ab/report."""

from __future__ import annotations

import json
import logging
import math
import threading
import time

import pytest
from click.testing import CliRunner

from mlops_core.ab import report
from mlops_core.cli import main
from mlops_core.config import Settings
from mlops_core.live import decide_live
from mlops_core.predictions import (
    DuplicateFeedbackError,
    InvalidLabelError,
    Prediction,
    PredictionStore,
    UnknownRequestError,
)
from mlops_core.proportions import two_proportion_test, wilson_interval
from mlops_core.registry import LoadedModel
from server import create_app
from server.live_ab import PredictionLog

COLUMNS = ["pclass", "sex", "age", "fare", "sibsp", "parch", "embarked"]
DTYPES = {"pclass": "long", "sex": "string", "age": "double", "fare": "double", "sibsp": "long", "parch": "long",
          "embarked": "string"}
ROW = {"pclass": 3, "sex": "male", "age": 22, "fare": 7.25, "sibsp": 1, "parch": 0, "embarked": "S"}
TOKEN = "test-feedback-token"


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {t.name for t in set(threading.enumerate()) - before}
    assert not left, f"threads outlived the test: {left}"


# -- statistics against hand-computed values -------------------------------------------------------------
def test_wilson_interval_matches_hand_computation():
    # 8/10: z = 1.959964, z^2 = 3.841459; centre = (0.8 + 0.192073) / 1.384146 = 0.716738,
    # half = 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.490160, 0.943315), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-5)  # never below 0
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(80, 100, confidence=0.99)
    assert low < 0.8 < high and high - low > 0.16  # wider than the 95% one (0.7112, 0.8666)


def test_two_proportion_test_matches_hand_computation():
    # 45/100 vs 60/100: pooled 0.525, se = sqrt(0.525 * 0.475 * 0.02) = 0.070622, z = 0.15 / se = 2.12398
    z, p = two_proportion_test(45, 100, 60, 100)
    assert z == pytest.approx(2.12398, abs=1e-4)
    assert p == pytest.approx(0.033672, abs=1e-5)  # 2 * (1 - Phi(2.12398))
    z, p = two_proportion_test(60, 100, 45, 100)
    assert z == pytest.approx(-2.12398, abs=1e-4) and p == pytest.approx(0.033672, abs=1e-5)
    assert two_proportion_test(10, 10, 5, 5) == (0.0, 1.0)  # no variance: no evidence
    assert two_proportion_test(1, 0, 1, 1) is None


# -- the store ---------------------------------------------------------------------------------------------
def _item(arm: str, version: str, predictions: list[int], *, call: str | None = None, status: int = 200,
          latency: float = 10.0, created: float | None = None) -> Prediction:
    import uuid

    call = call or uuid.uuid4().hex
    ids = [call] if len(predictions) == 1 else [uuid.uuid4().hex for _ in predictions]
    return Prediction(call, ids if status < 400 else (), 2 if arm == "Production" else 1, arm, version,
                      predictions, [0.5] * len(predictions), status, latency, created or time.time())


def test_store_joins_labels_and_reports_per_arm_and_version(tmp_path):
    settings = Settings(home=tmp_path, ab_min_labels=3)
    store = PredictionStore(settings)
    try:
        prod = [_item("Production", "1", [1], latency=ms) for ms in (10, 20, 30, 40)]
        stag = [_item("Staging", "2", [0, 1, 1], created=time.time() - 60)]  # one batch request of three rows
        errors = [_item("Staging", "2", [], status=400)]
        assert store.write(prod + stag + errors) == 4 + 3 + 1
        assert store.url == f"sqlite:///{tmp_path / 'predictions.db'}"
        labels = [(prod[0].call_id, 1), (prod[1].call_id, 0), (prod[2].call_id, 1)]  # 2 of 3 right
        labels += [(stag[0].request_ids[0], 0), (stag[0].request_ids[1], 1), (stag[0].request_ids[2], 1)]  # 3/3
        assert store.add_feedback(labels) == 6
        out = report(store)
        by = {(g["arm"], g["version"]): g for g in out["groups"]}
        p, s = by[("Production", "1")], by[("Staging", "2")]
        assert (p["requests"], p["errors"], p["rows"], p["labelled"], p["correct"]) == (4, 0, 4, 3, 2)
        assert (s["requests"], s["errors"], s["rows"], s["labelled"], s["correct"]) == (2, 1, 3, 3, 3)
        assert p["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
        assert p["accuracy_ci95"] == pytest.approx(list(wilson_interval(2, 3)), abs=1e-6)
        assert p["latency_ms"] == {"p50": 25.0, "p99": pytest.approx(39.7)}
        c = out["comparison"]
        assert (c["production_version"], c["staging_version"]) == ("1", "2")
        # one observation per labelled request: Production 3 requests (2/3 right), Staging 1 request (3/3)
        assert (c["production_requests"], c["staging_requests"]) == (3, 1)
        assert (c["production_labelled"], c["staging_labelled"]) == (3, 3)
        assert c["difference"] == pytest.approx(1 / 3, abs=1e-6)
        assert c["cs_low"] < c["difference"] < c["cs_high"] and 0 < c["p_value"] <= 1
        assert c["fixed_horizon"]["p_value"] == pytest.approx(two_proportion_test(2, 3, 3, 3)[1])
        assert "one pre-planned look" in c["fixed_horizon"]["note"]
        assert c["verdict"] == "insufficient_labels" and not c["decision_allowed"]  # 1 staging request < 3
        assert c["samples_still_needed"]["production"] == c["samples_needed_per_arm"] - 3
        assert json.loads(json.dumps(out)) == out  # JSON as it is
    finally:
        store.dispose()


def test_feedback_errors_name_the_ids_and_store_nothing(tmp_path):
    store = PredictionStore(Settings(home=tmp_path))
    try:
        a, b = _item("Production", "1", [1]), _item("Staging", "2", [0])
        failed = _item("Staging", "2", [], status=422)
        store.write([a, b, failed])
        with pytest.raises(UnknownRequestError, match="nope") as err:
            store.add_feedback([(a.call_id, 1), ("nope", 0)])
        assert err.value.ids == ["nope"]
        with pytest.raises(UnknownRequestError):  # an error answer has no prediction to label
            store.add_feedback([(failed.call_id, 1)])
        with pytest.raises(DuplicateFeedbackError, match="more than once"):
            store.add_feedback([(a.call_id, 1), (a.call_id, 0)])
        assert report(store)["comparison"]["production_labelled"] == 0  # all or nothing
        store.add_feedback([(a.call_id, 1)])
        with pytest.raises(DuplicateFeedbackError, match=a.call_id) as err:
            store.add_feedback([(b.call_id, 0), (a.call_id, 0)])
        assert err.value.ids == [a.call_id]
        assert report(store)["comparison"]["staging_labelled"] == 0
    finally:
        store.dispose()


def test_retention_by_age_and_rows(tmp_path):
    now = [time.time()]
    settings = Settings(home=tmp_path, ab_retention_days=1, ab_max_rows=5)
    store = PredictionStore(settings, clock=lambda: now[0])
    try:
        old = [_item("Production", "1", [1], created=now[0] - 2 * 86400) for _ in range(3)]
        new = [_item("Production", "1", [1], created=now[0] - i) for i in range(8)]
        store.write(old + new)
        store.add_feedback([(new[0].call_id, 1), (new[7].call_id, 0)])
        assert store.apply_retention() == 3 + 3  # three too old, then the oldest beyond five rows
        group = report(store)["groups"][0]
        assert group["rows"] == 5 and group["labelled"] == 1  # new[7]'s label went with its prediction
    finally:
        store.dispose()


def _write_from_a_worker(home: str, arm: str) -> None:
    store = PredictionStore(Settings(home=home))
    for _ in range(40):
        store.write([_item(arm, "1", [1, 0]) for _ in range(10)])
    store.dispose()


def test_labels_of_any_kind_are_stored_by_key_and_checked_against_the_versions_classes(tmp_path):
    """Strings, booleans and integers: stored by their key, so a prediction equals its label however the label
    is spelled; a label that is none of the answering version's classes is refused naming them."""
    store = PredictionStore(Settings(home=tmp_path))
    try:
        words = _item("Production", "1", ["yes", "no", "yes"])
        flags = _item("Staging", "2", [True, False])
        many = _item("Production", "3", ["setosa", "virginica"])
        many = Prediction(**{**many.__dict__, "probabilities": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]})
        store.write([words, flags, many])
        classes = {"1": ("no", "yes"), "2": (False, True), "3": ("setosa", "versicolor", "virginica")}
        with pytest.raises(InvalidLabelError, match=r"label 'maybe' is not one of the classes of version 1 "
                                                     r"\('no', 'yes'\)") as err:
            store.add_feedback([(words.request_ids[0], "yes"), (words.request_ids[1], "maybe")],
                               classes=classes.get)
        assert (err.value.index, err.value.label, err.value.classes, err.value.ids) == \
            (1, "maybe", ["no", "yes"], [words.request_ids[1]])
        with pytest.raises(InvalidLabelError, match="version 2"):  # 1 is not a class of True/False
            store.add_feedback([(flags.request_ids[0], 1)], classes=classes.get)
        assert report(store)["groups"][0]["labelled"] == 0  # all or none
        store.add_feedback([(words.request_ids[0], " yes"), (words.request_ids[1], "yes"),
                            (words.request_ids[2], "yes"), (flags.request_ids[0], "True"),
                            (flags.request_ids[1], True), (many.request_ids[0], "setosa"),
                            (many.request_ids[1], "versicolor")], classes=classes.get)
        by = {(g["arm"], g["version"]): g for g in report(store)["groups"]}
        assert (by[("Production", "1")]["labelled"], by[("Production", "1")]["correct"]) == (3, 2)
        assert (by[("Staging", "2")]["labelled"], by[("Staging", "2")]["correct"]) == (2, 1)
        assert (by[("Production", "3")]["labelled"], by[("Production", "3")]["correct"]) == (2, 1)
        with store.engine.connect() as conn:
            stored = dict(conn.exec_driver_sql("SELECT request_id, prediction FROM predictions").all())
            probability = conn.exec_driver_sql("SELECT probability FROM predictions WHERE request_id = ?",
                                               (many.request_ids[1],)).scalar()
            labels = dict(conn.exec_driver_sql("SELECT request_id, label FROM feedback").all())
        assert stored[flags.request_ids[0]] == "true" and labels[flags.request_ids[0]] == "true"
        assert labels[words.request_ids[0]] == "yes"  # the class it names, not the spelling given
        assert probability == 0.6  # a multiclass row: the predicted class's probability
    finally:
        store.dispose()


def _metadata_before_regression(*, integer_labels: bool):
    """The store's tables as the versions before regression made them: no ``task``, ``prediction_value`` or
    ``label_value``; with ``integer_labels``, as the version before labels of any kind (0/1 integer columns)."""
    from sqlalchemy import Integer, MetaData, Table

    from mlops_core.prediction_schema import added_columns, tables

    added = {(table, column) for table, column, _ in added_columns()}
    md = MetaData()
    for table in tables().tables.values():
        Table(table.name, md, *(c._copy() for c in table.columns if (table.name, c.name) not in added))
    if integer_labels:
        md.tables["predictions"].c.prediction.type = Integer()
        md.tables["feedback"].c.label.type = Integer()
    return md


def _previous_store(url: str, now: float) -> dict[str, str]:
    """A store as the version before labels of any kind wrote it: 0/1 integers in ``prediction`` and ``label``.
    Production v1 answered 1, 1, 0 (labels 1, 0, 0: two right) and one error; returns the request ids."""
    from sqlalchemy import create_engine

    md = _metadata_before_regression(integer_labels=True)
    engine = create_engine(url)
    md.create_all(engine)
    rows = [(f"r{i}", prediction, 200) for i, prediction in enumerate((1, 1, 0))] + [("e0", None, 400)]
    with engine.begin() as conn:
        conn.execute(md.tables["predictions"].insert(), [
            {"request_id": rid, "call_id": rid, "created": now - 60, "user_id": 2, "arm": "Production",
             "version": "1", "prediction": prediction, "probability": 0.5, "status": status, "latency_ms": 3.0}
            for rid, prediction, status in rows])
        conn.execute(md.tables["feedback"].insert(), [{"request_id": f"r{i}", "label": y, "received": now - 50}
                                                       for i, y in enumerate((1, 0, 0))])
    engine.dispose()
    return {"r0": "1", "r1": "1", "r2": "0"}


def _store_columns(store: PredictionStore, names=("prediction", "label")) -> dict[str, str]:
    from sqlalchemy import inspect

    with store.engine.connect() as conn:
        inspector = inspect(conn)
        return {f"{table}.{c['name']}": type(c["type"]).__name__.upper() for table in ("predictions", "feedback")
                for c in inspector.get_columns(table) if c["name"] in names}


def _migrates(url: str, home) -> None:
    """The previous version's store is altered on first use and reads as before; new labels of any kind join it."""
    now = time.time()
    before = _previous_store(url, now)
    store = PredictionStore(Settings(home=home, ab_store_url=url))
    try:
        group = report(store)["groups"][0]
        assert (group["rows"], group["errors"], group["labelled"], group["correct"]) == (3, 1, 3, 2)
        assert set(_store_columns(store).values()) == {"TEXT"}
        assert set(_store_columns(store, REGRESSION_COLUMNS)) == {"predictions.task", "predictions.prediction_value",
                                                                 "feedback.label_value"}  # added too
        with store.engine.connect() as conn:
            assert dict(conn.exec_driver_sql("SELECT request_id, prediction FROM predictions "
                                             "WHERE prediction IS NOT NULL").all()) == before
        words = _item("Staging", "2", ["no", "yes"], created=now - 30)
        store.write([words, _item("Production", "1", [1], call="r9", created=now - 20)])
        store.add_feedback([(words.request_ids[0], "no"), (words.request_ids[1], "no"), ("r9", "1")],
                           classes={"1": (0, 1), "2": ("no", "yes")}.get)
        numbers = _numbers("Production", "5", [5.0, 6.0], created=now - 10)  # a regression's rows join it too
        store.write([numbers])
        store.add_feedback(list(zip(numbers.request_ids, (7, 6.0))))
        by = {(g["arm"], g["version"]): g for g in report(store)["groups"]}
        assert (by[("Production", "1")]["labelled"], by[("Production", "1")]["correct"]) == (4, 3)
        assert (by[("Staging", "2")]["labelled"], by[("Staging", "2")]["correct"]) == (2, 1)
        regression = by[("Production", "5")]
        assert (regression["task"], regression["labelled"], regression["mae"]) == ("regression", 2, 1.0)
        assert regression["rmse"] == pytest.approx(math.sqrt(2), abs=1e-6)
    finally:
        store.dispose()
    again = PredictionStore(Settings(home=home, ab_store_url=url))  # altered once: a current store is left alone
    try:
        assert report(again)["groups"][0]["labelled"] == 4
    finally:
        again.dispose()


def test_a_store_written_before_labels_of_any_kind_is_altered_once_and_still_read(tmp_path):
    _migrates(f"sqlite:///{tmp_path / 'old.db'}", tmp_path)


def _open_from_a_worker(url: str, home: str, arm: str) -> None:
    store = PredictionStore(Settings(home=home, ab_store_url=url))
    store.write([_item(arm, "1", ["a", "b"]) for _ in range(5)])
    store.dispose()


def test_two_processes_altering_a_previous_store_at_once(tmp_path):
    """Two workers starting on a store of the previous version: one alters it, the other finds it done."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'old.db'}"
    _previous_store(url, time.time())
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_open_from_a_worker, args=(url, str(tmp_path), arm))
               for arm in ("Production", "Staging")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    store = PredictionStore(Settings(home=tmp_path, ab_store_url=url))
    try:
        rows = {g["arm"]: g["rows"] for g in report(store)["groups"]}
        assert rows == {"Production": 3 + 10, "Staging": 10} and set(_store_columns(store).values()) == {"TEXT"}
    finally:
        store.dispose()


@pytest.mark.slow
def test_a_previous_store_on_postgresql_is_altered_too(tmp_path):
    from _services import postgres

    with postgres() as url:
        _migrates(url, tmp_path)


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    import multiprocessing

    PredictionStore(Settings(home=tmp_path)).dispose()  # tables exist, as after the first worker started
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_from_a_worker, args=(str(tmp_path), arm))
               for arm in ("Production", "Staging")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    store = PredictionStore(Settings(home=tmp_path))
    try:
        groups = report(store)["groups"]
        assert [(g["arm"], g["requests"], g["rows"]) for g in groups] == [("Production", 400, 800),
                                                                          ("Staging", 400, 800)]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.dispose()


# -- a regression's rows -------------------------------------------------------------------------------------
REGRESSION_COLUMNS = ("task", "prediction_value", "label_value")


def _numbers(arm: str, version: str, predictions: list[float], *, created: float | None = None) -> Prediction:
    """One answered request of a regression version (one row: its request id is the call's)."""
    item = _item(arm, version, predictions, created=created)
    return Prediction(**{**item.__dict__, "probabilities": None, "task": "regression"})


def _t_interval(totals: list[float], sizes: list[int]) -> tuple[float, float]:
    """The 95% interval of sum(totals) / sum(sizes), by hand: Student t (k - 1 df) on the requests' linearised
    ratio (the t interval of a mean when every request is one row)."""
    from scipy.stats import t

    k, rows = len(totals), sum(sizes)
    r = sum(totals) / rows
    se = math.sqrt(k / (k - 1) * sum((a - r * m) ** 2 for a, m in zip(totals, sizes))) / rows
    q = t.ppf(0.975, k - 1)
    return r - q * se, r + q * se


def test_a_regressions_numbers_are_stored_as_numbers_and_reported_as_mae_and_rmse(tmp_path):
    """Predicted and true values stored as floats (SQL computes the errors); per arm MAE and RMSE over rows,
    with 95% intervals over requests (a batch request is one)."""
    store = PredictionStore(Settings(home=tmp_path))
    try:
        singles = [_numbers("Production", "1", [p]) for p in (10.0, 12.5, 7.0, 20.0)]
        batch = _numbers("Production", "1", [3.0, 4.0, 5.0])
        store.write(singles + [batch])
        truth = {singles[0].call_id: 11, singles[1].call_id: 10.0, singles[2].call_id: 7.0,
                 singles[3].call_id: 26.5, batch.request_ids[0]: 0, batch.request_ids[1]: 4.5,
                 batch.request_ids[2]: 5.0}
        assert store.add_feedback(list(truth.items())) == 7
        with store.engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT p.prediction_value, f.label_value, p.task, p.probability FROM predictions p "
                "JOIN feedback f ON f.request_id = p.request_id ORDER BY p.prediction_value").all()
            mae_sql = conn.exec_driver_sql("SELECT AVG(ABS(f.label_value - p.prediction_value)) FROM predictions p "
                                           "JOIN feedback f ON f.request_id = p.request_id").scalar()
        assert [tuple(r) for r in stored] == [(3.0, 0.0, "regression", None), (4.0, 4.5, "regression", None),
                                              (5.0, 5.0, "regression", None), (7.0, 7.0, "regression", None),
                                              (10.0, 11.0, "regression", None), (12.5, 10.0, "regression", None),
                                              (20.0, 26.5, "regression", None)]
        errors = [1.0, 2.5, 0.0, 6.5, 3.0, 0.5, 0.0]  # the singles' |error|, then the batch's rows'
        assert mae_sql == pytest.approx(sum(errors) / 7)
        out = report(store)
        assert json.loads(json.dumps(out)) == out  # JSON as it is
        group = out["groups"][0]
        assert (group["task"], group["rows"], group["labelled"], group["requests"]) == ("regression", 7, 7, 5)
        assert (group["accuracy"], group["correct"]) == (None, None)
        assert group["mae"] == pytest.approx(sum(errors) / 7, abs=1e-6)
        assert group["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 7), abs=1e-6)
        sizes, absolute = [1, 1, 1, 1, 3], [1.0, 2.5, 0.0, 6.5, 3.5]
        squared = [1.0, 6.25, 0.0, 42.25, 9.25]
        low, high = _t_interval(absolute, sizes)
        assert group["mae_ci95"] == pytest.approx([max(0.0, low), high], abs=1e-6)
        low, high = _t_interval(squared, sizes)
        assert group["rmse_ci95"] == pytest.approx([math.sqrt(max(0.0, low)), math.sqrt(high)], abs=1e-6)
    finally:
        store.dispose()


@pytest.mark.parametrize(("label", "accepted"), [
    (0, True), (-3, True), (2.5, True), (3.4028234663852886e38, True), (-3.4028234663852886e38, True),
    ("151", False), ("2.5", False), (True, False), (None, False), (float("inf"), False), (float("nan"), False),
    (10 ** 400, False), (3.5e38, False), (340282346638528860000000000000000000000, False), ([1.0], False),
])
def test_a_regressions_true_value_is_a_finite_number(tmp_path, label, accepted):
    """A JSON number (integer or float) within float32's range, as the features are; never text or a boolean.
    Refused: an InvalidLabelError naming the version and what came, without classes."""
    store = PredictionStore(Settings(home=tmp_path))
    try:
        item = _numbers("Staging", "4", [1.0])
        store.write([item])
        if accepted:
            store.add_feedback([(item.call_id, label)], classes=lambda version: ("a", "b"))  # the row's task rules
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT label_value FROM feedback").scalar() == float(label)
        else:
            with pytest.raises(InvalidLabelError, match="true value of version 4's prediction .a regression., a "
                                                        "finite number") as err:
                store.add_feedback([(item.call_id, label)])
            assert err.value.classes is None and err.value.index == 0
    finally:
        store.dispose()


def test_a_store_written_before_regression_gains_its_columns_once(tmp_path):
    """A current store without the regression columns: they are added on first use (its rows read as the
    classification rows they are), and regression rows join it."""
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'before.db'}"
    md = _metadata_before_regression(integer_labels=False)
    engine = create_engine(url)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(md.tables["predictions"].insert(), [
            {"request_id": f"r{i}", "call_id": f"r{i}", "created": time.time() - 60, "user_id": 2,
             "arm": "Production", "version": "1", "prediction": y, "probability": 0.5, "status": 200,
             "latency_ms": 3.0} for i, y in enumerate(("yes", "no"))])
        conn.execute(md.tables["feedback"].insert(), [{"request_id": "r0", "label": "yes", "received": time.time()}])
    engine.dispose()
    store = PredictionStore(Settings(home=tmp_path, ab_store_url=url))
    try:
        assert _store_columns(store, REGRESSION_COLUMNS) == {"predictions.task": "VARCHAR",
                                                             "predictions.prediction_value": "FLOAT",
                                                             "feedback.label_value": "FLOAT"}
        old = report(store)["groups"][0]
        assert (old["task"], old["labelled"], old["correct"], old["accuracy"]) == ("classification", 1, 1, 1.0)
        numbers = _numbers("Production", "2", [5.0])
        store.write([numbers])
        store.add_feedback([(numbers.call_id, 7)])
        by = {g["version"]: g for g in report(store)["groups"]}
        assert (by["2"]["task"], by["2"]["mae"], by["2"]["mae_ci95"]) == ("regression", 2.0, None)  # one request
    finally:
        store.dispose()
    again = PredictionStore(Settings(home=tmp_path, ab_store_url=url))  # added once: a current store is left alone
    try:
        assert len(report(again)["groups"]) == 2
    finally:
        again.dispose()


def _errors_store(tmp_path, production: list[float], staging: list[float], **settings) -> PredictionStore:
    """A store where each arm answered one single-row request per error given (its true value 100, the
    prediction 100 + error), Staging first: both arms over one period."""
    store = PredictionStore(Settings(home=tmp_path, **settings))
    now = time.time()
    items = [_numbers("Staging", "2", [100.0 + e], created=now - 100 + i * 1e-3) for i, e in enumerate(staging)]
    items += [_numbers("Production", "1", [100.0 + e], created=now - 50 + i * 1e-3) for i, e in enumerate(production)]
    store.write(items)
    store.add_feedback([(i.call_id, 100.0) for i in items])
    return store


@pytest.mark.parametrize(("staging_scale", "verdict", "action"), [
    (0.5, "staging_better", "promote"), (2.0, "staging_worse", "retire"), (1.0, "keep_collecting", None)])
def test_regression_arms_are_compared_on_their_mean_absolute_error(tmp_path, staging_scale, verdict, action):
    """The mSPRT on per-request absolute errors, lower is better: half Production's errors is better, twice is
    worse, the same errors keep collecting; tau is MLOPS_AB_MIN_EFFECT times the pooled MAE."""
    import numpy as np

    from mlops_core.sequential import always_valid_p

    rng = np.random.default_rng(3)
    production = rng.normal(0, 30, 200).tolist()
    staging = (rng.normal(0, 30, 200) * staging_scale).tolist() if staging_scale != 1.0 else production[::-1]
    store = _errors_store(tmp_path, production, staging, ab_min_labels=100)
    try:
        c = report(store, production="1", staging="2")["comparison"]
        a, b = np.abs(production), np.abs(staging)
        assert (c["metric"], c["lower_is_better"], c["production_requests"], c["staging_requests"]) == \
            ("mae", True, 200, 200)
        assert c["production_mae"] == pytest.approx(a.mean(), abs=1e-6)
        assert c["staging_rmse"] == pytest.approx(math.sqrt(np.mean(np.square(staging))), abs=1e-6)
        assert c["difference"] == pytest.approx(b.mean() - a.mean(), abs=1e-6)
        tau = 0.05 * (a.sum() + b.sum()) / 400
        assert c["tau"] == pytest.approx(tau, abs=1e-6)
        V = a.var(ddof=1) / 200 + b.var(ddof=1) / 200
        assert c["p_value"] == pytest.approx(float(always_valid_p(b.mean() - a.mean(), V, tau=tau)), rel=1e-9)
        assert (c["verdict"], c["action"]) == (verdict, action)
        assert c["decision_allowed"] == (action == "retire")  # promotion is off by default, retirement on
        if action:
            assert c["p_value"] < 0.05 and (c["cs_high"] < 0 if action == "promote" else c["cs_low"] > 0)
            assert "lower is better" in c["reason"]
        else:
            assert c["p_value"] == 1.0 and c["cs_low"] < 0 < c["cs_high"]  # the same errors: no difference
        assert c["fixed_horizon"]["p_value"] > 0 and c["samples_needed_per_arm"] >= 100
    finally:
        store.dispose()


def test_regression_arms_need_their_labels_and_tasks_must_agree(tmp_path):
    store = _errors_store(tmp_path, [1.0, -2.0, 3.0], [2.0, 2.0], ab_min_labels=3)
    try:
        c = report(store, production="1", staging="2")["comparison"]
        assert (c["verdict"], c["action"], c["staging_requests"]) == ("insufficient_labels", None, 2)
        assert c["difference"] == pytest.approx(0.0, abs=1e-9)  # MAE 2 vs 2
        store.write([_item("Staging", "3", ["yes"])])  # a classifier staged beside a regression
        c = report(store, production="1", staging="3")["comparison"]
        assert c["verdict"] == "nothing_to_compare" and "different tasks" in c["reason"] and not c["decision_allowed"]
    finally:
        store.dispose()


# -- the per-worker log --------------------------------------------------------------------------------------
class StalledStore(PredictionStore):
    """A store whose writes wait until released: the writer is stuck, the queue fills."""

    def __init__(self, settings):
        super().__init__(settings)
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, items):
        items = list(items)
        self.entered.set()
        self.release.wait(10)
        return super().write(items)


def test_overflow_is_counted_not_waited_on(tmp_path):
    settings = Settings(home=tmp_path, ab_queue_size=5, ab_batch_size=1)
    store = StalledStore(settings)
    dropped = []
    ab_log = PredictionLog(settings, store=store, on_dropped=dropped.append)
    ab_log.record(_item("Production", "1", [1]))  # not started here: ignored
    assert ab_log.dropped == 0 and not ab_log.running
    ab_log.start()
    try:
        assert ab_log.record(_item("Production", "1", [1]))
        assert store.entered.wait(5)  # the writer holds one record and is stuck in write()
        started = time.perf_counter()
        results = [ab_log.record(_item("Production", "1", [1, 0])) for _ in range(200)]
        took = time.perf_counter() - started
        assert results.count(True) == 5 and ab_log.queued == 5
        assert ab_log.dropped == 2 * 195 and sum(dropped) == 2 * 195  # rows, counted
        assert took < 0.5, f"recording waited: {took:.3f}s for 200 records"
    finally:
        store.release.set()
        ab_log.stop()
    assert not ab_log.running
    assert ab_log.written == 1 + 5 * 2  # what was queued before stop is written
    assert report(PredictionStore(settings))["groups"][0]["rows"] == 11


def test_a_backlog_is_written_in_full_batches_with_retention_between_them(tmp_path, monkeypatch):
    """A slow store: the writer still writes large transactions and keeps applying retention."""
    from server import live_ab

    monkeypatch.setattr(live_ab, "_RETENTION_EVERY", 0.0)
    settings = Settings(home=tmp_path, ab_batch_size=500, ab_flush_seconds=0.05)
    events = []

    class Slow(PredictionStore):
        def write(self, items):
            items = list(items)
            events.append(("write", len(items)))
            time.sleep(0.001)
            return super().write(items)

        def apply_retention(self):
            events.append(("retention", 0))
            return 0

    ab_log = PredictionLog(settings, store=Slow(settings))
    ab_log.start()
    for _ in range(5000):  # queued before the writer thread exists: a backlog, deterministically
        ab_log._items.append(_item("Production", "1", [1]))
    try:
        ab_log.record(_item("Production", "1", [1]))  # starts the writer
        assert ab_log.flush(10)
    finally:
        ab_log.stop()
    writes = [n for kind, n in events if kind == "write"]
    assert sum(writes) == 5001 and writes[:10] == [500] * 10
    kinds = [kind for kind, _ in events]
    assert all(kinds[i + 1] == "retention" for i, kind in enumerate(kinds[:-1]) if kind == "write")


def test_sqlite_writes_use_a_bounded_set_of_statements(tmp_path):
    """The driver caches each distinct statement per connection: batch lengths must not each make one."""
    import random

    from mlops_core import predictions as core_ab

    store = PredictionStore(Settings(home=tmp_path))
    core_ab._insert_rows.cache_clear()
    sizes = [1, 2, 3, 255, 256, 257, 700, 1000] + random.Random(0).sample(range(1, 1200), 40)
    for n in sizes:
        assert store.write([_item("Production", "1", [1]) for _ in range(n)]) == n
    assert report(store)["groups"][0]["rows"] == sum(sizes)
    lengths = core_ab._insert_rows.cache_info().currsize
    assert lengths <= 9, f"{lengths} distinct INSERT statements"  # 1, 2, 4, ... 256 rows
    store.dispose()


def test_writer_survives_a_failing_store_and_stops(tmp_path):
    settings = Settings(home=tmp_path, ab_flush_seconds=0.05)

    class Broken(PredictionStore):
        def write(self, items):
            raise RuntimeError("database is locked")

    ab_log = PredictionLog(settings, store=Broken(settings))
    ab_log.start()
    try:
        for _ in range(3):
            ab_log.record(_item("Staging", "2", [1]))
        ab_log.flush(2)
        assert ab_log.running and ab_log.failed >= 1
    finally:
        ab_log.stop()
    assert not ab_log.running


# -- /feedback and /ab/report in-process -------------------------------------------------------------------------
class SexModel:
    """Predicts survival for women only; or the opposite (a worse model) when ``flip``."""

    classes_ = [0, 1]

    def __init__(self, flip: bool = False):
        self.flip = flip

    def predict(self, frame):
        return [int((s == "female") != self.flip) for s in frame["sex"]]

    def predict_proba(self, frame):
        import numpy as np

        return np.array([[1 - p, p] for p in (0.9 if y else 0.1 for y in self.predict(frame))])


class FakeRegistry:
    def aliases(self):
        return {"production": "1", "staging": "2"}

    def load_model(self, version):
        return LoadedModel(version=str(version), run_id=f"run{version}", model=SexModel(flip=version == "2"),
                           columns=COLUMNS, dtypes=DTYPES)


@pytest.fixture
def make_app(tmp_path):
    """Apps on the fake registry, with this module's settings changed by keywords; their logs stopped after."""
    made = []

    def make(**changes):
        settings = Settings(home=tmp_path, ab_feedback_wait=0.3, ab_min_labels=4).replace(**changes)
        app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": FakeRegistry(),
                          "MLOPS_AUTOSTART": False})
        assert app.extensions["mlops_store"].refresh().error is None
        app.extensions["mlops_ab"].start()
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["mlops_ab"].stop()


@pytest.fixture
def app(make_app):
    """Retirement on (the default), so feedback needs the token."""
    return make_app(feedback_token=TOKEN)


def _client(app, token: str | None = TOKEN):
    """A test client that sends ``Authorization: Bearer <token>`` with every request (none without a token)."""
    client = app.test_client()
    if token:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def _predict(client, user_id, features):
    response = client.post("/predict", json={"user_id": user_id, "features": features})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_answers_carry_request_ids_and_feedback_joins_them(app):
    client = _client(app)
    one = _predict(client, 2, ROW)
    assert len(one["request_id"]) == 32 and int(one["request_id"], 16) >= 0 and "request_ids" not in one
    rows = [dict(ROW, sex=s) for s in ("male", "female", "female", "male")]
    batch = _predict(client, 3, rows)
    assert batch["stage"] == "Staging" and len(set(batch["request_ids"])) == 4
    assert batch["request_id"] not in batch["request_ids"]
    # feedback at once: the predictions may still be queued
    response = client.post("/feedback", json={"request_id": one["request_id"], "label": 0})
    assert response.status_code == 201, response.get_json()
    truth = [0, 1, 1, 0]
    response = client.post("/feedback", json={"feedback": [{"request_id": i, "label": y}
                                                           for i, y in zip(batch["request_ids"], truth)]})
    assert response.status_code == 201 and response.get_json()["accepted"] == 4
    report = client.get("/ab/report").get_json()
    by = {(g["arm"], g["version"]): g for g in report["groups"]}
    assert by[("Production", "1")]["labelled"] == 1 and by[("Production", "1")]["accuracy"] == 1.0
    assert by[("Staging", "2")]["labelled"] == 4 and by[("Staging", "2")]["accuracy"] == 0.0  # the flipped model
    assert by[("Staging", "2")]["requests"] == 1 and by[("Staging", "2")]["rows"] == 4
    assert report["comparison"]["verdict"] == "insufficient_labels"
    assert report["log"]["enabled"] and report["log"]["dropped"] == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "mlops_ab_log_written_total 5.0" in metrics


def test_feedback_errors_are_json_4xx(app):
    client = _client(app)
    known = _predict(client, 2, ROW)["request_id"]
    assert client.post("/feedback", json={"request_id": known, "label": 1}).status_code == 201
    cases = [
        ({"request_id": "0" * 32, "label": 1}, 404, "unknown_request_id", "request_id"),
        ({"request_id": known, "label": 0}, 409, "duplicate_feedback", "request_id"),
        ({"request_id": known, "label": 2}, 400, "invalid_request", "label"),  # none of the classes 0 and 1
        ({"request_id": known, "label": True}, 400, "invalid_request", "label"),
        ({"request_id": known, "label": "yes"}, 400, "invalid_request", "label"),
        ({"request_id": known, "label": "1"}, 409, "duplicate_feedback", "request_id"),  # the class 1: labelled
        ({"request_id": known, "label": 1.0}, 409, "duplicate_feedback", "request_id"),
        ({"request_id": known, "label": None}, 400, "invalid_request", "label"),
        ({"request_id": known, "label": [1]}, 400, "invalid_request", "label"),
        ({"request_id": known, "label": " "}, 400, "invalid_request", "label"),
        ({"request_id": known, "label": "x" * 257}, 400, "invalid_request", "label"),
        ({"request_id": known}, 400, "invalid_request", "label"),
        ({"label": 1}, 400, "invalid_request", "request_id"),
        ({"request_id": 7, "label": 1}, 400, "invalid_request", "request_id"),
        ({"request_id": known, "label": 1, "extra": 1}, 400, "invalid_request", "extra"),
        ({"feedback": []}, 400, "invalid_request", "feedback"),
        ({"feedback": [{"request_id": known, "label": 5}]}, 400, "invalid_request", "feedback[0].label"),
        ({"feedback": [1]}, 400, "invalid_request", "feedback[0]"),
        ([1, 2], 400, "invalid_request", "body"),
    ]
    for body, status, error, field in cases:
        response = client.post("/feedback", json=body)
        answer = response.get_json()
        assert (response.status_code, answer["error"], answer["field"]) == (status, error, field), (body, answer)
    unknown = client.post("/feedback", json={"request_id": "f" * 32, "label": 1}).get_json()
    assert "f" * 32 in unknown["message"] and unknown["request_ids"] == ["f" * 32]
    other = _predict(client, 2, ROW)["request_id"]
    bad = client.post("/feedback", json={"feedback": [{"request_id": other, "label": 1}, {"request_id": known,
                                                                                         "label": "maybe"}]})
    answer = bad.get_json()  # the label and the classes named; nothing stored (all or none)
    assert (bad.status_code, answer["field"], answer["classes"]) == (400, "feedback[1].label", [0, 1]), answer
    assert "'maybe' is not one of the classes of version 1 (0, 1)" in answer["message"]
    assert client.post("/feedback", json={"request_id": other, "label": "0"}).status_code == 201
    for raw, status in ((b"{", 400), (b"", 400), (b"null", 400)):
        response = client.post("/feedback", data=raw, content_type="application/json")
        assert response.status_code == status and response.get_json()["field"] == "body"
    response = client.post("/feedback", data="label=1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415 and response.is_json


def _labelled(client) -> tuple[int, int]:
    """(requests, labelled rows) over every group of the report."""
    groups = client.get("/ab/report").get_json()["groups"]
    return sum(g["requests"] for g in groups), sum(g["labelled"] for g in groups)


@pytest.mark.parametrize(("switches", "named"), [({}, "MLOPS_AB_RETIRE is on"),
                                                 ({"ab_retire": False, "ab_promote": True}, "MLOPS_AB_PROMOTE is on"),
                                                 ({"ab_promote": True}, "MLOPS_AB_RETIRE and MLOPS_AB_PROMOTE are on")])
def test_feedback_that_can_move_an_alias_is_refused_without_a_token(make_app, caplog, switches, named):
    """Default settings (retirement on) or promotion on, no token: 403 naming both ways out, nothing stored."""
    with caplog.at_level(logging.WARNING, logger="server.live_ab"):
        app = make_app(**switches)
    warned = [r.getMessage() for r in caplog.records if r.name == "server.live_ab"]
    assert len(warned) == 1 and "POST /feedback will answer 403" in warned[0] and named in warned[0], warned
    client = _client(app, token=None)
    known = _predict(client, 2, ROW)["request_id"]
    for headers in ({}, {"Authorization": "Bearer guessed"}):
        response = client.post("/feedback", json={"request_id": known, "label": 1}, headers=headers)
        answer = response.get_json()
        assert (response.status_code, answer["error"]) == (403, "feedback_refused"), answer
        for way_out in ("set MLOPS_FEEDBACK_TOKEN", "MLOPS_AB_RETIRE=false and MLOPS_AB_PROMOTE=false", named):
            assert way_out in answer["message"], answer["message"]
    assert _labelled(client) == (1, 0)  # the prediction is logged, no label is


def test_with_a_token_feedback_needs_it(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="server.live_ab"):
        app = make_app(feedback_token=TOKEN, ab_promote=True)
    assert not [r for r in caplog.records if r.name == "server.live_ab"]
    client = _client(app, token=None)
    known = _predict(client, 2, ROW)["request_id"]
    body = {"request_id": known, "label": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        response = client.post("/feedback", json=body, headers=headers)
        answer = response.get_json()
        assert (response.status_code, answer["field"]) == (401, "Authorization"), (headers, answer)
        assert TOKEN not in response.get_data(as_text=True)
    assert _labelled(client) == (1, 0)
    response = client.post("/feedback", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 201 and response.get_json()["accepted"] == 1
    assert _labelled(client) == (1, 1)


def test_with_retirement_and_promotion_off_feedback_needs_no_token(make_app, caplog):
    """Labels that move nothing: collected from anyone, as before."""
    with caplog.at_level(logging.WARNING, logger="server.live_ab"):
        app = make_app(ab_retire=False, ab_promote=False)
    assert not [r for r in caplog.records if r.name == "server.live_ab"]
    client = _client(app, token=None)
    known = _predict(client, 2, ROW)["request_id"]
    response = client.post("/feedback", json={"request_id": known, "label": 1})
    assert response.status_code == 201 and response.get_json()["accepted"] == 1
    assert _labelled(client) == (1, 1)


def test_errors_after_routing_count_for_the_arm(app):
    client = app.test_client()
    response = client.post("/predict", json={"user_id": 1, "features": dict(ROW, age="old")})
    assert response.status_code == 400
    _predict(client, 1, ROW)
    staging = [g for g in client.get("/ab/report").get_json()["groups"] if g["arm"] == "Staging"]
    assert [(g["version"], g["requests"], g["errors"], g["rows"]) for g in staging] == [("2", 2, 1, 1)]


def test_logging_off_still_answers_request_ids(tmp_path):
    settings = Settings(home=tmp_path, ab_log=False)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": FakeRegistry(),
                      "MLOPS_AUTOSTART": False})
    app.extensions["mlops_store"].refresh()
    ab_log = app.extensions["mlops_ab"]
    ab_log.start()
    try:
        assert "request_id" in _predict(app.test_client(), 2, ROW)
        assert not ab_log.running and ab_log.queued == 0
    finally:
        ab_log.stop()


def test_autostarted_app_starts_no_writer_until_a_prediction(tmp_path):
    settings = Settings(home=tmp_path, refresh_seconds=60)
    app = create_app({"TESTING": True, "MLOPS_SETTINGS": settings, "MLOPS_REGISTRY": FakeRegistry()})
    store, ab_log = app.extensions["mlops_store"], app.extensions["mlops_ab"]
    try:
        assert store.running and not ab_log.running
        _predict(app.test_client(), 4, ROW)
        assert ab_log.running
    finally:
        store.stop()
        ab_log.stop()
    assert not ab_log.running


# -- CLI and the promotion switch -------------------------------------------------------------------------------
def test_live_promotion_is_off_and_retirement_on_by_default(tmp_path):
    defaults = Settings(home=tmp_path)
    assert (defaults.ab_promote, defaults.ab_retire) == (False, True)
    result = decide_live(defaults.replace(ab_retire=False))
    assert result["status"] == "disabled"
    assert not (tmp_path / "predictions.db").exists()


def test_same_period_and_one_observation_per_request(tmp_path):
    """Production's rows from before Staging's version first served are not compared; a batch is one request."""
    now = time.time()
    store = PredictionStore(Settings(home=tmp_path, ab_min_labels=1))
    try:
        old = [_item("Production", "1", [1], created=now - 100) for _ in range(5)]  # before the challenger
        stag = [_item("Staging", "2", [1, 1, 1, 0], created=now - 50)]  # one request, 4 rows, 3 right
        stag += [_item("Staging", "2", [0], created=now - 40)]
        new = [_item("Production", "1", [0], created=now - 30) for _ in range(2)]
        store.write(old + stag + new)
        labels = [(i.call_id, 1) for i in old] + [(r, 1) for r in stag[0].request_ids] + [(stag[1].call_id, 1)]
        labels += [(i.call_id, 0) for i in new]  # both right
        store.add_feedback(labels)
        c = report(store, production="1", staging="2")["comparison"]
        assert c["since"] == pytest.approx(now - 50)
        assert (c["production_requests"], c["production_labelled"], c["production_accuracy"]) == (2, 2, 1.0)
        assert (c["staging_requests"], c["staging_labelled"]) == (2, 5)
        assert c["staging_accuracy"] == pytest.approx(3 / 5)  # rows: 3 of 5 right
        assert c["difference"] == pytest.approx((0.75 + 0.0) / 2 - 1.0)  # requests: shares 0.75 and 0
        # a version staged again after another one served: compared from its new start only
        store.write([_item("Staging", "3", [1], created=now - 20), _item("Staging", "2", [1], created=now - 10)])
        assert store.first_served("Staging", "2") == pytest.approx(now - 10)
    finally:
        store.dispose()


def test_ab_report_cli_reads_the_store(tmp_path, monkeypatch):
    store = PredictionStore(Settings(home=tmp_path))
    items = [_item("Staging", "2", [0], created=time.time() - 60) for _ in range(2)]
    items += [_item("Production", "1", [1]) for _ in range(3)]
    store.write(items)
    store.add_feedback([(i.call_id, 1) for i in items])
    store.dispose()
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["ab-report", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    c = report["comparison"]
    assert (c["production_version"], c["staging_version"], c["production_accuracy"], c["staging_accuracy"]) == \
        ("1", "2", 1.0, 0.0)
    assert math.isclose(c["fixed_horizon"]["p_value"], two_proportion_test(3, 3, 0, 2)[1])
    text = CliRunner().invoke(main, ["ab-report"])
    assert text.exit_code == 0 and "verdict: insufficient_labels" in text.output
