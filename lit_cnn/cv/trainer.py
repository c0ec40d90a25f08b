"""One fold's Trainer: the user's Trainer options, callbacks and loggers, plus the loop's own
best-checkpoint callback; and the check that builds it before a run directory exists."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from lit_cnn.cv.files import atomic_write
from lit_cnn.cv.timing import EpochTimer
from lit_cnn.errors import UsageError
from lit_cnn.models.modules import LOGGED_METRICS, CNNModule


@dataclass
class FoldSetup:
    """What one fold is trained with, built fresh for every fold.

    Attributes:
        model: A new, untrained model.
        trainer_kwargs: ``Trainer`` arguments other than ``callbacks`` and ``logger``.
        callbacks: The user's own callbacks, new instances.
        logger: The user's ``--trainer.logger``: ``None`` or ``True`` (TensorBoard),
            ``False`` (none), or one or more parsed logger specs, made per fold by
            :func:`fold_loggers`.
    """

    model: CNNModule
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)
    logger: Any = None


def _spec(spec: Any) -> tuple[type, dict[str, Any]]:
    data = spec.as_dict() if isinstance(spec, Namespace) else dict(spec)
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    kwargs = {**dict(data.get("init_args") or {}), **dict(data.get("dict_kwargs") or {})}
    return cls, kwargs


def fold_loggers(logger: Any, run_dir: Path, fold: int) -> list[Logger] | bool:
    """Fold ``fold``'s loggers: each file logger writes ``run_dir/fold_<fold>``, each
    tracking logger (MLflow, W&B) records a run named ``<run>/fold_<fold>`` tagged with it.

    Args:
        logger: The parsed ``--trainer.logger`` (see :class:`FoldSetup`).
        run_dir: The run directory.
        fold: The fold.

    Returns:
        ``False`` for no logger, else the new loggers.
    """
    if logger is False:
        return False
    specs = logger if isinstance(logger, list) else [logger]
    if logger is None or logger is True:
        specs = [{"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}]
    made: list[Logger] = []
    run = run_dir.name
    for spec in specs:
        cls, kwargs = _spec(spec)
        params = inspect.signature(cls).parameters
        if "version" in params and "save_dir" in params and "name" in params:
            # File loggers (TensorBoard, CSV): one version per fold inside the run directory.
            kwargs.update(save_dir=str(run_dir.parent), name=run, version=f"fold_{fold}")
            if "default_hp_metric" in params:
                kwargs["default_hp_metric"] = False  # the loop logs its own hparams metrics
        else:
            if "save_dir" in params:  # a local store lives in the run directory
                kwargs["save_dir"] = str(run_dir)
            if "run_name" in params:  # MLflow
                kwargs["run_name"] = f"{run}/fold_{fold}"
                kwargs["tags"] = {**dict(kwargs.get("tags") or {}), "run": run, "fold": str(fold)}
            elif "offline" in params and "name" in params:  # W&B
                kwargs.update(name=f"{run}/fold_{fold}", group=run)
                kwargs["tags"] = [*list(kwargs.get("tags") or []), f"fold_{fold}"]
        made.append(cls(**kwargs))
    return made


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written atomically (see :func:`atomic_write`).

    Lightning writes a checkpoint in place, so a kill during the write leaves a truncated
    file that ``torch.load`` refuses; with this plugin it leaves the previous checkpoint.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        import torch

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: torch.save(checkpoint, f))


class FoldProgressBar(TQDMProgressBar):
    """Lightning's bar for training and validation; the test pass of a fold shows none."""

    def init_test_tqdm(self) -> Any:
        return Tqdm(disable=True)


@dataclass
class FoldTrainer:
    """A fold's Trainer and the loop's callbacks in it."""

    trainer: L.Trainer
    checkpoint: ModelCheckpoint
    timer: EpochTimer
    loggers: list[Logger]


