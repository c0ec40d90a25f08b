"""Callbacks that record what a fit did, for the tests of Lightning's Trainer options."""

import atexit
import io
import json
import time
from pathlib import Path

import lightning as L
import torch

from lit_cnn.cv.files import atomic_write
from lit_cnn.cv.trainer import AtomicCheckpointIO


class Probe(L.Callback):
    """Writes to ``out`` (JSON, one entry per fit): optimizer steps, the largest gradient norm
    an optimizer step saw (after any clipping), ``global_step``, the parameters' dtype, and
    the validation passes."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps, self.max_norm, self.val_passes = 0, 0.0, 0

        def after_step(optimizer, args, kwargs):
            # After the step: Lightning runs the closure (forward, backward, clipping) inside
            # optimizer.step, and the gradients stay until the next zero_grad.
            grads = [
                p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
            self.max_norm = max(self.max_norm, float(norm))
            self.steps += 1

        trainer.optimizers[0].register_step_post_hook(after_step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_passes += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fits = json.loads(self.out.read_text()) if self.out.is_file() else []
        fits.append(
            {
                "optimizer_steps": self.steps,
                "max_grad_norm": self.max_norm,
                "global_step": trainer.global_step,
                "dtype": str(next(pl_module.parameters()).dtype),
                "val_passes": self.val_passes,
            }
        )
        self.out.write_text(json.dumps(fits))


class AtExitProbe(L.Callback):
    """Registers an atexit handler that writes ``path``: it runs only on a normal exit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        atexit.register(Path(self.path).write_text, "atexit ran")


class FailInFold(L.Callback):
    """Raises at the end of the first training epoch of fold ``fold`` (found by the fold
    loop's checkpoint directory), once: it leaves ``marker`` behind and then lets fits be."""

    def __init__(self, marker: str, fold: int = 1) -> None:
        self.marker, self.fold = Path(marker), fold

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            f"fold_{self.fold}" in str(trainer.checkpoint_callback.dirpath)
            and not self.marker.exists()
        ):
            self.marker.write_text("failed once")
            raise RuntimeError(f"injected failure in fold {self.fold}")


class SlowCheckpointIO(AtomicCheckpointIO):
    """lit_cnn's atomic checkpoint writes, slowed down so a test can kill one midway."""

    def __init__(self, seconds: float = 0.4) -> None:
        super().__init__()
        self.seconds = seconds

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]

        def write(f):
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(self.seconds / len(chunks))

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), write)
