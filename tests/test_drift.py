"""PSI against hand-computed values (the README's "PSI, exactly")."""

import json
import math
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest

from mlops_core.drift import EMPTY_SHARE, FeatureProfile, ReferenceProfile, psi


def _psi(pairs):
    return sum((c - r) * math.log(c / r) for r, c in pairs)


def test_psi_formula_and_empty_bin():
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    # an empty current bin counts as 1e-4
    expected = (EMPTY_SHARE - 0.5) * math.log(EMPTY_SHARE / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.0, 1.0])) == pytest.approx(expected)


def test_numeric_edges_ties_right_closed_and_missing_bin():
    # reference 1..10 with ties and two missing values, 4 bins
    ref = np.array([1, 2, 2, 2, 3, 4, 5, 6, 7, 8, np.nan, np.nan], dtype=float)
    p = FeatureProfile.fit("x", ref, kind="numeric", bins=4)
    # numpy quantiles of the 10 non-missing values at .25 .5 .75
    assert p.edges == pytest.approx((2.0, 3.5, 5.75))
    # bins: (-inf,2] (2,3.5] (3.5,5.75] (5.75,inf) missing; 2 equals an edge -> lower bin
    assert p.shares == pytest.approx((4 / 12, 1 / 12, 2 / 12, 3 / 12, 2 / 12))
    cur = np.array([2, 2, 2, 2, 2, 9, 9, 9, np.nan, 3.5], dtype=float)
    counts = [5, 1, 0, 3, 1]  # 3.5 sits on an edge: (2, 3.5]
    cur_shares = [c / 10 for c in counts]
    expected = _psi([(r, c if c else EMPTY_SHARE) for r, c in zip(p.shares, cur_shares)])
    assert p.score(cur) == pytest.approx(expected)


def test_numeric_duplicate_edges_are_dropped():
    ref = np.array([0.0] * 8 + [1.0, 2.0])
    p = FeatureProfile.fit("x", ref, kind="numeric", bins=10)
    assert list(p.edges) == sorted(set(p.edges))
    assert len(p.shares) == len(p.edges) + 2
    assert sum(p.shares) == pytest.approx(1.0)


def test_numeric_matches_pandas_cut_on_random_data():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=2000), rng.normal(0.3, 1.2, size=1500)
    p = FeatureProfile.fit("x", ref, kind="numeric", bins=10)
    bins = [-np.inf, *p.edges, np.inf]
    r = pd.Series(pd.cut(ref, bins)).value_counts(sort=False).to_numpy() / len(ref)
    c = pd.Series(pd.cut(cur, bins)).value_counts(sort=False).to_numpy() / len(cur)
    expected = _psi([(a or EMPTY_SHARE, b or EMPTY_SHARE) for a, b in zip([*r, 0], [*c, 0])])
    assert p.score(cur) == pytest.approx(expected)


def test_categorical_unseen_category_and_missing():
    ref = ["a", "a", "b", None]
    cur = ["a", "c", "c", "b", None, None]
    p = FeatureProfile.fit("s", ref, kind="categorical")
    labels, r, c = p.bin_shares(cur)
    assert labels == ["<missing>", "a", "b", "c"]
    assert list(r) == pytest.approx([0.25, 0.5, 0.25, 0.0])
    assert list(c) == pytest.approx([2 / 6, 1 / 6, 1 / 6, 2 / 6])
    expected = _psi([(0.25, 2 / 6), (0.5, 1 / 6), (0.25, 1 / 6), (EMPTY_SHARE, 2 / 6)])
    assert p.score(cur) == pytest.approx(expected)


def test_identical_data_scores_zero_and_shuffling_does_not_matter():
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=5000)
    p = FeatureProfile.fit("x", x, kind="numeric")
    assert p.score(x) == pytest.approx(0.0, abs=1e-12)
    assert p.score(rng.permutation(x * 1.5)) == pytest.approx(p.score(x * 1.5))


