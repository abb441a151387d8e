"""Decisions the data supports: ordinary data does not crash the chain, no score on memorised rows,
no promotion on noise, a staged challenger kept unless beaten, the drift baseline follows the regime."""

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlops_core.cli import main
from mlops_core.config import Settings
from mlops_core.data import load_titanic, make_datasets, normalise
from mlops_core.pipeline import run
from mlops_core.registry import Registry


def _decision_json(settings, run_id) -> dict:
    path = MlflowClient(settings.tracking_uri).download_artifacts(run_id, "decision.json", str(settings.home))
    return json.loads(open(path).read())


# -- ordinary data: missing values reach every pipeline in one normalised form --------------------------------

def test_parquet_none_becomes_the_missing_value_imputers_see(tmp_path):
    frame = pd.DataFrame({"sex": ["male", None, "female"], "age": [1.0, None, 3.0]})
    frame.to_parquet(tmp_path / "f.parquet")
    back = pd.read_parquet(tmp_path / "f.parquet")
    assert back["sex"].iloc[1] is None  # what parquet gives back
    out = normalise(back, {"sex": "categorical", "age": "numeric"})
    assert isinstance(out["sex"].iloc[1], float) and np.isnan(out["sex"].iloc[1])
    assert out["age"].dtype == "float64" and back["sex"].iloc[1] is None  # the input is not changed


def test_missing_categoricals_in_the_batch_do_not_crash_the_decision(fresh):
    s = fresh.replace(models=("lr",), psi_threshold=0.0)  # lr crashed on None; drift forced
    make_datasets(s, seed=21, write_train=False)
    batch = pd.read_csv(s.current_csv)
    batch.loc[batch.index[::5], "embarked"] = np.nan
    batch.loc[batch.index[1::7], "sex"] = np.nan
    batch.to_csv(s.current_csv, index=False)
    result = run(s)
    assert result.status in ("promoted", "staged") and result.version == "2"
    assert result.evidence["rows_scored"] > 0
    assert Registry(s).describe("2")["lifecycle"] in ("production", "staging")


# -- models without probabilities are refused before training ---------------------------------------------

@pytest.mark.parametrize("model", ["ridge", "svm"])
def test_models_without_predict_proba_are_refused_with_exit_2(fresh, model):
    result = CliRunner().invoke(main, ["--home", str(fresh.home), "run"], env={"MLOPS_MODELS": f"lr,{model}"})
    assert result.exit_code == 2 and model in result.output and "predict_proba" in result.output
    assert [v["version"] for v in Registry(fresh).versions()] == ["1"]


def test_empty_model_list_means_every_model(tmp_path):
    assert Settings.from_env({"MLOPS_MODELS": ""}, home=tmp_path).models == ()
    assert Settings.from_env({}, home=tmp_path).models == ("lr", "dt", "rf", "lightgbm")
    with pytest.raises(ValueError, match=r"unknown model id\(s\) \['xgb'\]"):
        Settings(home=tmp_path, models=("lr", "xgb"))


def test_negative_min_improvement_and_bad_alpha_are_refused(tmp_path):
    with pytest.raises(ValueError, match="min_improvement must be in"):
        Settings(home=tmp_path, min_improvement=-0.01)
    with pytest.raises(ValueError, match="promotion_alpha must be in"):
        Settings(home=tmp_path, promotion_alpha=0.0)
    assert Settings(home=tmp_path, promotion_alpha=1.0).promotion_alpha == 1.0


# -- the evidence rule ------------------------------------------------------------------------------------

def test_a_batch_of_repeated_known_rows_cannot_win_by_memorising(fresh):
    """200 passengers repeated 10x: the holdout repeats the training rows; they are not scored."""
    s = fresh.replace(models=("dt",), psi_threshold=0.0)
    known = load_titanic()[[*s.features, s.target]].sample(200, random_state=1)
    known.sample(2000, replace=True, random_state=2).to_csv(s.current_csv, index=False)
    result = run(s)
    ev = result.evidence
    assert ev["holdout_rows"] == 600 and ev["rows_dropped_seen"] + ev["rows_scored"] == 600
    assert ev["rows_dropped_seen"] >= 550  # almost every holdout row was memorised by the candidate
    assert result.status == "staged" and Registry(s).aliases()["production"] == "1"


def test_decision_records_difference_interval_and_p_value_everywhere(fresh):
    s = fresh.replace(psi_threshold=0.0)
    make_datasets(s, seed=23, write_train=False)
    out = CliRunner().invoke(main, ["--home", str(s.home), "run", "--json"],
                             env={"MLOPS_MODELS": "lr,dt", "MLOPS_FOLD": "2", "MLOPS_PSI_THRESHOLD": "0"})
    assert out.exit_code == 0, out.output
    answer = json.loads(out.stdout)
    vs = answer["evidence"]["vs_production"]
    assert vs["test"] == "mcnemar_exact" and vs["version"] == "1"
    assert vs["ci_low"] <= vs["difference"] <= vs["ci_high"] and 0 <= vs["p_value"] <= 1
    promoted = vs["difference"] > 0 and vs["p_value"] < 0.05
    assert answer["status"] == ("promoted" if promoted else "staged")
    tags = Registry(s).describe(answer["version"])["tags"]
    assert float(tags["holdout_p_value"]) == pytest.approx(vs["p_value"], rel=1e-3)
    assert tags["holdout_test"] == "mcnemar_exact" and tags["holdout_ci95"].startswith("[")
    decision = _decision_json(s, answer["run_id"])
    assert decision["evidence"]["vs_production"]["p_value"] == vs["p_value"]


