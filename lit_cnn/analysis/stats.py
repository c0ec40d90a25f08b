"""Paired significance tests for cross-validated scores (numpy and scipy.stats only).

Three tests of the null hypothesis "two learning algorithms have the same expected score",
each on paired differences ``d = score(A) - score(B)`` from the same folds:

- :func:`corrected_resampled_ttest`: Nadeau and Bengio's corrected resampled t-test on the
  K x R held-out (validation-fold) differences of a repeated K-fold cross-validation. The one
  to trust for cross-validation: it accounts for the overlap between training sets.
- :func:`paired_ttest`: Student's paired t-test, as :func:`scipy.stats.ttest_rel`. Shown for
  reference; on cross-validated scores its variance is too small (see below).
- :func:`dietterich_5x2cv`: Dietterich's 5x2cv paired t-test, for 5 repetitions of 2-fold.
- :func:`combined_5x2cv_ftest`: Alpaydın's combined 5x2cv F-test on the same ten differences;
  a lower Type I error and more power than Dietterich's t (Alpaydın, 1999).

And, beside them:

- :func:`mcnemar_exact`: McNemar's test on one test set (the exact binomial test on the
  images exactly one of two classifiers gets right), as Dietterich (1998) recommends for a
  single train/test split.
- :func:`holm`: Holm's step-down adjustment of a family of p-values (several pairs).

Why the plain paired t-test is too liberal here: it takes the J differences as independent,
so it estimates the variance of their mean as ``s^2 / J``. In K-fold cross-validation any two
training sets share a fraction (K - 2)/(K - 1) of their samples, and repetitions reuse the
same samples, so the differences are positively correlated and ``s^2 / J`` is too small:
the test rejects a true null hypothesis far more often than its nominal level (Dietterich,
1998; Nadeau and Bengio, 2003; Bouckaert and Frank, 2004).

References:
    T. G. Dietterich (1998). Approximate statistical tests for comparing supervised
    classification learning algorithms. Neural Computation 10(7), 1895-1923.

    C. Nadeau and Y. Bengio (2003). Inference for the generalization error. Machine Learning
    52(3), 239-281.

    R. R. Bouckaert and E. Frank (2004). Evaluating the replicability of significance tests
    for comparing learning algorithms. PAKDD 2004, LNCS 3056, 3-12.

    E. Alpaydın (1999). Combined 5 x 2 cv F test for comparing supervised classification
    learning algorithms. Neural Computation 11(8), 1885-1892.

    S. Holm (1979). A simple sequentially rejective multiple test procedure. Scandinavian
    Journal of Statistics 6(2), 65-70.

All tests are two-sided. The t-tests return a :class:`TTestResult`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class TTestResult:
    """The outcome of a two-sided t-test on paired differences.

    Attributes:
        test: Which test: ``"corrected resampled t-test"``, ``"paired t-test"`` or
            ``"5x2cv paired t-test"``.
        mean: The estimate of the expected difference that the statistic is built on: the
            mean difference, except for the 5x2cv test, whose numerator is the single
            difference of the first fold of the first repetition.
        ci_low: Lower end of the confidence interval of the expected difference.
        ci_high: Upper end of that interval.
        se: The standard error the statistic divides by.
        t: The t statistic ``mean / se``.
        df: Degrees of freedom of the t distribution.
        p: Two-sided p-value.
        n: Number of differences used.
        confidence: Level of the confidence interval.
    """

    test: str
    mean: float
    ci_low: float
    ci_high: float
    se: float
    t: float
    df: int
    p: float
    n: int
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the null hypothesis of no difference is rejected at level ``alpha``."""
        return self.p < alpha


def _as_differences(values: Any, name: str = "diffs") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size < 2:
        raise ValueError(f"{name}: a t-test needs at least 2 differences, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: every difference must be finite")
    return arr


