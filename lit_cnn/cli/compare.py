"""The ``compare.py`` command line: the same Trainer, optimizer, scheduler, logger and data
options as ``kfold.py``, checked the same way, plus the comparison's own."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

from lit_cnn.analysis.compare import run_comparison
from lit_cnn.analysis.verdicts import summary_lines
from lit_cnn.cli import quiet
from lit_cnn.cli.checks import (
    check_batch_limits,
    check_fold_loop,
    check_optimizer_forms,
    check_run_name,
    check_values,
    spec_dict,
)
from lit_cnn.cli.kfold import TRAINER_DEFAULTS, add_shared_arguments, given_trainer_options
from lit_cnn.cli.options import UsageError, diagnose, refuse_logger_save_dir
from lit_cnn.cli.plumbing import fail, run_interruptibly, split_resume
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.report import write_text
from lit_cnn.cv.seal import new_run_dir
from lit_cnn.cv.trainer import FoldSetup, preflight
from lit_cnn.data.loading import DataError
from lit_cnn.models.modules import get_model, list_models

PROG = "compare.py"
CONFIG = "compare.yaml"
HPARAM_KEYS = ("lr", "l2", "optimizer")


# ----------------------------------------------------------------------------- options


def resolve_hparams(
    models: Sequence[str],
    common: Mapping[str, Any] | None = None,
    per_model: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The hyper-parameters each model is trained with, validated.

    Later sources win: the architecture's own defaults (the notebook's), then ``common``
    (``--model.*``, for every model), then ``per_model[name]`` (``--hparams``, one model).

    Args:
        models: Architecture names.
        common: ``lr``, ``l2``, ``optimizer`` for all models; ``None`` values are ignored.
        per_model: Architecture name to its own ``lr``, ``l2``, ``optimizer``.

    Returns:
        Each model's ``{"lr", "l2", "optimizer"}``.

    Raises:
        UsageError: An unknown architecture or key, or a value the model refuses; the
            message names the option.
    """
    common = {k: v for k, v in (common or {}).items() if v is not None}
    per_model = per_model or {}
    valid = list_models()
    for name, values in per_model.items():
        if name not in valid:
            raise UsageError(f"--hparams: unknown model {name!r}; valid models: {', '.join(valid)}")
        unknown = sorted(set(values) - set(HPARAM_KEYS))
        if unknown:
            raise UsageError(
                f"--hparams.{name}: unknown key {unknown[0]!r}; valid keys: "
                f"{', '.join(HPARAM_KEYS)}"
            )
    resolved = {}
    for name in models:
        own = {k: v for k, v in per_model.get(name, {}).items() if v is not None}
        try:
            # Building the model once validates the values and fills in its defaults.
            model = get_model(name, **{**common, **own})
        except ValueError as err:
            message = str(err)
            found = re.match(r"model\.(\w+) ", message)
            if found and found.group(1) in own:
                message = f"--hparams.{name}.{message[len('model.') :]}"
            elif found:
                message = f"--{message}"
            elif "optimizer" in message:
                where = f"--hparams.{name}.optimizer" if "optimizer" in own else "--model.optimizer"
                message = f"{where}: {message}"
            raise UsageError(message) from None
        resolved[name] = {k: model.hparams[k] for k in HPARAM_KEYS}
    return resolved


def validate_models(models: Sequence[str] | None) -> list[str]:
    """Checks ``--models``: at least two distinct registered architectures.

    Args:
        models: The names given.

    Returns:
        The names, as a list.

    Raises:
        UsageError: Fewer than two, a repeated or an unknown name.
    """
    models = list(models or [])
    valid = list_models()
    for name in models:
        if name not in valid:
            raise UsageError(f"--models: unknown model {name!r}; valid models: {', '.join(valid)}")
    if len(models) < 2:
        raise UsageError(f"--models needs at least 2 models to compare, got {len(models)}")
    if len(set(models)) != len(models):
        twice = next(m for m in models if models.count(m) > 1)
        raise UsageError(f"--models: {twice} is given twice")
    return models


def design(scheme: str, k: int | None, repeats: int | None) -> tuple[int, int]:
    """The number of folds and repetitions of a scheme.

    ``kfold``: ``k`` (default 3) folds, ``repeats`` (default 1) repetitions. ``5x2cv``:
    always 2 folds and 5 repetitions, the design Dietterich's test needs.

    Args:
        scheme: ``"kfold"`` or ``"5x2cv"``.
        k: ``--data.k``; ``None`` when not given.
        repeats: ``--repeats``; ``None`` when not given.

    Returns:
        ``(k, repeats)``.

    Raises:
        UsageError: Values the scheme cannot take.
    """
    if scheme == "5x2cv":
        if k not in (None, 2):
            raise UsageError(f"--scheme 5x2cv is 2-fold: leave --data.k out or give 2, got {k}")
        if repeats not in (None, 5):
            raise UsageError(
                f"--scheme 5x2cv is 5 repetitions: leave --repeats out or give 5, got {repeats}"
            )
        return 2, 5
    k = 3 if k is None else k
    repeats = 1 if repeats is None else repeats
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    return k, repeats


