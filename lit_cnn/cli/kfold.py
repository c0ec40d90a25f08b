"""The K-fold command line: LightningCLI (jsonargparse) with ``run=False`` driving the fold loop.

    python scripts/kfold.py                                  # DeepCNN, 3 folds, 30 epochs
    python scripts/kfold.py --model ResNNBatch --data.k 5 --trainer.max_epochs 10
    python scripts/kfold.py --optimizer AdamW --optimizer.lr 3e-3 --lr_scheduler OneCycleLR \\
        --lr_scheduler.max_lr 0.01
    python scripts/kfold.py --print_config > run.yaml        # then --config run.yaml

Every option is checked, and a first fold's Trainer built, before anything is written: a bad
one ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.rank_zero import _get_rank
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_cnn.cli import quiet
from lit_cnn.cli.checks import (
    check_batch_limits,
    check_fold_loop,
    check_optimizer_forms,
    check_run_name,
    check_values,
    spec_dict,
)
from lit_cnn.cli.options import UsageError, add_options, diagnose, refuse_logger_save_dir
from lit_cnn.cli.plumbing import (
    CONFIG,
    RUN_DIR_ENV,
    ddp_run_dir,
    fail,
    resume_dir,
    run_interruptibly,
    split_resume,
)
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.distributed import FoldParallel, FoldParallelError, local_metrics
from lit_cnn.cv.files import remove_partial_writes
from lit_cnn.cv.loop import run_kfold
from lit_cnn.cv.report import write_text
from lit_cnn.cv.seal import check_resume, finished, new_run_dir, seal
from lit_cnn.cv.trainer import FoldSetup, preflight
from lit_cnn.data.loading import DataError
from lit_cnn.models.modules import CNNModule

PROG = "kfold.py"

TRAINER_DEFAULTS = {
    "max_epochs": 30,
    # No sanity pass: the first real validation follows within one epoch anyway.
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
}

#: The model a run trains when no --model (or config) names one.
DEFAULT_MODEL = "DeepCNN"


def add_shared_arguments(parser: LightningArgumentParser) -> None:
    """What kfold.py and compare.py add alike beyond Lightning's groups.

    A logger's ``save_dir`` is linked to ``--trainer.default_root_dir``: the fold loop puts
    every fold's logs in its run directory, so ``--trainer.logger CSVLogger`` needs no more.
    """
    parser.link_arguments(
        "trainer.default_root_dir",
        "trainer.logger.init_args.save_dir",
        compute_fn=lambda root: root or ".",
    )
    parser.add_argument(
        "--patience",
        type=int | None,
        default=None,
        help="Stop a fold after this many epochs without a lower val/loss (default: off).",
    )


def given_trainer_options(parser: LightningArgumentParser, cfg: Namespace) -> dict[str, Any]:
    """The Trainer options whose parsed value differs from the command's default."""
    defaults = parser.get_defaults().trainer
    skip = {"callbacks", "logger"}
    return {k: v for k, v in vars(cfg.trainer).items() if k not in skip and defaults.get(k) != v}


