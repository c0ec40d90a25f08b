"""The K-fold command line: LightningCLI (jsonargparse) with ``run=False`` driving the fold loop.

    python scripts/kfold.py                                  # DeepCNN, 3 folds, 30 epochs
    python scripts/kfold.py --model ResNNBatch --data.k 5 --trainer.max_epochs 10
    python scripts/kfold.py --config scripts/configs/deepcnn.yaml
    python scripts/kfold.py --print_config > run.yaml        # then --config run.yaml

Errors in options or data end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_cnn.data import DataError
from lit_cnn.datamodule import KFoldDataModule
from lit_cnn.distributed import FoldParallel, FoldParallelError, local_metrics
from lit_cnn.kfold import FoldSetup, new_run_dir, run_kfold
from lit_cnn.malloc import tune_malloc
from lit_cnn.models import CNNModule, list_models
from lit_cnn.report import write_text

PROG = "kfold.py"
T = TypeVar("T")

TRAINER_DEFAULTS = {
    "max_epochs": 30,
    # No sanity pass: the first real validation follows within one epoch anyway.
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
}


#: The model a run trains when no --model (or config) names one.
DEFAULT_MODEL = "DeepCNN"


class UsageError(ValueError):
    """A bad option value (a ValueError, so jsonargparse reports it as a parse error)."""


class KFoldCLI(LightningCLI):
    """LightningCLI whose classes are instantiated per fold by the fold loop, not once."""

    def __init__(self, args: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if args is None else args)
        # The default model is named first on the command line, not set as the parser's
        # default: jsonargparse carries a default's init args over to a class named later
        # (jsonargparse issue #460), so `--model ShallowCNN` trained with DeepCNN's lr and l2.
        # A --model, or a config's model, that comes after this one replaces it cleanly.
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
            auto_configure_optimizers=False,
            run=False,
            args=argv,
        )

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # No --seed_everything: --data.seed seeds the folds, the batches and each fold's init.
        pass

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--early_break",
            type=bool,
            default=False,
            help="Train only the first fold (the notebook's single train/validation round).",
        )
        parser.add_argument(
            "--patience",
            type=int | None,
            default=None,
            help="Stop a fold after this many epochs without a lower val/loss (default: off).",
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the run directory (default: the next version_N).",
        )
        parser.add_argument(
            "--fold_parallel",
            type=bool,
            default=False,
            help="Under torchrun: rank r trains folds r, r+W, ... on its own device.",
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="Continue the run in this run directory with its saved configuration.",
        )

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
        """A fresh model, Trainer arguments and user callbacks for one fold."""
        # Instantiated again even for fold 0: the loop seeds each fold before calling this.
        init = self.parser.instantiate(self.config)
        trainer_kwargs: dict[str, Any] = dict(init["trainer"])
        callbacks = trainer_kwargs.pop("callbacks", None) or []
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        trainer_kwargs.pop("logger", None)
        model = init["model"]
        if self.parallel is not None:
            trainer_kwargs.update(self.parallel.trainer_overrides(trainer_kwargs["accelerator"]))
            local_metrics(model)
        return FoldSetup(model=model, trainer_kwargs=trainer_kwargs, callbacks=callbacks)


def config_dict(parser: LightningArgumentParser, config: Namespace) -> dict[str, Any]:
    """The parsed configuration as plain JSON data, without the ``--config`` file names."""
    data = json.loads(parser.dump(config, format="json", skip_none=False))
    data.pop("config", None)
    return data


def own_message(err: Exception) -> str | None:
    """The message of a value refused by lit_cnn's own classes ("model.lr must be ..."), as an
    option, even when jsonargparse wrapped it in its report."""
    found = re.search(r"\b((?:model|data)\.\w+ (?:must|is) [^\n]*)", str(err))
    return f"--{found.group(1)}" if found else None


def parse_error_line(err: Exception) -> str:
    """One line out of jsonargparse's multi-line parse error: the option and what is wrong."""
    text = str(err)
    if own := own_message(err):
        return own
    keys = re.findall(r'Parser key "([^"]+)"', text)
    if not keys:
        return text.strip().splitlines()[0]
    option = "--" + ".".join(keys)
    given = re.findall(r"Given value: (.*)", text) or re.findall(r"Got value: (.*)", text)
    value = given[-1].strip() if given else ""
    if keys == ["model"] and value and not value.startswith("NestedArg"):
        return f"--model: unknown model {value!r}; valid models: {', '.join(list_models())}"
    value = re.findall(r"Got value: (.*)", text) or [value]
    # jsonargparse quotes a dotted option's value as NestedArg(key='...', val='...').
    value = [re.sub(r"NestedArg\(key='[^']*', val='(.*)'\)", r"\1", v.strip()) for v in value]
    expected = re.findall(r"Expected (?:an? )?(<class '\w+'>|typing\.Literal\[.*?\])", text)
    want = expected[0] if expected else "a valid value"
    literal = re.search(r"Literal\[(.*)\]", want)
    if literal:
        want = "one of " + literal.group(1).replace("'", "")
    want = re.sub(r"<class '(\w+)'>", r"\1", want)
    return f"{option}: invalid value {value[-1].strip()!r}; expected {want}"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# Options that may accompany --resume: they change how a run looks, not its results.
