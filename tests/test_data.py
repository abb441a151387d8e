import numpy as np
import pandas as pd
import pytest

from mlops_core.data import load_batch, load_titanic, make_datasets, read_csv, validate_frame
from mlops_core.errors import DataValidationError


def test_load_titanic_is_the_bundled_1309_row_table():
    t = load_titanic()
    assert len(t) == 1309
    assert {"pclass", "survived", "sex", "age", "fare", "sibsp", "parch", "embarked"} <= set(t.columns)
    assert t["age"].isna().sum() == 263  # '?' is read as missing
    assert set(t["survived"].unique()) == {0, 1}


def test_make_datasets_writes_both_files_under_home(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, current = make_datasets(settings)
    assert train == settings.train_csv and current == settings.current_csv
    tr, cur = pd.read_csv(train), pd.read_csv(current)
    assert len(tr) == 785 and len(cur) == 1309 - 785
    assert list(tr.columns) == [*settings.features, settings.target]
    assert not list(tmp_path.glob("*.csv"))  # nothing lands in the working directory


def test_drift_option_shifts_only_the_drift_features(settings):
    make_datasets(settings, seed=3)
    plain = pd.read_csv(settings.current_csv)
    make_datasets(settings, seed=3, drift=1.0)
    shifted = pd.read_csv(settings.current_csv)
    assert shifted["age"].mean() > plain["age"].mean() + 5
    assert shifted["fare"].mean() > plain["fare"].mean() * 1.5
    pd.testing.assert_series_equal(plain["sex"], shifted["sex"])
    assert plain["age"].isna().sum() == shifted["age"].isna().sum()


def test_resampled_batches_of_one_regime_get_the_same_shift(settings):
    """The shift is measured on the batch population, not on each draw: a draw that happens to hold
    a few very high fares must not be pushed further than another draw of the same regime."""

    shifts = []
    for seed in range(6):
        make_datasets(settings, seed=seed, resample=True, write_train=False)
        plain = pd.read_csv(settings.current_csv)
        make_datasets(settings, seed=seed, resample=True, drift=0.5, write_train=False)
        drifted = pd.read_csv(settings.current_csv)
        shifts.append(float((drifted["fare"] - plain["fare"] * 1.5).median()))
    assert max(shifts) - min(shifts) < 0.1 * abs(np.mean(shifts))


def test_seed_changes_the_batch_but_not_train(settings):
    make_datasets(settings, seed=1)
    train1, cur1 = settings.train_csv.read_bytes(), settings.current_csv.read_bytes()
    make_datasets(settings, seed=2)
    assert settings.train_csv.read_bytes() == train1
    assert settings.current_csv.read_bytes() != cur1


def _write(path, text):
    path.write_text(text)
    return path


def test_validation_names_every_problem_in_one_error(settings, tmp_path):
    rows = ["pclass,sex,age,fare,sibsp,survived"] + [f"1,male,abc,{i},0,2" for i in range(12)]
    bad = _write(tmp_path / "bad.csv", "\n".join(rows))
    with pytest.raises(DataValidationError) as info:
        load_batch(bad, settings, kinds={"age": "numeric", "fare": "numeric", "pclass": "numeric"},
                   require_target=True)
    msg = str(info.value)
    assert "missing column(s) ['parch', 'embarked']" in msg
    assert "column 'age': 12 non-numeric value(s)" in msg
    assert "target 'survived' has a single class (2)" in msg
    assert str(bad) in msg and len(info.value.problems) == 3


@pytest.mark.parametrize("content, expected", [
    ("", "file is empty"),
    ("pclass,sex,age,fare,sibsp,parch,embarked,survived\n", "0 row(s), expected at least 10"),
    ("\x00\x01\x02garbage\x00", "binary content"),
    ("age,age,fare\n1,2,3\n", "duplicated column(s) ['age']"),
])
def test_unreadable_files_get_one_clear_reason(settings, tmp_path, content, expected):
    path = _write(tmp_path / "x.csv", content)
    with pytest.raises(DataValidationError, match=expected.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_batch(path, settings, require_target=True)


def test_missing_file_is_a_validation_error(settings, tmp_path):
    with pytest.raises(DataValidationError, match="cannot read file"):
        read_csv(tmp_path / "nope.csv")


def test_infinities_and_single_class_are_rejected(settings):
    frame = load_titanic()[[*settings.features, settings.target]].head(30).copy()
    frame.loc[0, "fare"] = np.inf
    frame["survived"] = 1
    with pytest.raises(DataValidationError) as info:
        validate_frame(frame, settings, kinds={"fare": "numeric"})
    assert "column 'fare': 1 infinite value(s)" in str(info.value)
    assert "single class" in str(info.value)


def test_valid_batch_is_cleaned_to_floats_and_unlabelled_is_allowed(settings):
    frame = load_titanic()[list(settings.features)].head(20)
    out = validate_frame(frame, settings, kinds={"age": "numeric", "pclass": "numeric"}, require_target=False)
    assert out["age"].dtype == float and out["pclass"].dtype == float
    assert settings.target not in out.columns
    with pytest.raises(DataValidationError, match="missing target column 'survived'"):
        validate_frame(frame, settings, require_target=True)
