"""Scale on one machine: select on a stratified sample and fit on every row, bounded artifacts, progress, and big
bad input refused before it costs anything. (The figures are bench/scale's, run by hand.)"""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import pandas as pd
import pytest

from mlops_core.config import Settings
from mlops_core.data import RowSet, check_fits, load_titanic, validate_frame
from mlops_core.errors import DataValidationError
from mlops_core.progress import Bar, LogLines
from mlops_core.training import stratified_sample, train


def _labelled(n: int, seed: int = 0) -> pd.DataFrame:
    settings = Settings(home="/tmp/unused")
    table = load_titanic()[[*settings.features, settings.target]].dropna(subset=["survived"])
    return validate_frame(table.sample(n, replace=True, random_state=seed).reset_index(drop=True), settings)


def test_the_sample_is_stratified_seeded_and_keeps_rare_classes():
    frame = pd.DataFrame({"x": np.arange(10_000), "y": ["a"] * 7_000 + ["b"] * 2_990 + ["rare"] * 10})
    sample = stratified_sample(frame, "y", 1_000, seed=1, at_least=10)
    counts = sample.y.value_counts()
    assert counts["a"] == 700 and counts["b"] == 299 and counts["rare"] == 10  # shares kept, the rare class whole
    assert sample.x.is_monotonic_increasing  # the rows keep their order
    assert sample.x.tolist() == stratified_sample(frame, "y", 1_000, seed=1, at_least=10).x.tolist()
    assert sample.x.tolist() != stratified_sample(frame, "y", 1_000, seed=2, at_least=10).x.tolist()
    assert stratified_sample(frame, "y", 20_000, seed=1) is frame and stratified_sample(frame, "y", 0, seed=1) is frame


def test_the_comparison_selects_on_the_sample_and_the_winner_is_fitted_on_every_row(tmp_path):
    settings = Settings(home=tmp_path, models=("dt",), fold=2, select_rows=200)
    frame = _labelled(600)
    given = frame.copy()
    shown = io.StringIO()
    result = train(frame, settings, kinds={"age": "numeric", "fare": "numeric"}, progress=Bar(shown))
    assert (result.n_select, result.n_train) == (200, 600)
    pd.testing.assert_frame_equal(frame, given)  # the final fit takes the target out of its own copy, not this
    tree = result.model.steps[-1][1].tree_
    assert tree.n_node_samples[0] == 600  # the root of the final tree saw every row
    text = shown.getvalue()
    assert "1 models x 2 folds on 200 rows, then the final fit" in text and "3/3" in text
    assert "fitting dt on 600 rows" in text


def test_a_long_step_logs_a_progress_line_and_a_short_one_does_not(caplog):
    progress = LogLines(logging.getLogger("mlops_core.pipeline"), every=0.2)
    caplog.set_level(logging.INFO, logger="mlops_core.pipeline")
    progress.step("validate")
    assert progress.line() is None  # younger than 0.2 s
    progress.step("train")
    progress.plan(5, "2 models x 2 folds")
    progress.advance(2, "cross-validating dt")
    time.sleep(0.7)
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
    assert lines and all("step=train" in line for line in lines)
    assert "2/5 (cross-validating dt)" in lines[0]


def test_training_rows_are_kept_as_hashes_that_find_the_same_rows_however_they_were_read(tmp_path):
    settings = Settings(home="/tmp/unused")
    frame = _labelled(300)
    kinds = {"age": "numeric", "fare": "numeric", "pclass": "numeric", "sibsp": "numeric", "parch": "numeric"}
    columns = [*settings.features, settings.target]
    rows = RowSet.from_bytes(RowSet.of(frame, columns, kinds, settings.target).to_bytes())
    assert rows.hashes.nbytes <= 8 * len(frame) and rows.columns == tuple(columns)
    again = pd.read_csv(io.StringIO(frame.to_csv(index=False)))  # through a CSV: ints as ints, labels re-read
    assert rows.contains(again, kinds, settings.target).all()
    other = again.assign(survived=1 - again.survived)  # the same features with the other label: seen only
    truth = other.merge(again.drop_duplicates(), how="left", indicator=True)["_merge"] == "both"  # when it was
    assert truth.sum() < len(other) / 10
    assert (rows.contains(other, kinds, settings.target) == truth.to_numpy()).all()
    assert not rows.contains(again.drop(columns=["fare"]), kinds, settings.target).any()


def test_a_batch_the_machine_cannot_hold_is_refused_before_it_is_read(tmp_path):
    with pytest.raises(DataValidationError) as info:
        check_fits(tmp_path / "huge.csv", 10 * 2 ** 30, available=8 * 2 ** 30)
    message = str(info.value)
    assert "the batch is 10.0 GB" in message and "8.0 GB is available" in message and "needs about" in message
    check_fits(tmp_path / "small.csv", 2 ** 20, available=8 * 2 ** 30)  # fits: no error


def test_one_bad_cell_in_many_rows_is_named_by_its_row_and_column():
    settings = Settings(home="/tmp/unused")
    frame = _labelled(200_000).astype({"age": object})
    frame.loc[123_456, "age"] = "forty"
    with pytest.raises(DataValidationError) as info:
        validate_frame(frame, settings, kinds={"age": "numeric"})
    assert "column 'age': 1 non-numeric value(s) such as ['forty'], the first at row 123457 (line 123458)" \
        in str(info.value)


def test_a_batch_labelled_throughout_is_learned_from_without_a_copy_and_unlabelled_rows_are_counted_out():
    from mlops_core.chain.detect import _learnable

    batch = _labelled(300)
    rows, note = _learnable(batch, "survived")
    assert rows is batch and note == ""  # at 1M rows a copy was a tenth of the run's peak memory
    partly = batch.assign(survived=batch["survived"].where(batch.index % 10 != 0))
    rows, note = _learnable(partly, "survived")
    assert len(rows) == 270 and rows["survived"].notna().all() and note.startswith("30 row(s) without")