def test_a_staged_challenger_is_replaced_only_by_a_candidate_that_beats_it(fresh):
    s = fresh.replace(min_improvement=1.0, psi_threshold=0.0)  # nothing can clear a 100-point improvement
    make_datasets(s, seed=24, write_train=False)
    first = run(s)
    assert first.status == "staged" and Registry(s).aliases() == {"production": "1", "staging": first.version}
    make_datasets(s, seed=25, write_train=False)
    second = run(s)
    assert second.status == "archived" and "does not beat the challenger" in second.reason
    reg = Registry(s)
    assert reg.aliases() == {"production": "1", "staging": first.version}
    assert reg.describe(second.version)["lifecycle"] == "archived"
    assert reg.describe(second.version)["tags"]["compared_with_staging"] == first.version
    assert "vs_staging" in second.evidence and "vs_production" in second.evidence


# -- the decision record is complete before a held signal is delivered -------------------------------------

class _SignalledRegistry(Registry):
    """The real registry; a SIGTERM arrives while the aliases move."""

    def make_challenger(self, version):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().make_challenger(version)

    def promote(self, version):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().promote(version)


def test_sigterm_while_aliases_move_lands_after_the_decision_is_recorded(fresh):
    s = fresh.replace(psi_threshold=0.0)
    make_datasets(s, seed=26, write_train=False)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(SystemExit):
            run(s, registry=_SignalledRegistry(s))
    finally:
        signal.signal(signal.SIGTERM, previous)
    reg = Registry(s)
    assert "2" in reg.aliases().values()  # the decision took effect...
    client = MlflowClient(s.tracking_uri)
    exp = client.get_experiment_by_name(s.experiment)
    chain = client.search_runs([exp.experiment_id], "tags.`mlops.version` = '2'")
    assert len(chain) == 1  # ...and its run says so, completely
    info = chain[0]
    assert info.info.status == "FINISHED" and info.data.tags["mlops.done"] == "true"
    assert info.data.tags["mlops.status"] in ("promoted", "staged")
    assert run(s).status == "skipped"  # after a restart the same bytes are not judged again


# -- idempotence keyed on content and the Production version; rollback archives the challenger ------------

def test_same_bytes_are_judged_again_against_a_new_production_but_not_twice(fresh):
    s = fresh.replace(min_improvement=1.0)
    batch_a = s.current_csv.read_bytes()  # processed against v1 when the home was bootstrapped
    assert run(s).status == "skipped"
    make_datasets(s, seed=27, drift=0.5, write_train=False)
    staged = run(s)
    assert staged.status == "staged"
    reg = Registry(s)
    reg.promote(staged.version)  # a new Production
    s.current_csv.write_bytes(batch_a)
    again = run(s)
    assert again.status != "skipped" and again.drift is not None  # judged again, against version 2
    assert run(s).status == "skipped"  # judged against this Production now
    reg.rollback()
    assert run(s).status == "skipped"  # and already judged against version 1


def test_rollback_archives_the_challenger_it_unaliases(fresh):
    s = fresh.replace(min_improvement=1.0, psi_threshold=0.0)
    make_datasets(s, seed=28, write_train=False)
    first = run(s)  # v2 staged
    reg = Registry(s)
    reg.promote(first.version)  # v2 Production, v1 archived
    make_datasets(s, seed=29, resample=True, write_train=False)  # other rows than v2 was fitted on
    second = run(s)  # v3 staged beside Production v2
    assert second.status == "staged" and reg.aliases() == {"production": first.version, "staging": second.version}
    reg.rollback()
    assert reg.aliases() == {"production": "1", "staging": "1"}
    assert reg.describe(second.version)["lifecycle"] == "archived"
    assert reg.describe(first.version)["lifecycle"] == "archived"


# -- the drift baseline follows the regime --------------------------------------------------------------

def test_after_a_new_regime_is_promoted_its_later_batches_retrain_at_most_once(fresh):
    s = fresh
    make_datasets(s, seed=31, drift=0.5, concept=0.5, resample=True, write_train=False)
    first = run(s)
    assert first.status == "promoted", first.reason  # the label rule changed: the evidence is overwhelming
    assert first.evidence["vs_production"]["p_value"] < 1e-3
    trainings = 0
    for seed in (32, 33, 34):
        make_datasets(s, seed=seed, drift=0.5, concept=0.5, resample=True, write_train=False)
        result = run(s)
        trainings += result.status not in ("no_drift", "skipped")
    assert trainings <= 1


def test_auc_promotion_metric_decides_with_a_paired_bootstrap(fresh):
    s = fresh.replace(promotion_metric="auc", psi_threshold=0.0)
    make_datasets(s, seed=35, write_train=False)
    result = run(s)
    vs = result.evidence["vs_production"]
    assert vs["metric"] == "auc" and vs["test"] == "paired_bootstrap" and 0.5 < vs["baseline"] <= 1
    assert vs["ci_low"] <= vs["difference"] <= vs["ci_high"]
    assert result.status == ("promoted" if vs["difference"] > 0 and vs["p_value"] < 0.05 else "staged")
