"""The bad-data corpus: malformed batches, each with the rejection it must give (or ``processed``)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from mlops_core.data import make_datasets

COLS = ["pclass", "sex", "age", "fare", "sibsp", "parch", "embarked", "survived"]


def base_frame(settings) -> pd.DataFrame:
    make_datasets(settings, seed=21, write_train=False)
    return pd.read_csv(settings.current_csv)


def _csv(frame: pd.DataFrame, **kw) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, **kw)
    return buf.getvalue().encode()


def corpus(base: pd.DataFrame, *, million_rows: bool = True) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, expected outcome: a message fragment of the rejection, or 'processed');
    ``million_rows=False`` leaves out the 40 MB case (seconds of CPU to write)."""
    good = _csv(base)
    lines = good.decode().splitlines()
    nulls = base.copy()
    nulls[["age", "fare"]] = np.nan
    cases = {
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
        # labels of any kind are taken (tests/test_labels.py); these are label columns no classifier can use
        "target 0/2, no positive class": (_csv(base.assign(survived=base.survived.replace({1: 2}))),
                                          "MLOPS_POSITIVE_LABEL"),
        "target died/lived": (_csv(base.assign(survived=base.survived.map({0: "died", 1: "lived"}))),
                              "'died', 'lived': set MLOPS_POSITIVE_LABEL"),
        "target of ids": (_csv(base.assign(survived=[f"p{i}" for i in range(len(base))])),
                          "more than MLOPS_MAX_CLASSES=50"),
        "target of fractions": (_csv(base.assign(survived=base.fare / 7)), "looks like a number to predict"),
        "target partly missing": (_csv(base.assign(survived=base.survived.where(base.index % 7 > 0))), "processed"),
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
    }
    if million_rows:
        cases["a million rows"] = (_csv(base.sample(n=1_000_000, replace=True, random_state=0)), "processed")
    return cases
