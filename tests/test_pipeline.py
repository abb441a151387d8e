"""The chain end to end on a real SQLite registry with a two-model PyCaret comparison."""

import json

import pandas as pd
import pytest
from conftest import FAST
from mlflow import MlflowClient

from mlops_core.config import Settings
from mlops_core.data import make_datasets
from mlops_core.errors import BusyError
from mlops_core.pipeline import pipeline_lock, run
from mlops_core.registry import Registry


def _versions(settings):
    return Registry(settings).versions()


def _runs(settings, status):
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.experiment)
    return client.search_runs([exp.experiment_id], f"tags.`mlops.status` = '{status}'")


def test_bootstrap_registers_version_1_as_production_and_staging(bootstrapped):
    reg = Registry(bootstrapped)
    assert reg.aliases() == {"production": "1", "staging": "1"}
    assert reg.describe("1")["lifecycle"] == "production"
    assert (bootstrapped.models_dir / "best_model.pkl").exists()
    table = pd.read_csv(bootstrapped.models_dir / "pycaret_compare_results.csv", index_col=0)
    assert list(table.index) == ["lr", "dt"] or list(table.index) == ["dt", "lr"]
    assert table["Accuracy"].is_monotonic_decreasing
    assert len(_runs(bootstrapped, "no_drift")) == 1  # the batch was recorded as processed


def test_same_content_is_skipped_unless_forced(fresh):
    s = fresh
    again = run(s)
    assert again.status == "skipped" and "already processed" in again.reason
    assert again.production == "1" and len(_versions(s)) == 1
    forced = run(s, force=True)
    assert forced.status == "no_drift" and len(_versions(s)) == 1


def test_no_drift_batch_records_no_drift_and_creates_no_version(fresh):
    s = fresh
    make_datasets(s, seed=11, write_train=False)
    result = run(s)
    assert result.status == "no_drift" and not result.drift["drift"]
    assert result.drift["mean_psi"] <= s.psi_threshold
    assert [v["version"] for v in _versions(s)] == ["1"]
    assert Registry(s).aliases() == {"production": "1", "staging": "1"}
    report = json.loads((s.data_dir / "drift_report.json").read_text())
    assert report["drift"] is False
    assert (s.data_dir / "drift_flag.txt").read_text().startswith("drift=false")
    # every model input the trigger does not watch, and Production's predicted class, shown as information
    shown = {*(set(s.features) - set(s.drift_features)), "predicted_class"}
    assert set(report["info"]["psi"]) == shown and set(report["psi"]) == set(s.drift_features)
    metrics = Registry(s).client.get_run(result.run_id).data.metrics
    assert {f"info_psi_{name}" for name in shown} <= set(metrics)


def test_drifted_batch_creates_a_version_with_both_holdout_scores(fresh):
    s = fresh
    make_datasets(s, seed=5, drift=0.5, write_train=False)
    result = run(s)
    assert result.drift["drift"] and result.version == "2"
    reg = Registry(s)
    tags = reg.describe("2")["tags"]
    cand, prod = float(tags["holdout_accuracy_candidate"]), float(tags["holdout_accuracy_production"])
    assert tags["compared_with"] == "1" and tags["decision"] == result.status
    p_value = float(tags["holdout_p_value"])
    assert abs((cand - prod) - float(tags["holdout_difference"])) < 1e-5
    if cand > prod and p_value < s.promotion_alpha:
        assert result.status == "promoted"
        assert reg.aliases() == {"production": "2", "staging": "2"}
        assert reg.describe("1")["lifecycle"] == "archived"
        assert reg.describe("2")["lifecycle"] == "production"
    else:
        assert result.status == "staged"
        assert reg.aliases() == {"production": "1", "staging": "2"}
        assert reg.describe("2")["lifecycle"] == "staging"
    assert result.production == reg.aliases()["production"]
    # the run holds the drift report, its picture, the comparison table and the decision
    client = MlflowClient(s.tracking_uri)
    names = {a.path for a in client.list_artifacts(result.run_id)}
    names |= {a.path for a in client.list_artifacts(result.run_id, "drift")}
    assert {"decision.json", "pycaret_compare_results.csv", "drift/drift_report.svg",
            "drift/drift_report.json", "reference"} <= names