RESUME_ALLOWED = ("--trainer.enable_progress_bar",)


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler (a SystemExit, so nothing swallows it)."""


_signal_received: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _signal_received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Terminated(128 + signum)


def split_resume(argv: list[str], what: str = "run") -> tuple[str | None, list[str]]:
    """Takes ``--resume DIR`` out of ``argv``; refuses options that would change the results.

    Args:
        argv: Command-line arguments.
        what: What is resumed ("run", "comparison"), for the messages.
    """
    resume, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--resume" or arg.startswith("--resume="):
            if "=" in arg:
                resume = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                resume, i = argv[i + 1], i + 1
            else:
                raise UsageError(f"--resume needs a {what} directory")
        else:
            rest.append(arg)
        i += 1
    if resume is None:
        return None, argv
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name.startswith("-") and name not in RESUME_ALLOWED:
            raise UsageError(
                f"--resume continues the {what} with its saved configuration; {name} would "
                "change its results (only --trainer.enable_progress_bar may be given)"
            )
    return resume, rest


def run_interruptibly(
    work: Callable[[], T], prog: str, resume_command: str
) -> tuple[T | None, int | None]:
    """Runs ``work`` so that SIGINT and SIGTERM end it with a resume hint.

    Returns:
        ``(result, None)``, or ``(None, 130 or 143)`` when a signal stopped it.
    """
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _signal_received.clear()
    try:
        return work(), None
    except (KeyboardInterrupt, SystemExit):
        if not _signal_received:
            raise
        signum = _signal_received[0]
        print(
            f"{prog}: interrupted by {signal.Signals(signum).name}; finished folds and each "
            f"fold's last checkpoint are kept. Resume with:\n  {resume_command}",
            file=sys.stderr,
        )
        return None, 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _resume_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {path}: no such directory")
    if not (run_dir / CONFIG).is_file() or not (run_dir / "folds.json").is_file():
        raise UsageError(
            f"--resume {path}: not a run directory (it has no {CONFIG} and folds.json)"
        )
    return run_dir


def check_trainer_options(trainer: Namespace) -> None:
    """Refuses the Trainer options a fold cannot run with.

    Args:
        trainer: The parsed ``--trainer`` options.

    Raises:
        UsageError: The option and what is wrong with it.
    """
    if trainer.max_epochs is not None and trainer.max_epochs < 1:
        raise UsageError(f"--trainer.max_epochs must be at least 1, got {trainer.max_epochs}")
    # The models step their optimizer themselves, several steps per batch (manual
    # optimization): Lightning refuses these two for such modules, with a traceback.
    if trainer.gradient_clip_val:
        raise UsageError(
            "--trainer.gradient_clip_val is not supported: lit_cnn's models step their "
            "optimizer themselves (manual optimization)"
        )
    if trainer.accumulate_grad_batches != 1:
        raise UsageError(
            "--trainer.accumulate_grad_batches is not supported: lit_cnn's models step their "
            "optimizer themselves; use a larger --data.batch_size"
        )


CONFIG = "config.yaml"
RUN_DIR_ENV = "LIT_CNN_RUN_DIR"


def _ddp_run_dir(cfg: Namespace, model_name: str) -> Path | str | None:
    """The run directory of a DDP rank other than 0, or None on rank 0 and single runs.

    Children of Lightning's DDP launcher inherit it in ``LIT_CNN_RUN_DIR``. Ranks started
    by torchrun or srun share no parent, so they meet in the directory ``--run_name`` names,
    made by rank 0.
    """
    from lightning.fabric.utilities.rank_zero import _get_rank

    rank = _get_rank()
    if not rank:
        return None
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if not cfg.run_name:
        return "under torchrun or srun with DDP, give --run_name so every rank finds the run"
    run_dir = Path(cfg.trainer.default_root_dir or ".") / "lightning_logs" / model_name
    run_dir = run_dir / cfg.run_name
    for _ in range(600):  # rank 0 makes it within seconds
        if (run_dir / CONFIG).is_file():
            return run_dir
        time.sleep(0.5)
    return f"rank {rank}: run directory {run_dir} did not appear"


def exit_now(status: int) -> NoReturn:
    """Ends the process with ``status``, skipping the interpreter's teardown.

    Tearing down the modules Lightning imports (torch._dynamo, sympy, scipy, matplotlib, ...)
    took 1.2-1.5 s on the CI machine, as long as a short fold. Nothing lit_cnn wrote waits
    for it: files are written and closed before their run ends (loggers are finalized at the
    end of each fit); standard output, standard error and logging are flushed here.

    Args:
        status: The exit status.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can reach it
            pass
    os._exit(status)


