"""Training-epoch timing shared by the fold loop and the benchmark."""

from __future__ import annotations

import time

import lightning as L
import torch


def device_sync(device: torch.device) -> None:
    """Waits for queued work on ``device``, so a clock read afterwards means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    """Records the seconds of each epoch's training loop, validation excluded.

    The clock starts when the epoch starts and stops when its validation starts (or when the
    epoch ends, if it has none). One device sync at each end; nothing per step.

    Attributes:
        seconds: One entry per completed training epoch.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: float | None = None

    def _stop(self, trainer: L.Trainer) -> None:
        if self._start is not None:
            device_sync(trainer.strategy.root_device)
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device_sync(trainer.strategy.root_device)
        self._start = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer)

    def state_dict(self) -> dict[str, list[float]]:
        # Saved in checkpoints, so a resumed fold reports every epoch's time.
        return {"seconds": list(self.seconds)}

    def load_state_dict(self, state_dict: dict[str, list[float]]) -> None:
        self.seconds = list(state_dict.get("seconds", []))
