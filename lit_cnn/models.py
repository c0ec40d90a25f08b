"""The six architectures of the homework notebook as LightningModules, and their registry.

Every architecture takes 1x32x32 images and returns 10 logits. What they share (loss,
metrics, logging, the optimizer) lives in :class:`CNNModule`; a subclass only builds layers.

    >>> from lit_cnn import get_model, list_models
    >>> list_models()
    ['DeepCNN', 'ResNN', 'ResNNBatch', 'ResNNBatch_NoSkip', 'ResNNBatch_Skip', 'ShallowCNN']
    >>> model = get_model("DeepCNN", lr=1e-3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_cnn import nets
from lit_cnn.nets import NUM_CLASSES

OPTIMIZERS = ("adam", "sgdm")
# Devices with fused Adam and SGD kernels in every torch lit_cnn supports (CPU's since 2.4).
FUSED_DEVICES = ("cpu", "cuda")

_REGISTRY: dict[str, type[CNNModule]] = {}


def register(cls: type[CNNModule]) -> type[CNNModule]:
    """Class decorator: adds an architecture to the registry under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def list_models() -> list[str]:
    """Returns the names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[CNNModule]:
    """Returns the class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}"
        ) from None


def get_model(name: str, **hparams) -> CNNModule:
    """Builds the architecture registered under ``name``.

    Args:
        name: One of :func:`list_models`.
        **hparams: Passed to the architecture (``lr``, ``l2``, ``optimizer``, ``softmax_output``).
    """
    return get_model_class(name)(**hparams)


