"""The significance tests against hand computations, printed tables and scipy.stats; Holm's
adjustment against a worked example."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lit_cnn.analysis.stats import (
    combined_5x2cv_ftest,
    corrected_resampled_ttest,
    dietterich_5x2cv,
    holm,
    mcnemar_exact,
    paired_ttest,
)

# Two-sided 5% critical values of Student's t, from the printed tables.
T975 = {1: 12.706, 2: 4.303, 5: 2.571}


def p_df2(t):
    """Two-sided p-value of t with 2 degrees of freedom, closed form: 1 - |t|/sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_corrected_by_hand():
    # d = 1, 2, 3 (K = 3, R = 1): mean 2, s^2 = ((-1)^2 + 0 + 1^2)/2 = 1; n_val/n_train = 1/2.
    res = corrected_resampled_ttest([1.0, 2.0, 3.0], n_train=200, n_val=100)
    se = math.sqrt((1 / 3 + 1 / 2) * 1)
    assert res.test == "corrected resampled t-test"
    assert res.mean == pytest.approx(2)
    assert res.se == pytest.approx(se)
    assert res.t == pytest.approx(2 / se)
    assert res.df == 2 and res.n == 3
    assert res.p == pytest.approx(p_df2(2 / se))
    assert res.p == pytest.approx(0.1598, abs=1e-4)
    assert res.ci_low == pytest.approx(2 - T975[2] * se, abs=1e-3)
    assert res.ci_high == pytest.approx(2 + T975[2] * se, abs=1e-3)


def test_corrected_uses_every_difference_of_a_repeated_kfold():
    # R = 2 repetitions of K = 3 folds as a (2, 3) array: J = 6, df = 5.
    d = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    res = corrected_resampled_ttest(d, n_train=2000, n_val=1000)
    s2 = 17.5 / 5  # sum of squared deviations from 3.5, over J - 1
    se = math.sqrt((1 / 6 + 0.5) * s2)
    assert (res.n, res.df) == (6, 5)
    assert res.mean == pytest.approx(3.5)
    assert res.se == pytest.approx(se) == pytest.approx(math.sqrt(7 / 3))
    assert res.ci_high - res.mean == pytest.approx(T975[5] * se, abs=1e-3)


def test_paired_by_hand():
    # a - b = 1, 2, 3: se = sqrt(1/3), t = 2 sqrt(3).
    res = paired_ttest([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert res.test == "paired t-test"
    assert res.t == pytest.approx(2 * math.sqrt(3))
    assert res.p == pytest.approx(p_df2(2 * math.sqrt(3)))
    assert res.p == pytest.approx(0.0742, abs=1e-4)
    assert res.ci_low == pytest.approx(2 - T975[2] / math.sqrt(3), abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_matches_scipy_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.95, 0.01, size=9)
    b = a - rng.normal(0.003, 0.004, size=9)
    ours = paired_ttest(a, b, confidence=0.9)
    ref = st.ttest_rel(a, b)
    assert ours.t == pytest.approx(ref.statistic)
    assert ours.p == pytest.approx(ref.pvalue)
    assert ours.df == ref.df == 8
    ci = ref.confidence_interval(confidence_level=0.9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high))
    assert ours.mean == pytest.approx(np.mean(a - b))


def test_corrected_is_wider_than_naive():
    rng = np.random.default_rng(3)
    d = rng.normal(0.5, 1.0, size=(2, 5))
    naive = paired_ttest(d.ravel(), np.zeros(10))
    corrected = corrected_resampled_ttest(d, n_train=4000, n_val=1000)
    assert corrected.mean == pytest.approx(naive.mean)
    assert corrected.df == naive.df
    assert corrected.ci_low < naive.ci_low and corrected.ci_high > naive.ci_high
    assert abs(corrected.t) < abs(naive.t) and corrected.p > naive.p
    # The width ratio is sqrt((1/J + n_val/n_train) / (1/J)) = sqrt(1 + 10/4).
    ratio = (corrected.ci_high - corrected.ci_low) / (naive.ci_high - naive.ci_low)
    assert ratio == pytest.approx(math.sqrt(1 + 10 / 4))


def test_dietterich_by_hand():
    p = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0], [1.0, 1.0], [5.0, 3.0]])
    # Repetition means 2, 2, 2, 1, 4; s_i^2 = 2, 0, 8, 0, 2; mean of s_i^2 = 12/5.
    res = dietterich_5x2cv(p)
    assert res.test == "5x2cv paired t-test"
    assert res.mean == 1.0  # p_1^(1), the numerator
    assert res.se == pytest.approx(math.sqrt(12 / 5))
    assert res.t == pytest.approx(1 / math.sqrt(2.4))
    assert (res.df, res.n) == (5, 10)
    assert res.ci_high == pytest.approx(1 + T975[5] * math.sqrt(2.4), abs=1e-3)


