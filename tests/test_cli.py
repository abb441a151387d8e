"""The ``mlops`` command: exit codes, --json output, bad input leaving the registry untouched."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlops_core.cli import main
from mlops_core.data import make_datasets
from mlops_core.registry import Registry


def _cli(settings, *args):
    result = CliRunner().invoke(main, ["--home", str(settings.home), *args],
                                env={"MLOPS_MODELS": "lr,dt", "MLOPS_FOLD": "2"}, catch_exceptions=False)
    return result


def _registry_state(settings):
    reg = Registry(settings)
    return reg.aliases(), reg.versions(), reg._history()


GOOD_HEADER = "pclass,sex,age,fare,sibsp,parch,embarked,survived"
BAD_FILES = {
    "missing_columns": ("pclass,sex,survived\n" + "1,male,0\n" * 20, ["missing column(s) ['age', 'fare', 'sibsp', "
                                                                       "'parch', 'embarked']"]),
    "non_numeric": (GOOD_HEADER + "\n" + "1,male,old,cheap,0,0,S,1\n3,female,2,3,0,0,S,0\n" * 10,
                    ["column 'age': 10 non-numeric value(s)", "column 'fare': 10 non-numeric value(s)"]),
    "empty": ("", ["file is empty"]),
    "header_only": (GOOD_HEADER + "\n", ["0 row(s), expected at least 10"]),
    "wrong_target": (GOOD_HEADER + "\n" + "1,male,22,7.25,0,0,S,yes\n3,female,2,3,0,0,S,yes\n" * 10,
                     ["target 'survived' has a single class ('yes'); two are needed to train"]),
    "not_csv": ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ["binary content"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_csv_exits_1_naming_each_problem_and_changes_nothing(fresh, name):
    content, problems = BAD_FILES[name]
    before = _registry_state(fresh)
    fresh.current_csv.write_bytes(content.encode("latin-1"))
    result = _cli(fresh, "run", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    for problem in problems:
        assert problem in result.stderr
    assert str(fresh.current_csv) in result.stderr
    assert _registry_state(fresh) == before


def test_status_json_agrees_with_registry(fresh):
    out = json.loads(_cli(fresh, "status", "--json").stdout)
    reg = Registry(fresh)
    assert out["model"] == fresh.model_name
    assert out["production"]["version"] == reg.aliases()["production"] == "1"
    assert out["staging"]["run_id"] == reg.describe("1")["run_id"]


def test_drift_json_has_the_documented_keys(fresh):
    make_datasets(fresh, seed=4, drift=0.5, write_train=False)
    out = json.loads(_cli(fresh, "drift", "--json").stdout)
    assert set(out) == {"psi", "mean_psi", "threshold", "drift", "info"}
    assert set(out["psi"]) == {"age", "fare"} and out["drift"] is True
    # the other inputs and Production's predicted class, as information (the drift moved no other column)
    assert set(out["info"]["psi"]) == {"pclass", "sex", "sibsp", "parch", "embarked", "predicted_class"}
    assert max(v for k, v in out["info"]["psi"].items() if k != "predicted_class") < 0.1
    cats = json.loads(_cli(fresh, "drift", "--features", "sex,embarked", "--json").stdout)
    assert set(cats["psi"]) == {"sex", "embarked"} and cats["drift"] is False
    ref = json.loads(_cli(fresh, "drift", "--reference", str(fresh.current_csv), "--json").stdout)
    assert ref["mean_psi"] == 0.0


def test_run_json_then_promote_sync_rollback(fresh):
    make_datasets(fresh, seed=8, drift=0.5, write_train=False)
    out = json.loads(_cli(fresh, "run", "--json").stdout)
    assert set(out) >= {"status", "drift", "version", "production", "staging", "reason"}
    assert out["status"] in {"promoted", "staged"} and out["version"] == "2"
    if out["status"] == "staged":
        assert json.loads(_cli(fresh, "promote", "2", "--json").stdout)["production"] == "2"
    assert Registry(fresh).aliases() == {"production": "2", "staging": "2"}
    back = json.loads(_cli(fresh, "rollback", "--json").stdout)
    assert back == {"production": "1", "staging": "1", "archived": "2"}
    assert Registry(fresh).describe("2")["lifecycle"] == "archived"
    assert _cli(fresh, "rollback").exit_code == 1  # nothing older than version 1
    Registry(fresh).set_alias("staging", "2")
    assert json.loads(_cli(fresh, "sync", "--json").stdout) == {"production": "1", "staging": "1"}


def test_promote_unknown_version_fails_cleanly(fresh):
    before = _registry_state(fresh)
    result = _cli(fresh, "promote", "99")
    assert result.exit_code == 1 and "version 99" in result.stderr
    assert _registry_state(fresh) == before


def test_console_entry_point_exit_codes(tmp_path):
    cmd = [sys.executable, "-m", "mlops_core.cli", "--home", str(tmp_path)]
    usage = subprocess.run([*cmd, "run", "--no-such-flag"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "No such option" in usage.stderr
    missing = subprocess.run([*cmd, "run"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "current.csv: cannot read file" in missing.stderr
    made = subprocess.run([*cmd, "make-data", "--json"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and json.loads(made.stdout)["current"] == str(tmp_path / "data" / "current.csv")
