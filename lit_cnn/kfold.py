"""The fold loop: a fresh model, Trainer, checkpoint and logger per fold, then the aggregate.

For each fold the loop trains with early-stopping checkpoints on ``val/loss``, restores the
best checkpoint and tests it on the whole test set, records the fold, and finally writes the
run directory's files (see :mod:`lit_cnn.report`) with mean +/- std and the fold ensemble.

The run directory is ``<root>/lightning_logs/<model>/<run_name or version_N>/``::

    fold_<i>/            TensorBoard events, hparams.yaml, checkpoints/{best,last}.ckpt
    folds.json           validation indices of each fold
    results.json         config, per-fold records, mean/std, ensemble accuracy, versions
    summary.md           a row per fold and the mean +/- std row
    curves.png           loss and accuracy per epoch, train vs validation, per fold
    confusion_matrix.png the fold ensemble on the test set
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lit_cnn import __version__
from lit_cnn.data import to_float
from lit_cnn.datamodule import KFoldDataModule
from lit_cnn.models import CNNModule
from lit_cnn.report import mean_std, notebook_summary, write_json, write_report
from lit_cnn.timing import EpochTimer


@dataclass
class FoldSetup:
    """What one fold is trained with, built fresh for every fold.

    Attributes:
        model: A new, untrained model.
        trainer_kwargs: ``Trainer`` arguments (the loop sets ``logger`` and adds callbacks).
        callbacks: The user's own callbacks, new instances.
    """

    model: CNNModule
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)


def new_run_dir(root: str | Path | None, model: str, run_name: str | None = None) -> Path:
    """Creates and returns ``<root>/lightning_logs/<model>/<run_name or version_N>``.

    Never reuses a directory: ``version_N`` takes the next free N, and an existing
    ``run_name`` is an error.

    Raises:
        FileExistsError: ``run_name`` names an existing directory.
    """
    parent = Path(root or ".") / "lightning_logs" / model
    parent.mkdir(parents=True, exist_ok=True)
    if run_name:
        run_dir = parent / run_name
        run_dir.mkdir()  # FileExistsError if it exists: never overwrite a run
        return run_dir
    taken = [
        int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:  # another process took it meanwhile
            n += 1


def _versions() -> dict[str, str]:
    return {"lit_cnn": __version__, "torch": torch.__version__, "lightning": L.__version__}


def _device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


@torch.inference_mode()
def predict_proba(model: CNNModule, dm: KFoldDataModule, device: torch.device) -> torch.Tensor:
    """Class probabilities (N_test, 10) of ``model`` on the whole test set, on the CPU."""
    model.eval().to(device)
    _, _, x_test, _ = dm.device_data(device)
    out = torch.cat(
        [
            model(to_float(x_test[i : i + dm.eval_batch_size], dm.data.scale))
            for i in range(0, len(x_test), dm.eval_batch_size)
        ]
    )
    # With softmax_output the network already ends in Softmax.
    probs = out if model.hparams.softmax_output else out.softmax(dim=-1)
    return probs.float().cpu()


def train_fold(
    fold: int, setup: FoldSetup, dm: KFoldDataModule, run_dir: Path, patience: int | None = None
) -> tuple[dict[str, Any], torch.Tensor, L.Trainer]:
    """Trains, checkpoints and tests one fold.

    Args:
        fold: Which fold of ``dm`` to train.
        setup: A fresh model, Trainer arguments and user callbacks for this fold.
        dm: The run's DataModule; its ``fold`` is set here.
        run_dir: The run directory; the fold writes into ``run_dir/fold_<fold>``.
        patience: Stop after this many epochs without a lower validation loss.

    Returns:
        The fold's record, its best model's test-set probabilities, and its Trainer.
    """
    fold_dir = run_dir / f"fold_{fold}"
    checkpoint = ModelCheckpoint(
        dirpath=fold_dir / "checkpoints",
        filename="best",
        monitor="val/loss",
        mode="min",
        save_last=True,
        auto_insert_metric_name=False,
    )
    timer = EpochTimer()
    callbacks = [*setup.callbacks, checkpoint, timer]
    if patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=patience))
    logger = TensorBoardLogger(
        save_dir=run_dir.parent,
        name=run_dir.name,
        version=f"fold_{fold}",
        default_hp_metric=False,
    )
    trainer = L.Trainer(**{**setup.trainer_kwargs, "callbacks": callbacks, "logger": logger})
    model = setup.model
    dm.fold = fold

    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - start

    history = model.history
    best = min(range(len(history)), key=lambda i: history[i].get("val/loss", np.inf))
    # Restores best.ckpt into `model` (the notebook tested the last epoch by mistake).
    test = trainer.test(model, datamodule=dm, ckpt_path=checkpoint.best_model_path, verbose=False)[
        0
    ]
    probs = predict_proba(model, dm, trainer.strategy.root_device)
    logger.log_hyperparams(
        {**model.hparams, **dm.hparams, "fold": fold}, metrics={"test/acc": test["test/acc"]}
    )
    logger.finalize("success")
    record = {
        "fold": fold,
        "best_epoch": history[best]["epoch"],
        "train_acc": history[best]["train/acc"],
        "val_loss": history[best]["val/loss"],
        "val_acc": history[best]["val/acc"],
        "test_loss": float(test["test/loss"]),
        "test_acc": float(test["test/acc"]),
        "test_samples": len(probs),
        "fit_seconds": fit_seconds,
        "train_epoch_seconds": timer.seconds,
        "diverged": False,
        "history": history,
    }
    return record, probs, trainer


def run_kfold(
    build: Callable[[int], FoldSetup],
    dm: KFoldDataModule,
    run_dir: Path,
    *,
    model_name: str,
    config: dict[str, Any] | None = None,
    early_break: bool = False,
    patience: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs K-fold cross-validation and writes the run directory.

    Args:
        build: Returns a fresh :class:`FoldSetup` for fold ``i``; called once per fold, after
            the fold's seed is set.
        dm: The DataModule holding the data and the folds.
        run_dir: An empty run directory (see :func:`new_run_dir`).
        model_name: The architecture's name, for the records.
        config: The configuration to store in results.json.
        early_break: Train only the first fold (the notebook's single train/validation round).
        patience: Early-stopping patience in epochs; ``None`` runs every epoch.
        log: Where progress lines go.

    Returns:
        The contents of results.json.
    """
    folds = dm.folds
    write_json(run_dir / "folds.json", {"val_indices": [v.tolist() for _, v in folds]})
    n_folds = 1 if early_break else dm.k
    records, probs = [], []
    trainer = None
    for fold in range(n_folds):
        # Seeding per fold makes a fold's result independent of which folds ran before it.
        L.seed_everything(dm.seed + fold, verbose=False)
        record, fold_probs, trainer = train_fold(fold, build(fold), dm, run_dir, patience)
        records.append(record)
        probs.append(fold_probs)
        log(
            f"Fold {fold + 1}/{dm.k}: test acc {record['test_acc']:.4f}, "
            f"{record['fit_seconds']:.1f} s"
        )

    y_test = dm.data.y_test.numpy()
    ensemble = torch.stack(probs).mean(dim=0).argmax(dim=1).numpy()
    train_mean, train_std = mean_std([r["train_acc"] for r in records])
    test_mean, test_std = mean_std([r["test_acc"] for r in records])
    results = {
        "model": model_name,
        "k": dm.k,
        "seed": dm.seed,
        "config": config or {},
        "data": dm.source,
        "folds": records,
        "train_acc_mean": train_mean,
        "train_acc_std": train_std,
        "test_acc_mean": test_mean,
        "test_acc_std": test_std,
        "ensemble_test_acc": float((ensemble == y_test).mean()),
        "versions": _versions(),
        "device": _device_name(trainer),
    }
    write_report(run_dir, results, y_test, ensemble)
    log("Final results:" if not early_break else "Results of the first fold:")
    log(notebook_summary(results))
    log(f"Ensemble test accuracy: {results['ensemble_test_acc']:.4f}")
    return results
