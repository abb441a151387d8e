"""Property-based tests of the PSI (hypothesis): the definition's invariants hold for any data."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_core.drift import FeatureProfile, psi

_floats = st.one_of(st.just(math.nan), st.floats(min_value=-1e6, max_value=1e6))
_columns = st.lists(_floats, min_size=1, max_size=200)
_labels = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "é", "1"])), min_size=1, max_size=200)
# a share is a count over rows: 0 or at least 1e-12 (a trillion rows)
_shares = st.lists(st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=1.0)), min_size=1, max_size=20)


@given(_columns, _columns, st.integers(min_value=2, max_value=20))
def test_numeric_psi_is_finite_and_non_negative(ref, cur, bins):
    value = FeatureProfile.fit("x", np.array(ref), kind="numeric", bins=bins).score(np.array(cur))
    assert math.isfinite(value) and value >= 0.0


@given(_columns, st.integers(min_value=2, max_value=20))
def test_numeric_psi_of_identical_data_is_zero(ref, bins):
    assert FeatureProfile.fit("x", np.array(ref), kind="numeric", bins=bins).score(np.array(ref)) == 0.0


@given(_columns, _columns, st.randoms(use_true_random=False))
def test_numeric_psi_is_invariant_to_row_order(ref, cur, rnd):
    profile = FeatureProfile.fit("x", np.array(ref), kind="numeric")
    shuffled = list(cur)
    rnd.shuffle(shuffled)
    assert math.isclose(profile.score(np.array(cur)), profile.score(np.array(shuffled)), rel_tol=1e-12,
                        abs_tol=1e-12)


@given(_labels, _labels)
def test_categorical_psi_is_finite_non_negative_and_zero_on_itself(ref, cur):
    profile = FeatureProfile.fit("s", np.array(ref, dtype=object), kind="categorical")
    value = profile.score(np.array(cur, dtype=object))
    assert math.isfinite(value) and value >= 0.0
    assert profile.score(np.array(ref, dtype=object)) == 0.0


@settings(max_examples=200)
@given(_shares, _shares)
def test_formula_is_symmetric_in_its_arguments_and_finite_with_empty_bins(a, b):
    n = min(len(a), len(b))
    ref, cur = np.array(a[:n]), np.array(b[:n])
    forward, backward = psi(ref, cur), psi(cur, ref)
    # (cur - ref) * ln(cur / ref) is unchanged when the two sides swap
    assert math.isfinite(forward) and math.isclose(forward, backward, rel_tol=1e-9, abs_tol=1e-12)
    assert forward >= 0.0
