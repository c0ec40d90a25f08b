"""The six architectures of the homework notebook as LightningModules, and their registry.

Every architecture takes 1x32x32 images and returns 10 logits. What they share (loss,
metrics, logging, the optimizer) lives in :class:`CNNModule`; a subclass only names its
layers (in :mod:`lit_cnn.models.nets`, under the class name).

    >>> from lit_cnn import get_model, list_models
    >>> list_models()
    ['DeepCNN', 'ResNN', 'ResNNBatch', 'ResNNBatch_NoSkip', 'ResNNBatch_Skip', 'ShallowCNN']
    >>> get_model("ShallowCNN").hparams.lr   # the architecture's own default
    0.002
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_cnn.models import nets
from lit_cnn.models.nets import NUM_CLASSES

OPTIMIZERS = ("adam", "sgdm")
# Devices with fused Adam and SGD kernels in every torch lit_cnn supports (CPU's since 2.4).
FUSED_DEVICES = ("cpu", "cuda")
#: What a model logs, once per epoch (train) or per validation/test pass.
LOGGED_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")

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


def get_model(name: str, **hparams: Any) -> CNNModule:
    """Builds the architecture registered under ``name``.

    Args:
        name: One of :func:`list_models`.
        **hparams: Passed to the architecture (``lr``, ``l2``, ``optimizer``, ...).
    """
    return get_model_class(name)(**hparams)


def _instantiate(spec: Mapping[str, Any], *args: Any, **extra: Any) -> Any:
    """Builds ``{"class_path": ..., "init_args": {...}}`` (LightningCLI's form) with ``args``."""
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(*args, **{**dict(spec.get("init_args") or {}), **extra})


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: Mapping[str, Any], total_steps: Callable[[], int]
) -> dict[str, Any]:
    """A Lightning ``lr_scheduler`` config for ``--lr_scheduler`` ``spec``.

    A scheduler with a ``total_steps`` argument left unset (OneCycleLR) gets the Trainer's
    number of optimizer steps and is stepped per optimizer step; others step per epoch.
    ReduceLROnPlateau watches its ``monitor`` (LightningCLI's version has one), else val/loss.

    Args:
        optimizer: The optimizer to schedule.
        spec: The scheduler's class path and init args.
        total_steps: Returns the fit's number of optimizer steps.
    """
    init = dict(spec.get("init_args") or {})
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    params = inspect.signature(cls).parameters
    interval = "epoch"
    if "total_steps" in params and init.get("total_steps") is None and not init.get("epochs"):
        init["total_steps"] = int(total_steps())
        interval = "step"
    scheduler = cls(optimizer, **init)
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = getattr(scheduler, "monitor", "val/loss")
    return config


