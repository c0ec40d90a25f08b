"""The six networks' layers as plain ``torch.nn`` modules, without Lightning.

:mod:`lit_cnn.models.modules` wraps each in a LightningModule; ``benchmarks/notebook.py`` (the
benchmark's baseline) trains them bare, so that it imports torch alone, as the notebook did.
Every network takes 1x32x32 images and returns 10 logits.

    >>> import torch
    >>> from lit_cnn.models.nets import build_net
    >>> build_net("DeepCNN")(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

NUM_CLASSES = 10


def shallow_cnn() -> nn.Sequential:
    """One 5x5 conv (3 channels) and a 120-unit hidden layer: 370,048 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 3, kernel_size=5, stride=1, padding=2),  # 3x32x32
        nn.ReLU(),
        nn.Flatten(),  # 3072
        nn.Linear(3 * 32 * 32, 120),
        nn.ReLU(),
        nn.Linear(120, NUM_CLASSES),
    )


def deep_cnn() -> nn.Sequential:
    """Two 3x3 conv blocks (16, 32 channels) with 2x2 pooling, then 120 units: 251,890."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),  # 16x32x32
        nn.ReLU(),
        nn.MaxPool2d(2, 2),  # 16x16x16
        nn.Conv2d(16, 32, kernel_size=3, padding=1),  # 32x16x16
        nn.ReLU(),
        nn.MaxPool2d(2, 2),  # 32x8x8
        nn.Flatten(),  # 2048
        nn.Linear(32 * 8 * 8, 120),
        nn.ReLU(),
        nn.Linear(120, NUM_CLASSES),
    )


def _block(c_in: int, c_out: int, kernel: int, stride: int, batch_norm: bool) -> list[nn.Module]:
    """Conv (+ BatchNorm) + ReLU + MaxPool(k2, s1)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=1)]


def res_nn(batch_norm: bool = False) -> nn.Sequential:
    """The notebook's small strided net: 93,712 parameters, 93,748 with BatchNorm."""
    return nn.Sequential(
        *_block(1, 6, kernel=4, stride=2, batch_norm=batch_norm),  # conv 6x16x16, pool 6x15x15
        *_block(6, 12, kernel=2, stride=3, batch_norm=batch_norm),  # conv 12x6x6, pool 12x5x5
        nn.Flatten(),  # 300
        nn.Linear(12 * 5 * 5, 300),
        nn.ReLU(),
        nn.Linear(300, NUM_CLASSES),
    )


class SkipBlock(nn.Module):
    """Conv-BN, plus a 1x1 projection shortcut of the input, then ReLU (ResNet's option B)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        # 6x15x15 -> 12x6x6, the shape of the conv branch: (15 - 1 + 2)/3 + 1 = 6.
        self.shortcut = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, padding=1),
            nn.BatchNorm2d(c_out),
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)) + self.shortcut(x))


def res_nn_skip() -> nn.Sequential:
    """ResNN with BatchNorm and a projection shortcut around the second block: 93,856."""
    return nn.Sequential(
        *_block(1, 6, kernel=4, stride=2, batch_norm=True),  # 6x15x15
        SkipBlock(6, 12, kernel=2, stride=3),  # 12x6x6
        nn.MaxPool2d(kernel_size=2, stride=1),  # 12x5x5
        nn.Flatten(),
        nn.Linear(12 * 5 * 5, 300),
        nn.ReLU(),
        nn.Linear(300, NUM_CLASSES),
    )


#: Name -> builder; the names are those of :func:`lit_cnn.list_models`.
NETS: dict[str, Callable[[], nn.Sequential]] = {
    "ShallowCNN": shallow_cnn,
    "DeepCNN": deep_cnn,
    "ResNN": res_nn,
    "ResNNBatch": lambda: res_nn(batch_norm=True),
    # The same layers as ResNNBatch: the control of the skip-connection experiment.
    "ResNNBatch_NoSkip": lambda: res_nn(batch_norm=True),
    "ResNNBatch_Skip": res_nn_skip,
}

#: Each network's learning rate and L2 (weight decay), the notebook's; the LightningModules'
#: defaults are the same (tested).
TRAINING_DEFAULTS: dict[str, dict[str, float]] = {
    "ShallowCNN": {"lr": 2e-3, "l2": 1e-2},
    "DeepCNN": {"lr": 1e-3, "l2": 1e-3},
    "ResNN": {"lr": 1e-3, "l2": 1e-2},
    "ResNNBatch": {"lr": 1e-3, "l2": 1e-2},
    "ResNNBatch_NoSkip": {"lr": 1e-3, "l2": 1e-2},
    "ResNNBatch_Skip": {"lr": 1e-3, "l2": 1e-2},
}


def build_net(name: str) -> nn.Sequential:
    """Builds network ``name``, channels-first, with torch's default initialisation.

    Raises:
        ValueError: ``name`` is unknown; the message lists the valid names.
    """
    try:
        return NETS[name]()
    except KeyError:
        valid = ", ".join(sorted(NETS))
        raise ValueError(f"unknown model {name!r}; valid models: {valid}") from None
