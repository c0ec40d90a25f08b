"""Compare architectures on paired folds, with significance tests.

    python scripts/compare.py --models ResNNBatch_NoSkip ResNNBatch_Skip
    python scripts/compare.py --models ResNN ResNNBatch --data.k 3 --repeats 2
    python scripts/compare.py --models ResNN ResNNBatch --scheme 5x2cv
    python scripts/compare.py --resume lightning_logs/compare/version_0

Every model is trained on the same folds: for repetition ``r`` one
:class:`~lit_cnn.cv.datamodule.KFoldDataModule` with split seed ``seed + r`` serves all the
models, so each fold's scores are paired. Each (model, repetition) is an ordinary K-fold run
of :func:`lit_cnn.cv.loop.run_kfold`. Then, for each pair of models, the differences in
accuracy (in percentage points) are tested: the corrected resampled t-test on the
validation-fold scores (the one to trust), the plain paired t-test on the test-set scores
beside it and, for ``--scheme 5x2cv``, Dietterich's 5x2cv t-test
(see :mod:`lit_cnn.analysis.stats`).

The comparison directory is ``<root>/lightning_logs/compare/<name or version_N>/``::

    compare.yaml         the configuration (read again by --resume)
    <model>/rep_<r>/     a K-fold run directory per model and repetition (see lit_cnn.cv.loop)
    comparison.json      per-model scores, per-pair tests and verdicts, the configuration
    comparison.md        the tables and the verdicts
    comparison.png       per-model accuracies, one point per fold run, paired runs joined

Errors in options or data end in one line on stderr and exit status 2, before any directory
is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_cnn.analysis.stats import (
    corrected_resampled_ttest,
    dietterich_5x2cv,
    paired_ttest,
)
from lit_cnn.analysis.verdicts import ALPHA, verdict, write_comparison
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.loop import run_kfold
from lit_cnn.cv.report import mean_std
from lit_cnn.cv.trainer import FoldSetup
from lit_cnn.models.modules import get_model

SCHEMES = ("kfold", "5x2cv")


# ----------------------------------------------------------------------------- training


def _finished(run_dir: Path) -> bool:
    # run_kfold writes results.json, then the figures: both present means the run is done.
    return (run_dir / "results.json").is_file() and (run_dir / "curves.png").is_file()


def run_comparison(
    cmp_dir: Path,
    models: Sequence[str],
    hparams: Mapping[str, Mapping[str, Any]],
    *,
    data: Mapping[str, Any],
    repeats: int = 1,
    scheme: str = "kfold",
    trainer: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    patience: int | None = None,
    config: Mapping[str, Any] | None = None,
    datamodule: Callable[[int], KFoldDataModule] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    lr_scheduler: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains every model on the same folds of every repetition, then writes the comparison.

    Runs that finished earlier (their ``results.json`` and figures exist) are read, not
    redone; an unfinished run continues fold by fold, as :func:`lit_cnn.cv.loop.run_kfold` does.

    Args:
        cmp_dir: The comparison directory (existing).
        models: Architecture names, the baseline first.
        hparams: Each model's ``lr``, ``l2`` and ``optimizer`` (see :func:`resolve_hparams`).
        data: :class:`KFoldDataModule` arguments; ``seed`` is repetition 0's split seed and
            repetition ``r`` uses ``seed + r``.
        repeats: Number of repetitions R.
        scheme: ``"kfold"`` or ``"5x2cv"`` (which needs ``data["k"] == 2`` and R = 5).
        trainer: ``Trainer`` arguments, ``callbacks`` and ``logger`` (a parsed logger spec)
            included, or a function returning fresh ones, called once per fold.
        patience: Early-stopping patience in epochs; ``None`` runs every epoch.
        config: The configuration to store in comparison.json and each run's results.json.
        datamodule: Returns repetition ``r``'s DataModule; by default a new
            ``KFoldDataModule(**data)`` with seed ``seed + r``. Called only when a model of
            that repetition still has folds to train.
        optimizer: ``--optimizer`` as ``{"class_path", "init_args"}``, for every model.
        lr_scheduler: ``--lr_scheduler`` likewise.
        log: Where progress lines go.

    Returns:
        The contents of comparison.json.
    """
    if scheme == "5x2cv" and (data.get("k") != 2 or repeats != 5):
        raise ValueError("the 5x2cv scheme needs k = 2 and repeats = 5")
    seed = int(data.get("seed", 0))

    def default_dm(r: int) -> KFoldDataModule:
        return KFoldDataModule(**{**data, "seed": seed + r})

    make_dm = datamodule or default_dm
    for r in range(repeats):
        dm: KFoldDataModule | None = None  # one per repetition, shared by all models
        for name in models:
            run_dir = cmp_dir / name / f"rep_{r}"
            prefix = f"[{name}, repetition {r + 1}/{repeats}] "
            if _finished(run_dir):
                log(f"{prefix}recorded earlier, not redone")
                continue
            if dm is None:
                dm = make_dm(r)
            run_dir.mkdir(parents=True, exist_ok=True)
            run_kfold(
                _fold_builder(name, dict(hparams[name]), trainer, optimizer, lr_scheduler),
                dm,
                run_dir,
                model_name=name,
                config={
                    **(config or {}),
                    "model": name,
                    "hparams": dict(hparams[name]),
                    "repetition": r,
                    "seed": seed + r,
                },
                patience=patience,
                log=lambda line, p=prefix: log(p + line.replace("\n", "\n" + p)),
            )
        del dm  # its data and device copy go before the next repetition's are loaded

    comparison = analyse(collect(cmp_dir, models, repeats), scheme)
    comparison.update(
        name=cmp_dir.name,
        hparams={m: dict(hparams[m]) for m in models},
        config=dict(config or {}),
    )
    write_comparison(cmp_dir, comparison)
    return comparison


