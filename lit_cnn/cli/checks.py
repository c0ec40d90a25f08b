"""The checks run once after parsing: lit_cnn's own option limits, the epoch counts, and the
Trainer options the fold loop cannot work with, each refused in one line that says why."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace

from lit_cnn.cli.options import EXPECTED
from lit_cnn.errors import UsageError


def _bad(key: str, value: Any, expected: str) -> UsageError:
    shown = json.dumps(value) if isinstance(value, bool | None) else repr(value)
    return UsageError(f"--{key}: invalid value {shown}; expected {expected}")


def check_run_name(option: str, name: str | None) -> None:
    """Refuses a run name that is not one plain path component."""
    if name is None:
        return
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or len(name.encode()) > 255
    ):
        raise _bad(option, name, "one directory name: no '/', not '.' or '..', at most 255 bytes")


def check_values(cfg: Namespace) -> None:
    """The limits of lit_cnn's own options and of the epoch counts, with lit_cnn's messages.

    Raises:
        UsageError: The first option out of its limits.
    """
    limits = {"data.k": 2, "data.batch_size": 1, "data.eval_batch_size": 1}
    for key, low in limits.items():
        value = cfg.get(key)
        if value is not None and value < low:
            raise _bad(key, value, EXPECTED[key])
    seed = cfg.get("data.seed")
    if seed is not None and not 0 <= seed < 2**32:
        raise _bad("data.seed", seed, EXPECTED["data.seed"])
    for key in ("model.init_args.lr", "model.lr", "model.init_args.l2", "model.l2"):
        value = cfg.get(key)
        positive = key.endswith("lr")
        if value is not None and not (
            math.isfinite(value) and (value > 0 or (value == 0 and not positive))
        ):
            name = key.replace(".init_args", "")
            raise _bad(name, value, EXPECTED[name])
    patience = cfg.get("patience")
    if patience is not None and patience < 1:
        raise _bad("patience", patience, EXPECTED["patience"])
    trainer = cfg.trainer
    if trainer.max_epochs is not None and trainer.max_epochs != -1 and trainer.max_epochs < 1:
        raise _bad("trainer.max_epochs", trainer.max_epochs, "an integer >= 1 (or -1: no limit)")
    if trainer.min_epochs is not None and trainer.max_epochs not in (None, -1):
        if trainer.min_epochs > trainer.max_epochs:
            limit = f"at most --trainer.max_epochs ({trainer.max_epochs})"
            raise _bad("trainer.min_epochs", trainer.min_epochs, limit)


def check_fold_loop(trainer: Namespace) -> None:
    """Refuses the Trainer options the fold loop cannot work with, saying why.

    The loop picks each fold's best checkpoint by validation loss and tests it.
    """
    if trainer.barebones:
        raise UsageError(
            "--trainer.barebones true: it turns off the checkpoints and logging that the fold "
            "loop needs; use --trainer.fast_dev_run true for a quick check"
        )
    if trainer.enable_checkpointing is False:
        raise UsageError(
            "--trainer.enable_checkpointing false: the fold loop tests each fold's best "
            "checkpoint (lowest val/loss), so checkpointing must stay on"
        )
    if trainer.limit_val_batches is not None and trainer.limit_val_batches == 0:
        raise UsageError(
            "--trainer.limit_val_batches 0: the fold loop picks each fold's best checkpoint "
            "by validation loss, so some validation must run; give a value > 0"
        )
    every, epochs = trainer.check_val_every_n_epoch, trainer.max_epochs
    no_validation = every is not None and epochs not in (None, -1) and every > epochs
    if no_validation and not trainer.fast_dev_run:
        raise UsageError(
            f"--trainer.check_val_every_n_epoch {every}: with --trainer.max_epochs {epochs} no "
            "validation would run, and the fold loop picks its best checkpoint by validation loss"
        )


def spec_dict(spec: Any) -> dict[str, Any] | None:
    """A parsed ``--optimizer``/``--lr_scheduler`` as plain ``{"class_path", "init_args"}``."""
    if not spec:
        return None
    data = spec.as_dict() if isinstance(spec, Namespace) else dict(spec)
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}


def check_optimizer_forms(cfg: Namespace, model_keys: Sequence[str]) -> None:
    """Refuses ``--optimizer`` given together with the notebook's shorthand.

    Args:
        cfg: The parsed options.
        model_keys: Where the shorthand lives (``model.init_args`` or ``model``).
    """
    if not cfg.get("optimizer"):
        return
    for base in model_keys:
        for key in ("optimizer", "lr", "l2"):
            if cfg.get(f"{base}.{key}") is not None:
                shown = f"--{base.replace('.init_args', '')}.{key}"
                raise UsageError(
                    f"{shown} and --optimizer both set the optimizer; use one form "
                    "(--optimizer CLASS --optimizer.lr X, or --model.optimizer/lr/l2)"
                )


def check_batch_limits(trainer: Namespace, batches: dict[str, int]) -> None:
    """Refuses a fractional ``limit_*_batches`` that leaves a fold less than one batch.

    Args:
        trainer: The parsed ``--trainer`` options.
        batches: The number of batches of a fold's ``train`` and ``val`` passes.
    """
    for stage, n in batches.items():
        limit = trainer.get(f"limit_{stage}_batches")
        if isinstance(limit, float) and 0 < limit < 1 and int(limit * n) < 1:
            raise UsageError(
                f"--trainer.limit_{stage}_batches {limit}: a fold has {n} {stage} batches, and "
                f"{limit} of them is less than one; give at least {1 / n:.3g} or a whole number"
            )
