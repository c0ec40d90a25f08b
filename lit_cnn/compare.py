"""Compare architectures on paired folds, with significance tests.

    python scripts/compare.py --models ResNNBatch_NoSkip ResNNBatch_Skip
    python scripts/compare.py --models ResNN ResNNBatch --data.k 3 --repeats 2
    python scripts/compare.py --models ResNN ResNNBatch --scheme 5x2cv
    python scripts/compare.py --resume lightning_logs/compare/version_0

Every model is trained on the same folds: for repetition ``r`` one
:class:`~lit_cnn.datamodule.KFoldDataModule` with split seed ``seed + r`` serves all the
models, so each fold's scores are paired. Each (model, repetition) is an ordinary K-fold run
of :func:`lit_cnn.kfold.run_kfold`. Then, for each pair of models, the differences in
accuracy (in percentage points) are tested: the corrected resampled t-test on the
validation-fold scores (the one to trust), the plain paired t-test on the test-set scores
beside it and, for ``--scheme 5x2cv``, Dietterich's 5x2cv t-test (see :mod:`lit_cnn.stats`).

The comparison directory is ``<root>/lightning_logs/compare/<name or version_N>/``::

    compare.yaml         the configuration (read again by --resume)
    <model>/rep_<r>/     a K-fold run directory per model and repetition (see lit_cnn.kfold)
    comparison.json      per-model scores, per-pair tests and verdicts, the configuration
    comparison.md        the tables and the verdicts
    comparison.png       per-model accuracies, one point per fold run, paired runs joined

Errors in options or data end in one line on stderr and exit status 2, before any directory
is made.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import lightning as L
import numpy as np
from jsonargparse import ActionConfigFile, ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

from lit_cnn.cli import (
    TRAINER_DEFAULTS,
    UsageError,
    check_trainer_options,
    own_message,
    parse_error_line,
    run_interruptibly,
    split_resume,
)
from lit_cnn.data import DataError
from lit_cnn.datamodule import KFoldDataModule
from lit_cnn.kfold import FoldSetup, new_run_dir, run_kfold
from lit_cnn.models import get_model, list_models
from lit_cnn.report import mean_std, save_figure, write_json, write_text
from lit_cnn.stats import (
    TTestResult,
    corrected_resampled_ttest,
    dietterich_5x2cv,
    paired_ttest,
)

PROG = "compare.py"
CONFIG = "compare.yaml"
SCHEMES = ("kfold", "5x2cv")
HPARAM_KEYS = ("lr", "l2", "optimizer")
ALPHA = 0.05  # significance level of the verdicts; the intervals are 1 - ALPHA = 95%
MINUS = "\u2212"


class HParams(TypedDict, total=False):
    """Per-model hyper-parameters settable with ``--hparams`` (each optional)."""

    lr: float
    l2: float
    optimizer: Literal["adam", "sgdm"]


# ----------------------------------------------------------------------------- options


def resolve_hparams(
    models: Sequence[str],
    common: Mapping[str, Any] | None = None,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The hyper-parameters each model is trained with, validated.

    Later sources win: the architecture's own defaults (the notebook's), then ``common``
    (``--model.*``, for every model), then ``per_model[name]`` (``--hparams``, one model).

    Args:
        models: Architecture names.
        common: ``lr``, ``l2``, ``optimizer`` for all models; ``None`` values are ignored.
        per_model: Architecture name to its own ``lr``, ``l2``, ``optimizer``.

    Returns:
        Each model's ``{"lr", "l2", "optimizer"}``.

    Raises:
        UsageError: An unknown architecture or key, or a value the model refuses; the
            message names the option.
    """
    common = {k: v for k, v in (common or {}).items() if v is not None}
    per_model = per_model or {}
    valid = list_models()
    for name, values in per_model.items():
        if name not in valid:
            raise UsageError(f"--hparams: unknown model {name!r}; valid models: {', '.join(valid)}")
        unknown = sorted(set(values) - set(HPARAM_KEYS))
        if unknown:
            raise UsageError(
                f"--hparams.{name}: unknown key {unknown[0]!r}; valid keys: "
                f"{', '.join(HPARAM_KEYS)}"
            )
    resolved = {}
    for name in models:
        own = {k: v for k, v in per_model.get(name, {}).items() if v is not None}
        try:
            # Building the model once validates the values and fills in its defaults.
            model = get_model(name, **{**common, **own})
        except ValueError as err:
            message = str(err)
            found = re.match(r"model\.(\w+) ", message)
            if found and found.group(1) in own:
                message = f"--hparams.{name}.{message[len('model.') :]}"
            elif found:
                message = f"--{message}"
            elif "optimizer" in message:
                where = f"--hparams.{name}.optimizer" if "optimizer" in own else "--model.optimizer"
                message = f"{where}: {message}"
            raise UsageError(message) from None
        resolved[name] = {k: model.hparams[k] for k in HPARAM_KEYS}
    return resolved