def _fold_builder(
    name: str,
    hparams: dict[str, Any],
    trainer: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
    optimizer: Mapping[str, Any] | None = None,
    lr_scheduler: Mapping[str, Any] | None = None,
) -> Callable[[int], FoldSetup]:
    def build(fold: int) -> FoldSetup:
        # Called by run_kfold after it seeded the fold with seed + fold: every model of a
        # fold starts from the same random state and sees the same batch order.
        kwargs = dict(trainer() if callable(trainer) else trainer or {})
        callbacks = kwargs.pop("callbacks", None) or []
        logger = kwargs.pop("logger", None)
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        model = get_model(name, **hparams)
        model.optimizer_spec = dict(optimizer) if optimizer else None
        model.lr_scheduler_spec = dict(lr_scheduler) if lr_scheduler else None
        return FoldSetup(model, kwargs, callbacks, logger)

    return build


# ----------------------------------------------------------------------------- analysis


def collect(cmp_dir: Path, models: Sequence[str], repeats: int) -> dict[str, Any]:
    """Reads every run of a comparison and checks that the folds are paired.

    Args:
        cmp_dir: The comparison directory.
        models: The architecture names.
        repeats: Number of repetitions.

    Returns:
        ``{"models", "k", "seeds", "data", "fold_sizes", "n_test", "runs"}``, where
        ``runs[model][r]`` is repetition r's results.json and ``fold_sizes`` the validation
        fold sizes of repetition 0.

    Raises:
        RuntimeError: Two models of one repetition were validated on different folds.
    """
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    fold_sizes: list[int] = []
    for r in range(repeats):
        reference = None
        for name in models:
            run_dir = cmp_dir / name / f"rep_{r}"
            runs[name].append(json.loads((run_dir / "results.json").read_text()))
            val = json.loads((run_dir / "folds.json").read_text())["val_indices"]
            if reference is None:
                reference = (name, val)
            elif val != reference[1]:
                raise RuntimeError(
                    f"repetition {r}: {name} and {reference[0]} were validated on different "
                    "folds, so their scores are not paired"
                )
            if r == 0 and not fold_sizes:
                fold_sizes = [len(v) for v in val]
    first = runs[models[0]]
    test_samples = [f["test_samples"] for run in first for f in run["folds"] if f["test_samples"]]
    return {
        "models": list(models),
        "k": first[0]["k"],
        "seeds": [run["seed"] for run in first],
        "data": first[0]["data"],
        "fold_sizes": fold_sizes,
        "n_test": test_samples[0] if test_samples else None,
        "runs": runs,
    }