def test_report_verdict_is_strictly_above_threshold_and_round_trips(tmp_path):
    frame = pd.DataFrame({"age": np.arange(100.0), "sex": ["m", "f"] * 50})
    profile = ReferenceProfile.fit(frame, bins=5)
    shifted = frame.assign(age=frame.age + 30)
    report = profile.report(shifted, ["age"], threshold=0.2)
    assert report.drift and report.mean_psi == pytest.approx(report.psi["age"])
    same = profile.report(frame, ["age", "sex"], threshold=0.0)
    assert same.mean_psi == pytest.approx(0.0) and not same.drift  # 0.0 is not above 0.0
    restored = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored.report(shifted, ["age"], threshold=0.2).psi == pytest.approx(report.psi)
    paths = report.save(tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["drift"] is True and set(saved) >= {"psi", "mean_psi", "threshold", "drift"}
    assert paths["flag"].read_text().startswith("drift=true")
    # the picture: an SVG document, one panel a feature (the trigger's title in bold), two bars a bin
    svg = ElementTree.fromstring(paths["svg"].read_text())
    ns = "{http://www.w3.org/2000/svg}"
    texts = {t.text: t.attrib for t in svg.iter(f"{ns}text")}
    assert texts[f"age: PSI {report.psi['age']:.3f} (trigger)"].get("font-weight") == "bold"
    assert "font-weight" not in texts[f"sex: PSI {report.info['sex']:.3f} (information)"]
    assert "mean PSI of the trigger features" in svg.find(f"{ns}text").text
    bars = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == 2 * sum(len(d["bins"]) for d in report.details.values())
    heights = {r.find(f"{ns}title").text: float(r.get("height")) for r in bars}
    assert heights[f"reference {report.details['age']['bins'][0]}: {report.details['age']['reference'][0]:.3f}"] > 0


def test_a_feature_new_to_the_reference_is_marked_no_reference_not_scored():
    profile = ReferenceProfile.fit(pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0]}))
    batch = pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0], "fare": [2.0, 3.0, 4.0, 5.0], "deck": ["a", "b", "a", "b"]})
    report = profile.report(batch, ["age", "fare"], threshold=0.2, new=["deck"])
    assert report.no_reference == ["fare", "deck"] and set(report.psi) == {"age"}
    assert report.mean_psi == report.psi["age"] and not report.drift
    assert report.summary()["no_reference"] == ["fare", "deck"]
    # no drift feature has a reference: what the trigger watches changed, a model must learn it
    assert profile.report(batch, ["fare"], threshold=0.2).drift
    with pytest.raises(ValueError, match=r"batch has no column\(s\) \['cabin'\]"):
        profile.report(batch, ["cabin"], threshold=0.2)


def test_report_shows_every_other_feature_and_the_predicted_class_as_information_only(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.normal(30, 5, 400), "fare": rng.normal(20, 3, 400),
                          "sex": rng.choice(["m", "f"], 400)})
    predicted = (frame["age"] > 30).astype(int)
    profile = ReferenceProfile.fit(frame, bins=5).with_output("predicted_class", predicted)
    restored = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    batch = frame.assign(sex=["f"] * 400)  # only an unwatched feature and the predictions move
    report = restored.report(batch, ["age"], threshold=0.2, outputs={"predicted_class": np.ones(400, int)})
    assert report.psi == {"age": pytest.approx(0.0)} and not report.drift  # the trigger is unchanged
    assert set(report.info) == {"fare", "sex", "predicted_class"}
    share_f = float((frame["sex"] == "f").mean())
    assert report.info["sex"] == pytest.approx(_psi([(share_f, 1.0), (1 - share_f, EMPTY_SHARE)]))
    share_1 = float(predicted.mean())
    assert report.info["predicted_class"] == pytest.approx(_psi([(1 - share_1, EMPTY_SHARE), (share_1, 1.0)]))
    saved = json.loads(report.save(tmp_path)["json"].read_text())
    assert saved["info"]["psi"]["sex"] == pytest.approx(report.info["sex"], abs=1e-6)
    assert "information only" in saved["info"]["note"] and "sex" not in saved["psi"]
    assert set(saved["details"]) == {"age", "fare", "sex", "predicted_class"}
