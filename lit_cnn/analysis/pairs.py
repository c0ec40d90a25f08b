"""The tests of a comparison: per model summaries, then per pair the Bayesian correlated
t-test, the frequentist tests, McNemar on the test set, and Holm's correction across pairs.

Pairs follow ``--models``: for each model A and each model B listed after it, the differences
are ``B - A`` in percentage points (accuracy x 100). A fold run that diverged for either model
drops that pair of scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lit_cnn.analysis.bayes import DECIDES, bayes_verdict, bayesian_correlated_ttest
from lit_cnn.analysis.stats import (
    combined_5x2cv_ftest,
    corrected_resampled_ttest,
    dietterich_5x2cv,
    holm,
    mcnemar_exact,
    paired_ttest,
)
from lit_cnn.analysis.verdicts import ALPHA, ftest_verdict, verdict
from lit_cnn.cv.report import mean_std

# Each of these is one family of p-values across the pairs, adjusted together.
FAMILIES = ("corrected", "paired_test", "dietterich", "f_test")


def _scores(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """(R, K) array of a per-fold score; NaN for a diverged fold."""
    return np.array(
        [[np.nan if f[key] is None else f[key] for f in run["folds"]] for run in runs],
        dtype=np.float64,
    )


def _none_for_nan(arr: np.ndarray) -> list:
    return [[None if np.isnan(x) else float(x) for x in row] for row in arr]


def analyse(
    collected: Mapping[str, Any], scheme: str = "kfold", rope: float = 1.0
) -> dict[str, Any]:
    """Per-model summaries and per-pair tests of the runs read by
    :func:`lit_cnn.analysis.compare.collect`.

    Args:
        collected: The output of ``collect``; its optional ``test_correct[model][r]`` (a
            bool array per repetition: which test images the fold ensemble gets right, or
            ``None``) feeds McNemar's test.
        scheme: ``"kfold"`` or ``"5x2cv"``; 5x2cv adds Dietterich's t and the combined F-test
            and bases the frequentist verdict on F.
        rope: Half-width of the region of practical equivalence, in percentage points.

    Returns:
        The comparison (without ``name``, ``hparams`` and ``config``, which the caller adds).
    """
    models = collected["models"]
    runs = collected["runs"]
    sizes = collected["fold_sizes"]
    n_total = int(sum(sizes))
    n_val = float(np.mean(sizes))
    n_train = n_total - n_val  # each fold trains on the rest of the training set
    val = {m: _scores(runs[m], "val_acc") for m in models}
    test = {m: _scores(runs[m], "test_acc") for m in models}
    correct = collected.get("test_correct") or {}
    repeats, k = val[models[0]].shape

    per_model = {}
    for m in models:
        ok_val, ok_test = val[m][~np.isnan(val[m])], test[m][~np.isnan(test[m])]
        val_mean, val_std = mean_std(list(ok_val))
        test_mean, test_std = mean_std(list(ok_test))
        per_model[m] = {
            "val_acc": _none_for_nan(val[m]),
            "test_acc": _none_for_nan(test[m]),
            "val_acc_mean": val_mean,
            "val_acc_std": val_std,
            "test_acc_mean": test_mean,
            "test_acc_std": test_std,
            "ensemble_test_acc": [run["ensemble_test_acc"] for run in runs[m]],
            "oof_acc": [run.get("oof_acc") for run in runs[m]],
            "diverged": [[r, f] for r in range(repeats) for f in runs[m][r]["diverged_folds"]],
            "fit_seconds": float(sum(f["fit_seconds"] for run in runs[m] for f in run["folds"])),
            "runs": [f"{m}/rep_{r}" for r in range(repeats)],
        }

    pairs = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            pairs.append(
                compare_pair(
                    a,
                    b,
                    (val[a], val[b]),
                    (test[a], test[b]),
                    n_train,
                    n_val,
                    scheme,
                    rope,
                    (correct.get(a), correct.get(b)),
                )
            )
    adjust(pairs)
    for pair in pairs:
        pair["verdict"] = frequentist_verdict(pair, scheme, len(pairs))

    return {
        "scheme": scheme,
        "k": k,
        "repeats": repeats,
        "seeds": collected["seeds"],
        "models": models,
        "data": collected["data"],
        "n_train_total": n_total,
        "n_fold_train": n_train,
        "n_fold_val": n_val,
        "n_test": collected["n_test"],
        "alpha": ALPHA,
        "rope": rope,
        "bayes_decides": DECIDES,
        "verdict_test": "combined 5x2cv F-test"
        if scheme == "5x2cv"
        else "corrected resampled t-test",
        "holm_family": len(pairs),
        "per_model": per_model,
        "pairs": pairs,
    }


def compare_pair(
    a: str,
    b: str,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    n_train: float,
    n_val: float,
    scheme: str = "kfold",
    rope: float = 1.0,
    correct: tuple[Sequence[np.ndarray | None] | None, Sequence[np.ndarray | None] | None] = (
        None,
        None,
    ),
) -> dict[str, Any]:
    """The tests of one pair of models on their (R, K) paired accuracies.

    Args:
        a: The model listed first (the baseline).
        b: The model compared with it; differences are ``b - a``.
        val: (R, K) validation-fold accuracies of ``a`` and of ``b`` (fractions; NaN:
            diverged).
        test: (R, K) test-set accuracies of their fold models.
        n_train: Training samples of one fold.
        n_val: Validation samples of one fold.
        scheme: ``"5x2cv"`` adds Dietterich's t and the combined F-test.
        rope: Half-width of the region of practical equivalence, in percentage points.
        correct: Per repetition, which test images each model's fold ensemble gets right
            (``None`` where unknown): McNemar's test per repetition.

    Returns:
        ``{"a", "b", "n_pairs", "val_diff", "test_diff", "bayes", "bayes_verdict",
        "corrected", "paired_test", "dietterich", "f_test", "mcnemar"}``; a test is ``None``
        where there are too few pairs or it does not apply.
    """
    diff_val = 100 * (val[1] - val[0])
    diff_test = 100 * (test[1] - test[0])
    ok = ~(np.isnan(diff_val) | np.isnan(diff_test))
    n_pairs = int(ok.sum())
    bayes = corrected = paired = dietterich = f_test = None
    if n_pairs >= 2:
        bayes = bayesian_correlated_ttest(diff_val[ok], n_train, n_val, rope)
        corrected = corrected_resampled_ttest(diff_val[ok], n_train, n_val)
        paired = paired_ttest(100 * test[1][ok], 100 * test[0][ok])
    if scheme == "5x2cv" and diff_val.shape == (5, 2) and ok.all():
        dietterich = dietterich_5x2cv(diff_val)
        f_test = combined_5x2cv_ftest(diff_val)
    return {
        "a": a,
        "b": b,
        "n_pairs": n_pairs,
        "val_diff": _none_for_nan(diff_val),
        "test_diff": _none_for_nan(diff_test),
        "bayes": bayes.as_dict() if bayes else None,
        "bayes_verdict": (
            bayes_verdict(a, b, bayes)
            if bayes
            else f"{b} vs {a}: not enough paired fold runs that did not diverge to test"
        ),
        "corrected": corrected.as_dict() if corrected else None,
        "paired_test": paired.as_dict() if paired else None,
        "dietterich": dietterich.as_dict() if dietterich else None,
        "f_test": f_test.as_dict() if f_test else None,
        "mcnemar": mcnemar_per_repetition(*correct),
    }


def mcnemar_per_repetition(
    correct_a: Sequence[np.ndarray | None] | None, correct_b: Sequence[np.ndarray | None] | None
) -> list[dict[str, Any]]:
    """McNemar's exact test on the test set, per repetition, of two fold ensembles.

    Args:
        correct_a: Per repetition, which test images A's fold ensemble gets right.
        correct_b: The same for B.

    Returns:
        ``[{"repetition", "n01", "n10", "p"}]``: ``n01`` images only B gets right, ``n10``
        images only A gets right; repetitions where either is unknown are left out.
    """
    rows = []
    for r, (ca, cb) in enumerate(zip(correct_a or [], correct_b or [], strict=False)):
        if ca is None or cb is None or len(ca) != len(cb):
            continue
        n01 = int((~ca & cb).sum())
        n10 = int((ca & ~cb).sum())
        rows.append({"repetition": r, "n01": n01, "n10": n10, "p": mcnemar_exact(n01, n10)})
    return rows


def adjust(pairs: list[dict[str, Any]]) -> None:
    """Adds ``p_holm`` beside every p-value: Holm's adjustment over the pairs, for each test
    (and, for McNemar, each repetition) separately.

    Args:
        pairs: The pairs of :func:`compare_pair`, changed in place.
    """
    for key in FAMILIES:
        tests = [p[key] for p in pairs if p[key] is not None]
        for res, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
            res["p_holm"] = float(adjusted)
    by_rep: dict[int, list[dict[str, Any]]] = {}
    for pair in pairs:
        for row in pair["mcnemar"]:
            by_rep.setdefault(row["repetition"], []).append(row)
    for rows in by_rep.values():
        for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
            row["p_holm"] = float(adjusted)


def frequentist_verdict(pair: Mapping[str, Any], scheme: str, family: int) -> str:
    """The pair's frequentist verdict, on Holm-adjusted p-values: the corrected resampled
    t-test for K-fold, the combined F-test for 5x2cv.

    Args:
        pair: A pair of :func:`compare_pair`, after :func:`adjust`.
        scheme: ``"kfold"`` or ``"5x2cv"``.
        family: The number of pairs the p-values were adjusted over.
    """
    a, b = pair["a"], pair["b"]
    if scheme == "5x2cv" and pair["f_test"] is not None:
        return ftest_verdict(a, b, pair["f_test"], family)
    if scheme != "5x2cv" and pair["corrected"] is not None:
        return verdict(b, a, pair["corrected"], family=family)
    return f"{b} vs {a}: not enough paired fold runs that did not diverge to test"
