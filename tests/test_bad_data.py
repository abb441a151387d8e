"""A corpus of malformed batches through the chain: each rejected with a clear reason or processed, none crashes.

Prints a summary line ``bad-data corpus: tried N, rejected R, processed P, crashed 0``.
"""

import pytest
from _corpus import base_frame, corpus

from mlops_core.errors import DataValidationError, SettingsError
from mlops_core.pipeline import run
from mlops_core.registry import Registry


def test_bad_data_corpus_is_rejected_cleanly_and_never_crashes(fresh, capsys):
    base = base_frame(fresh)
    reg = Registry(fresh)
    cases = corpus(base)
    assert len(cases) >= 25
    counts = {"tried": 0, "rejected": 0, "processed": 0, "crashed": 0}
    failures = []
    for name, (content, expected) in cases.items():
        before = (reg.aliases(), reg.versions())
        fresh.current_csv.write_bytes(content)
        counts["tried"] += 1
        try:
            result = run(fresh, force=True)
        except (DataValidationError, SettingsError) as err:  # the batch, or settings that do not fit it (exit 2)
            counts["rejected"] += 1
            if expected == "processed" or expected not in str(err):
                failures.append(f"{name}: rejected with {err!s:.300}")
            if (reg.aliases(), reg.versions()) != before:
                failures.append(f"{name}: registry changed by a rejected file")
            continue
        except Exception as err:  # noqa: BLE001 - counting crashes is the point
            counts["crashed"] += 1
            failures.append(f"{name}: crashed with {type(err).__name__}: {err!s:.300}")
            continue
        counts["processed"] += 1
        if expected != "processed":
            failures.append(f"{name}: processed ({result.status}) but expected rejection '{expected}'")
        elif result.status not in {"no_drift", "promoted", "staged", "refused"}:
            failures.append(f"{name}: unexpected status {result.status}")
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    with capsys.disabled():
        print(f"\nbad-data corpus: {summary}")
    assert counts["crashed"] == 0 and not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", ["disappears", "directory"])
def test_missing_or_unreadable_batch_is_a_clear_error(fresh, kind):
    fresh.current_csv.unlink()
    if kind == "directory":
        fresh.current_csv.mkdir()
    with pytest.raises(DataValidationError, match="cannot read file"):
        run(fresh, force=True)