def build_parser() -> LightningArgumentParser:
    """The ``compare.py`` option parser (errors raise instead of exiting)."""
    parser = LightningArgumentParser(
        prog=PROG,
        description=(
            "Train several architectures on the same folds (repeated K-fold or 5x2cv) and "
            "test whether their accuracies differ. The last line printed is the comparison "
            "directory."
        ),
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML configuration.")
    parser.add_argument(
        "--models",
        type=str,
        nargs="+",
        default=None,
        help="Two or more architectures; each later one is compared with each earlier one "
        f"(list the baseline first). Valid: {', '.join(list_models())}.",
    )
    parser.add_argument(
        "--model.lr", type=float | None, default=None, help="Learning rate of every model."
    )
    parser.add_argument(
        "--model.l2", type=float | None, default=None, help="L2 weight decay of every model."
    )
    parser.add_argument(
        "--model.optimizer",
        type=Literal["adam", "sgdm"] | None,
        default=None,
        help="Optimizer of every model.",
    )
    parser.add_argument(
        "--hparams",
        type=dict[str, dict[str, Any]],
        default={},
        help="Per-model hyper-parameters, e.g. {ResNN: {lr: 0.001, l2: 0.01}}; they override "
        "--model.*, which overrides each architecture's notebook defaults.",
    )
    parser.add_argument(
        "--repeats",
        type=int | None,
        default=None,
        help="Repetitions of the K-fold with split seeds seed, seed+1, ... (default 1; "
        "5 with --scheme 5x2cv).",
    )
    parser.add_argument(
        "--scheme",
        type=Literal["kfold", "5x2cv"],
        default="kfold",
        help="kfold: repeated K-fold; 5x2cv: Dietterich's 5 repetitions of 2-fold.",
    )
    parser.add_argument(
        "--rope",
        type=float,
        default=1.0,
        help="Half-width of the region of practical equivalence of the Bayesian verdicts, in "
        "percentage points of accuracy (default 1). It changes only the analysis, so it may be "
        "given with --resume.",
    )
    parser.add_argument(
        "--name",
        type=str | None,
        default=None,
        help="Name of the comparison directory (default: the next version_N).",
    )
    parser.add_argument(
        "--early_break",
        type=bool | None,
        default=None,
        help="Refused: a comparison needs every fold.",
    )
    parser.add_argument(
        "--resume",
        type=str | None,
        default=None,
        help="Continue the comparison in this directory with its saved configuration.",
    )
    parser.add_class_arguments(KFoldDataModule, "data", instantiate=False)
    # None: 3 folds for --scheme kfold, 2 for 5x2cv; a given value is checked against it.
    parser.set_defaults({"data.k": None})
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.set_defaults({f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()})
    parser.add_optimizer_args()
    parser.add_lr_scheduler_args()
    add_shared_arguments(parser)
    return parser


# ----------------------------------------------------------------------------- command line


def _take_rope(argv: list[str]) -> tuple[list[str], list[str]]:
    """Splits ``--rope X`` (or ``--rope=X``) off ``argv``: ``(the rope options, the rest)``."""
    rope, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--rope" and i + 1 < len(argv):
            rope += argv[i : i + 2]
            i += 2
            continue
        (rope if argv[i].startswith("--rope=") else rest).append(argv[i])
        i += 1
    return rope, rest


def _split_resume(argv: list[str]) -> tuple[str | None, list[str]]:
    """Takes ``--resume DIR`` out of ``argv``: DIR's saved configuration replaces the rest.

    ``--rope`` may come with it: it changes the analysis, not the runs.
    """
    rope, others = _take_rope(argv)
    resume, rest = split_resume(others, "comparison")
    if resume is None:
        return None, argv
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"--resume {resume}: no such directory")
    if not (path / CONFIG).is_file():
        raise UsageError(f"--resume {resume}: not a comparison directory (it has no {CONFIG})")
    return resume, ["--config", str(path / CONFIG), *rest, *rope]


def _parse(parser: LightningArgumentParser, argv: list[str]) -> Any:
    try:
        refuse_logger_save_dir(argv)
        return parser.parse_args(argv)
    except ArgumentError:
        raise UsageError(diagnose(parser, argv)) from None


