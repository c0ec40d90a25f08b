"""Cross-validated hyper-parameter search: each Optuna trial is one K-fold run.

A trial's values become kfold.py options (see :mod:`lit_cnn.analysis.space`); the trial is
parsed and checked by kfold.py's own code and written as an ordinary run directory at
``<tune dir>/trials/<trial number>/``, so every trial of a study trains on the same folds
(``--data.seed``) and the trials' fold scores are paired. After each fold the running mean
of the fold scores is reported to Optuna, with the fold as the step, so a pruner can stop a
trial whose first folds are clearly worse than the finished trials' (its folds stay).

Workers share a study through its storage. A worker runs one trial at a time until the
study holds ``n_trials`` finished (complete or pruned) trials. A trial whose worker died is
failed and retried: on the same machine as soon as another worker sees its process gone,
elsewhere when its heartbeat is stale (RDB storages); the retry takes over the dead trial's
run directory, so the folds it finished are not trained again.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lit_cnn.analysis.space import Param, as_options
from lit_cnn.cv.files import remove_partial_writes, write_text
from lit_cnn.cv.seal import CONFIG, check_resume, finished, seal

#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_S, GRACE_S = 30, 120
#: How often a trial whose worker died is retried.
MAX_RETRY = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


#: Where a trial's seconds go: tune.json's ``overhead_seconds``. ``kfold``: the K-fold run
#: (fits, tests, records, report); ``fits``: its ``Trainer.fit`` calls alone; ``setup``:
#: parsing and checks; ``storage``: Optuna's storage and sampler, in and around the trial.
STAGES = ("storage", "setup", "kfold", "fits", "total")


@contextlib.contextmanager
def timed(stats: dict[str, float], key: str) -> Iterator[None]:
    """Adds the seconds the block takes to ``stats[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stats[key] += time.perf_counter() - start


class Surplus(Exception):
    """Raised in a trial started while the study already had all its trials under way."""


@dataclass
class Search:
    """What a worker needs to run trials.

    Args:
        tune_dir: Where the trials' run directories and the study's report go.
        study_name: The study's name in its storage.
        storage: An Optuna storage URL, a journal file's path, or None for
            ``<tune_dir>/study.db``.
        models: The architectures searched (a categorical ``model`` parameter if several).
        space: The searched options.
        n_trials: Finished (complete or pruned) trials the study ends with.
        base_argv: The kfold.py options every trial shares.
        metric: ``val/loss`` (minimised) or ``val/acc`` (maximised).
        pruner: ``median`` or ``none``.
        sampler_seed: Seed of the TPE sampler; None draws one.
    """

    tune_dir: Path
    study_name: str
    storage: str | None
    models: Sequence[str]
    space: Sequence[Param]
    n_trials: int
    base_argv: Sequence[str]
    metric: str = "val/loss"
    pruner: str = "median"
    sampler_seed: int | None = None
    log: Callable[[str], None] = print
    #: Per trial number: seconds spent outside the fits, by stage (filled as trials run).
    overhead: dict[int, dict[str, float]] = field(default_factory=dict)
    #: The number of the trial this worker runs or ran last.
    current: int | None = None

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "val/loss" else "maximize"

    @property
    def record_key(self) -> str:
        return self.metric.replace("/", "_")  # the fold record's key: val_loss or val_acc


def storage_url(search: Search) -> str:
    """The storage's URL or path as tune.json records it."""
    return search.storage or f"sqlite:///{search.tune_dir / 'study.db'}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage with heartbeats and retries of dead trials where it has them.

    Args:
        url: ``sqlite:///…``, ``postgresql://…``, ``mysql://…`` (any SQLAlchemy URL), or the
            path of a journal file (Optuna's JournalFileBackend; for file systems without
            a database server).
    """
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    # SQLite locks the whole file per write: concurrent workers wait instead of failing.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        heartbeat_stale_trial_callback=retry,
    )


def open_study(search: Search) -> optuna.Study:
    """Creates the study, or loads it when it exists (a resumed study, another worker)."""
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        if search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(
            study_name=search.study_name,
            storage=make_storage(storage_url(search)),
            direction=search.direction,
            sampler=optuna.samplers.TPESampler(seed=search.sampler_seed),
            pruner=pruner,
            load_if_exists=True,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Optuna's own retry: a WAITING copy of the trial, with the failed one in its history.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)(study, trial)


def fail_dead_trials(study: optuna.Study) -> None:
    """Fails (and queues a retry of) running trials whose worker on this machine is gone."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("worker_pid")
        if t.user_attrs.get("worker_host") != host or pid is None or _alive(pid):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker failed it first
            continue
        _retry(study, study.get_trials(deepcopy=False)[t.number])


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in FINISHED for t in trials)
    return done, sum(t.state == TrialState.RUNNING for t in trials)


def suggest(trial: optuna.Trial, search: Search) -> tuple[str, dict[str, Any]]:
    """The trial's architecture and option values."""
    model = (
        trial.suggest_categorical("model", list(search.models))
        if len(search.models) > 1
        else search.models[0]
    )
    values = {p.name: p.suggest(trial) for p in search.space}
    return model, values


def trial_argv(search: Search, model: str, values: Mapping[str, Any]) -> list[str]:
    """The kfold.py command line of a trial (its options after the shared ones win)."""
    return [*search.base_argv, "--model", model, *as_options(values)]


