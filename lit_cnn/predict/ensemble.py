"""A finished K-fold run as one model: the fold ensemble (or one fold) as a plain ``nn.Module``.

The ensemble is what the run's ``ensemble_test_acc`` scored: the mean of the softmax
probabilities of the best checkpoint of every fold that did not diverge. Checkpoints are read
with ``torch.load(weights_only=True)``, which builds tensors and plain containers only, and
only the network's weights are kept: the model needs neither Lightning nor the run's
training state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_cnn.data.loading import SAMPLE, DataError, ImageData, data_path, load_images, to_float
from lit_cnn.models.nets import NETS, build_net

__all__ = ["Ensemble", "Run", "RunDirError", "load_ensemble", "open_run", "predict_batches"]

RESULTS = "results.json"
BEST = Path("checkpoints") / "best.ckpt"


class RunDirError(ValueError):
    """A directory that is not a finished run, or a fold it does not have: one line."""


class Ensemble(nn.Module):
    """Mean softmax probabilities of some networks: (N, 1, 32, 32) in [0, 1] -> (N, 10).

    Args:
        nets: The folds' networks, each mapping images to logits (or to probabilities when
            ``softmax_output``).
        softmax_output: The networks end in Softmax already (the notebook's ResNN setting).
    """

    def __init__(self, nets: list[nn.Module], softmax_output: bool = False) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.softmax_output = softmax_output

    def forward(self, x: Tensor) -> Tensor:
        """Class probabilities (N, 10) of images (N, 1, 32, 32) scaled as in training."""
        probs = []
        for net in self.nets:
            out = net(x)
            probs.append(out if self.softmax_output else out.softmax(dim=-1))
        # Stacked and averaged as the run's summary did, so the rounding is the same.
        return torch.stack(probs).mean(dim=0)


@dataclass
class Run:
    """A finished run directory: its results.json and what the ensemble needs.

    Attributes:
        path: The run directory.
        results: results.json's content.
        folds: The folds the ensemble averages (those that did not diverge), in order.
    """

    path: Path
    results: dict[str, Any]
    folds: list[int]
    _data: ImageData | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        """The architecture's name."""
        return str(self.results["model"])

    def data(self) -> ImageData:
        """The run's own data (loaded once): its scale constant and its test set.

        Raises:
            DataError: The data file cannot be found or read from here.
        """
        if self._data is None:
            source = str(self.results.get("data") or "sample")
            self._data = load_images(self._locate(source))
        return self._data

    def _locate(self, source: str) -> str:
        # results.json's 'data' is ImageData.source: a path, "sample", or, for a three-set
        # file, the path followed by a note of the merged sets, which data_path takes off.
        # A relative path is relative to where the run was started: the working directory
        # or, when that was elsewhere, the folder holding lightning_logs/.
        if source == SAMPLE:
            return source
        candidates = list(dict.fromkeys((source, data_path(source))))
        if Path(candidates[-1]).is_absolute():
            return candidates[-1]  # load_images says what is wrong with it, if anything
        for name in candidates:
            if Path(name).exists():
                return name
        for parent in self.path.resolve().parents:
            if parent.name != "lightning_logs":
                continue
            for name in candidates:
                if (parent.parent / name).exists():
                    return str(parent.parent / name)
        raise DataError(
            f"{self.path}: the run's data {data_path(source)} (results.json 'data') is not "
            "found from this directory; run from where the run was trained"
        )

    @property
    def scale(self) -> float:
        """The run's scaling constant: stored pixel values are divided by it."""
        return float(self.data().scale)

    def test_inputs(self) -> tuple[Tensor, Tensor]:
        """The run's test images as network input (N, 1, 32, 32), and their labels."""
        data = self.data()
        return to_float(data.x_test, data.scale), data.y_test


def _explain_missing(path: Path) -> str:
    if (path / "comparison.json").is_file() or (path / "compare.yaml").is_file():
        return "a comparison's directory; give one model's run in it, e.g. <model>/rep_0"
    if (path / "trials").is_dir():
        return "a tuning directory; give one trial's run, e.g. trials/0"
    if any(path.glob("fold_*")):
        return f"an unfinished run (no {RESULTS}); finish it with kfold.py --resume"
    return f"not a K-fold run directory (no {RESULTS})"


def open_run(run_dir: str | os.PathLike[str]) -> Run:
    """Checks a run directory and reads its results.

    Args:
        run_dir: A K-fold run directory, or one model's run in a comparison or a trial.

    Raises:
        RunDirError: It is not a finished run, or every fold diverged.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    if not (path / RESULTS).is_file():
        raise RunDirError(f"{path}: {_explain_missing(path)}")
    try:
        results = json.loads((path / RESULTS).read_text())
        records = results["folds"]
        model = results["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path / RESULTS}: unreadable ({type(err).__name__})") from None
    if model not in NETS:
        raise RunDirError(f"{path / RESULTS}: unknown model {model!r}")
    folds = [int(r["fold"]) for r in records if not r.get("diverged")]
    if not folds:
        raise RunDirError(f"{path}: every fold diverged; there is no model to predict with")
    return Run(path=path, results=results, folds=folds)


def _load_net(run: Run, fold: int) -> tuple[nn.Module, bool]:
    ckpt = run.path / f"fold_{fold}" / BEST
    if not ckpt.is_file():
        # fast_dev_run keeps no checkpoint; a run without one has nothing to predict with.
        raise RunDirError(f"{ckpt}: missing; the fold's best checkpoint is what predicts")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        hparams = checkpoint.get("hyper_parameters", {})
        prefix = "net."
        state = {
            k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
        }
    except Exception as err:  # truncated zip, not a checkpoint, a refused pickle ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise RunDirError(f"{ckpt}: unreadable ({type(err).__name__}: {first})") from None
    softmax_output = bool(hparams.get("softmax_output", False))
    net = build_net(run.model_name)
    if softmax_output:
        net.append(nn.Softmax(dim=-1))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise RunDirError(f"{ckpt}: not a {run.model_name} checkpoint ({first})") from None
    return net.float(), softmax_output


def ensemble_of(run: Run, fold: int | None = None) -> Ensemble:
    """The run's fold ensemble, or fold ``fold``'s model, in eval mode on the CPU.

    Raises:
        RunDirError: ``fold`` is not one of the run's non-diverged folds, or a checkpoint
            is missing or unreadable.
    """
    if fold is not None and fold not in run.folds:
        diverged = [r["fold"] for r in run.results["folds"] if r.get("diverged")]
        why = f"fold {fold} diverged" if fold in diverged else f"the run has no fold {fold}"
        raise RunDirError(f"--fold {fold}: {why}; valid folds: {', '.join(map(str, run.folds))}")
    loaded = [_load_net(run, i) for i in ([fold] if fold is not None else run.folds)]
    model = Ensemble([net for net, _ in loaded], softmax_output=loaded[0][1])
    return model.eval()


def load_ensemble(run_dir: str | os.PathLike[str], fold: int | None = None) -> Ensemble:
    """The fold ensemble of a finished run (or one fold's model), ready to predict.

    Args:
        run_dir: A K-fold run directory, or one model's run in a comparison or a trial.
        fold: Use this fold's best checkpoint alone; ``None``: every non-diverged fold's.

    Returns:
        An ``nn.Module`` in eval mode on the CPU mapping (N, 1, 32, 32) float32 images in
        [0, 1] (:func:`lit_cnn.preprocess`) to (N, 10) class probabilities.

    Raises:
        RunDirError: Not a finished run, no such fold, or a checkpoint that cannot be read.
    """
    return ensemble_of(open_run(run_dir), fold)


@torch.inference_mode()
def predict_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, list[tuple[str, int]]]]
) -> tuple[Tensor, list[tuple[str, int]]]:
    """Runs the model over batches as they come (:func:`~lit_cnn.predict.inputs.decoded_batches`).

    Args:
        model: The ensemble or one fold's model.
        batches: Network input and the ``(source, index)`` row of each image.

    Returns:
        (N, 10) probabilities and the N rows, in order.
    """
    probs, rows = [], []
    for x, batch_rows in batches:
        probs.append(model(x))
        rows.extend(batch_rows)
    return (torch.cat(probs) if probs else torch.zeros(0, 10)), rows