class CNNModule(L.LightningModule):
    """Base LightningModule: cross-entropy on logits, per-stage metrics, Adam or SGD+momentum.

    Metrics accumulate on the device in torchmetrics objects (no host sync per step) and are
    logged once per epoch as ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``test/loss`` and ``test/acc``. Under DDP they are summed over ranks at ``compute()``, so
    every validation and test image counts once.

    Optimization is manual: a training batch holds several minibatches (see
    :class:`lit_cnn.datamodule.IndexBatches`) and ``training_step`` takes one optimizer step
    for each, so Lightning's per-batch work is paid once per group of steps. Lightning
    refuses ``gradient_clip_val`` and ``accumulate_grad_batches`` for manual optimization.

    Args:
        lr: Learning rate.
        l2: Weight decay (L2 penalty), applied by both optimizers.
        optimizer: ``"adam"`` (Adam) or ``"sgdm"`` (SGD with momentum 0.9).
        softmax_output: End the network in Softmax and take the cross-entropy of those
            probabilities, as the notebook did. Only for reproducing its ResNN collapse.
        compile: Wrap the network in ``torch.compile``.
        channels_last: Keep the convolutions' weights and activations in channels-last
            memory order (NHWC); the numbers differ from NCHW's only by floating-point
            rounding. ``None`` (default): the architecture's :attr:`channels_last_default`,
            picked by measurement (``scripts/bench.py --options``): on for DeepCNN and ResNN,
            which it made faster on the CPU, off for the others, which it made slower.
        fused: Use the optimizer's fused kernel (one kernel per parameter, where the default
            runs a dozen small ops each); the update is the same formula, rounded
            differently. ``None`` (default): on where torch has the kernel for the
            parameters' device (CPU, CUDA) at the time the optimizer is made.
    """

    #: Channels-last memory order by default (see ``channels_last``); set per architecture.
    channels_last_default: bool = False

    def __init__(
        self,
        lr: float = 1e-3,
        l2: float = 1e-3,
        optimizer: Literal["adam", "sgdm"] = "adam",
        softmax_output: bool = False,
        compile: bool = False,
        channels_last: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers: adam, sgdm")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"model.lr must be a finite number > 0, got {lr}")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"model.l2 must be a finite number >= 0, got {l2}")
        self.save_hyperparameters()
        self.net = self.build()
        if softmax_output:
            self.net.append(nn.Softmax(dim=-1))
        if channels_last is None:
            channels_last = self.channels_last_default
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._forward: Callable[[Tensor], Tensor] = torch.compile(self.net) if compile else self.net
        self.example_input_array = torch.zeros(2, 1, 32, 32)
        for stage in ("val", "test"):
            # nan_strategy="disable" and validate_args=False: their checks read tensors on
            # the host, which would cost a device sync on every step.
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            setattr(
                self,
                f"{stage}_acc",
                MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False),
            )
        # Test images scored, summed over ranks: under DDP each is scored exactly once.
        self.test_count = SumMetric(nan_strategy="disable")
        self.test_samples = 0
        # Class probabilities (N_test, 10) of the last test pass, in test-set order, on the
        # CPU; kept on one device only (None under DDP).
        self.test_probs: Tensor | None = None
        self._test_probs: list[Tensor] = []
        # Epoch records of the current fit: {"epoch", "train/loss", "train/acc", "val/..."}.
        self.history: list[dict[str, float]] = []
        self._val_result: dict[str, float] = {}
        # Training metrics as running sums on the device (loss x n, correct, n): two in-place
        # adds per step, where torchmetrics' update machinery cost about 0.4 ms a step.
        self.register_buffer("_train_sums", torch.zeros(3), persistent=False)
        # Divergence watch: the loss sum is non-finite exactly when some loss was (losses are
        # >= 0). It is copied to the host without waiting (non_blocking) and read one step
        # later: no sync per step.
        self._loss_sum_host = torch.zeros(())
        self.diverged_epoch: int | None = None
        # training_step runs several optimizer steps per batch (see IndexBatches).
        self.automatic_optimization = False

    def build(self) -> nn.Sequential:
        """Returns the network's layers: those :mod:`lit_cnn.nets` has under the class name.

        An architecture whose layers are not in :mod:`lit_cnn.nets` overrides this.
        """
        return nets.build_net(type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        """Maps images (B, 1, 32, 32) to logits (B, 10), or probabilities with softmax_output."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    def _step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        out = self(x)
        # With softmax_output the notebook's mistake is kept on purpose: cross_entropy applies
        # log-softmax again on top of probabilities, which flattens the gradients.
        losses = F.cross_entropy(out, y, reduction="none")
        # One value per image, not the batch mean with its size as weight: with
        # nan_strategy="disable" torchmetrics drops the weights (torchmetrics issue #3434), and
        # a short last batch would count as much as a full one.
        getattr(self, f"{stage}_loss").update(losses.detach())
        getattr(self, f"{stage}_acc").update(out.detach(), y)
        return out.detach()

    def _epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        values = {f"{stage}/loss": loss_metric.compute(), f"{stage}/acc": acc_metric.compute()}
        loss_metric.reset()
        acc_metric.reset()
        return values

    def training_step(self, batch: tuple[Tensor, Tensor, int, float], batch_idx: int) -> None:
        # A batch is one or more minibatches of `step` images (see IndexBatches): each gets
        # its own optimizer step, in the order of automatic optimization (forward,
        # zero_grad, backward, step), so training is the same as one minibatch per batch.
        x, y, step, weight = batch
        opt = self.optimizers()
        losses, preds = [], []
        for xb, yb in zip(x.split(step), y.split(step), strict=True):
            out = self(xb)
            loss = F.cross_entropy(out, yb)  # on probabilities with softmax_output: see _step
            opt.zero_grad()
            # weight: a DDP share's weight in its global batch (1 on one device).
            self.manual_backward(loss * weight if weight != 1 else loss)
            opt.step()
            losses.append(loss.detach() * len(yb))
            preds.append(out.detach().argmax(dim=1))
        sums = self._train_sums
        sums[0] += torch.stack(losses).sum()
        sums[1] += (torch.cat(preds) == y).sum()
        sums[2] += len(y)
        self._loss_sum_host.copy_(sums[0], non_blocking=True)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda" and not self._loss_sum_host.is_pinned():
            self._loss_sum_host = self._loss_sum_host.pin_memory()

    def on_train_batch_start(self, batch: tuple[Tensor, ...], batch_idx: int) -> int | None:
        # The host copy of the flag lags at most a batch behind: reading it costs no sync.
        # Under DDP a rank leaving the epoch alone would hang the others' all-reduce: there
        # the check waits for the epoch's end, where Lightning reduces should_stop over ranks.
        if self.trainer.world_size == 1 and self._check_divergence():
            return -1  # ends the epoch here; should_stop ends the fit
        return None

    def _check_divergence(self) -> bool:
        if self.diverged_epoch is None and not math.isfinite(float(self._loss_sum_host)):
            self.diverged_epoch = self.current_epoch
            self.trainer.should_stop = True
        return self.diverged_epoch is not None

    @property
    def diverged(self) -> bool:
        """Whether a training loss of the current fit was NaN or infinite."""
        return self.diverged_epoch is not None

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_metrics("val")
        # Metrics are already reduced over ranks by torchmetrics: no sync_dist needed.
        self.log_dict(values, prog_bar=True)
        if not self.trainer.sanity_checking:
            self._val_result = {k: float(v) for k, v in values.items()}

    def on_train_epoch_start(self) -> None:
        self._train_sums.zero_()

    def on_train_epoch_end(self) -> None:
        self._check_divergence()  # a loss that went non-finite in the epoch's last step
        # One reduction over ranks per epoch (a no-op on one device).
        loss_sum, correct, n = self.trainer.strategy.reduce(
            self._train_sums.clone(), reduce_op="sum"
        )
        values = {"train/loss": loss_sum / n, "train/acc": correct / n}
        self.log_dict(values, prog_bar=True)
        record = {"epoch": self.current_epoch, **{k: float(v) for k, v in values.items()}}
        record.update(self._val_result)
        self._val_result = {}
        self.history.append(record)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The per-epoch records are what a resumed fold needs to report its best epoch.
        checkpoint["lit_cnn_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("lit_cnn_history", []))

    def on_test_epoch_start(self) -> None:
        self._test_probs = []
        self.test_probs = None

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        out = self._step(batch, "test")
        self.test_count.update(torch.tensor(float(len(batch[1])), device=self.device))
        if self.trainer.world_size == 1:  # under DDP a rank sees only its share
            # With softmax_output the network already ends in Softmax.
            self._test_probs.append(out if self.hparams.softmax_output else out.softmax(dim=-1))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("test"))
        self.test_samples = int(self.test_count.compute())
        self.test_count.reset()
        if self._test_probs:
            self.test_probs = torch.cat(self._test_probs).float().cpu()
        self._test_probs = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        # Lightning calls this once the model is on its device, so the check sees that device.
        fused = hp.fused
        if fused is None:
            fused = all(p.device.type in FUSED_DEVICES for p in self.parameters())
        if hp.optimizer == "sgdm":
            # The notebook passed no weight_decay to SGD: l2 was silently ignored.
            return torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.l2, fused=fused
            )
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.l2, fused=fused)


# Each architecture: its layers are nets.NETS[class name] (see CNNModule.build); the notebook's
# lr and l2, kept in nets.TRAINING_DEFAULTS so the Lightning-free baseline shares them, are
# the defaults the CLI shows; channels_last_default says whether channels-last memory order
# made it faster (bench.py --options).
_DEFAULTS = nets.TRAINING_DEFAULTS


@register
class ShallowCNN(CNNModule):
    """One 5x5 conv (3 channels) and a 120-unit hidden layer: 370,048 parameters."""

    def __init__(
        self,
        lr: float = _DEFAULTS["ShallowCNN"]["lr"],
        l2: float = _DEFAULTS["ShallowCNN"]["l2"],
        **kwargs,
    ) -> None:
        super().__init__(lr=lr, l2=l2, **kwargs)


@register
class DeepCNN(CNNModule):
    """Two 3x3 conv blocks (16, 32 channels) with 2x2 pooling, then 120 units: 251,890."""

    channels_last_default = True

    def __init__(
        self,
        lr: float = _DEFAULTS["DeepCNN"]["lr"],
        l2: float = _DEFAULTS["DeepCNN"]["l2"],
        **kwargs,
    ) -> None:
        super().__init__(lr=lr, l2=l2, **kwargs)


@register
class ResNN(CNNModule):
    """The notebook's small strided net without BatchNorm: 93,712 parameters."""

    channels_last_default = True

    def __init__(
        self,
        lr: float = _DEFAULTS["ResNN"]["lr"],
        l2: float = _DEFAULTS["ResNN"]["l2"],
        **kwargs,
    ) -> None:
        super().__init__(lr=lr, l2=l2, **kwargs)


@register
class ResNNBatch(ResNN):
    """ResNN with BatchNorm2d after each conv: 93,748 parameters."""

    channels_last_default = False


@register
class ResNNBatch_NoSkip(ResNNBatch):  # noqa: N801 (the notebook's name)
    """The same layers as ResNNBatch: the control of the skip-connection experiment."""


@register
class ResNNBatch_Skip(ResNNBatch):  # noqa: N801 (the notebook's name)
    """ResNNBatch with a projection shortcut around the second conv block: 93,856 parameters."""