def test_ties_keep_production(fresh):
    # an impossible improvement requirement: the candidate stays Staging
    s = fresh.replace(min_improvement=1.0)
    make_datasets(s, seed=6, drift=0.5, write_train=False)
    result = run(s)
    assert result.status == "staged"
    assert Registry(s).aliases() == {"production": "1", "staging": result.version}


def test_unlabelled_drifted_batch_is_refused_and_nothing_changes(fresh):
    s = fresh
    make_datasets(s, seed=7, drift=0.5, write_train=False)
    frame = pd.read_csv(s.current_csv).drop(columns=[s.target])
    frame.to_csv(s.current_csv, index=False)
    result = run(s)
    assert result.status == "refused" and "no 'survived' labels" in result.reason
    assert result.drift["drift"] is True
    assert [v["version"] for v in _versions(s)] == ["1"]
    assert Registry(s).aliases() == {"production": "1", "staging": "1"}


def test_one_run_at_a_time(fresh):
    s = fresh
    with pipeline_lock(s):
        with pytest.raises(BusyError, match="another pipeline run holds"):
            run(s, lock_timeout=0.2)


def test_logged_model_has_explicit_requirements_and_signature(bootstrapped, tmp_path):
    client = MlflowClient(bootstrapped.tracking_uri)
    mv = client.get_model_version(bootstrapped.model_name, "1")
    from mlops_core.mlflow_api import fluent

    with fluent(bootstrapped.tracking_uri) as mlflow:  # models:/ URIs resolve through the process-wide URIs
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{bootstrapped.model_name}/1",
                                                    dst_path=str(tmp_path))
    reqs = (tmp_path / "requirements.txt").read_text() if (tmp_path / "requirements.txt").exists() else \
        open(f"{local}/requirements.txt").read()
    assert "pycaret==3.3.2" in reqs and "pytest" not in reqs
    loaded = Registry(bootstrapped).load_model("1")
    assert loaded.columns == list(bootstrapped.features) and loaded.run_id == mv.run_id
    assert loaded.dtypes["age"] == "double" and loaded.dtypes["sex"] == "string"


def test_steps_one_by_one_refuse_to_decide_when_production_moved_meanwhile(fresh):
    """The Airflow path: stages in separate calls; another trainer's promotion in between is caught."""
    from mlops_core.chain import handoff
    from mlops_core.errors import RegistryError

    make_datasets(fresh, seed=9, drift=0.5, write_train=False)
    out = handoff.start(fresh)
    assert out.status == "drift"
    handoff.train(fresh, out.run_id)
    version = handoff.register(fresh, out.run_id)  # reads this run's stored state, trained model included
    reg = Registry(fresh)
    assert reg.aliases() == {"production": "1", "staging": "1"}  # registered without an alias
    reg.promote(version)  # someone else moves Production before this chain decides
    with pytest.raises(RegistryError, match=f"Production moved from version 1 to {version}"):
        handoff.decide(fresh, out.run_id, version)
    assert reg.describe(version)["lifecycle"] == "production"  # a live version is never tagged failed


def test_bad_setting_is_bad_usage(fresh):
    from click.testing import CliRunner

    from mlops_core.cli import main

    result = CliRunner().invoke(main, ["--home", str(fresh.home), "status"], env={"MLOPS_BINS": "ten"})
    assert result.exit_code == 2 and "MLOPS_BINS: expected int, got 'ten'" in result.output


def test_a_drifted_batch_with_a_single_row_of_a_class_is_refused_and_nothing_changes(fresh):
    """(A batch of one class is already a validation error.) One row of a class cannot be both trained on
    and judged: the run is refused with the counts, instead of training a model that never saw the class."""
    s = fresh
    make_datasets(s, seed=5, drift=0.5, write_train=False)
    frame = pd.read_csv(s.current_csv).assign(survived=1)
    frame.loc[0, "survived"] = 0
    frame.to_csv(s.current_csv, index=False)
    result = run(s)
    assert result.status == "refused" and result.drift["drift"]
    assert "{0: 1, 1: " in result.reason and "at least two classes of 5 rows or more" in result.reason
    assert [v["version"] for v in _versions(s)] == ["1"]
    assert Registry(s).aliases() == {"production": "1", "staging": "1"}


