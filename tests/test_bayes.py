"""The Bayesian correlated t-test against baycomp (the authors' package), and its verdicts."""

import math

import baycomp
import numpy as np
import pytest
from baycomp.single import CorrelatedTTest
from scipy import stats as st

from lit_cnn.analysis.bayes import (
    BayesResult,
    bayes_verdict,
    bayesian_correlated_ttest,
    format_prob,
)
from lit_cnn.analysis.figures import posterior_figure

# Validation-fold accuracies (%) of two models, K = 10 folds, one repetition.
A10 = np.array([91.2, 90.5, 92.0, 89.8, 91.5, 90.9, 91.1, 90.2, 92.3, 90.7])
B10 = np.array([91.9, 90.4, 92.8, 90.9, 91.6, 91.8, 91.0, 91.4, 92.9, 91.5])


def sizes(k, n=1000):
    """Equal folds of n images: n_train and n_val, so n_val/n_train = 1/(k-1) as baycomp has."""
    return n - n / k, n / k


def against_baycomp(a, b, rope, runs, k):
    ours = bayesian_correlated_ttest(b - a, *sizes(k), rope=rope)
    p_left, p_rope, p_right = baycomp.two_on_single(a, b, rope=rope, runs=runs)
    # baycomp's left is "the first classifier (a) is better", its right the second.
    assert ours.p_a_better == pytest.approx(p_left, abs=1e-6)
    assert ours.p_equivalent == pytest.approx(p_rope, abs=1e-6)
    assert ours.p_b_better == pytest.approx(p_right, abs=1e-6)
    mean, var, df = CorrelatedTTest.compute_statistics(a, b, runs=runs)
    assert ours.mean == pytest.approx(mean, abs=1e-9)
    assert ours.scale == pytest.approx(math.sqrt(var), abs=1e-9)
    assert ours.df == df
    return ours


@pytest.mark.parametrize("rope", [0.1, 0.5, 1.0, 2.0])
def test_one_repetition_matches_baycomp(rope):
    res = against_baycomp(A10, B10, rope, runs=1, k=10)
    assert res.n == 10 and res.rope == rope
    assert res.p_a_better + res.p_equivalent + res.p_b_better == pytest.approx(1)


@pytest.mark.parametrize("runs, k, seed", [(2, 5, 0), (3, 5, 1), (10, 10, 2), (5, 2, 3)])
def test_repeated_cross_validation_matches_baycomp_runs(runs, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(90, 1.0, size=runs * k)
    b = a + rng.normal(0.6, 0.8, size=runs * k)
    res = against_baycomp(a, b, 1.0, runs=runs, k=k)
    assert res.df == runs * k - 1
    # Any shape is flattened: the (R, K) array of a repeated K-fold gives the same result.
    shaped = bayesian_correlated_ttest((b - a).reshape(runs, k), *sizes(k), rope=1.0)
    assert shaped == res


def test_the_posterior_is_the_formula_of_the_issue():
    d = B10 - A10
    res = bayesian_correlated_ttest(d, n_train=900, n_val=100, rope=1.0)
    scale = math.sqrt((1 / 10 + 100 / 900) * d.var(ddof=1))
    assert res.scale == pytest.approx(scale)
    post = st.t(9, loc=d.mean(), scale=scale)
    assert res.p_b_better == pytest.approx(post.sf(1.0))
    assert res.p_a_better == pytest.approx(post.cdf(-1.0))


def test_no_rope_and_no_spread_match_baycomp():
    res = bayesian_correlated_ttest(B10 - A10, *sizes(10), rope=0.0)
    p_left, p_right = baycomp.two_on_single(A10, B10, rope=0, runs=1)
    assert res.p_equivalent == 0.0
    assert (res.p_a_better, res.p_b_better) == pytest.approx((p_left, p_right), abs=1e-6)
    # Every difference the same: the posterior is a point mass, as in baycomp.
    for shift, expected in ((0.5, (0.0, 1.0, 0.0)), (1.5, (0.0, 0.0, 1.0))):
        res = bayesian_correlated_ttest(np.full(10, shift), *sizes(10), rope=1.0)
        p = baycomp.two_on_single(A10, A10 + shift, rope=1.0, runs=1)
        assert (res.p_a_better, res.p_equivalent, res.p_b_better) == expected
        assert (res.p_a_better, res.p_equivalent, res.p_b_better) == pytest.approx(p)
        assert res.scale == 0


def result(p_b, p_eq, p_a, rope=1.0):
    return BayesResult(rope, p_b, p_eq, p_a, mean=0.0, scale=1.0, df=9, n=10)


def test_verdicts_read_like_the_issue():
    assert bayes_verdict("ResNNBatch_NoSkip", "ResNNBatch_Skip", result(0.02, 0.97, 0.01)) == (
        "ResNNBatch_Skip vs ResNNBatch_NoSkip: practically equivalent (p = 0.97 that |Δ| < 1 pt)"
    )
    assert bayes_verdict("ResNN", "ResNNBatch", result(0.99, 0.01, 0.0)) == (
        "ResNNBatch is better than ResNN (p = 0.99)"
    )
    assert bayes_verdict("A", "B", result(0.0, 0.04, 0.96)) == "A is better than B (p = 0.96)"
    assert bayes_verdict("A", "B", result(0.60, 0.35, 0.05)) == (
        "B vs A: undecided: 0.60 / 0.35 / 0.05 — more repetitions would tell"
    )
    half = bayes_verdict("A", "B", result(0.0, 0.999, 0.001, rope=0.5))
    assert half == "B vs A: practically equivalent (p > 0.99 that |Δ| < 0.5 pt)"


def test_probabilities_are_never_rounded_across_the_deciding_095():
    assert format_prob(0.9496) == "0.9496"  # undecided: must not print as 0.95
    assert format_prob(0.951) == "0.95"
    assert format_prob(0.9999) == "> 0.99" and format_prob(1.0) == "1.00"
    assert format_prob(0.001) == "< 0.01" and format_prob(0.0) == "0.00"
    assert "undecided: 0.9496" in bayes_verdict("A", "B", result(0.9496, 0.05, 0.0004))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        bayesian_correlated_ttest([1.0], 10, 5)
    with pytest.raises(ValueError, match="finite"):
        bayesian_correlated_ttest([1.0, np.inf], 10, 5)
    with pytest.raises(ValueError, match="positive"):
        bayesian_correlated_ttest([1.0, 2.0], 10, 0)
    with pytest.raises(ValueError, match="rope"):
        bayesian_correlated_ttest([1.0, 2.0], 10, 5, rope=-1)


@pytest.mark.parametrize("diffs", [B10 - A10, np.full(10, 0.5)])  # a spread, a point mass
def test_the_posterior_plot_shades_the_rope_and_names_the_probabilities(diffs):
    res = bayesian_correlated_ttest(diffs, *sizes(10), rope=0.75)
    ax = posterior_figure("ResNN", "ResNNBatch", res).axes[0]
    (rope,) = [p for p in ax.patches if p.get_label().startswith("ROPE")]
    assert (rope.get_x(), rope.get_width()) == pytest.approx((-0.75, 1.5))
    assert ax.get_title() == (
        f"ResNNBatch better: {format_prob(res.p_b_better)}   equivalent: "
        f"{format_prob(res.p_equivalent)}   ResNN better: {format_prob(res.p_a_better)}"
    )
    assert "ResNNBatch − ResNN" in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    assert lo < -0.75 and hi > 0.75 and lo < res.mean < hi
