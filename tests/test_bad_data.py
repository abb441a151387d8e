"""A corpus of malformed batches through the chain: each rejected with a clear reason or processed, none crashes.

Prints a summary line ``bad-data corpus: tried N, rejected R, processed P, crashed 0``.
"""

import io

import numpy as np
import pandas as pd
import pytest

from mlops_core.data import make_datasets
from mlops_core.errors import DataValidationError
from mlops_core.pipeline import run
from mlops_core.registry import Registry

COLS = ["pclass", "sex", "age", "fare", "sibsp", "parch", "embarked", "survived"]


def _base(settings) -> pd.DataFrame:
    make_datasets(settings, seed=21, write_train=False)
    return pd.read_csv(settings.current_csv)


def _csv(frame: pd.DataFrame, **kw) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, **kw)
    return buf.getvalue().encode()


def corpus(base: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, expected outcome: a message fragment of the rejection, or 'processed')."""
    good = _csv(base)
    lines = good.decode().splitlines()
    big = base.sample(n=1_000_000, replace=True, random_state=0)
    nulls = base.copy()
    nulls[["age", "fare"]] = np.nan
    return {
        "empty file": (b"", "file is empty"),
        "whitespace only": (b"\n\n  \n", "file is empty"),
        "header only": (lines[0].encode() + b"\n", "0 row(s), expected at least"),
        "binary garbage": (bytes(range(256)) * 8, "binary content"),
        "png image": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64, "binary content"),
        "wrong delimiter": (_csv(base, sep=";"), "missing column(s)"),
        "non-utf8 bytes": (good.replace(b"male", "m\xe2le".encode("latin-1"), 3), "not UTF-8 text: byte 0xe2"),
        "missing columns": (_csv(base.drop(columns=["age", "embarked"])), "missing column(s) ['age', 'embarked']"),
        "duplicated columns": ((lines[0] + ",age\n" + "\n".join(f"{x},1" for x in lines[1:])).encode(),
                               "duplicated column(s) ['age']"),
        "target 0/1/2": (_csv(base.assign(survived=base.survived.replace({1: 2}))), "expected 0/1 in 'survived'"),
        "target yes/no": (_csv(base.assign(survived=base.survived.map({0: "no", 1: "yes"}))),
                          "expected 0/1 in 'survived', got ['no', 'yes']"),
        "target true/false": (_csv(base.assign(survived=base.survived.astype(bool))),
                              "expected 0/1 in 'survived', got ['False', 'True']"),
        "target partly missing": (_csv(base.assign(survived=base.survived.where(base.index % 7 > 0))),
                                  "expected 0/1 in 'survived'"),
        "single class": (_csv(base.assign(survived=1)), "single class"),
        "all-null drift features": (_csv(nulls), "column 'age' has no values"),
        "one row": (_csv(base.head(1)), "1 row(s), expected at least 10"),
        "infinities": (_csv(base.assign(fare=base.fare.where(base.index % 5 > 0, np.inf))), "infinite value(s)"),
        "text in numbers": (_csv(base.assign(age=base.age.astype(object).where(base.index % 3 > 0, "old"))),
                            "column 'age'"),
        "decimal commas": (_csv(base.assign(fare=base.fare.map(lambda v: f"{v:.2f}".replace(".", ","))),
                                quoting=1), "column 'fare'"),
        "truncated mid-row": (good[: len(good) // 2] + b"\n3,male,2", "not a readable CSV"),
        "html page": (b"<html><body><h1>502 Bad Gateway</h1></body></html>\n", "missing column(s)"),
        "json document": (b'{"pclass": 3, "sex": "male"}\n', "missing column(s)"),
        # valid files: processed (no drift: same rows, other shape)
        "extra columns": (_csv(base.assign(name="x", cabin=None)), "processed"),
        "quoted numbers": (_csv(base, quoting=1), "processed"),
        "crlf line endings": (good.replace(b"\n", b"\r\n"), "processed"),
        "utf-8 bom": (b"\xef\xbb\xbf" + good, "processed"),
        "spaces around header": (good.replace(b"pclass,sex", b" pclass , sex", 1), "processed"),
        "columns reordered": (_csv(base[COLS[::-1]]), "processed"),
        "float target 0.0/1.0": (_csv(base.assign(survived=base.survived.astype(float))), "processed"),
        "a million rows": (_csv(big), "processed"),
    }


def test_bad_data_corpus_is_rejected_cleanly_and_never_crashes(fresh, capsys):
    base = _base(fresh)
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
        except DataValidationError as err:
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