def _finish(
    test: str, estimate: float, se: float, df: int, n: int, confidence: float
) -> TTestResult:
    """t, p and the confidence interval from an estimate, its standard error and df."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if se > 0:
        t = estimate / se
        p = float(2 * _st.t.sf(abs(t), df))
    elif estimate == 0:
        # Every difference is exactly zero (e.g. identical networks trained identically): no
        # evidence at all of a difference. scipy would return nan (0/0); p = 1 is its limit.
        t, p = 0.0, 1.0
    else:
        # A constant non-zero difference: the limit of t as the spread goes to zero.
        t, p = math.copysign(math.inf, estimate), 0.0
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * se
    return TTestResult(
        test=test,
        mean=float(estimate),
        ci_low=float(estimate - half),
        ci_high=float(estimate + half),
        se=float(se),
        t=float(t),
        df=int(df),
        p=p,
        n=int(n),
        confidence=confidence,
    )


def paired_ttest(a: Any, b: Any, confidence: float = 0.95) -> TTestResult:
    """Student's paired t-test of ``a - b`` (the same statistic as ``scipy.stats.ttest_rel``).

    With the n differences ``d_j = a_j - b_j``, their mean ``d̄`` and sample variance
    ``s^2 = sum_j (d_j - d̄)^2 / (n - 1)``::

        t = d̄ / sqrt(s^2 / n),   df = n - 1,
        CI = d̄ ± t_{(1 + confidence)/2, n-1} * sqrt(s^2 / n).

    It assumes the n differences are independent draws. Cross-validated scores are not (see
    the module docstring), so on them this test is too liberal.

    Args:
        a: Scores of the first model, one per paired run.
        b: Scores of the second model on the same runs, in the same order.
        confidence: Level of the confidence interval.

    Returns:
        The test's :class:`TTestResult` for the difference ``a - b``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, hold fewer than 2 pairs, or a
            non-finite value.
    """
    a_arr = np.asarray(a, dtype=np.float64).ravel()
    b_arr = np.asarray(b, dtype=np.float64).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired scores differ in length: {a_arr.size} and {b_arr.size}")
    d = _as_differences(a_arr - b_arr)
    n = d.size
    se = math.sqrt(d.var(ddof=1) / n)
    return _finish("paired t-test", float(d.mean()), se, n - 1, n, confidence)


def corrected_resampled_ttest(
    diffs: Any, n_train: float, n_val: float, confidence: float = 0.95
) -> TTestResult:
    """Nadeau and Bengio's corrected resampled t-test on repeated K-fold differences.

    With the J = K·R held-out differences ``d_j`` of R repetitions of K-fold
    cross-validation (each the difference of two models' scores on the same validation
    fold, trained on the same training folds), their mean ``d̄`` and sample variance
    ``s^2 = sum_j (d_j - d̄)^2 / (J - 1)``::

        t = d̄ / sqrt((1/J + n_val/n_train) * s^2),   df = J - 1,
        CI = d̄ ± t_{(1 + confidence)/2, J-1} * sqrt((1/J + n_val/n_train) * s^2).

    The plain paired t-test would use ``s^2 / J``; the term ``n_val/n_train`` (the ratio of
    the held-out to the training set size of one fold, 1/(K-1) for K-fold) inflates it for
    the correlation between the differences that overlapping training sets cause (Nadeau and
    Bengio, 2003, section 5; applied to repeated K-fold with J - 1 degrees of freedom by
    Bouckaert and Frank, 2004).

    Args:
        diffs: The K·R paired differences, any shape (e.g. (R, K)); all of them are used.
        n_train: Number of training samples of one fold (the mean over folds if unequal).
        n_val: Number of validation samples of one fold (the mean over folds if unequal).
        confidence: Level of the confidence interval.

    Returns:
        The test's :class:`TTestResult`.

    Raises:
        ValueError: Fewer than 2 differences, a non-finite one, or sizes that are not
            positive.
    """
    d = _as_differences(diffs)
    if not (n_train > 0 and n_val > 0):
        raise ValueError(f"n_train and n_val must be positive, got {n_train} and {n_val}")
    j = d.size
    se = math.sqrt((1 / j + n_val / n_train) * d.var(ddof=1))
    return _finish("corrected resampled t-test", float(d.mean()), se, j - 1, j, confidence)


def _as_5x2(diffs_5x2: Any) -> np.ndarray:
    p = np.asarray(diffs_5x2, dtype=np.float64)
    if p.shape != (5, 2):
        raise ValueError(f"the 5x2cv test needs differences of shape (5, 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("diffs_5x2: every difference must be finite")
    return p


def dietterich_5x2cv(diffs_5x2: Any, confidence: float = 0.95) -> TTestResult:
    """Dietterich's 5x2cv paired t-test.

    ``diffs_5x2[i, j]`` is the difference ``p_i^(j)`` between the two models' scores on fold
    j (0 or 1) of repetition i (0 to 4) of 2-fold cross-validation; within a repetition both
    models were trained on the same half and tested on the other. With
    ``p̄_i = (p_i^(1) + p_i^(2)) / 2`` and ``s_i^2 = (p_i^(1) - p̄_i)^2 + (p_i^(2) - p̄_i)^2``::

        t = p_1^(1) / sqrt((1/5) * sum_i s_i^2),   df = 5,
        CI = p_1^(1) ± t_{(1 + confidence)/2, 5} * sqrt((1/5) * sum_i s_i^2).

    The numerator is the single difference of the first fold of the first repetition, as in
    Dietterich (1998, section 3.5); the other nine differences enter only the variance. The
    interval follows from the same t distribution, so it excludes 0 exactly when p is
    below 1 - confidence.

    Args:
        diffs_5x2: The differences, shape (5, 2).
        confidence: Level of the confidence interval.

    Returns:
        The test's :class:`TTestResult` (``mean`` is ``p_1^(1)``, ``n`` is 10).

    Raises:
        ValueError: The shape is not (5, 2) or a difference is not finite.
    """
    p = _as_5x2(diffs_5x2)
    s2 = ((p - p.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    se = math.sqrt(s2.mean())
    return _finish("5x2cv paired t-test", float(p[0, 0]), se, 5, 10, confidence)


@dataclass(frozen=True)
class FTestResult:
    """The outcome of Alpaydın's combined 5x2cv F-test.

    Attributes:
        F: The statistic.
        p: Its p-value, the upper tail of F with ``df1`` and ``df2`` degrees of freedom.
        df1: Numerator degrees of freedom (10).
        df2: Denominator degrees of freedom (5).
        mean: The mean of the ten differences (the test itself is unsigned).
    """

    F: float
    p: float
    df1: int
    df2: int
    mean: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)


def combined_5x2cv_ftest(diffs_5x2: Any) -> FTestResult:
    """Alpaydın's combined 5x2cv F-test.

    With the differences ``p_i^(j)`` of fold j of repetition i (as for
    :func:`dietterich_5x2cv`) and ``s_i^2 = (p_i^(1) - p̄_i)^2 + (p_i^(2) - p̄_i)^2``::

        F = sum_i sum_j (p_i^(j))^2 / (2 * sum_i s_i^2),   F ~ F(10, 5).

    Unlike Dietterich's t it uses all ten differences in the numerator, so it does not
    depend on which fold happens to come first.

    Args:
        diffs_5x2: The differences, shape (5, 2).

    Returns:
        The test's :class:`FTestResult`.

    Raises:
        ValueError: The shape is not (5, 2) or a difference is not finite.
    """
    p = _as_5x2(diffs_5x2)
    num = float((p**2).sum())
    den = 2 * float(((p - p.mean(axis=1, keepdims=True)) ** 2).sum())
    if den > 0:
        f = num / den
        pval = float(_st.f.sf(f, 10, 5))
    elif num == 0:
        f, pval = 0.0, 1.0  # every difference zero: no evidence of one (0/0's limit)
    else:
        f, pval = math.inf, 0.0  # each repetition's two folds agree exactly, and not on 0
    return FTestResult(F=f, p=pval, df1=10, df2=5, mean=float(p.mean()))


def mcnemar_exact(n01: int, n10: int) -> float:
    """McNemar's exact test: the two-sided binomial test of ``n01`` against ``n10``.

    ``n01`` and ``n10`` are the discordant images of one test set: those only the second
    classifier gets right, and those only the first gets right. Under the null hypothesis
    (equal error rates) each discordant image is either kind with probability 1/2, so with
    ``n = n01 + n10``::

        p = min(1, 2 * P(X <= min(n01, n10))),   X ~ Binomial(n, 1/2),

    and p = 1 when there is no discordant image.

    Args:
        n01: Images the first classifier gets wrong and the second right.
        n10: Images the first gets right and the second wrong.

    Returns:
        The two-sided p-value.

    Raises:
        ValueError: A negative count.
    """
    if n01 < 0 or n10 < 0:
        raise ValueError(f"counts must be >= 0, got {n01} and {n10}")
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * _st.binom.cdf(min(n01, n10), n, 0.5)))


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values of one family of tests.

    With the m p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    the i-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where it is below
    alpha controls the family-wise error rate at alpha (Holm, 1979). NaN entries (tests not
    made) are left out of the family and stay NaN.

    Args:
        pvalues: The family's p-values, in any order.

    Returns:
        The adjusted p-values, in the order given.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
