"""Fold-parallel runs over torchrun: rank r trains folds r, r+W, r+2W, ... and rank 0 reports.

    torchrun --nproc-per-node 2 scripts/kfold.py --fold_parallel true --data.k 4
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        scripts/kfold.py --fold_parallel true --data.k 8 --run_name cv8

Each process trains its folds with an ordinary single-device Trainer (``cuda:LOCAL_RANK`` or
the CPU); the process group (gloo) is used only to agree on the run directory and to gather
the fold records on rank 0. Lightning must not see torchrun's environment, or it would treat
each single-device Trainer as one rank of a DDP job (only rank 0 logging and saving), and
torchmetrics must not sync over the group, since every process trains a different fold.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric

# torchrun's variables that make Lightning (and torchmetrics) think of a DDP job.
_ELASTIC_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
)


class FoldParallelError(RuntimeError):
    """A fold failed on some rank; the message names the rank and the error."""


class FoldParallel:
    """This process's place in a fold-parallel run launched by torchrun.

    Without torchrun's environment it is a world of one and uses no process group.

    Args:
        timeout_minutes: How long a rank waits for the others at the final gather.
    """

    def __init__(self, timeout_minutes: float = 24 * 60) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
        for var in _ELASTIC_VARS:
            os.environ.pop(var, None)
        from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        # Set from RANK at import; every process here is rank 0 of its own Trainer.
        rank_zero_only.rank = 0
        fabric_rank_zero.rank = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which writes the run's files and prints the summary."""
        return self.rank == 0

    def my_folds(self, folds: list[int]) -> list[int]:
        """The folds this rank trains: r, r+W, r+2W, ..."""
        return folds[self.rank :: self.world]

    def trainer_overrides(self, accelerator: Any) -> dict[str, Any]:
        """Trainer arguments that pin this process to one device of its own."""
        wants_gpu = str(accelerator) in ("auto", "gpu", "cuda")
        if wants_gpu and torch.cuda.is_available():
            # Several processes may share a GPU: LOCAL_RANK modulo the visible devices.
            return {"accelerator": "gpu", "devices": [self.local_rank % torch.cuda.device_count()]}
        return {"accelerator": "cpu", "devices": 1}

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, work: Callable[[], list[Any]]) -> list[Any] | None:
        """Runs ``work`` here and collects every rank's results on rank 0.

        A failure on any rank fails every rank with that rank's message: each rank reports
        its outcome, success or error, so none waits for a rank that has given up.

        Returns:
            On rank 0, all ranks' results concatenated in rank order; elsewhere ``None``.

        Raises:
            FoldParallelError: ``work`` raised on some rank.
        """
        try:
            outcome: tuple[str, Any] = ("ok", work())
        except Exception as err:  # reported to every rank below, then raised
            outcome = ("error", f"rank {self.rank}: {type(err).__name__}: {err}")
        outcomes = [outcome]
        if self.world > 1:
            outcomes = [None] * self.world
            dist.all_gather_object(outcomes, outcome)
        errors = [msg for status, msg in outcomes if status == "error"]
        if errors:
            raise FoldParallelError("; ".join(errors))
        if not self.is_main:
            return None
        return [item for _, items in outcomes for item in items]

    def close(self) -> None:
        """Leaves the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


def local_metrics(module: torch.nn.Module) -> None:
    """Stops every torchmetrics metric in ``module`` from syncing over the process group."""
    for sub in module.modules():
        if isinstance(sub, Metric):
            # torchmetrics copies sync_on_compute into _to_sync at construction and reads
            # the copy in compute(); both must say no.
            sub.sync_on_compute = False
            sub._to_sync = False
