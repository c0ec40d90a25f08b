"""Compare architectures on paired folds, with significance tests.

    python scripts/compare.py --models ResNNBatch_NoSkip ResNNBatch_Skip
    python scripts/compare.py --models ResNN ResNNBatch --data.k 3 --repeats 2
    python scripts/compare.py --models ResNN ResNNBatch --scheme 5x2cv
    python scripts/compare.py --resume lightning_logs/compare/version_0

Every model is trained on the same folds: for repetition ``r`` one
:class:`~lit_cnn.cv.datamodule.KFoldDataModule` with split seed ``seed + r`` serves all the
models, so each fold's scores are paired. Each (model, repetition) is an ordinary K-fold run
of :func:`lit_cnn.cv.loop.run_kfold`. Then, for each pair of models, the differences in
accuracy (in percentage points) are tested (see :mod:`lit_cnn.analysis.pairs`): the Bayesian
correlated t-test with a region of practical equivalence on the validation-fold scores (the
verdicts lead with it); the corrected resampled t-test on the same scores; the plain paired
t-test on the test-set scores; McNemar's exact test on the test set per repetition; for
``--scheme 5x2cv``, Dietterich's 5x2cv t-test and the combined 5x2cv F-test. With more than
two models every p-value gets Holm's adjustment across the pairs.

The comparison directory is ``<root>/lightning_logs/compare/<name or version_N>/``::

    compare.yaml         the configuration (read again by --resume)
    <model>/rep_<r>/     a K-fold run directory per model and repetition (see lit_cnn.cv.loop)
    comparison.json      per-model scores, per-pair tests and verdicts, the configuration
    comparison.md        the verdicts (Bayesian first) and the tables
    comparison.png       per-model accuracies, one point per fold run, paired runs joined
    posterior_<B>_vs_<A>.png  per pair: the posterior of the difference, the ROPE shaded

Errors in options or data end in one line on stderr and exit status 2, before any directory
is made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_cnn.analysis.pairs import analyse
from lit_cnn.analysis.verdicts import write_comparison
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.loop import PROBS, run_kfold
from lit_cnn.cv.trainer import FoldSetup
from lit_cnn.models.modules import get_model

__all__ = ["SCHEMES", "analyse", "collect", "run_comparison"]

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
    rope: float = 1.0,
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
        rope: Half-width of the region of practical equivalence, in percentage points.
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

    # The test labels, for McNemar's test on the fold ensembles' predictions.
    y_test = make_dm(0).data.y_test.numpy()
    comparison = analyse(collect(cmp_dir, models, repeats, y_test), scheme, rope)
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


def ensemble_correct(
    run_dir: Path, run: Mapping[str, Any], y_test: np.ndarray
) -> np.ndarray | None:
    """Which test images a run's fold ensemble gets right (as its results.json scored them).

    Args:
        run_dir: The K-fold run directory.
        run: Its results.json.
        y_test: The test labels.

    Returns:
        A bool array over the test images scored; ``None`` if every fold diverged.
    """
    probs = [
        np.load(run_dir / f"fold_{f['fold']}" / PROBS) for f in run["folds"] if not f["diverged"]
    ]
    if not probs:
        return None
    scored = min(len(p) for p in probs)  # a limited test pass scored the first images
    ensemble = np.mean([p[:scored] for p in probs], axis=0).argmax(axis=1)
    return ensemble == y_test[:scored]


def collect(
    cmp_dir: Path, models: Sequence[str], repeats: int, y_test: np.ndarray | None = None
) -> dict[str, Any]:
    """Reads every run of a comparison and checks that the folds are paired.

    Args:
        cmp_dir: The comparison directory.
        models: The architecture names.
        repeats: Number of repetitions.
        y_test: The test labels; with them, which test images each fold ensemble gets
            right is read too (for McNemar's test).

    Returns:
        ``{"models", "k", "seeds", "data", "fold_sizes", "n_test", "runs", "test_correct"}``,
        where ``runs[model][r]`` is repetition r's results.json, ``fold_sizes`` the
        validation fold sizes of repetition 0, and ``test_correct[model][r]`` the fold
        ensemble's right answers (``None`` without ``y_test``).

    Raises:
        RuntimeError: Two models of one repetition were validated on different folds.
    """
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    correct: dict[str, list[np.ndarray | None]] = {m: [] for m in models}
    fold_sizes: list[int] = []
    for r in range(repeats):
        reference = None
        for name in models:
            run_dir = cmp_dir / name / f"rep_{r}"
            runs[name].append(json.loads((run_dir / "results.json").read_text()))
            if y_test is not None:
                correct[name].append(ensemble_correct(run_dir, runs[name][-1], y_test))
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
        "test_correct": correct if y_test is not None else None,
    }
