"""The ``tune.py`` command line: a cross-validated Optuna search over kfold.py's options.

    python scripts/tune.py --models ResNNBatch --n_trials 20 --name rnb --trainer.max_epochs 5
    python scripts/tune.py --models ResNNBatch --n_trials 20 --name rnb   # continues it
    python scripts/tune.py --models ResNN ResNNBatch --space space.yaml --n_trials 40 \\
        --storage postgresql://user:pw@host/db --name shared     # on every machine
    python scripts/tune.py --models ResNNBatch --n_trials 10 --nested 3

tune.py's own options are parsed here; every other option is kfold.py's and goes to each
trial as it is, so trials are checked and run by kfold.py's own code. Everything is checked
before anything is written: a bad option, space or data file ends in one line and exit 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from lit_cnn.analysis.space import Param, as_options, load_space
from lit_cnn.cli import quiet
from lit_cnn.cli.checks import check_run_name
from lit_cnn.cli.options import UsageError, diagnose
from lit_cnn.cli.plumbing import fail, run_interruptibly
from lit_cnn.cv.files import write_text
from lit_cnn.data.loading import DataError

PROG = "tune.py"
SETTINGS = "tune.yaml"

#: kfold.py options a trial may not take, and why.
REFUSED = {
    "--model": "list the architectures in --models",
    "--run_name": "trials are named by their number (trials/<n>/)",
    "--resume": "run the same command again with the same --name to continue a study",
    "--fold_parallel": "a trial trains its folds one after another; start several workers",
    "--trainer.fast_dev_run": "it keeps nothing; try the options with kfold.py first",
    "--print_config": "each trial's config.yaml is written in its run directory",
}


def build_parser() -> ArgumentParser:
    """tune.py's own options (errors raise instead of exiting)."""
    from lit_cnn.models.modules import list_models

    parser = ArgumentParser(
        prog=PROG,
        exit_on_error=False,
        description="Cross-validated hyper-parameter search on Optuna: each trial is one "
        "K-fold run. Every kfold.py option (python scripts/kfold.py --help) is passed to "
        "every trial.",
    )
    parser.add_argument(
        "--models",
        type=str,
        nargs="+",
        default=None,
        help=f"The architectures searched. Valid: {', '.join(list_models())}.",
    )
    parser.add_argument(
        "--space", type=str | None, default=None, help="A YAML search space (see docs/tuning.md)."
    )
    parser.add_argument(
        "--n_trials",
        type=int | None,
        default=None,
        help="The study's total of finished (complete or pruned) trials.",
    )
    parser.add_argument(
        "--name", type=str | None, default=None, help="The study's name (default: version_N)."
    )
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="An Optuna storage URL or journal file (default: sqlite in the study's directory).",
    )
    parser.add_argument(
        "--metric", type=Literal["val/loss", "val/acc"], default="val/loss", help="The objective."
    )
    parser.add_argument(
        "--pruner", type=Literal["median", "none"], default="median", help="Prune after folds."
    )
    parser.add_argument(
        "--nested", type=int | None, default=None, help="Outer folds of a nested cross-validation."
    )
    parser.add_argument(
        "--sampler_seed", type=int | None, default=None, help="Seed of the TPE sampler."
    )
    return parser


OWN = {"--models", "--space", "--n_trials", "--name", "--storage", "--metric", "--pruner",
       "--nested", "--sampler_seed"}  # fmt: skip


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """tune.py's own options and kfold.py's, each in the order given.

    >>> split_argv(["--models", "A", "B", "--data.k", "3", "--n_trials=4"])
    (['--models', 'A', 'B', '--n_trials=4'], ['--data.k', '3'])
    """
    own, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name not in OWN:
            rest.append(arg)
            i += 1
            continue
        own.append(arg)
        i += 1
        if "=" in arg:
            continue
        # --models takes every value up to the next option; the others one value.
        while i < len(argv) and not argv[i].startswith("--"):
            own.append(argv[i])
            i += 1
            if name != "--models":
                break
    return own, rest


def check_kfold_options(rest: Sequence[str]) -> None:
    """Refuses the kfold.py options that tune.py sets itself."""
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name in REFUSED:
            raise UsageError(f"{name} is not taken by tune.py: {REFUSED[name]}")


