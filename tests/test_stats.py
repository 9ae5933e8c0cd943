import math

import numpy as np
import pytest

from medgan_utils.stats import mean_ci, paired_ci, t_quantile


def test_t_quantiles_match_the_tables():
    # Two-sided 95 %: 12.706 (1 df), 2.776 (4 df), 2.262 (9 df); tends to 1.96.
    assert t_quantile(2) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(5) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(10) == pytest.approx(2.262, abs=1e-3)
    assert t_quantile(100_000) == pytest.approx(1.960, abs=1e-3)
    assert math.isnan(t_quantile(1))


def test_mean_ci_is_t_based_and_wider_than_normal_for_five_seeds():
    x = [0.70, 0.74, 0.71, 0.78, 0.72]
    ci = mean_ci(x)
    normal = 1.96 * np.std(x, ddof=1) / math.sqrt(5)
    assert ci.mean == pytest.approx(np.mean(x))
    assert ci.half / normal == pytest.approx(2.776 / 1.96, rel=1e-3)  # ~42 % wider
    assert ci.lo < ci.mean < ci.hi and ci.excludes_zero()


def test_one_value_has_no_interval_and_bad_input_is_refused():
    assert math.isnan(mean_ci([0.5]).half) and not mean_ci([0.5]).excludes_zero()
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ci([1, 2], [1])


def test_paired_ci_pairs_by_seed():
    # A constant gain over wildly different seeds is certain when paired, uncertain when not.
    real = [0.60, 0.80, 0.70, 0.90]
    aug = [r + 0.02 for r in real]
    gain = paired_ci(aug, real)
    assert gain.mean == pytest.approx(0.02) and gain.half == pytest.approx(0, abs=1e-12)
    assert mean_ci(aug).half > 0.1