def test_labels_and_proba_score_each_row_once_when_index_labels_repeat(bootstrapped):
    """Rows gathered from several frames repeat index labels; PyCaret re-joins columns on the index, so without
    a fresh index 100 rows came back as thousands of predictions."""
    from mlops_core.chain.scoring import labels_and_proba
    from mlops_core.data import infer_kinds, read_csv

    model = Registry(bootstrapped).load_model("1").model
    frame = read_csv(bootstrapped.current_csv).head(50)
    features = list(bootstrapped.features)
    kinds = infer_kinds(frame, features)
    repeated = pd.concat([frame, frame])
    assert repeated.index.duplicated().sum() == 50
    labels, _ = labels_and_proba(model, repeated, features, kinds)
    once, _ = labels_and_proba(model, frame, features, kinds)
    assert len(labels) == 100 and list(labels) == list(once) * 2


def test_a_candidate_the_holdout_shows_worse_is_archived_and_never_served(fresh):
    """A majority-class candidate against a trained Production: the paired test, the other way, shows it
    worse; it is archived with the evidence, Staging keeps Production, no user is served it."""
    make_datasets(fresh, seed=9, drift=0.5, write_train=False)
    result = run(fresh.replace(models=("dummy",)))
    assert result.status == "archived" and result.version == "2"
    vs = result.evidence["vs_production"]
    assert result.evidence["shown_worse"] and vs["difference"] < 0 and vs["p_worse"] < fresh.promotion_alpha
    assert "shown worse than Production" in result.reason and "never served" in result.reason
    reg = Registry(fresh)
    assert reg.aliases() == {"production": "1", "staging": "1"}
    tags = reg.describe("2")["tags"]
    assert tags["lifecycle"] == "archived" and tags["decision"] == "archived"
    assert float(tags["holdout_p_value_worse"]) < fresh.promotion_alpha


def test_a_feature_in_neither_the_batch_nor_the_reference_is_bad_usage_naming_it(fresh, tmp_path):
    """MLOPS_FEATURES with a typo: exit 2 naming the feature and the columns there are, nothing changed
    (it was a KeyError traceback from the drift step); the same before any Production (train.csv)."""
    from click.testing import CliRunner

    from mlops_core.cli import main

    env = {"MLOPS_FEATURES": "pclass,sex,agee", "MLOPS_MODELS": "lr,dt", "MLOPS_FOLD": "2"}
    make_datasets(fresh, seed=9, drift=0.5, write_train=False)
    result = CliRunner().invoke(main, ["--home", str(fresh.home), "run", "--json"], env=env)
    assert result.exit_code == 2, result.output
    assert "MLOPS_FEATURES names ['agee']" in result.output and "Production v1's reference" in result.output
    assert "'age'" in result.output and "'embarked'" in result.output  # the columns there are
    assert [v["version"] for v in _versions(fresh)] == ["1"]
    assert Registry(fresh).aliases() == {"production": "1", "staging": "1"}

    empty = Settings(home=tmp_path / "empty", **FAST)
    make_datasets(empty)
    result = CliRunner().invoke(main, ["--home", str(empty.home), "run"], env=env)
    assert result.exit_code == 2 and "agee" in result.output and "train.csv" in result.output
    assert Registry(empty).aliases() == {}


def test_a_feature_set_changed_on_purpose_trains_on_the_new_set_and_judges_production_on_its_own(fresh):
    """The export gains a column and loses one: the candidate learns the new set, the drift report marks the
    new feature "no reference", Production v1 is scored with its own columns (the lost one missing) on the
    same holdout rows, and the decision is made as usual."""
    make_datasets(fresh, seed=9, drift=0.5, write_train=False)
    batch = pd.read_csv(fresh.current_csv)
    batch["cabin_known"] = (batch["fare"] > batch["fare"].median()).map({True: "yes", False: "no"})
    batch.drop(columns=["embarked"]).to_csv(fresh.current_csv, index=False)
    features = tuple(c for c in fresh.features if c != "embarked") + ("cabin_known",)
    result = run(fresh.replace(features=features))
    assert result.status in {"promoted", "staged", "archived"}, result.reason
    assert result.drift["no_reference"] == ["cabin_known"] and set(result.drift["psi"]) == set(fresh.drift_features)
    vs = result.evidence["vs_production"]
    assert vs["version"] == "1" and vs["rows"] == result.evidence["rows_scored"] > 0
    reg = Registry(fresh)
    assert reg.load_model(result.version).columns == list(features)
    assert reg.load_model("1").columns == list(fresh.features)
    report = json.loads((fresh.data_dir / "drift_report.json").read_text())
    assert report["no_reference"] == ["cabin_known"]