def validate_models(models: Sequence[str] | None) -> list[str]:
    """Checks ``--models``: at least two distinct registered architectures.

    Args:
        models: The names given.

    Returns:
        The names, as a list.

    Raises:
        UsageError: Fewer than two, a repeated or an unknown name.
    """
    models = list(models or [])
    valid = list_models()
    for name in models:
        if name not in valid:
            raise UsageError(f"--models: unknown model {name!r}; valid models: {', '.join(valid)}")
    if len(models) < 2:
        raise UsageError(f"--models needs at least 2 models to compare, got {len(models)}")
    if len(set(models)) != len(models):
        twice = next(m for m in models if models.count(m) > 1)
        raise UsageError(f"--models: {twice} is given twice")
    return models


def design(scheme: str, k: int | None, repeats: int | None) -> tuple[int, int]:
    """The number of folds and repetitions of a scheme.

    ``kfold``: ``k`` (default 3) folds, ``repeats`` (default 1) repetitions. ``5x2cv``:
    always 2 folds and 5 repetitions, the design Dietterich's test needs.

    Args:
        scheme: ``"kfold"`` or ``"5x2cv"``.
        k: ``--data.k``; ``None`` when not given.
        repeats: ``--repeats``; ``None`` when not given.

    Returns:
        ``(k, repeats)``.

    Raises:
        UsageError: Values the scheme cannot take.
    """
    if scheme == "5x2cv":
        if k not in (None, 2):
            raise UsageError(f"--scheme 5x2cv is 2-fold: leave --data.k out or give 2, got {k}")
        if repeats not in (None, 5):
            raise UsageError(
                f"--scheme 5x2cv is 5 repetitions: leave --repeats out or give 5, got {repeats}"
            )
        return 2, 5
    k = 3 if k is None else k
    repeats = 1 if repeats is None else repeats
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    return k, repeats


