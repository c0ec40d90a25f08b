"""The Bayesian correlated t-test with a region of practical equivalence (ROPE).

Corani and Benavoli (2015) model the K·R validation-fold differences ``d_j`` of R repetitions
of K-fold cross-validation as correlated, with the correlation ``ρ = n_val / (n_val +
n_train)`` that Nadeau and Bengio's correction assumes. Under their prior, the posterior of the
expected difference is Student's t with::

    df = n - 1,   location = mean(d),   scale² = (1/n + n_val/n_train) · var(d),

``var`` the sample variance (ddof 1) and ``n`` the number of differences. Benavoli, Corani,
Demšar and Zaffalon (2017) recommend reading it against a ROPE: the posterior probabilities
that the difference is below ``-rope`` (the first model better), within ``[-rope, rope]``
(practically equivalent) and above ``rope`` (the second model better). With equal folds
``n_val/n_train = 1/(K-1)``, which is what ``baycomp.two_on_single(x, y, rope, runs=R)``
computes from the number of folds; the sizes are used here so that a dropped (diverged) fold
does not change the correction.

References:
    G. Corani and A. Benavoli (2015). A Bayesian approach for comparing cross-validated
    algorithms on multiple data sets. Machine Learning 100(2), 285-304.

    A. Benavoli, G. Corani, J. Demšar and M. Zaffalon (2017). Time for a change: a tutorial
    for comparing multiple classifiers through Bayesian analysis. JMLR 18(77), 1-36.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

DECIDES = 0.95  # a posterior probability at least this large decides the verdict


@dataclass(frozen=True)
class BayesResult:
    """The posterior of the expected difference ``B - A`` and its ROPE probabilities.

    Attributes:
        rope: Half-width of the region of practical equivalence, in the differences' unit.
        p_b_better: Posterior probability that the difference exceeds ``rope``.
        p_equivalent: Posterior probability that it lies within ``[-rope, rope]``.
        p_a_better: Posterior probability that it is below ``-rope``.
        mean: Location of the posterior Student t (the mean difference).
        scale: Its scale (0: every difference equal, the posterior a point mass).
        df: Its degrees of freedom.
        n: Number of differences used.
    """

    rope: float
    p_b_better: float
    p_equivalent: float
    p_a_better: float
    mean: float
    scale: float
    df: int
    n: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)


def bayesian_correlated_ttest(
    diffs: Any, n_train: float, n_val: float, rope: float = 1.0
) -> BayesResult:
    """The Bayesian correlated t-test of the differences ``d = score(B) - score(A)``.

    Args:
        diffs: The K·R paired validation-fold differences, any shape; all are used.
        n_train: Training samples of one fold (the mean over folds if unequal).
        n_val: Validation samples of one fold (the mean over folds if unequal).
        rope: Half-width of the region of practical equivalence (>= 0), in the unit of
            ``diffs``.

    Returns:
        The posterior and its three probabilities.

    Raises:
        ValueError: Fewer than 2 differences, a non-finite one, sizes that are not positive,
            or a negative or non-finite ``rope``.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size < 2:
        raise ValueError(f"diffs: the test needs at least 2 differences, got {d.size}")
    if not np.all(np.isfinite(d)):
        raise ValueError("diffs: every difference must be finite")
    if not (n_train > 0 and n_val > 0):
        raise ValueError(f"n_train and n_val must be positive, got {n_train} and {n_val}")
    if not (math.isfinite(rope) and rope >= 0):
        raise ValueError(f"rope must be a finite number >= 0, got {rope}")
    n = d.size
    mean = float(d.mean())
    scale = math.sqrt((1 / n + n_val / n_train) * d.var(ddof=1))
    if scale > 0:
        posterior = _st.t(n - 1, loc=mean, scale=scale)
        p_a, p_b = float(posterior.cdf(-rope)), float(posterior.sf(rope))
    else:
        # Every difference equal: the posterior is a point mass at their value.
        p_a, p_b = float(mean < -rope), float(mean > rope)
    return BayesResult(
        rope=float(rope),
        p_b_better=p_b,
        p_equivalent=max(0.0, 1.0 - p_a - p_b),
        p_a_better=p_a,
        mean=mean,
        scale=scale,
        df=n - 1,
        n=n,
    )


def format_prob(p: float) -> str:
    """Two decimals, never rounded across the deciding 0.95, nor up to 1 or down to 0.

    Args:
        p: A probability.
    """
    text = f"{p:.2f}"
    if (float(text) >= DECIDES) != (p >= DECIDES):  # e.g. 0.9496 would print as 0.95
        text = f"{p:.4f}"
    if text.startswith("1.00") and p < 1:
        return "> 0.99"
    if text == "0.00" and p > 0:
        return "< 0.01"
    return text


def _p_phrase(p: float) -> str:
    text = format_prob(p)
    return f"p {text}" if text[0] in "<>" else f"p = {text}"


def bayes_verdict(a: str, b: str, res: BayesResult, unit: str = "pt") -> str:
    """The Bayesian verdict in plain words.

    ``B vs A: practically equivalent (p = 0.97 that |Δ| < 1 pt)``, ``B is better than A
    (p = 0.99)``, ``A is better than B (p = 0.96)``, or ``B vs A: undecided: 0.60 / 0.35 /
    0.05 — more repetitions would tell`` (B better / equivalent / A better).

    Args:
        a: The model listed first (the baseline).
        b: The model compared with it; the difference is ``b - a``.
        res: The test's result.
        unit: The differences' unit, shown with the ROPE.
    """
    if res.p_equivalent >= DECIDES:
        return (
            f"{b} vs {a}: practically equivalent "
            f"({_p_phrase(res.p_equivalent)} that |Δ| < {res.rope:g} {unit})"
        )
    if res.p_b_better >= DECIDES:
        return f"{b} is better than {a} ({_p_phrase(res.p_b_better)})"
    if res.p_a_better >= DECIDES:
        return f"{a} is better than {b} ({_p_phrase(res.p_a_better)})"
    probs = " / ".join(format_prob(p) for p in (res.p_b_better, res.p_equivalent, res.p_a_better))
    return f"{b} vs {a}: undecided: {probs} — more repetitions would tell"