def compare_main(args: list[str] | None = None) -> int:
    """Parses options, trains and compares the models, and returns the exit status.

    Exit status: 0 done; 1 some fold diverged (its pairs are left out of the tests) or a fit
    failed; 2 a bad option or data file (one line on stderr, no directory made); 130 or 143
    interrupted by SIGINT or SIGTERM (resume with ``--resume DIR``).

    Args:
        args: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    quiet.install()
    argv = list(sys.argv[1:] if args is None else args)
    parser = build_parser()
    try:
        resume, argv = _split_resume(argv)
        cfg = _parse(parser, argv)
        if not cfg.models:
            raise UsageError("--models is required: two or more architectures to compare")
        if cfg.early_break:
            raise UsageError(
                "--early_break is refused here: a comparison trains every fold of every "
                "repetition, so that the models' scores are paired"
            )
        check_values(cfg)
        if not (math.isfinite(cfg.rope) and cfg.rope >= 0):
            raise UsageError(
                f"--rope: invalid value {cfg.rope}; expected a finite number >= 0 "
                "(percentage points)"
            )
        check_run_name("name", cfg.name)
        check_optimizer_forms(cfg, ["model"])
        if cfg.optimizer and cfg.hparams:
            raise UsageError("--hparams and --optimizer both set the optimizer; use one form")
        models = validate_models(cfg.models)
        k, repeats = design(cfg.scheme, cfg.data.k, cfg.repeats)
        hparams = resolve_hparams(models, dict(cfg.model), cfg.hparams)
        check_fold_loop(cfg.trainer)
        data = {**dict(cfg.data), "k": k}
        dm0 = KFoldDataModule(**data)
        train_idx, val_idx = dm0.folds[0]  # loads and checks the data and the split
        check_batch_limits(
            cfg.trainer,
            {
                "train": -(-len(train_idx) // dm0.batch_size),
                "val": -(-len(val_idx) // dm0.eval_batch_size),
            },
        )
        optimizer, lr_scheduler = spec_dict(cfg.optimizer), spec_dict(cfg.lr_scheduler)

        def trainer_kwargs() -> dict[str, Any]:
            # Instantiated per fold: every fold gets new callback objects; the loggers are
            # made by the fold loop, in the fold's directory, from their spec.
            run_cfg = copy.deepcopy(cfg)
            run_cfg.trainer.logger = None
            kwargs = dict(parser.instantiate(run_cfg)["trainer"])
            kwargs["logger"] = cfg.trainer.logger
            return kwargs

        first = trainer_kwargs()
        model = get_model(models[0], **hparams[models[0]])
        model.optimizer_spec, model.lr_scheduler_spec = optimizer, lr_scheduler
        callbacks = first.pop("callbacks", None) or []
        setup = FoldSetup(model, first, callbacks, first.pop("logger"))
        preflight(setup, given_trainer_options(parser, cfg), cfg.patience)
    except (UsageError, DataError) as err:
        return fail(PROG, str(err))
    except ValueError as err:  # a value an architecture or the DataModule refused
        return fail(PROG, str(err).strip().splitlines()[0])

    # The configuration as run, with the scheme's k and repeats filled in, so --resume
    # reproduces it whatever the defaults become.
    cfg.data.k, cfg.repeats, cfg.resume = k, repeats, None
    if resume:
        cmp_dir = Path(resume)
    else:
        try:
            cmp_dir = new_run_dir(cfg.trainer.default_root_dir, "compare", cfg.name)
        except FileExistsError as err:
            return fail(PROG, f"--name {cfg.name}: comparison directory {err.filename} exists")
        except OSError as err:
            where = cfg.trainer.default_root_dir or "."
            return fail(
                PROG, f"--trainer.default_root_dir {where}: cannot write there ({err.strerror})"
            )
        cfg.name = cmp_dir.name
        write_text(cmp_dir / CONFIG, parser.dump(cfg, skip_unset=False))
    config = json.loads(parser.dump(cfg, format="json", skip_unset=False))
    config.pop("config", None)

    def datamodule(r: int) -> KFoldDataModule:
        return dm0 if r == 0 else KFoldDataModule(**{**data, "seed": data["seed"] + r})

    try:
        comp, status = run_interruptibly(
            lambda: run_comparison(
                cmp_dir,
                models,
                hparams,
                data=data,
                repeats=repeats,
                scheme=cfg.scheme,
                trainer=trainer_kwargs,
                patience=cfg.patience,
                config=config,
                datamodule=datamodule,
                optimizer=optimizer,
                lr_scheduler=lr_scheduler,
                rope=cfg.rope,
            ),
            PROG,
            f"python scripts/compare.py --resume {cmp_dir}",
        )
    except Exception as err:  # a failure during a fit that no check could foresee
        what = f"{type(err).__name__}: {str(err).strip()}".splitlines()[0]
        print(
            f"{PROG}: error: {what} (finished runs are kept: "
            f"python scripts/compare.py --resume {cmp_dir})",
            file=sys.stderr,
        )
        return 1
    if status is not None:
        return status
    for line in summary_lines(comp):
        print(line)
    print(cmp_dir)
    return 1 if any(comp["per_model"][m]["diverged"] for m in models) else 0