class KFoldCLI(LightningCLI):
    """LightningCLI whose classes are instantiated per fold by the fold loop, not once."""

    def __init__(self, args: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        # The default model is named first on the command line, not set as the parser's
        # default: jsonargparse carries a default's init args over to a class named later
        # (jsonargparse issue #460). The architectures' lr and l2 default to None ("the
        # architecture's own"), so a None carried over to another class means its own too.
        argv = ["--model", DEFAULT_MODEL, *argv]
        super().__init__(
            model_class=CNNModule,
            datamodule_class=KFoldDataModule,
            subclass_mode_model=True,
            save_config_callback=None,
            trainer_defaults=TRAINER_DEFAULTS,
            parser_kwargs={
                "exit_on_error": False,
                "prog": PROG,
                "description": "K-fold cross-validation of one architecture: "
                f"{DEFAULT_MODEL} unless --model or a config names another.",
            },
            run=False,
            args=argv,
        )

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # No --seed_everything: --data.seed seeds the folds, the batches and each fold's init.
        pass

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        add_shared_arguments(parser)
        add_options(
            parser,
            [
                (
                    "--early_break",
                    bool,
                    False,
                    "Train only the first fold (the notebook's single train/validation round).",
                ),
                (
                    "--run_name",
                    str | None,
                    None,
                    "Name of the run directory (default: the next version_N).",
                ),
                (
                    "--fold_parallel",
                    bool,
                    False,
                    "Under torchrun: rank r trains folds r, r+W, ... on its own device.",
                ),
                (
                    "--resume",
                    str | None,
                    None,
                    "Continue the run in this run directory with its saved configuration.",
                ),
            ],
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            refuse_logger_save_dir(list(args))
            super().parse_arguments(parser, args)
        except ArgumentError:
            raise UsageError(diagnose(parser, list(args))) from None

    def before_instantiate_classes(self) -> None:
        check_values(self.config)
        check_run_name("run_name", self.config.run_name)
        check_optimizer_forms(self.config, ["model.init_args"])

    def _set_seed(self) -> None:
        pass

    parallel: FoldParallel | None = None

    def instantiate_classes(self) -> None:
        # Once here, to validate the options before anything runs; the fold loop then gets a
        # fresh model and callbacks per fold from fold_setup.
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule = self.config_init["data"]
        self.model = self.config_init["model"]

    def fold_setup(self, fold: int) -> FoldSetup:
        """A fresh model, Trainer arguments, user callbacks and loggers for one fold."""
        # Instantiated again even for fold 0: the loop seeds each fold before calling this.
        cfg = copy.deepcopy(self.config)
        logger = cfg.trainer.logger
        cfg.trainer.logger = None  # made per fold, in the fold's directory
        init = self.parser.instantiate(cfg)
        trainer_kwargs: dict[str, Any] = dict(init["trainer"])
        callbacks = trainer_kwargs.pop("callbacks", None) or []
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        trainer_kwargs.pop("logger", None)
        model = init["model"]
        model.optimizer_spec = spec_dict(self.config.get("optimizer"))
        model.lr_scheduler_spec = spec_dict(self.config.get("lr_scheduler"))
        if self.parallel is not None:
            trainer_kwargs.update(self.parallel.trainer_overrides(trainer_kwargs["accelerator"]))
            local_metrics(model)
        return FoldSetup(model, trainer_kwargs, callbacks, logger)


def config_dict(parser: LightningArgumentParser, config: Namespace) -> dict[str, Any]:
    """The parsed configuration as plain JSON data, without the ``--config`` file names."""
    data = json.loads(parser.dump(config, format="json", skip_none=False))
    data.pop("config", None)
    return data


def describe_optimizer(model: CNNModule) -> str:
    """One line: the architecture and the optimizer it trains with."""
    s = model.optimizer_summary()
    line = f"{type(model).__name__}: {s['optimizer']}, lr {s['lr']:g}, L2 {s['l2']:g}"
    return line + (f", {s['lr_scheduler']}" if "lr_scheduler" in s else "")


def _parse(argv: list[str]) -> KFoldCLI:
    resume, argv = split_resume(argv)
    if resume:
        argv = ["--config", str(resume_dir(resume) / CONFIG), *argv]
    with warnings.catch_warnings():
        # LightningCLI warns whenever `args` is given while sys.argv holds arguments too:
        # here `args` is sys.argv itself (less --resume).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = KFoldCLI(args=argv)
    cli.resume_from = resume
    return cli


def prepare(argv: list[str]) -> tuple[KFoldCLI, FoldSetup]:
    """Parses and checks a kfold.py command line; writes nothing.

    Every option is checked, the data loaded and split, and a first fold's Trainer built.

    Args:
        argv: Command-line arguments, without the program name.

    Returns:
        The parsed command line and the first fold's setup.

    Raises:
        UsageError, DataError: A bad option or data file, in one line.
        ValueError: A value an architecture or the DataModule refused.
    """
    cli = _parse(argv)
    cfg = cli.config
    check_fold_loop(cfg.trainer)
    dm: KFoldDataModule = cli.datamodule
    train_idx, val_idx = dm.folds[0]  # loads and validates the data, makes the split
    check_batch_limits(
        cfg.trainer,
        {
            "train": -(-len(train_idx) // dm.batch_size),
            "val": -(-len(val_idx) // dm.eval_batch_size),
        },
    )
    if cfg.fold_parallel and str(cfg.trainer.strategy) not in ("auto", "None"):
        raise UsageError(
            "--fold_parallel trains each fold on one device: leave --trainer.strategy out"
        )
    setup = cli.fold_setup(0)
    preflight(setup, given_trainer_options(cli.parser, cfg), cfg.patience)
    return cli, setup


def cli_main(args: list[str] | None = None) -> int:
    """Parses options, runs the folds and returns the exit status.

    Exit status: 0 done; 1 some fold diverged or a fit failed; 2 a bad option or data file
    (one line on stderr, nothing written); 130 or 143 interrupted by SIGINT or SIGTERM.

    Args:
        args: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    quiet.install()
    argv = list(sys.argv[1:] if args is None else args)
    try:
        cli, setup = prepare(argv)
    except (UsageError, DataError) as err:
        return fail(PROG, str(err))
    except ValueError as err:  # a value an architecture or the DataModule refused
        return fail(PROG, str(err).strip().splitlines()[0])
    cfg, dm = cli.config, cli.datamodule
    model_name = type(cli.model).__name__
    resume = cli.resume_from
    if resume:
        try:
            check_resume(Path(resume), dm.folds)
        except UsageError as err:
            return fail(PROG, str(err))
        if finished(Path(resume)):
            print(f"{resume}: the run is finished; nothing to do (its results: results.json)")
            return 0
        remove_partial_writes(Path(resume))  # what a kill during a write left
    dry = bool(cfg.trainer.fast_dev_run)
    parallel = cli.parallel = FoldParallel() if cfg.fold_parallel else None
    if (parallel is None or parallel.is_main) and not _get_rank():
        print(describe_optimizer(setup.model) + (" (fast_dev_run: nothing is kept)" if dry else ""))

    def make_run_dir() -> Path | str:
        try:
            made = new_run_dir(cfg.trainer.default_root_dir, model_name, cfg.run_name)
            write_text(made / CONFIG, cli.parser.dump(cfg, skip_none=False))
            seal(made)
            return made
        except FileExistsError as err:
            return f"--run_name {cfg.run_name}: run directory {err.filename} exists; choose another"
        except OSError as err:
            where = cfg.trainer.default_root_dir or "."
            return f"--trainer.default_root_dir {where}: cannot write there ({err.strerror})"

    if dry:  # Lightning's smoke test: the folds run, the report is printed, nothing is kept
        run_dir = Path(tempfile.mkdtemp(prefix="lit_cnn_fast_dev_run_")) / model_name
        run_dir.mkdir()
    elif resume:
        run_dir = Path(resume)
    else:
        if parallel is not None:  # rank 0 makes it, every rank uses it
            made = parallel.broadcast(make_run_dir() if parallel.is_main else None)
        else:
            made = ddp_run_dir(cfg, model_name) or make_run_dir()
        if isinstance(made, str):
            return fail(PROG, made)
        run_dir = Path(made)
    # DDP's launcher re-runs this script in its child processes: they must find this run
    # directory instead of making one of their own.
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        results, status = run_interruptibly(
            lambda: run_kfold(
                cli.fold_setup,
                dm,
                run_dir,
                model_name=model_name,
                config=config_dict(cli.parser, cfg),
                early_break=cfg.early_break,
                patience=cfg.patience,
                parallel=parallel,
                free_data=True,
            ),
            PROG,
            f"python scripts/kfold.py --resume {run_dir}",
        )
    except FoldParallelError as err:
        print(f"{PROG}: error: fold-parallel run failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a failure during a fit that no check could foresee
        what = f"{type(err).__name__}: {str(err).strip()}".splitlines()[0]
        if not dry:
            write_text(run_dir / "error.txt", traceback.format_exc())
            what += (
                f" (traceback in {run_dir / 'error.txt'}; finished folds are kept: "
                f"python scripts/kfold.py --resume {run_dir})"
            )
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 1
    finally:
        if parallel is not None:
            parallel.close()
        os.environ.pop(RUN_DIR_ENV, None)
        if dry:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    if status is not None:
        return status
    if results is None:  # not the rank that reports
        return 0
    (run_dir / "error.txt").unlink(missing_ok=True)
    if not dry:
        print(run_dir)
    return 1 if results["diverged_folds"] else 0