def _take_over(search: Search, study: optuna.Study, trial: optuna.Trial) -> Path:
    """The trial's run directory; a retry moves the dead trial's directory there."""
    run_dir = search.tune_dir / "trials" / str(trial.number)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    history = frozen.system_attrs.get("retry_history", [])
    if history and not run_dir.exists():
        before = search.tune_dir / "trials" / str(history[-1])
        if before.is_dir():
            before.rename(run_dir)
            search.log(f"trial {trial.number}: retries trial {history[-1]}, in its directory")
    return run_dir


def run_trial(search: Search, study: optuna.Study, trial: optuna.Trial) -> float:
    """Optuna's objective: one K-fold run, reported fold by fold. See the module's text."""
    from lit_cnn.cli.kfold import config_dict, prepare
    from lit_cnn.cv.loop import run_kfold

    start = time.perf_counter()
    search.current = trial.number
    stats = search.overhead.setdefault(trial.number, dict.fromkeys(STAGES, 0.0))
    with timed(stats, "storage"):
        rank = sum(
            t.state in (*FINISHED, TrialState.RUNNING) and t.number < trial.number
            for t in study.get_trials(deepcopy=False)
        )
        if rank >= search.n_trials:  # another worker took the last trial meanwhile
            trial.set_user_attr("surplus", True)
            raise Surplus
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("worker_pid", os.getpid())
        model, values = suggest(trial, search)
        run_dir = _take_over(search, study, trial)
        trial.set_user_attr("run_dir", str(run_dir))
    shown = (f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    search.log(f"trial {trial.number}: {model}, " + ", ".join(shown))
    with timed(stats, "setup"):  # parsing, checks, the first Trainer; data on first use
        cli, _ = prepare(trial_argv(search, model, values))
        cfg, dm = cli.config, cli.datamodule
        if (run_dir / CONFIG).is_file():  # a retried trial continues its run
            check_resume(run_dir, dm.folds)
            remove_partial_writes(run_dir)
        else:
            run_dir.mkdir(parents=True)
            write_text(run_dir / CONFIG, cli.parser.dump(cfg, skip_none=False))
            seal(run_dir)
    scores: list[float] = []

    def after_fold(record: dict[str, Any]) -> None:
        stats["fits"] += record["fit_seconds"]
        with timed(stats, "storage"):
            if record["diverged"]:
                trial.set_user_attr("diverged_fold", record["fold"])
                trial.set_user_attr("fold_scores", scores)
                raise optuna.TrialPruned(f"fold {record['fold']} diverged")
            scores.append(float(record[search.record_key]))
            trial.set_user_attr("fold_scores", scores)
            trial.report(sum(scores) / len(scores), step=record["fold"])
            prune = len(scores) < dm.k and trial.should_prune()
        if prune:
            raise optuna.TrialPruned(f"pruned after fold {record['fold']}")

    def log(text: str) -> None:
        for line in text.splitlines():
            search.log(f"trial {trial.number}: {line}")

    kfold_start, storage_before = time.perf_counter(), stats["storage"]
    try:
        if not finished(run_dir):
            run_kfold(
                cli.fold_setup,
                dm,
                run_dir,
                model_name=model,
                config=config_dict(cli.parser, cfg),
                early_break=cfg.early_break,
                patience=cfg.patience,
                log=log,
                after_fold=after_fold,
            )
        else:  # finished before its worker died: its records are read, not retrained
            from lit_cnn.cv.loop import train_folds

            folds = range(1 if cfg.early_break else dm.k)
            train_folds(cli.fold_setup, dm, run_dir, folds, log=log, after_fold=after_fold)
    finally:
        in_kfold = time.perf_counter() - kfold_start
        stats["kfold"] = in_kfold - (stats["storage"] - storage_before)
        stats["total"] = time.perf_counter() - start
        trial.set_user_attr("seconds", stats["total"])
    return sum(scores) / len(scores)


def work(search: Search, callbacks: Sequence[Callable[..., None]] = ()) -> optuna.Study:
    """One worker: runs trials until the study has ``n_trials`` finished ones.

    Args:
        search: What to search.
        callbacks: Optuna callbacks ``(study, frozen_trial)``, called after each trial.

    Returns:
        The study, as this worker left it.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial is printed here
    study = open_study(search)
    while True:
        fail_dead_trials(study)
        done, running = _counts(study)
        if done + running >= search.n_trials:
            break
        before = time.perf_counter()
        try:
            study.optimize(
                lambda t: run_trial(search, study, t),
                n_trials=1,
                catch=(Surplus,),
                callbacks=list(callbacks),
                show_progress_bar=False,
            )
        except BaseException:
            # Interrupted (SIGINT, SIGTERM) or failed: queue the trial again, so that a later
            # worker continues its run directory.
            _retry_interrupted(study, search.current)
            raise
        # Optuna's ask, tell, heartbeat and the callbacks: storage time outside the trial.
        last = max(search.overhead, default=None)
        if last is not None and "outside" not in search.overhead[last]:
            stats = search.overhead[last]
            stats["outside"] = time.perf_counter() - before - stats["total"]
            stats["storage"] += stats["outside"]
            stats["total"] += stats["outside"]
        if search.current is not None:
            if study.get_trials(deepcopy=False)[search.current].user_attrs.get("surplus"):
                break
    return study


def _retry_interrupted(study: optuna.Study, number: int | None) -> None:
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.user_attrs.get("surplus") or trial.state not in (TrialState.RUNNING, TrialState.FAIL):
        return
    if trial.state == TrialState.RUNNING:  # SystemExit (SIGTERM) passes Optuna by
        study.tell(number, state=TrialState.FAIL)
        trial = study.get_trials(deepcopy=False)[number]
    _retry(study, trial)


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials, best first (ties: the earlier trial first)."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
