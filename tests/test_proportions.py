import math
import statistics
import subprocess
import sys

import pytest

from mlops_core.proportions import two_proportion_test, wilson_interval

_NORMAL = statistics.NormalDist()


def _wilson_by_hand(successes, n, confidence):
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _z_test_by_hand(x1, n1, x2, n2):
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


_WILSON_GRID = [(x, n, c) for n in (1, 2, 5, 10, 37, 100, 1000) for x in sorted({0, 1, n // 3, n // 2, n - 1, n})
                for c in (0.8, 0.9, 0.95, 0.99)]


@pytest.mark.parametrize(("successes", "n", "confidence"), _WILSON_GRID)
def test_wilson_interval_equals_the_score_formula(successes, n, confidence):
    got = wilson_interval(successes, n, confidence=confidence)
    assert got == pytest.approx(_wilson_by_hand(successes, n, confidence), rel=1e-12, abs=1e-12)
    assert 0.0 <= got[0] <= successes / n + 1e-12 and successes / n - 1e-12 <= got[1] <= 1.0
    assert all(type(v) is float for v in got)


def test_wilson_interval_known_values_and_no_observations():
    # 8/10: z = 1.959964, centre = (0.8 + 0.192073) / 1.384146 = 0.716738, half = 0.226578
    assert wilson_interval(8, 10) == pytest.approx((0.490160, 0.943315), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-5)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(3, -1) is None


_Z_GRID = [(x1, n1, x2, n2) for n1 in (1, 3, 10, 57, 200) for n2 in (1, 10, 200)
           for x1 in sorted({0, n1 // 2, n1}) for x2 in sorted({0, n2 // 3, n2})]


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), _Z_GRID)
def test_two_proportion_test_equals_the_pooled_formula(x1, n1, x2, n2):
    z, p_value = two_proportion_test(x1, n1, x2, n2)
    want_z, want_p = _z_test_by_hand(x1, n1, x2, n2)
    assert z == pytest.approx(want_z, rel=1e-12, abs=1e-12)
    assert p_value == pytest.approx(want_p, rel=1e-9, abs=1e-15)
    assert type(z) is float and type(p_value) is float


def test_two_proportion_test_known_values_and_undefined_cases():
    # 45/100 vs 60/100: pooled 0.525, se = sqrt(0.525 * 0.475 * 0.02) = 0.070622, z = 0.15 / se = 2.12398
    assert two_proportion_test(45, 100, 60, 100) == pytest.approx((2.12398, 0.033672), abs=1e-5)
    assert two_proportion_test(60, 100, 45, 100) == pytest.approx((-2.12398, 0.033672), abs=1e-5)  # p2 - p1
    assert two_proportion_test(10, 10, 5, 5) == (0.0, 1.0)  # both all right: no evidence
    assert two_proportion_test(0, 10, 0, 5) == (0.0, 1.0)  # both all wrong
    assert two_proportion_test(1, 0, 1, 1) is None
    assert two_proportion_test(1, 1, 1, 0) is None


def test_statsmodels_is_imported_on_first_use_not_with_the_server_modules():
    code = ("import sys; import mlops_core.proportions, mlops_core.predictions, mlops_core.ab; "
            "print('statsmodels' in sys.modules); mlops_core.proportions.wilson_interval(1, 2); "
            "print('statsmodels' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