class CNNModule(L.LightningModule):
    """Base LightningModule: cross-entropy on logits, per-stage metrics, Adam or SGD+momentum.

    Optimization is Lightning's automatic one: ``training_step`` returns the loss, so every
    Trainer option (clipping, accumulation, precision, ...) works as documented. Training
    metrics are summed on the device and read once per epoch (no host sync per step);
    validation and test metrics are torchmetrics objects, summed over ranks under DDP, so
    every image counts once. Logged: :data:`LOGGED_METRICS`.

    The optimizer is either the notebook's shorthand (``optimizer``, ``lr``, ``l2``) or, when
    :attr:`optimizer_spec` is set (``--optimizer`` on the command line), any torch optimizer;
    :attr:`lr_scheduler_spec` adds a scheduler (``--lr_scheduler``).

    Args:
        lr: Learning rate; ``None``: the architecture's own (the notebook's, see README).
        l2: Weight decay (L2 penalty), applied by both optimizers; ``None``: the
            architecture's own.
        optimizer: ``"adam"`` (Adam) or ``"sgdm"`` (SGD with momentum 0.9); ``None``: adam.
        softmax_output: End the network in Softmax and take the cross-entropy of those
            probabilities, as the notebook did. Only for reproducing its ResNN collapse.
        compile: Wrap the network in ``torch.compile``.
        channels_last: Keep the convolutions in channels-last memory order (NHWC), which
            changes only rounding. ``None``: the architecture's :attr:`channels_last_default`.
        fused: Use the optimizer's fused kernel (same formula, rounded differently).
            ``None``: on where torch has it for the parameters' device (CPU, CUDA).
    """

    #: Channels-last memory order by default (see ``channels_last``); set per architecture
    #: by measurement (``scripts/bench.py --options``).
    channels_last_default: bool = False

    def __init__(
        self,
        lr: float | None = None,
        l2: float | None = None,
        optimizer: Literal["adam", "sgdm"] | None = None,
        softmax_output: bool = False,
        compile: bool = False,
        channels_last: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        defaults = nets.TRAINING_DEFAULTS.get(type(self).__name__, {"lr": 1e-3, "l2": 1e-3})
        lr = defaults["lr"] if lr is None else lr
        l2 = defaults["l2"] if l2 is None else l2
        optimizer = optimizer or "adam"
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers: adam, sgdm")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"model.lr must be a finite number > 0, got {lr}")
        if not (math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"model.l2 must be a finite number >= 0, got {l2}")
        self.save_hyperparameters()
        # The effective values, so checkpoints and logs show what was trained.
        self.hparams.update(lr=lr, l2=l2, optimizer=optimizer)
        #: ``--optimizer`` / ``--lr_scheduler`` as ``{"class_path", "init_args"}``, set by the
        #: command line per fold; ``None``: the shorthand above, no scheduler.
        self.optimizer_spec: dict[str, Any] | None = None
        self.lr_scheduler_spec: dict[str, Any] | None = None
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
        # One record per validation pass: {"epoch", "step", "val/loss", "val/acc"}.
        self.validations: list[dict[str, float]] = []
        # Training metrics as running sums on the device (loss x n, correct, n): two in-place
        # adds per step instead of torchmetrics' per-step update machinery.
        self.register_buffer("_train_sums", torch.zeros(3), persistent=False)
        # Divergence watch: the loss sum is non-finite exactly when some loss was (losses are
        # >= 0). It is copied to the host without waiting and read one step later: no sync.
        self._loss_sum_host = torch.zeros(())
        self.diverged_epoch: int | None = None

    def build(self) -> nn.Sequential:
        """Returns the network's layers: those :mod:`lit_cnn.models.nets` has under the class name.

        An architecture whose layers are not in :mod:`lit_cnn.models.nets` overrides this.
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
        # One value per image rather than the batch mean with a weight: with
        # nan_strategy="disable" torchmetrics drops weights (torchmetrics issue #3434).
        getattr(self, f"{stage}_loss").update(losses.detach().float())
        getattr(self, f"{stage}_acc").update(out.detach(), y)
        return out.detach()

    def _epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        values = {f"{stage}/loss": loss_metric.compute(), f"{stage}/acc": acc_metric.compute()}
        loss_metric.reset()
        acc_metric.reset()
        return values

    def training_step(self, batch: tuple[Tensor, Tensor, float], batch_idx: int) -> Tensor:
        x, y, weight = batch
        out = self(x)
        loss = F.cross_entropy(out, y)  # on probabilities with softmax_output: see _step
        sums = self._train_sums
        sums[0] += loss.detach().float() * len(y)
        sums[1] += (out.detach().argmax(dim=1) == y).sum()
        sums[2] += len(y)
        self._loss_sum_host.copy_(sums[0], non_blocking=True)
        # weight: a DDP share's weight in its global batch (1 on one device), so that DDP's
        # mean over ranks is the gradient of the global batch's mean loss.
        return loss * weight if weight != 1 else loss

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
        # Already summed over ranks by torchmetrics; sync_dist then averages equal values,
        # which is what Lightning expects of epoch-level values under DDP.
        values = self._epoch_metrics("val")
        self.log_dict(values, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            record = {k: float(v) for k, v in values.items()}
            self.validations.append(
                {"epoch": self.current_epoch, "step": self.global_step, **record}
            )

    def on_train_epoch_start(self) -> None:
        self._train_sums.zero_()

    def on_train_epoch_end(self) -> None:
        self._check_divergence()  # a loss that went non-finite in the epoch's last step
        # One reduction over ranks per epoch (a no-op on one device).
        loss_sum, correct, n = self.trainer.strategy.reduce(
            self._train_sums.clone(), reduce_op="sum"
        )
        n = n.clamp(min=1)
        values = {"train/loss": loss_sum / n, "train/acc": correct / n}
        self.log_dict(values, prog_bar=True, sync_dist=True)
        record = {"epoch": self.current_epoch, **{k: float(v) for k, v in values.items()}}
        latest = [v for v in self.validations if v["epoch"] == self.current_epoch]
        if latest:  # the epoch's last validation pass, for the curves
            record.update({k: latest[-1][k] for k in ("val/loss", "val/acc")})
        self.history.append(record)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The records are what a resumed fold needs to report its best validation pass.
        checkpoint["lit_cnn_history"] = self.history
        checkpoint["lit_cnn_validations"] = self.validations

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("lit_cnn_history", []))
        self.validations = list(checkpoint.get("lit_cnn_validations", []))

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
        self.log_dict(self._epoch_metrics("test"), sync_dist=True)
        self.test_samples = int(self.test_count.compute())
        self.test_count.reset()
        if self._test_probs:
            self.test_probs = torch.cat(self._test_probs).float().cpu()
        self._test_probs = []

    def make_optimizer(self) -> torch.optim.Optimizer:
        """This model's optimizer: ``optimizer_spec``'s if set, else the shorthand's."""
        if self.optimizer_spec is not None:
            return _instantiate(self.optimizer_spec, self.parameters())
        hp = self.hparams
        fused = hp.fused
        if fused is None:
            fused = all(p.device.type in FUSED_DEVICES for p in self.parameters())
        if hp.optimizer == "sgdm":
            # The notebook passed no weight_decay to SGD: l2 was silently ignored.
            return torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.l2, fused=fused
            )
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.l2, fused=fused)

    def optimizer_summary(self) -> dict[str, Any]:
        """``{"optimizer", "lr", "l2"}`` as trained: the class name and its lr and weight decay."""
        opt = self.make_optimizer()
        summary = {
            "optimizer": type(opt).__name__,
            "lr": float(opt.defaults.get("lr", float("nan"))),
            "l2": float(opt.defaults.get("weight_decay", 0.0)),
        }
        if self.lr_scheduler_spec is not None:
            summary["lr_scheduler"] = self.lr_scheduler_spec["class_path"].rpartition(".")[2]
        return summary

    def configure_optimizers(self) -> Any:
        # Lightning calls this once the model is on its device, so `fused` sees that device.
        optimizer = self.make_optimizer()
        if self.lr_scheduler_spec is None:
            return optimizer
        scheduler = make_scheduler(
            optimizer, self.lr_scheduler_spec, lambda: self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


# Each architecture: its layers are nets.NETS[class name] and its lr and l2 defaults
# nets.TRAINING_DEFAULTS[class name] (shared with the Lightning-free baseline);
# channels_last_default says whether channels-last memory order made it faster.


@register
class ShallowCNN(CNNModule):
    """One 5x5 conv (3 channels) and a 120-unit hidden layer: 370,048 parameters."""


@register
class DeepCNN(CNNModule):
    """Two 3x3 conv blocks (16, 32 channels) with 2x2 pooling, then 120 units: 251,890."""

    channels_last_default = True


@register
class ResNN(CNNModule):
    """The notebook's small strided net without BatchNorm: 93,712 parameters."""

    channels_last_default = True


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