def check_one_device(trainer: Any) -> None:
    """Refuses a trial on several devices or nodes: a worker trains on one device."""
    devices, strategy = trainer.devices, str(trainer.strategy)
    one = (
        devices in (1, "1")
        or (isinstance(devices, (list, tuple)) and len(devices) == 1)
        or (isinstance(devices, str) and devices.strip(", ").isdigit() and devices.endswith(","))
    )
    bad = (
        f"--trainer.devices {devices}"
        if not one
        else f"--trainer.num_nodes {trainer.num_nodes}"
        if (trainer.num_nodes or 1) > 1
        else f"--trainer.strategy {strategy}"
        if strategy.startswith(("ddp", "fsdp", "deepspeed"))
        else None
    )
    if bad:
        raise UsageError(
            f"{bad}: a tuning worker trains on one device; start one worker per device "
            "instead (e.g. CUDA_VISIBLE_DEVICES=1 python scripts/tune.py ... --name N)"
        )


def check_space(space: Sequence[Param], where: str, base: list[str], models: list[str]) -> None:
    """Has kfold.py's parser check every searched option at its bounds and choices."""
    from lit_cnn.cli.kfold import prepare

    for param in space:
        for value in param.extremes():
            try:
                prepare([*base, "--model", models[0], *as_options({param.name: value})])
            except (UsageError, ValueError) as err:
                message = str(err).strip().splitlines()[0]
                raise UsageError(
                    f"{where}: {param.name}: {value!r} is refused ({message})"
                ) from None


def check_storage(url: str) -> None:
    """Opens the storage once, so that a bad URL, server or driver is refused up front."""
    from lit_cnn.analysis.tune import make_storage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_storage(url)
    except Exception as err:  # SQLAlchemy's, a missing driver's, the file system's
        first = f"{type(err).__name__}: {str(err).strip()}".splitlines()[0]
        raise UsageError(f"--storage {url}: cannot be opened ({first})") from None


def tune_dir(root: str | None, name: str | None) -> tuple[Path, bool]:
    """The study's directory and whether it existed (a study being continued)."""
    from lit_cnn.cv.seal import new_run_dir

    if name:
        path = Path(root or ".") / "lightning_logs" / "tune" / name
        existed = path.is_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path, existed
    return new_run_dir(root, "tune"), False


def check_same_study(path: Path, settings: dict[str, Any]) -> None:
    """Refuses to continue a study with other options (--n_trials aside)."""
    saved_file = path / SETTINGS
    if not saved_file.is_file():
        return
    saved = _flat(yaml.safe_load(saved_file.read_text()))
    now = _flat(json.loads(json.dumps(settings)))
    for key in sorted(set(saved) | set(now)):
        if key != "n_trials" and saved.get(key) != now.get(key):
            raise UsageError(
                f"--name {path.name}: the study in {path} was started with other options "
                f"({key}: {saved.get(key)!r}, now {now.get(key)!r}); choose another --name"
            )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {
            k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): data}


