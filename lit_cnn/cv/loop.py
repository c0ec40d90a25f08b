"""The fold loop: a fresh model, Trainer, checkpoint and logger per fold, then the aggregate.

For each fold the loop trains with early-stopping checkpoints on ``val/loss``, restores the
best checkpoint and tests it on the whole test set, records the fold, and finally writes the
run directory's files (see :mod:`lit_cnn.cv.report`) with mean +/- std and the fold ensemble.

The run directory is ``<root>/lightning_logs/<model>/<run_name or version_N>/``::

    fold_<i>/            TensorBoard events, hparams.yaml, checkpoints/{best,last}.ckpt
    folds.json           validation indices of each fold
    oof_probs.npy        out-of-fold probabilities (N_train, 10), NaN rows for unscored images
    results.json         config, per-fold records, mean/std, ensemble and out-of-fold accuracy
    summary.md           a row per fold and the mean +/- std row
    curves.png           loss and accuracy per epoch, train vs validation, per fold
    confusion_matrix.png the fold ensemble on the test set
    oof_confusion_matrix.png  the out-of-fold predictions on the training set
"""

from __future__ import annotations

import gc
import json
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_cnn import __version__
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.distributed import FoldParallel
from lit_cnn.cv.malloc import release_free_memory
from lit_cnn.cv.report import (
    FoldProbs,
    OutOfFold,
    atomic_write,
    mean_std,
    notebook_summary,
    write_json,
    write_report,
)
from lit_cnn.cv.trainer import FoldSetup, build_trainer, tensorboard_loggers
from lit_cnn.data.loading import to_float
from lit_cnn.models.modules import CNNModule

__all__ = ["FoldSetup", "run_kfold", "train_fold", "train_folds", "summarize"]


def _versions() -> dict[str, str]:
    return {"lit_cnn": __version__, "torch": torch.__version__, "lightning": L.__version__}


def _device_name(dm: KFoldDataModule) -> str:
    device = dm.device_data_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