def test_dietterich_at_the_tabled_critical_value():
    # Each repetition's pair differs by sqrt(2): s_i^2 = 2 * (sqrt(2)/2)^2 = 1, so the
    # denominator is 1 and t = p_1^(1). At t = 2.5706 (df 5) the two-sided p is 5%.
    r2 = math.sqrt(2)
    c = 2.570582
    p = np.array([[c, c + r2], [0, r2], [3, 3 - r2], [-1, -1 + r2], [7, 7 + r2]])
    res = dietterich_5x2cv(p)
    assert res.t == pytest.approx(c)
    assert res.p == pytest.approx(0.05, abs=1e-6)
    assert res.ci_low == pytest.approx(0, abs=1e-5)


def test_no_spread():
    zero = corrected_resampled_ttest(np.zeros(6), n_train=10, n_val=5)
    assert (zero.t, zero.p, zero.ci_low, zero.ci_high) == (0.0, 1.0, 0.0, 0.0)
    const = paired_ttest([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert const.t == math.inf and const.p == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        corrected_resampled_ttest([1.0], n_train=10, n_val=5)
    with pytest.raises(ValueError, match="finite"):
        corrected_resampled_ttest([1.0, np.nan], n_train=10, n_val=5)
    with pytest.raises(ValueError, match="positive"):
        corrected_resampled_ttest([1.0, 2.0], n_train=0, n_val=5)
    with pytest.raises(ValueError, match="length"):
        paired_ttest([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        dietterich_5x2cv(np.zeros((2, 5)))


def test_combined_ftest_by_hand():
    p = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0], [1.0, 1.0], [5.0, 3.0]])
    # Sum of the squared differences 70; the s_i^2 are 2, 0, 8, 0, 2 (sum 12): F = 70/24.
    res = combined_5x2cv_ftest(p)
    assert res.F == pytest.approx(70 / 24)
    assert (res.df1, res.df2) == (10, 5)
    assert res.mean == pytest.approx(2.2)
    assert res.p == pytest.approx(st.f.sf(70 / 24, 10, 5))


def test_combined_ftest_at_the_tabled_critical_value():
    # Pairs (m_i + 1, m_i - 1): s_i^2 = 2, so F = (2 sum m_i^2 + 10) / 20 = 0.5 + sum m_i^2/10.
    # The printed table's 5% point of F(10, 5) is 4.735: sum m_i^2 = 42.35 reaches it.
    m = math.sqrt(42.35)
    p = np.array([[m + 1, m - 1], [1, -1], [1, -1], [1, -1], [1, -1]])
    res = combined_5x2cv_ftest(p)
    assert res.F == pytest.approx(4.735)
    assert res.p == pytest.approx(0.05, abs=1e-4)
    assert combined_5x2cv_ftest(np.zeros((5, 2))).p == 1.0
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        combined_5x2cv_ftest(np.zeros((2, 5)))


def test_mcnemar_exact_by_hand():
    # 6 discordant images, 1 of one kind: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14/64.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 3) == 1.0  # 2 * P(X <= 3) = 84/64, capped at 1
    assert mcnemar_exact(0, 0) == 1.0  # no discordant image: no evidence
    for n01, n10 in [(7, 19), (40, 25), (0, 3)]:
        assert mcnemar_exact(n01, n10) == pytest.approx(st.binomtest(n01, n01 + n10).pvalue)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_holm_worked_example():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (an adjusted value never falls below the one before it).
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.2, 0.6]), [0.4, 0.6])
    np.testing.assert_allclose(holm([0.3]), [0.3])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # 2 x 0.5 caps at 1, and 0.9 follows it
    # A test not made (NaN) is not part of the family.
    out = holm([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and out[[0, 2]].tolist() == pytest.approx([0.02, 0.04])