def cli_main(args: list[str] | None = None) -> int:
    """Parses options, runs the folds and returns the exit status.

    Exit status: 0 done; 1 some fold diverged; 2 a bad option or data file (one line on
    stderr, nothing written); 130 or 143 interrupted by SIGINT or SIGTERM (resumable).

    Args:
        args: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    tune_malloc()
    # The imported modules' objects (about 400,000) live as long as the process: kept out of
    # the collector's scans, the collection after each fold costs milliseconds.
    gc.freeze()
    try:
        resume, argv = split_resume(argv)
        run_dir = _resume_dir(resume) if resume else None
        if run_dir is not None:
            argv = ["--config", str(run_dir / CONFIG), *argv]
        with warnings.catch_warnings():
            # LightningCLI warns whenever `args` is given while sys.argv holds arguments too:
            # here `args` is sys.argv itself (less --resume), and the warning would make every
            # error message two lines.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            cli = KFoldCLI(args=argv)
    except UsageError as err:
        return _fail(str(err))
    except ArgumentError as err:
        return _fail(parse_error_line(err))
    except DataError as err:
        return _fail(str(err))
    except ValueError as err:
        return _fail(own_message(err) or str(err).strip().splitlines()[0])
    cfg = cli.config
    dm: KFoldDataModule = cli.datamodule
    model_name = type(cli.model).__name__
    try:
        check_trainer_options(cfg.trainer)
    except UsageError as err:
        return _fail(str(err))
    try:
        _ = dm.folds  # loads and validates the data, makes the split: before any run dir exists
    except DataError as err:
        return _fail(str(err))
    except ValueError as err:
        return _fail(own_message(err) or str(err))
    if cfg.fold_parallel and str(cfg.trainer.strategy) not in ("auto", "None"):
        return _fail("--fold_parallel trains each fold on one device: leave --trainer.strategy out")
    parallel = cli.parallel = FoldParallel() if cfg.fold_parallel else None

    def make_run_dir() -> Path | str:
        try:
            made = new_run_dir(cfg.trainer.default_root_dir, model_name, cfg.run_name)
            write_text(made / CONFIG, cli.parser.dump(cfg, skip_none=False))
            return made
        except FileExistsError as err:
            return f"run directory {err.filename} exists; choose another --run_name"
        except OSError as err:
            where = cfg.trainer.default_root_dir or "."
            return f"--trainer.default_root_dir {where}: cannot write there ({err.strerror})"

    if run_dir is None:
        if parallel is not None:  # rank 0 makes it, every rank uses it
            made = parallel.broadcast(make_run_dir() if parallel.is_main else None)
        else:
            made = _ddp_run_dir(cfg, model_name) or make_run_dir()
        if isinstance(made, str):
            return _fail(made)
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
    finally:
        if parallel is not None:
            parallel.close()
        os.environ.pop(RUN_DIR_ENV, None)
    if status is not None:
        return status
    if results is None:  # not the rank that reports
        return 0
    print(run_dir)
    return 1 if results["diverged_folds"] else 0