@torch.inference_mode()
def predict_proba(
    model: CNNModule,
    dm: KFoldDataModule,
    device: torch.device,
    train_indices: np.ndarray | None = None,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Class probabilities of ``model``, on the CPU.

    Args:
        model: The model, put in eval mode here.
        dm: The DataModule holding the images.
        device: Where to compute.
        train_indices: Score these training images, in this order; ``None`` scores the
            whole test set.
        precision: The Trainer's precision plugin: its input conversion and forward context
            (autocast, a 64-bit default dtype) apply as in Lightning's own test pass.

    Returns:
        (N, 10) probabilities: N test images, or ``len(train_indices)`` training images.
    """
    model.eval().to(device)
    x_train, _, x_test, _ = dm.device_data(device)
    if train_indices is None:
        images = x_test
    else:
        images = x_train[torch.as_tensor(train_indices, device=device)]
    precision = precision or Precision()  # the base plugin changes nothing
    out: torch.Tensor | None = None
    with precision.forward_context():
        for i in range(0, len(images), dm.eval_batch_size):
            x = to_float(images[i : i + dm.eval_batch_size], dm.data.scale)
            y = model(precision.convert_input(x))
            # Written into one buffer: a list of small outputs kept between the batches'
            # large temporaries fragments the heap, which then holds on to them.
            out = y.new_empty((len(images), y.shape[1])) if out is None else out
            out[i : i + len(y)] = y
    if out is None:  # nothing to score
        return torch.empty(0, 10)
    # With softmax_output the network already ends in Softmax.
    probs = out if model.hparams.softmax_output else out.softmax(dim=-1)
    return probs.float().cpu()


def _best(validations: list[dict[str, Any]]) -> dict[str, Any] | None:
    # The first pass with the lowest val/loss: the one ModelCheckpoint kept as best.ckpt
    # (it replaces its best only on a strictly lower value; a NaN loss never wins).
    finite = [v for v in validations if np.isfinite(v.get("val/loss", np.nan))]
    return min(finite, key=lambda v: v["val/loss"]) if finite else None


def hparams_view(model: CNNModule, dm: KFoldDataModule, fold: int) -> dict[str, Any]:
    """The hyper-parameters a fold shows in TensorBoard's hparams view, by option name."""
    return {
        "model": type(model).__name__,
        **model.optimizer_summary(),
        "batch_size": dm.batch_size,
        "k": dm.k,
        "seed": dm.seed,
        "fold": fold,
    }


def train_fold(
    fold: int,
    setup: FoldSetup,
    dm: KFoldDataModule,
    run_dir: Path,
    patience: int | None = None,
    ckpt_path: Path | None = None,
) -> tuple[dict[str, Any], FoldProbs | None, L.Trainer]:
    """Trains, checkpoints and tests one fold.

    Args:
        fold: Which fold of ``dm`` to train.
        setup: A fresh model, Trainer arguments, user callbacks and loggers for this fold.
        dm: The run's DataModule; its ``fold`` is set here.
        run_dir: The run directory; the fold writes into ``run_dir/fold_<fold>``.
        patience: Stop after this many epochs without a lower validation loss.
        ckpt_path: Continue from this checkpoint (model, optimizer, epoch and callbacks).

    Returns:
        The fold's record, its best model's probabilities (``None`` if the fold diverged or
        on a DDP rank other than 0), and its Trainer. The probabilities are those of the
        test set and of the fold's validation images (its out-of-fold predictions), in the
        order of ``dm.folds[fold][1]``.
    """
    built = build_trainer(setup, run_dir, fold, patience)
    trainer, checkpoint = built.trainer, built.checkpoint
    # Lightning warns when an epoch has fewer batches than log_every_n_steps; lit_cnn logs
    # once per epoch, so it never applies.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
    model = setup.model
    dm.fold = fold

    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start

    history = model.history
    record: dict[str, Any] = {
        "fold": fold,
        "best_epoch": None,
        "best_step": None,
        "train_acc": None,
        "val_loss": None,
        "val_acc": None,
        "test_loss": None,
        "test_acc": None,
        "test_samples": 0,
        "fit_seconds": fit_seconds,
        "train_epoch_seconds": built.timer.seconds,
        "diverged": model.diverged,
        "history": history,
        "validations": model.validations,
    }
    if not model.diverged and not model.validations:
        # The fit ended before its first validation pass (max_steps, max_time): the final
        # weights are validated, and tested below, as the fold's only candidate.
        trainer.validate(model, datamodule=dm, verbose=False)
    best = _best(model.validations)
    if model.diverged or best is None:
        record["diverged"] = True
        record["diverged_epoch"] = (
            model.diverged_epoch if model.diverged_epoch is not None else model.current_epoch
        )
        return record, None, trainer

    # fast_dev_run saves no checkpoint: the model is tested as it ends. Otherwise best.ckpt
    # is restored into `model` (the notebook tested the last epoch by mistake).
    best_path = checkpoint.best_model_path or None
    test = trainer.test(model, datamodule=dm, ckpt_path=best_path, verbose=False)[0]
    # Only the rank that records the fold needs the probabilities (for the ensemble). On one
    # device the test pass kept them; under DDP it saw a share per rank: score again.
    probs = None
    if trainer.is_global_zero:
        device = trainer.strategy.root_device
        test_probs = model.test_probs
        if test_probs is None:
            test_probs = predict_proba(model, dm, device, precision=trainer.precision_plugin)
        # One pass of the best model over the images it did not train on: the out-of-fold
        # predictions (whatever limit_val_batches or fast_dev_run validated).
        val_probs = predict_proba(
            model, dm, device, dm.folds[fold][1], precision=trainer.precision_plugin
        )
        probs = FoldProbs(test_probs, val_probs)
    # The training metrics of the epoch the best pass validated (the last epoch's when the
    # pass came after the fit, as above).
    epoch_train = {h["epoch"]: h for h in history}.get(best["epoch"]) or (
        history[-1] if history else {}
    )
    record.update(
        best_epoch=best["epoch"],
        best_step=best["step"],
        train_acc=epoch_train.get("train/acc"),
        val_loss=best["val/loss"],
        val_acc=best["val/acc"],
        test_loss=float(test["test/loss"]),
        test_acc=float(test["test/acc"]),
        test_samples=model.test_samples,
    )
    # Under tags of their own: TensorBoard's hparams view reads a tag's latest value, and the
    # fold's val/* and test/* series end with the last epoch, not the best one.
    metrics = {
        "best/val/loss": best["val/loss"],
        "best/val/acc": best["val/acc"],
        "best/test/acc": record["test_acc"],
    }
    for logger in tensorboard_loggers(trainer.loggers):  # none under fast_dev_run
        logger.log_hyperparams(hparams_view(model, dm, fold), metrics=metrics)
    for logger in trainer.loggers:
        logger.finalize("success")
    record["loggers"] = [type(lg).__name__ for lg in built.loggers]
    return record, probs, trainer


RECORD = "record.json"
PROBS = "test_probs.npy"
VAL_PROBS = "val_probs.npy"


def _save_fold(fold_dir: Path, record: dict[str, Any], probs: FoldProbs | None) -> None:
    # Probabilities first: a record on disk means the fold is complete.
    if probs is not None:
        atomic_write(fold_dir / PROBS, lambda f: np.save(f, probs.test.numpy()))
        if probs.val is not None:
            atomic_write(fold_dir / VAL_PROBS, lambda f: np.save(f, probs.val.numpy()))
    write_json(fold_dir / RECORD, record)


def _load_fold(fold_dir: Path) -> tuple[dict[str, Any], FoldProbs | None] | None:
    if not (fold_dir / RECORD).is_file():
        return None
    record = json.loads((fold_dir / RECORD).read_text())
    if record["diverged"]:
        return record, None
    # A fold recorded before out-of-fold predictions were kept has no val_probs.npy: its
    # images stay unscored (NaN rows) rather than the fold being retrained.
    val = fold_dir / VAL_PROBS
    return record, FoldProbs(
        torch.from_numpy(np.load(fold_dir / PROBS)),
        torch.from_numpy(np.load(val)) if val.is_file() else None,
    )


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint ``torch.load`` reads, or None when it is one."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, not a zip, unpickling error, ...
        return (
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        )
    return None


def train_folds(
    build: Callable[[int], FoldSetup],
    dm: KFoldDataModule,
    run_dir: Path,
    folds: Sequence[int],
    patience: int | None = None,
    log: Callable[[str], None] = print,
    after_fold: Callable[[dict[str, Any]], None] | None = None,
) -> list[tuple[dict[str, Any], torch.Tensor | None]]:
    """Trains the given folds (or loads their records, if recorded earlier).

    A fold whose record exists is not retrained; one with a ``last.ckpt`` continues from it;
    any other starts afresh. Each record is written as soon as its fold ends (by rank 0).

    Args:
        after_fold: Called with each fold's record once it is trained or loaded, in order;
            an exception it raises ends the run there (tune.py's pruning), the records on
            disk kept.

    Returns:
        ``(record, probabilities)`` of each fold, in the order of ``folds``; the
        probabilities are ``None`` for a diverged fold.
    """
    outcomes = []
    for fold in folds:
        fold_dir = run_dir / f"fold_{fold}"
        done = _load_fold(fold_dir)
        if done is not None:  # recorded by an earlier, interrupted invocation: not retrained
            outcomes.append(done)
            log(f"Fold {fold + 1}/{dm.k}: recorded earlier, not retrained")
            if after_fold is not None:
                after_fold(done[0])
            continue
        last = fold_dir / "checkpoints" / "last.ckpt"
        damaged = _unreadable(last) if last.is_file() else None
        if damaged is not None:
            # Another tool wrote it, or the disk failed (lit_cnn's own writes are atomic).
            print(
                f"lit_cnn: warning: {last} cannot be read ({damaged}); fold {fold + 1} "
                "restarts from its beginning",
                file=sys.stderr,
            )
            if rank_zero_only.rank == 0:
                shutil.rmtree(fold_dir, ignore_errors=True)
        # Seeding per fold makes a fold's result independent of which folds ran before it,
        # and of which process runs it.
        L.seed_everything(dm.seed + fold, verbose=False)
        record, probs, _ = train_fold(
            fold, build(fold), dm, run_dir, patience, last if last.is_file() else None
        )
        # A fold's Trainer, model and optimizer hold reference cycles: collected now, and
        # their memory handed back, the next fold does not add to the run's peak.
        gc.collect()
        release_free_memory()
        if rank_zero_only.rank == 0:  # under DDP every rank trains the fold; one records it
            _save_fold(fold_dir, record, probs)
            if record["diverged"]:
                log(
                    f"Fold {fold + 1}/{dm.k}: DIVERGED (non-finite training loss in epoch "
                    f"{record['diverged_epoch']}), {record['fit_seconds']:.1f} s"
                )
            else:
                log(
                    f"Fold {fold + 1}/{dm.k}: test acc {record['test_acc']:.4f}, "
                    f"{record['fit_seconds']:.1f} s"
                )
        outcomes.append((record, probs))
        if after_fold is not None:
            after_fold(record)
    return outcomes


def summarize(
    dm: KFoldDataModule,
    run_dir: Path,
    outcomes: Sequence[tuple[dict[str, Any], FoldProbs | None]],
    *,
    model_name: str,
    config: dict[str, Any] | None = None,
    early_break: bool = False,
    free_data: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Aggregates fold outcomes into results.json and the report, and prints the summary.

    Args:
        free_data: Free ``dm``'s images before drawing the report (see :func:`run_kfold`).

    Returns:
        The contents of results.json.
    """
    records = [r for r, _ in outcomes]
    ok = [r for r in records if not r["diverged"]]
    diverged = [r["fold"] for r in records if r["diverged"]]
    y_test = dm.data.y_test.numpy().copy()
    source, device = dm.source, _device_name(dm)
    # Before free_data: it needs the training labels.
    oof = OutOfFold.from_outcomes(dm.data.y_train.numpy(), [v for _, v in dm.folds], outcomes)
    if free_data:
        dm.free_data()
    if ok:
        probs = [p.test for _, p in outcomes if p is not None]
        # A limited test pass (fast_dev_run, limit_test_batches) scores the first images only,
        # in test-set order: the ensemble is taken over those.
        scored = min(len(p) for p in probs)
        y_test = y_test[:scored]
        ensemble = torch.stack([p[:scored] for p in probs]).mean(dim=0).argmax(dim=1).numpy()
    else:
        ensemble = np.full_like(y_test, -1)
    train_mean, train_std = mean_std([r["train_acc"] for r in ok])
    test_mean, test_std = mean_std([r["test_acc"] for r in ok])
    results = {
        "model": model_name,
        "k": dm.k,
        "seed": dm.seed,
        "config": config or {},
        "data": source,
        "folds": records,
        "train_acc_mean": train_mean,
        "train_acc_std": train_std,
        "test_acc_mean": test_mean,
        "test_acc_std": test_std,
        "ensemble_test_acc": float((ensemble == y_test).mean()) if ok else None,
        **oof.summary(),
        "diverged_folds": diverged,
        "loggers": list(dict.fromkeys(lg for r in records for lg in r.get("loggers", []))),
        "versions": _versions(),
        "device": device,
    }
    write_report(
        run_dir,
        results,
        y_test,
        ensemble,
        tensorboard="TensorBoardLogger" in results["loggers"],
        oof=oof,
    )
    log("Final results:" if not early_break else "Results of the first fold:")
    if diverged:
        log(
            f"Diverged folds {diverged} are left out of mean+/-std and the ensemble "
            f"({len(ok)} of {len(records)} folds counted)."
        )
    if ok:
        log(notebook_summary(results))
        log(f"Ensemble test accuracy: {results['ensemble_test_acc']:.4f}")
    if oof.n_scored:
        log(
            f"Out-of-fold accuracy: {results['oof_acc']:.4f} "
            f"({oof.n_scored} of {len(oof.labels)} training images)"
        )
    return results


def run_kfold(
    build: Callable[[int], FoldSetup],
    dm: KFoldDataModule,
    run_dir: Path,
    *,
    model_name: str,
    config: dict[str, Any] | None = None,
    early_break: bool = False,
    patience: int | None = None,
    parallel: FoldParallel | None = None,
    free_data: bool = False,
    log: Callable[[str], None] = print,
    after_fold: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Runs K-fold cross-validation and writes the run directory.

    Args:
        build: Returns a fresh :class:`FoldSetup` for fold ``i``; called once per fold, after
            the fold's seed is set.
        dm: The DataModule holding the data and the folds.
        run_dir: The run directory (see :func:`lit_cnn.cv.seal.new_run_dir`); folds recorded
            in it already are not retrained.
        model_name: The architecture's name, for the records.
        config: The configuration to store in results.json.
        early_break: Train only the first fold (the notebook's single train/validation round).
        patience: Early-stopping patience in epochs; ``None`` runs every epoch.
        parallel: Spread the folds over the ranks of a torchrun job (fold-parallel).
        free_data: Free ``dm``'s images once every fold is trained, before the report is
            drawn, so that the figures do not add to the run's peak memory; for a caller
            that has no further use for them.
        log: Where progress lines go.
        after_fold: See :func:`train_folds` (not under ``parallel``).

    Returns:
        The contents of results.json on the rank that wrote it; ``None`` on other ranks.
    """
    is_main = parallel.is_main if parallel is not None else rank_zero_only.rank == 0
    folds = dm.folds
    if is_main and not (run_dir / "folds.json").is_file():
        write_json(run_dir / "folds.json", {"val_indices": [v.tolist() for _, v in folds]})
    todo = list(range(1 if early_break else dm.k))
    if parallel is None:
        outcomes = train_folds(build, dm, run_dir, todo, patience, log, after_fold)
    else:
        gathered = parallel.gather(
            lambda: train_folds(build, dm, run_dir, parallel.my_folds(todo), patience, log)
        )
        if gathered is None:
            return None
        outcomes = sorted(gathered, key=lambda o: o[0]["fold"])
    if rank_zero_only.rank != 0 or not is_main:  # a DDP rank other than 0
        return None
    return summarize(
        dm,
        run_dir,
        outcomes,
        model_name=model_name,
        config=config,
        early_break=early_break,
        free_data=free_data,
        log=log,
    )
