"""Files and figures of a K-fold run, made from its fold records (never from the loop itself).

Every file is written atomically (see :mod:`lit_cnn.cv.files`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lit_cnn.cv.files import atomic_write, write_json, write_text

if TYPE_CHECKING:
    import torch

__all__ = [
    "FoldProbs",
    "OutOfFold",
    "atomic_write",
    "write_json",
    "write_text",
    "write_report",
    "mean_std",
]

OOF_PROBS = "oof_probs.npy"


@dataclass(frozen=True)
class FoldProbs:
    """A fold's best model's class probabilities.

    Attributes:
        test: (N_test, 10) on the test set, in test-set order.
        val: (n_val, 10) on the fold's validation images, in the order of its validation
            indices; ``None`` for a fold recorded before they were kept.
    """

    test: torch.Tensor
    val: torch.Tensor | None


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predictions: each training image scored by the fold model that did not
    train on it (the one it validated).

    Attributes:
        probs: (N_train, C) class probabilities in training-set order; NaN rows for images
            no fold model scored (their fold diverged, was not run, or kept no
            probabilities).
        labels: (N_train,) the training labels.
    """

    probs: np.ndarray
    labels: np.ndarray

    @classmethod
    def assemble(
        cls, labels: np.ndarray, parts: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> OutOfFold:
        """Places each fold's validation probabilities at its validation indices.

        Args:
            labels: (N_train,) training labels.
            parts: ``(val_indices, probs)`` per scored fold; ``probs`` is
                (len(val_indices), C), row i for image ``val_indices[i]``.

        Raises:
            ValueError: A part's shape does not match its indices, or an image is scored
                twice (the folds would not be disjoint).
        """
        n_classes = parts[0][1].shape[1] if parts else int(labels.max(initial=9)) + 1
        probs = np.full((len(labels), n_classes), np.nan, dtype=np.float32)
        seen = np.zeros(len(labels), dtype=bool)
        for idx, p in parts:
            idx = np.asarray(idx, dtype=np.int64)
            if p.shape != (len(idx), n_classes):
                raise ValueError(f"{p.shape} probabilities for {len(idx)} validation images")
            if seen[idx].any():
                raise ValueError("an image is in two folds' validation sets")
            seen[idx] = True
            probs[idx] = p
        return cls(probs, np.asarray(labels))

    @classmethod
    def from_outcomes(
        cls,
        labels: np.ndarray,
        val_indices: Sequence[np.ndarray],
        outcomes: Sequence[tuple[dict[str, Any], FoldProbs | None]],
    ) -> OutOfFold:
        """The out-of-fold predictions of a run's fold outcomes.

        Args:
            labels: (N_train,) training labels.
            val_indices: Each fold's validation indices, by fold number.
            outcomes: ``(record, probabilities)`` per fold trained or loaded.
        """
        parts = [
            (val_indices[record["fold"]], probs.val.numpy())
            for record, probs in outcomes
            if probs is not None and probs.val is not None
        ]
        return cls.assemble(labels, parts)

    @property
    def scored(self) -> np.ndarray:
        """(N_train,) bool: which images have predictions."""
        return ~np.isnan(self.probs).any(axis=1)

    @property
    def n_scored(self) -> int:
        """How many training images have predictions."""
        return int(self.scored.sum())

    def summary(self) -> dict[str, Any]:
        """``oof_acc`` (over the scored images; ``None`` if none) and ``oof_scored``."""
        mask = self.scored
        acc = None
        if mask.any():
            acc = float((self.probs[mask].argmax(axis=1) == self.labels[mask]).mean())
        return {"oof_acc": acc, "oof_scored": int(mask.sum())}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation (numpy's default, as the notebook used)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def notebook_summary(results: dict[str, Any]) -> str:
    """The notebook's closing lines: ``Training accuracy: m+/-s`` and ``Test accuracy: m+/-s``."""
    return (
        f"Training accuracy: {results['train_acc_mean']:.4f}+/-{results['train_acc_std']:.4f}\n"
        f"Test accuracy: {results['test_acc_mean']:.4f}+/-{results['test_acc_std']:.4f}"
    )


def summary_markdown(results: dict[str, Any]) -> str:
    """A Markdown table: one row per fold, then the mean +/- std row and the ensemble."""
    lines = [
        f"# {results['model']}: {results['k']}-fold cross-validation (seed {results['seed']})",
        "",
        "| fold | best epoch | train acc | val loss | val acc | test loss | test acc | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["folds"]:
        if r["diverged"]:
            lines.append(
                f"| {r['fold']} | diverged in epoch {r['diverged_epoch']} | | | | | | "
                f"{r['fit_seconds']:.1f} |"
            )
            continue
        lines.append(
            f"| {r['fold']} | {r['best_epoch']} | {r['train_acc']:.4f} | {r['val_loss']:.4f} "
            f"| {r['val_acc']:.4f} | {r['test_loss']:.4f} | {r['test_acc']:.4f} "
            f"| {r['fit_seconds']:.1f} |"
        )
    ok = [r for r in results["folds"] if not r["diverged"]]
    if ok:
        lines.append(
            f"| mean ± std | | {results['train_acc_mean']:.4f} ± {results['train_acc_std']:.4f} "
            f"| | | | {results['test_acc_mean']:.4f} ± {results['test_acc_std']:.4f} | |"
        )
        lines += [
            "",
            f"Ensemble of the {len(ok)} fold models (averaged softmax): "
            f"test accuracy {results['ensemble_test_acc']:.4f}",
        ]
    if results.get("oof_acc") is not None:
        lines += [
            "",
            f"Out-of-fold accuracy (each training image predicted by the fold model that "
            f"validated on it): {results['oof_acc']:.4f} over {results['oof_scored']} images",
        ]
    if len(ok) < len(results["folds"]):
        lines += [
            "",
            f"Diverged folds {results['diverged_folds']} are left out of mean ± std "
            "and the ensemble.",
        ]
    return "\n".join([*lines, ""])


def curves_figure(folds: Sequence[dict[str, Any]]):  # -> matplotlib Figure
    """The notebook's two panels, loss and accuracy per epoch, train vs validation, per fold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for r in folds:
        hist = [h for h in r["history"] if "val/loss" in h or "train/loss" in h]
        epochs = [h["epoch"] for h in hist]
        for ax, metric in zip(axes, ("loss", "acc"), strict=True):
            (line,) = ax.plot(
                epochs, [h[f"train/{metric}"] for h in hist], label=f"fold {r['fold']} train"
            )
            ax.plot(
                epochs,
                [h.get(f"val/{metric}", np.nan) for h in hist],
                linestyle="--",
                color=line.get_color(),
                label=f"fold {r['fold']} validation",
            )
    for ax, title in zip(axes, ("Loss", "Accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, title: str):
    """The confusion matrix of ``y_pred`` against ``y_true``, drawn by scikit-learn."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def render(fig) -> np.ndarray:
    """Draws a matplotlib figure at 100 dpi; returns its pixels, (H, W, 4) uint8 RGBA."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(100)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Saves rendered pixels (see :func:`render`) as PNG, atomically."""
    from matplotlib.image import imsave

    atomic_write(path, lambda f: imsave(f, pixels, format="png"))


def save_figure(fig, path: Path) -> None:
    """Saves a matplotlib figure as PNG at 100 dpi, atomically."""
    save_png(render(fig), path)


def write_report(
    run_dir: Path,
    results: dict[str, Any],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    tensorboard: bool = True,
    oof: OutOfFold | None = None,
) -> None:
    """Writes the run's report files into ``run_dir``, results.json last.

    Args:
        run_dir: The run directory.
        results: The contents of results.json.
        y_true: The test labels the ensemble was scored on.
        y_pred: The fold ensemble's test predictions.
        tensorboard: Also show the figures and the summary as a TensorBoard run at
            ``run_dir`` itself.
        oof: The out-of-fold predictions: saved as oof_probs.npy, drawn as
            oof_confusion_matrix.png over the images scored.
    """
    write_text(run_dir / "summary.md", summary_markdown(results))
    if oof is not None:
        atomic_write(run_dir / OOF_PROBS, lambda f: np.save(f, oof.probs))
    figures = {"curves": curves_figure(results["folds"])}
    if results["ensemble_test_acc"] is not None:  # None: every fold diverged
        figures["confusion_matrix"] = confusion_figure(
            y_true, y_pred, f"{results['model']}: fold ensemble on the test set"
        )
    if oof is not None and oof.n_scored:
        mask = oof.scored
        figures["oof_confusion_matrix"] = confusion_figure(
            oof.labels[mask],
            oof.probs[mask].argmax(axis=1),
            f"{results['model']}: out-of-fold, {oof.n_scored} training images",
        )
    # Each figure is drawn once: the PNG file and TensorBoard's image get the same pixels.
    pixels = {name: render(fig) for name, fig in figures.items()}
    for name, rgba in pixels.items():
        save_png(rgba, run_dir / f"{name}.png")
    if tensorboard:
        _tensorboard_entry(run_dir, results, pixels)
    # Last: a run directory with results.json is a finished run (see lit_cnn.cv.seal).
    write_json(run_dir / "results.json", results)


def _tensorboard_entry(
    run_dir: Path, results: dict[str, Any], pixels: dict[str, np.ndarray]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir)) as writer:
        for name, rgba in pixels.items():
            writer.add_image(name, rgba[..., :3], dataformats="HWC")
        # The folds' mean +/- std beside the figures, in TensorBoard's text tab.
        writer.add_text("summary", summary_markdown(results))