def build_parser() -> LightningArgumentParser:
    """The ``compare.py`` option parser (errors raise instead of exiting)."""
    parser = LightningArgumentParser(
        prog=PROG,
        description=(
            "Train several architectures on the same folds (repeated K-fold or 5x2cv) and "
            "test whether their accuracies differ. The last line printed is the comparison "
            "directory."
        ),
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML configuration.")
    parser.add_argument(
        "--models",
        type=str,
        nargs="+",
        required=True,
        help="Two or more architectures; each later one is compared with each earlier one "
        f"(list the baseline first). Valid: {', '.join(list_models())}.",
    )
    parser.add_argument(
        "--model.lr", type=float | None, default=None, help="Learning rate of every model."
    )
    parser.add_argument(
        "--model.l2", type=float | None, default=None, help="L2 weight decay of every model."
    )
    parser.add_argument(
        "--model.optimizer",
        type=Literal["adam", "sgdm"] | None,
        default=None,
        help="Optimizer of every model.",
    )
    parser.add_argument(
        "--hparams",
        type=dict[str, HParams],
        default={},
        help="Per-model hyper-parameters, e.g. {ResNN: {lr: 0.001, l2: 0.01}}; they override "
        "--model.*, which overrides each architecture's notebook defaults.",
    )
    parser.add_argument(
        "--repeats",
        type=int | None,
        default=None,
        help="Repetitions of the K-fold with split seeds seed, seed+1, ... (default 1; "
        "5 with --scheme 5x2cv).",
    )
    parser.add_argument(
        "--scheme",
        type=Literal["kfold", "5x2cv"],
        default="kfold",
        help="kfold: repeated K-fold; 5x2cv: Dietterich's 5 repetitions of 2-fold.",
    )
    parser.add_argument(
        "--patience",
        type=int | None,
        default=None,
        help="Stop a fold after this many epochs without a lower val/loss (default: off).",
    )
    parser.add_argument(
        "--name",
        type=str | None,
        default=None,
        help="Name of the comparison directory (default: the next version_N).",
    )
    parser.add_argument(
        "--early_break",
        type=bool | None,
        default=None,
        help="Refused: a comparison needs every fold.",
    )
    parser.add_argument(
        "--resume",
        type=str | None,
        default=None,
        help="Continue the comparison in this directory with its saved configuration.",
    )
    parser.add_class_arguments(KFoldDataModule, "data", instantiate=False)
    # None: 3 folds for --scheme kfold, 2 for 5x2cv; a given value is checked against it.
    parser.set_defaults({"data.k": None})
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    return parser


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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains every model on the same folds of every repetition, then writes the comparison.

    Runs that finished earlier (their ``results.json`` and figures exist) are read, not
    redone; an unfinished run continues fold by fold, as :func:`lit_cnn.kfold.run_kfold` does.

    Args:
        cmp_dir: The comparison directory (existing).
        models: Architecture names, the baseline first.
        hparams: Each model's ``lr``, ``l2`` and ``optimizer`` (see :func:`resolve_hparams`).
        data: :class:`KFoldDataModule` arguments; ``seed`` is repetition 0's split seed and
            repetition ``r`` uses ``seed + r``.
        repeats: Number of repetitions R.
        scheme: ``"kfold"`` or ``"5x2cv"`` (which needs ``data["k"] == 2`` and R = 5).
        trainer: ``Trainer`` arguments (``callbacks`` are taken out and added by the loop),
            or a function returning fresh ones, called once per fold.
        patience: Early-stopping patience in epochs; ``None`` runs every epoch.
        config: The configuration to store in comparison.json and each run's results.json.
        datamodule: Returns repetition ``r``'s DataModule; by default a new
            ``KFoldDataModule(**data)`` with seed ``seed + r``. Called only when a model of
            that repetition still has folds to train.
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
                _fold_builder(name, dict(hparams[name]), trainer),
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
) -> Callable[[int], FoldSetup]:
    def build(fold: int) -> FoldSetup:
        # Called by run_kfold after it seeded the fold with seed + fold: every model of a
        # fold starts from the same random state and sees the same batch order.
        kwargs = dict(trainer() if callable(trainer) else trainer or {})
        callbacks = kwargs.pop("callbacks", None) or []
        kwargs.pop("logger", None)  # the loop's TensorBoard logger
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        return FoldSetup(
            model=get_model(name, **hparams), trainer_kwargs=kwargs, callbacks=callbacks
        )

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


def signed(x: float, digits: int = 2) -> str:
    """``+0.31`` or ``−0.12`` (a true minus sign).

    Args:
        x: The number.
        digits: Decimals shown.
    """
    text = f"{x:+.{digits}f}"
    return text.replace("-", MINUS)


def format_p(p: float) -> str:
    """``p = 0.14``, ``p = 0.0012`` or ``p < 0.001``; never rounded across 0.05.

    Args:
        p: The p-value.
    """
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    if (float(text) < ALPHA) != (p < ALPHA):  # e.g. 0.0496 would print as 0.05
        text = f"{p:.4f}"
    return f"p = {text}"


def verdict(a: str, b: str, res: TTestResult, overall_mean: float | None = None) -> str:
    """One line in plain words, e.g. ``B vs A: +0.31 pt (95% CI −0.12 to +0.74), p = 0.14:
    no significant difference at 5%``.

    Args:
        a: The later model; the difference is ``a - b``.
        b: The earlier model.
        res: The test the verdict rests on.
        overall_mean: For the 5x2cv test, whose estimate is one fold's difference: the mean
            of all ten differences, added at the end so that the single fold is not taken
            for the average.
    """
    level = f"{round(100 * res.confidence)}%"
    where = " in the first fold" if overall_mean is not None else ""
    head = (
        f"{a} vs {b}: {signed(res.mean)} pt{where} ({level} CI {signed(res.ci_low)} to "
        f"{signed(res.ci_high)}), {format_p(res.p)}"
    )
    pct = f"{round(100 * ALPHA)}%"
    if not res.significant(ALPHA):
        line = f"{head}: no significant difference at {pct}"
    else:
        line = f"{head}: significant at {pct}, {a if res.mean > 0 else b} is better"
    if overall_mean is not None:
        line += f" (mean of all {res.n} folds {signed(overall_mean)} pt)"
    return line


# ----------------------------------------------------------------------------- files