def build_trainer(
    setup: FoldSetup, run_dir: Path, fold: int, patience: int | None = None
) -> FoldTrainer:
    """Builds fold ``fold``'s Trainer writing into ``run_dir/fold_<fold>``.

    Args:
        setup: The fold's options.
        run_dir: The run directory (need not exist yet).
        fold: The fold.
        patience: Early-stopping patience on val/loss; ``None``: off.
    """
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / f"fold_{fold}" / "checkpoints",
        filename="best",
        monitor="val/loss",
        mode="min",
        save_last=True,
        auto_insert_metric_name=False,
    )
    timer = EpochTimer()
    callbacks = [*setup.callbacks, checkpoint, timer]
    wants_bar = setup.trainer_kwargs.get("enable_progress_bar", True) is not False
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        # Redrawn every 20 steps: a redraw per step costs a noticeable share of a small step.
        callbacks.append(FoldProgressBar(refresh_rate=20))
    if patience:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=patience))
    loggers = fold_loggers(setup.logger, run_dir, fold)
    plugins = setup.trainer_kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):  # the user's own stays
        plugins.append(AtomicCheckpointIO())
    trainer = L.Trainer(
        **{**setup.trainer_kwargs, "callbacks": callbacks, "logger": loggers, "plugins": plugins}
    )
    return FoldTrainer(trainer, checkpoint, timer, loggers or [])


def tensorboard_loggers(loggers: Sequence[Logger]) -> list[TensorBoardLogger]:
    """The TensorBoard loggers among ``loggers``."""
    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]


def check_monitor(monitor: str | None, owner: str, option: str) -> None:
    """Refuses a callback or scheduler that watches a metric lit_cnn never logs."""
    logged = [m for m in LOGGED_METRICS if not m.startswith("test/")]
    if monitor is not None and monitor not in logged:
        raise UsageError(
            f"{option}: {owner} monitors {monitor!r}, which lit_cnn never logs; it logs "
            f"{', '.join(logged)}"
        )


def check_logger_specs(logger: Any) -> None:
    """Refuses a file logger's ``name`` or ``version``: the fold loop sets them (and
    ``save_dir``, see ``refuse_logger_save_dir``), so every fold logs as its own version
    inside the run directory."""
    specs = logger if isinstance(logger, list) else [logger]
    for spec in specs:
        if not isinstance(spec, Namespace | dict):
            continue
        cls, kwargs = _spec(spec)
        params = inspect.signature(cls).parameters
        if not {"save_dir", "name", "version"} <= set(params):
            continue
        given = {
            "name": kwargs.get("name") != params["name"].default,
            "version": kwargs.get("version") != params["version"].default,
        }
        for key, set_by_user in given.items():
            if set_by_user:
                raise UsageError(
                    f"--trainer.logger.{key}: lit_cnn writes each fold's {cls.__name__} logs to "
                    "<run directory>/fold_<i>; choose the place with --trainer.default_root_dir "
                    "and --run_name"
                )


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def preflight(setup: FoldSetup, given: dict[str, Any], patience: int | None = None) -> None:
    """Builds a fold's Trainer without writing anything, so Lightning's refusals come first.

    A Trainer that Lightning refuses is built again with the user's options added one at a
    time, so the message names the option that made it fail.

    Args:
        setup: A fold's options.
        given: The Trainer options that differ from the command's defaults, by name.
        patience: As for the run.

    Raises:
        UsageError: The option and Lightning's reason, in one line.
    """
    for callback in setup.callbacks:
        check_monitor(
            getattr(callback, "monitor", None), type(callback).__name__, "--trainer.callbacks"
        )
    scheduler = setup.model.lr_scheduler_spec or {}
    check_monitor(
        (scheduler.get("init_args") or {}).get("monitor"), "the scheduler", "--lr_scheduler.monitor"
    )
    check_logger_specs(setup.logger)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        try:
            build_trainer(setup, run_dir, 0, patience)
            return
        except Exception as err:  # Lightning's MisconfigurationException, ValueError, ...
            failure = err
        base = {k: v for k, v in setup.trainer_kwargs.items() if k not in given}
        for name, value in given.items():
            base[name] = value
            try:
                trial = FoldSetup(setup.model, dict(base), setup.callbacks, setup.logger)
                build_trainer(trial, run_dir, 0, patience)
            except Exception as err:
                shown = str(value).lower() if isinstance(value, bool) else value
                raise UsageError(
                    f"--trainer.{name} {shown}: refused by Lightning: {_first_line(err)}"
                ) from None
    raise UsageError(f"--trainer: refused by Lightning: {_first_line(failure)}")