def _scores(runs: list[dict[str, Any]], key: str) -> np.ndarray:
    """(R, K) array of a per-fold score; NaN for a diverged fold."""
    return np.array(
        [[np.nan if f[key] is None else f[key] for f in run["folds"]] for run in runs],
        dtype=np.float64,
    )


def _none_for_nan(arr: np.ndarray) -> list:
    return [[None if np.isnan(x) else float(x) for x in row] for row in arr]


def analyse(collected: Mapping[str, Any], scheme: str = "kfold") -> dict[str, Any]:
    """Per-model summaries and per-pair tests of the runs read by :func:`collect`.

    Differences are in percentage points (accuracy x 100), later model minus earlier model.
    A fold run that diverged for either model of a pair drops that pair of scores.

    Args:
        collected: The output of :func:`collect`.
        scheme: ``"kfold"`` or ``"5x2cv"``; 5x2cv adds Dietterich's test and bases the
            verdict on it.

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
            "diverged": [[r, f] for r in range(repeats) for f in runs[m][r]["diverged_folds"]],
            "fit_seconds": float(sum(f["fit_seconds"] for run in runs[m] for f in run["folds"])),
            "runs": [f"{m}/rep_{r}" for r in range(repeats)],
        }

    pairs = []
    for i, b in enumerate(models):
        for a in models[i + 1 :]:
            pairs.append(
                compare_pair(a, b, val[a], val[b], test[a], test[b], n_train, n_val, scheme)
            )

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
        "verdict_test": (
            "5x2cv paired t-test" if scheme == "5x2cv" else "corrected resampled t-test"
        ),
        "per_model": per_model,
        "pairs": pairs,
    }


def compare_pair(
    a: str,
    b: str,
    val_a: np.ndarray,
    val_b: np.ndarray,
    test_a: np.ndarray,
    test_b: np.ndarray,
    n_train: float,
    n_val: float,
    scheme: str = "kfold",
) -> dict[str, Any]:
    """The tests of one pair of models on their (R, K) paired accuracies.

    Args:
        a: The later model (the difference is ``a - b``).
        b: The earlier model (the baseline).
        val_a: (R, K) validation-fold accuracies of ``a`` (fractions; NaN: diverged).
        val_b: The same for ``b``.
        test_a: (R, K) test-set accuracies of ``a``'s fold models.
        test_b: The same for ``b``.
        n_train: Training samples of one fold.
        n_val: Validation samples of one fold.
        scheme: ``"5x2cv"`` adds Dietterich's test and makes it the verdict's.

    Returns:
        ``{"a", "b", "n_pairs", "corrected", "paired_test", "dietterich", "verdict"}``, the
        tests as dicts (``None`` where too few pairs), the verdict as one line.
    """
    diff_val = 100 * (val_a - val_b)
    diff_test = 100 * (test_a - test_b)
    ok = ~(np.isnan(diff_val) | np.isnan(diff_test))
    n_pairs = int(ok.sum())
    corrected = paired = dietterich = None
    if n_pairs >= 2:
        corrected = corrected_resampled_ttest(diff_val[ok], n_train, n_val)
        paired = paired_ttest(100 * test_a[ok], 100 * test_b[ok])
    if scheme == "5x2cv" and diff_val.shape == (5, 2) and ok.all():
        dietterich = dietterich_5x2cv(diff_val)
    if scheme == "5x2cv" and dietterich is not None:
        line = verdict(a, b, dietterich, overall_mean=float(diff_val.mean()))
    elif scheme != "5x2cv" and corrected is not None:
        line = verdict(a, b, corrected)
    else:
        line = f"{a} vs {b}: not enough paired fold runs that did not diverge to test"
    return {
        "a": a,
        "b": b,
        "n_pairs": n_pairs,
        "val_diff": _none_for_nan(diff_val),
        "test_diff": _none_for_nan(diff_test),
        "corrected": corrected.as_dict() if corrected else None,
        "paired_test": paired.as_dict() if paired else None,
        "dietterich": dietterich.as_dict() if dietterich else None,
        "verdict": line,
    }