TRUST = (
    "Which test to trust: {which} The {j} validation-fold differences come from models "
    "trained on overlapping resamples of the same {n} images (two folds of one repetition "
    "share {shared} of their training images; repetitions reuse all of them), so they are "
    "positively correlated and the plain variance of their mean, s²/J, is too small. "
    "Nadeau and Bengio (2003) inflate it to (1/J + n_val/n_train)·s², here "
    "(1/{j} + {nv:.0f}/{nt:.0f})·s². The plain paired t-test on the test-set scores treats "
    "the {j} fold models as independent although they were trained on overlapping data and "
    "are all scored on the same {ntest} test images; like any uncorrected test on resampled "
    "scores it rejects a true null hypothesis far more often than 5% (Dietterich, 1998), so "
    "it is shown for reference only."
)
TRUST_KFOLD = "the corrected resampled t-test, on which the verdicts rest."
TRUST_5X2 = (
    "Dietterich's 5×2cv paired t-test, on which the verdicts rest, or the corrected "
    "resampled t-test beside it; not the plain paired t-test. Dietterich's test is built for "
    "this design (t with 5 degrees of freedom) and keeps its 5% level, but its estimate is the "
    "first fold's difference alone, so it has less power; the corrected test uses all ten "
    "differences as an estimate."
)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _test_row(label: str, scores: str, res: Mapping[str, Any] | None) -> str:
    if res is None:
        return f"| {label} | {scores} | too few pairs | | | | | |"
    return (
        f"| {label} | {scores} | {res['test']} | {signed(res['mean'])} | "
        f"{signed(res['ci_low'])} to {signed(res['ci_high'])} | {signed(res['t'])} | {res['df']} "
        f"| {format_p(res['p']).removeprefix('p = ').removeprefix('p ')} |"
    )