def tune_main(args: list[str] | None = None) -> int:
    """Parses options, runs this worker's trials, writes the study's report.

    Exit status: 0 done; 1 a fit failed (the trial is retried by the next worker);
    2 a bad option, space or data file (one line on stderr, nothing written); 130 or 143
    interrupted (run the same command again to continue).

    Args:
        args: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    quiet.install()
    argv = list(sys.argv[1:] if args is None else args)
    own, rest = split_argv(argv)
    parser = build_parser()
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        return 0
    from lit_cnn.cv.datamodule import share_loaded_data

    with share_loaded_data():  # the checks and every trial of this worker read the data once
        try:
            try:
                opts = parser.parse_args(own)
            except ArgumentError:
                raise UsageError(diagnose(parser, own)) from None
            with quiet.lightning_info_off():
                settings = _check(opts, rest)
        except (UsageError, DataError) as err:
            return fail(PROG, str(err))
        except ValueError as err:
            return fail(PROG, str(err).strip().splitlines()[0])
        return _run(opts, settings, argv)


def _check(opts: Any, rest: list[str]) -> dict[str, Any]:
    from lit_cnn.cli.kfold import prepare
    from lit_cnn.models.modules import list_models

    if not opts.models:
        raise UsageError("--models is required: one or more architectures to search")
    valid = list_models()
    for name in opts.models:
        if name not in valid:
            raise UsageError(f"--models: unknown model {name!r}; valid models: {', '.join(valid)}")
    if len(set(opts.models)) != len(opts.models):
        raise UsageError("--models: a model is given twice")
    if opts.n_trials is None or opts.n_trials < 1:
        raise UsageError(f"--n_trials must be at least 1, got {opts.n_trials}")
    if opts.nested is not None and opts.nested < 2:
        raise UsageError(f"--nested must be at least 2 outer folds, got {opts.nested}")
    check_run_name("name", opts.name)
    check_kfold_options(rest)
    if opts.storage:
        check_storage(opts.storage)
    # Progress bars off unless asked for: a worker prints a line per fold and per trial. One
    # device per worker unless asked otherwise (then refused below): on a multi-GPU machine
    # "auto" would start DDP, whose launcher runs this script again in every child.
    base = ["--trainer.enable_progress_bar", "false", "--trainer.devices", "1", *rest]
    for model in opts.models:  # every option and the data, as kfold.py checks them
        cli, _ = prepare([*base, "--model", model])
    check_one_device(cli.config.trainer)
    space = load_space(opts.space, optimizer=cli.config.get("optimizer") is not None)
    check_space(space, f"--space {opts.space}" if opts.space else "the default space", base,
                list(opts.models))  # fmt: skip
    return {
        "models": list(opts.models),
        "space": {p.name: p.spec() for p in space},
        "n_trials": opts.n_trials,
        "metric": opts.metric,
        "pruner": opts.pruner,
        "nested": opts.nested,
        "storage": opts.storage,
        "options": base,
        "root": cli.config.trainer.default_root_dir,
        "data": {
            "path": cli.datamodule.path,
            "seed": cli.datamodule.seed,
            "stratified": cli.datamodule.stratified,
        },  # fmt: skip
        "_space": space,
    }


def _run(opts: Any, settings: dict[str, Any], argv: list[str]) -> int:
    from lit_cnn.analysis.nested import run_nested
    from lit_cnn.analysis.tune import Search, work
    from lit_cnn.analysis.tune_report import report_trial, write_study

    space = settings.pop("_space")
    try:
        path, existed = tune_dir(settings["root"], opts.name)
        if existed:
            check_same_study(path, settings)
    except UsageError as err:
        return fail(PROG, str(err))
    except OSError as err:
        return fail(PROG, f"--trainer.default_root_dir: cannot write there ({err.strerror})")
    if not (path / SETTINGS).is_file():
        plain = json.loads(json.dumps(settings))
        write_text(path / SETTINGS, yaml.safe_dump(plain, sort_keys=False))
    search = Search(
        tune_dir=path,
        study_name=opts.name or path.name,
        storage=opts.storage,
        models=settings["models"],
        space=space,
        n_trials=opts.n_trials,
        base_argv=settings["options"],
        metric=opts.metric,
        pruner=opts.pruner,
        sampler_seed=opts.sampler_seed,
    )
    again = " ".join(["python scripts/tune.py", *argv])
    if not opts.name:
        again += f" --name {path.name}"

    def job() -> dict[str, Any]:
        if opts.nested:
            return run_nested(search, opts.nested, settings["data"])
        return write_study(search, work(search, [lambda st, t: report_trial(search, st, t)]))

    try:
        summary, status = run_interruptibly(job, PROG, again)
    except Exception as err:  # a failure during a fit no check could foresee
        what = f"{type(err).__name__}: {str(err).strip()}".splitlines()[0]
        print(f"{PROG}: error: {what} (the trial is retried when you run: {again})",
              file=sys.stderr)  # fmt: skip
        return 1
    if status is not None:
        return status
    best = summary.get("best")
    if best:
        print(f"Best trial {best['number']}: {opts.metric} {best['value']:.4f}, {best['params']}")
    print(summary["verdict"]["text"])
    if summary.get("nested"):
        n = summary["nested"]
        print(f"Nested estimate: {n['outer_acc_mean']:.4f} +/- {n['outer_acc_std']:.4f}")
    print(path)
    return 0