def comparison_markdown(comp: Mapping[str, Any]) -> str:
    """The comparison as Markdown: verdicts, per-model table, per-pair tests, fold runs.

    Args:
        comp: The contents of comparison.json.
    """
    models, k, repeats = comp["models"], comp["k"], comp["repeats"]
    design_text = (
        "5×2cv (5 repetitions of 2-fold)"
        if comp["scheme"] == "5x2cv"
        else f"{k}-fold × {repeats} repetition{'s' if repeats > 1 else ''}"
    )
    seeds = ", ".join(str(s) for s in comp["seeds"])
    lines = [
        f"# Comparison {comp.get('name', '')}: {', '.join(models)}",
        "",
        f"{design_text}, split seeds {seeds}; every model trained on the same folds. Data: "
        f"{comp['data']} ({comp['n_train_total']} training images; each fold trains on "
        f"{comp['n_fold_train']:.0f} and validates on {comp['n_fold_val']:.0f}; "
        f"{comp['n_test']} test images).",
        "",
        f"## Verdicts ({comp['verdict_test']} on the validation-fold accuracies, 95% CI, "
        "differences in percentage points)",
        "",
        *[f"- {p['verdict']}" for p in comp["pairs"]],
        "",
        "## Models",
        "",
        "| model | lr | L2 | optimizer | validation acc % (mean ± std) | test acc % "
        "(mean ± std) | ensemble test acc % per repetition | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models:
        s, hp = comp["per_model"][m], comp.get("hparams", {}).get(m, {})
        val = f"{_pct(s['val_acc_mean'])} ± {_pct(s['val_acc_std'])}"
        test = f"{_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])}"
        ens = ", ".join(_pct(e) for e in s["ensemble_test_acc"])
        lines.append(
            f"| {m} | {hp.get('lr', '')} | {hp.get('l2', '')} | {hp.get('optimizer', '')} | "
            f"{val} | {test} | {ens} | {s['fit_seconds']:.0f} |"
        )
    lines += [
        "",
        "Mean ± population standard deviation over all "
        f"{k * repeats} fold runs. The validation accuracy is each fold's at its best epoch "
        "(lowest validation loss); the test accuracy is that epoch's model on the whole test "
        "set; the ensemble averages the softmax of a repetition's fold models.",
        "",
        "## Pairs",
        "",
        "| pair (difference) | scores | test | estimate (pt) | 95% CI (pt) | t | df | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in comp["pairs"]:
        label = f"{p['a']} − {p['b']}"
        n = p["n_pairs"]
        lines.append(_test_row(label, f"validation folds ({n} paired)", p["corrected"]))
        lines.append(_test_row("", f"test set ({n} paired fold models)", p["paired_test"]))
        if comp["scheme"] == "5x2cv":
            # Its estimate is the first fold's difference, not a mean.
            lines.append(_test_row("", "validation folds (5×2; first fold)", p["dietterich"]))
    j = k * repeats
    trust = TRUST.format(
        which=TRUST_5X2 if comp["scheme"] == "5x2cv" else TRUST_KFOLD,
        j=j,
        n=comp["n_train_total"],
        shared="none" if k == 2 else f"{k - 2}/{k - 1}",
        nv=comp["n_fold_val"],
        nt=comp["n_fold_train"],
        ntest=comp["n_test"],
    )
    lines += ["", trust, "", "## Fold runs (accuracy %)", ""]
    header = "| repetition | seed | fold | " + " | ".join(f"{m} val | {m} test" for m in models)
    lines += [header + " |", "|" + " --- |" * (3 + 2 * len(models))]
    for r in range(repeats):
        for f in range(k):
            cells = []
            for m in models:
                s = comp["per_model"][m]
                cells += [_pct(s["val_acc"][r][f]), _pct(s["test_acc"][r][f])]
            lines.append(f"| {r} | {comp['seeds'][r]} | {f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "References: Nadeau and Bengio (2003), Inference for the generalization error, "
        "Machine Learning 52; Dietterich (1998), Approximate statistical tests for comparing "
        "supervised classification learning algorithms, Neural Computation 10; Bouckaert and "
        "Frank (2004), Evaluating the replicability of significance tests for comparing "
        "learning algorithms, PAKDD.",
        "",
    ]
    return "\n".join(lines)


def comparison_figure(comp: Mapping[str, Any]):  # -> matplotlib Figure
    """Two panels, validation-fold and test accuracy per model: a point per fold run, the
    same fold run joined across models, a bar at each model's mean.

    Args:
        comp: The contents of comparison.json.
    """
    from matplotlib.figure import Figure

    models, k, repeats = comp["models"], comp["k"], comp["repeats"]
    fig = Figure(figsize=(max(6.0, 2.2 * len(models) + 2), 4.5))
    axes = fig.subplots(1, 2, sharey=False)
    x = np.arange(len(models))
    colors = [f"C{r % 10}" for r in range(repeats)]
    for ax, key, title in zip(
        axes,
        ("val_acc", "test_acc"),
        ("Validation fold (the corrected t-test's scores)", "Test set"),
        strict=True,
    ):
        for r in range(repeats):
            for f in range(k):
                ys = [comp["per_model"][m][key][r][f] for m in models]
                ys = [np.nan if y is None else 100 * y for y in ys]
                ax.plot(
                    x,
                    ys,
                    marker="o",
                    color=colors[r],
                    alpha=0.6,
                    linewidth=1,
                    label=f"repetition {r} (seed {comp['seeds'][r]})" if f == 0 else None,
                )
        means = [comp["per_model"][m][f"{key}_mean"] for m in models]
        ax.scatter(
            x,
            [np.nan if v is None else 100 * v for v in means],
            marker="_",
            s=900,
            color="black",
            zorder=3,
            label="mean",
        )
        ax.set_xticks(x, models, rotation=15)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small")
    fig.suptitle("Paired fold runs: each line is one fold of one repetition", fontsize="medium")
    # Room at the bottom for the shared legend.
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def write_comparison(cmp_dir: Path, comp: Mapping[str, Any]) -> None:
    """Writes comparison.json, comparison.md and comparison.png into ``cmp_dir``, atomically.

    Args:
        cmp_dir: The comparison directory.
        comp: The comparison (see :func:`analyse`).
    """
    write_json(cmp_dir / "comparison.json", comp)
    write_text(cmp_dir / "comparison.md", comparison_markdown(comp))
    save_figure(comparison_figure(comp), cmp_dir / "comparison.png")


def summary_lines(comp: Mapping[str, Any]) -> list[str]:
    """What the command prints at the end: a line per model, then the verdicts.

    Args:
        comp: The contents of comparison.json.
    """
    lines = []
    for m in comp["models"]:
        s = comp["per_model"][m]
        ens = ", ".join(_pct(e) for e in s["ensemble_test_acc"])
        lines.append(
            f"{m}: validation {_pct(s['val_acc_mean'])} ± {_pct(s['val_acc_std'])} %, "
            f"test {_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])} %, "
            f"ensemble {ens} %"
        )
    lines.append(f"Verdicts ({comp['verdict_test']}, validation folds):")
    lines += [p["verdict"] for p in comp["pairs"]]
    return lines


# ----------------------------------------------------------------------------- command line

# Options that may accompany --resume: they change how a run looks, not its results.
RESUME_ALLOWED = ("--trainer.enable_progress_bar",)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _error_line(err: Exception) -> str:
    text = str(err)
    if 'Parser key "hparams"' in text and "Unexpected keys" in text:
        keys = re.findall(r"Unexpected keys: \{([^}]*)\}", text)
        return (
            f"--hparams: unknown key {keys[0] if keys else ''}; valid keys: "
            f"{', '.join(HPARAM_KEYS)}"
        )
    found = re.search(r'Key "(\w+)" is required', text)
    if found:
        return f"--{found.group(1)} is required"
    return parse_error_line(err)


def _split_resume(argv: list[str]) -> tuple[str | None, list[str]]:
    """Takes ``--resume DIR`` out of ``argv``: DIR's saved configuration replaces the rest."""
    resume, rest = split_resume(argv, "comparison")
    if resume is None:
        return None, argv
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"--resume {resume}: no such directory")
    if not (path / CONFIG).is_file():
        raise UsageError(f"--resume {resume}: not a comparison directory (it has no {CONFIG})")
    return resume, ["--config", str(path / CONFIG), *rest]


def compare_main(args: list[str] | None = None) -> int:
    """Parses options, trains and compares the models, and returns the exit status.

    Exit status: 0 done; 1 some fold diverged (its pairs are left out of the tests); 2 a bad
    option or data file (one line on stderr, no directory made); 130 or 143 interrupted by
    SIGINT or SIGTERM (resume with ``--resume DIR``).

    Args:
        args: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    parser = build_parser()
    try:
        resume, argv = _split_resume(argv)
        cfg = parser.parse_args(argv)
        if cfg.early_break:
            raise UsageError(
                "--early_break is refused here: a comparison trains every fold of every "
                "repetition, so that the models' scores are paired"
            )
        models = validate_models(cfg.models)
        k, repeats = design(cfg.scheme, cfg.data.k, cfg.repeats)
        hparams = resolve_hparams(models, dict(cfg.model), cfg.hparams)
        check_trainer_options(cfg.trainer)
        if cfg.patience is not None and cfg.patience < 1:
            raise UsageError(f"--patience must be at least 1, got {cfg.patience}")
        data = {**dict(cfg.data), "k": k}
        dm0 = KFoldDataModule(**data)
        _ = dm0.folds  # loads and checks the data and the split before any directory exists
    except UsageError as err:
        return _fail(str(err))
    except ArgumentError as err:
        return _fail(_error_line(err))
    except DataError as err:
        return _fail(str(err))
    except ValueError as err:
        return _fail(own_message(err) or str(err).strip().splitlines()[0])

    # The configuration as run, with the scheme's k and repeats filled in, so --resume
    # reproduces it whatever the defaults become.
    cfg.data.k, cfg.repeats, cfg.resume = k, repeats, None
    if resume:
        cmp_dir = Path(resume)
    else:
        try:
            cmp_dir = new_run_dir(cfg.trainer.default_root_dir, "compare", cfg.name)
        except FileExistsError as err:
            return _fail(f"comparison directory {err.filename} exists; choose another --name")
        except OSError as err:
            where = cfg.trainer.default_root_dir or "."
            return _fail(f"--trainer.default_root_dir {where}: cannot write there ({err.strerror})")
        cfg.name = cmp_dir.name
        write_text(cmp_dir / CONFIG, parser.dump(cfg, skip_unset=False))
    config = json.loads(parser.dump(cfg, format="json", skip_unset=False))
    config.pop("config", None)

    def trainer_kwargs() -> dict[str, Any]:
        # Instantiated per fold: every fold gets new callback objects.
        return dict(parser.instantiate(cfg)["trainer"])

    def datamodule(r: int) -> KFoldDataModule:
        return dm0 if r == 0 else KFoldDataModule(**{**data, "seed": data["seed"] + r})

    comp, status = run_interruptibly(
        lambda: run_comparison(
            cmp_dir,
            models,
            hparams,
            data=data,
            repeats=repeats,
            scheme=cfg.scheme,
            trainer=trainer_kwargs,
            patience=cfg.patience,
            config=config,
            datamodule=datamodule,
        ),
        PROG,
        f"python scripts/compare.py --resume {cmp_dir}",
    )
    if status is not None:
        return status
    for line in summary_lines(comp):
        print(line)
    print(cmp_dir)
    return 1 if any(comp["per_model"][m]["diverged"] for m in models) else 0
