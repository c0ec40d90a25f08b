"""tune.py: the space, a study end to end, reproduction, kill and resume, two workers,
pruning, nested cross-validation."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import script

from lit_cnn.analysis.space import DEFAULT_SPACE, load_space, parse_entry
from lit_cnn.cli.kfold import cli_main as kfold_main
from lit_cnn.cli.tune import split_argv, tune_main
from lit_cnn.errors import UsageError

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]


def tiny_args(data: Path, root: Path, k: int = 2) -> list[str]:
    return ["--data.path", str(data), "--data.k", str(k), "--trainer.default_root_dir", str(root)]


def study_of(tune_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tune_dir / 'study.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


# ----------------------------------------------------------------------------- the space


def test_default_space_parses_to_its_four_options():
    assert [p.name for p in load_space(None)] == list(DEFAULT_SPACE)


def test_space_file_becomes_distributions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "data.batch_size: {type: categorical, choices: [64, 128]}\n"
        "trainer.max_epochs: {type: int, low: 1, high: 4, step: 1}\n"
    )
    lr, bs, ep = load_space(path)
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert bs.choices == (64, 128)
    fixed = optuna.trial.FixedTrial(
        {"model.lr": 1e-3, "data.batch_size": 128, "trainer.max_epochs": 3}
    )
    assert (lr.suggest(fixed), bs.suggest(fixed), ep.suggest(fixed)) == (1e-3, 128, 3)


@pytest.mark.parametrize(
    "key, spec, says",
    [
        ("model", {"type": "categorical", "choices": ["ResNN"]}, "--models"),
        ("model.lr", {"type": "gaussian", "low": 0, "high": 1}, "unknown type 'gaussian'"),
        ("model.lr", {"type": "float", "low": 1.0, "high": 0.1}, "low must be below high"),
        ("model.lr", {"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log scale"),
        ("model.lr", {"type": "float", "low": 0.1}, "needs high"),
        ("model.lr", {"type": "float", "low": 0.1, "high": 1, "lo": 3}, "unknown field 'lo'"),
        ("model.lr", {"type": "float", "low": "a", "high": 1}, "low must be a finite number"),
        ("data.k", {"type": "int", "low": 2.5, "high": 4}, "low must be an integer"),
        ("data.batch_size", {"type": "categorical", "choices": []}, "non-empty list"),
        ("model.lr", 0.01, "expected a mapping with a type"),
    ],
)
def test_bad_space_entry_is_one_line_naming_file_and_key(key, spec, says):
    with pytest.raises(UsageError) as err:
        parse_entry("--space s.yaml", key, spec)
    message = str(err.value)
    assert message.startswith(f"--space s.yaml: key {key!r}") or message.startswith(
        f"--space s.yaml: {key}:"
    )
    assert says in message and "\n" not in message


@pytest.mark.parametrize(
    "text, says",
    [
        ("model.learning_rate: {type: float, low: 0.001, high: 0.01}\n", "model.learning_rate"),
        ("data.batch_size: {type: categorical, choices: [0, 64]}\n", "data.batch_size: 0"),
        ("model.optimizer: {type: categorical, choices: [adam, rmsprop]}\n", "'rmsprop'"),
        ("model.lr: [1, 2\n", "not valid YAML"),
    ],
)
def test_space_refused_by_the_command_before_anything_is_written(
    tmp_path, tiny_pkl, capsys, text, says
):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    argv = ["--models", "ShallowCNN", "--n_trials", "2", "--space", str(space), "--name", "x"]
    status = tune_main([*argv, *tiny_args(tiny_pkl, tmp_path), *FAST])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"--space {space}" in err and says in err
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--models", "Nope", "--n_trials", "2"], "unknown model 'Nope'"),
        (["--models", "ShallowCNN"], "--n_trials must be at least 1"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--model", "DeepCNN"], "--models"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--run_name", "a"], "trials are named"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--metric", "acc"], "--metric"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--data.k", "1"], "data.k"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--nested", "1"], "--nested"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--storage", "foo://x"], "cannot be opened"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--print_config"], "config.yaml"),
        (["--models", "ShallowCNN", "--n_trials", "2", "--trainer.devices", "2"], "one device"),
        (
            ["--models", "ShallowCNN", "--n_trials", "2", "--trainer.strategy", "ddp"],
            "strategy ddp",
        ),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, tiny_pkl, capsys, argv, says):
    base = ["--data.path", str(tiny_pkl), "--trainer.default_root_dir", str(tmp_path)]
    status = tune_main([*base, *argv])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "lightning_logs").exists()


def test_split_argv_keeps_kfold_options_for_the_trials():
    own, rest = split_argv(["--models", "A", "B", "--data.k", "3", "--metric", "val/acc"])
    assert own == ["--models", "A", "B", "--metric", "val/acc"] and rest == ["--data.k", "3"]


# ----------------------------------------------------------------------------- a study


LOADS: list[str] = []


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, tiny_pkl):
    import lit_cnn.cv.datamodule as datamodule

    root = tmp_path_factory.mktemp("tune")
    argv = ["--models", "ShallowCNN", "--n_trials", "4", "--name", "e2e", "--sampler_seed", "1"]
    load = datamodule.load_images
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datamodule, "load_images", lambda path: LOADS.append(path) or load(path))
        assert tune_main([*argv, "--pruner", "none", *tiny_args(tiny_pkl, root), *FAST]) == 0
    return root / "lightning_logs" / "tune" / "e2e"


def test_the_worker_loads_the_data_once_for_all_trials(study_dir, tiny_pkl):
    assert LOADS == [str(tiny_pkl)]


def test_study_writes_every_file(study_dir):
    for name in ("tune.json", "tune.md", "best.yaml", "history.png", "importance.png"):
        assert (study_dir / name).stat().st_size > 0, name
    summary = json.loads((study_dir / "tune.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    for t in summary["trials"]:
        assert t["state"] == "complete" and len(t["fold_scores"]) == 2
        assert t["value"] == pytest.approx(sum(t["fold_scores"]) / 2)
        assert set(t["params"]) == set(DEFAULT_SPACE) and t["seconds"] > 0
        assert (Path(t["run_dir"]) / "results.json").is_file()
        assert Path(t["run_dir"]).name == str(t["number"])
    values = [t["value"] for t in summary["trials"]]
    assert summary["best"]["number"] == values.index(min(values))
    assert "runner-up" in summary["verdict"]["text"] and 0 <= summary["verdict"]["p"] <= 1
    assert summary["verdict"]["text"] in (study_dir / "tune.md").read_text()


def test_each_fold_reports_the_running_mean(study_dir):
    for t in study_of(study_dir, "e2e").trials:
        scores = t.user_attrs["fold_scores"]
        assert t.intermediate_values == pytest.approx({0: scores[0], 1: sum(scores) / 2})


def test_tensorboard_hparams_row_per_trial(study_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = sorted(p.name for p in (study_dir / "tensorboard").iterdir())
    assert rows == [f"trial_{n}" for n in range(4)]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    trial = study_of(study_dir, "e2e").trials[0]
    acc = EventAccumulator(str(study_dir / "tensorboard" / "trial_0")).Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    shown = HParamsPluginData.FromString(content).session_start_info.hparams
    assert shown["model.lr"].number_value == pytest.approx(trial.params["model.lr"])
    assert shown["model"].string_value == "ShallowCNN"
    assert acc.Scalars("tune/val/loss")[0].value == pytest.approx(trial.value)


def test_best_yaml_reproduces_the_best_trial(study_dir, tmp_path):
    summary = json.loads((study_dir / "tune.json").read_text())
    status = kfold_main(
        [
            "--config",
            str(study_dir / "best.yaml"),
            "--run_name",
            "again",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert status == 0
    results = json.loads((tmp_path / "lightning_logs" / "ShallowCNN" / "again" / "results.json")
                         .read_text())  # fmt: skip
    again = [f["val_loss"] for f in results["folds"]]
    assert again == pytest.approx(summary["best"]["fold_scores"], abs=1e-6)


def test_same_command_continues_the_study_to_its_new_total(study_dir, tiny_pkl, capsys):
    root = study_dir.parents[2]
    argv = ["--models", "ShallowCNN", "--n_trials", "5", "--name", "e2e", "--sampler_seed", "1"]
    assert tune_main([*argv, "--pruner", "none", *tiny_args(tiny_pkl, root), *FAST]) == 0
    out = capsys.readouterr().out
    assert "trial 4:" in out and "trial 0:" not in out  # only the new trial ran
    assert len(finished(study_of(study_dir, "e2e"))) == 5


def test_other_options_on_an_existing_study_are_refused(study_dir, tiny_pkl, capsys):
    root = study_dir.parents[2]
    argv = ["--models", "ShallowCNN", "--n_trials", "5", "--name", "e2e", "--data.k", "3"]
    assert tune_main([*argv, "--data.path", str(tiny_pkl), "--trainer.default_root_dir",
                      str(root), *FAST]) == 2  # fmt: skip
    assert "started with other options" in capsys.readouterr().err


def test_a_journal_file_is_a_storage(tmp_path, tiny_pkl):
    journal = tmp_path / "study.log"
    argv = ["--models", "ShallowCNN", "--n_trials", "1", "--name", "j", "--storage", str(journal)]
    assert tune_main([*argv, *tiny_args(tiny_pkl, tmp_path), *FAST]) == 0
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="j", storage=storage)
    assert len(finished(study)) == 1 and not (tmp_path / "lightning_logs/tune/j/study.db").exists()


def test_with_optimizer_the_default_space_searches_its_arguments(tmp_path, tiny_pkl):
    argv = ["--models", "ShallowCNN", "--n_trials", "1", "--name", "o", "--optimizer", "AdamW"]
    assert tune_main([*argv, *tiny_args(tiny_pkl, tmp_path), *FAST]) == 0
    (trial,) = study_of(tmp_path / "lightning_logs" / "tune" / "o", "o").trials
    assert set(trial.params) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    config = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())
    assert config["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert config["optimizer"]["init_args"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
    assert config["model"]["init_args"]["lr"] is None  # the shorthand is not set beside it


# ----------------------------------------------------------------------------- pruning


def test_hopeless_choice_is_pruned_and_never_wins(tmp_path, tiny_pkl):
    space = tmp_path / "space.yaml"
    space.write_text("model.lr: {type: categorical, choices: [0.01, 10000.0]}\n")
    argv = ["--models", "ShallowCNN", "--n_trials", "4", "--name", "p", "--space", str(space)]
    argv += ["--model.optimizer", "sgdm", "--sampler_seed", "0"]
    assert tune_main([*argv, *tiny_args(tiny_pkl, tmp_path, k=3), *FAST]) == 0
    trials = study_of(tmp_path / "lightning_logs" / "tune" / "p", "p").trials
    hopeless = [t for t in trials if t.params["model.lr"] == 10000.0]
    assert hopeless, "the sampler never tried the diverging lr: the test proves nothing"
    for t in hopeless:
        assert t.state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        # stopped at the fold that diverged: the later folds were never trained
        run_dir, fold = Path(t.user_attrs["run_dir"]), t.user_attrs["diverged_fold"]
        assert (run_dir / f"fold_{fold}" / "record.json").is_file()
        assert not (run_dir / f"fold_{fold + 1}").exists()
        assert not (run_dir / "results.json").exists()
    summary = json.loads((tmp_path / "lightning_logs" / "tune" / "p" / "tune.json").read_text())
    assert summary["best"]["params"]["model.lr"] == 0.01


# ----------------------------------------------------------------------------- nested


def test_nested_writes_outer_scores_and_configurations(tmp_path, tiny_pkl):
    argv = ["--models", "ShallowCNN", "--n_trials", "2", "--name", "n", "--nested", "2"]
    argv += ["--metric", "val/acc"]  # maximised
    assert tune_main([*argv, "--pruner", "none", *tiny_args(tiny_pkl, tmp_path), *FAST]) == 0
    tune_dir = tmp_path / "lightning_logs" / "tune" / "n"
    nested = json.loads((tune_dir / "tune.json").read_text())["nested"]
    assert [o["outer_fold"] for o in nested["outer"]] == [0, 1]
    for o in nested["outer"]:
        assert set(o["params"]) == set(DEFAULT_SPACE)
        assert 0 <= o["test_acc"] <= 1 and 0 <= o["test_ensemble_acc"] <= 1
        assert o["held_out"] == 300  # half of the 600 training images
        outer = json.loads((tune_dir / f"outer_{o['outer_fold']}" / "tune.json").read_text())
        assert (
            outer["best"]["number"] == o["best_trial"]
            and outer["study"] == f"n/outer_{o['outer_fold']}"
        )
        results = json.loads((Path(o["run_dir"]) / "results.json").read_text())
        assert results["test_acc_mean"] == o["outer_acc"]  # the held-out fold: its test set
        assert results["ensemble_test_acc"] == o["outer_ensemble_acc"]
    mean = sum(o["outer_acc"] for o in nested["outer"]) / 2
    assert nested["outer_acc_mean"] == pytest.approx(mean)
    assert "Nested estimate" in (tune_dir / "tune.md").read_text()


# ----------------------------------------------------------------------------- workers


def _tune_proc(tmp_path: Path, data: Path, name: str, n: int, k: int, extra=()):
    argv = [*script("tune.py"), "--models", "ShallowCNN", "--n_trials", str(n), "--name", name]
    argv += ["--pruner", "none", *tiny_args(data, tmp_path, k), *FAST, *extra]
    return subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_the_script_refuses_a_bad_space_in_one_line(tmp_path, tiny_pkl):
    space = tmp_path / "space.yaml"
    space.write_text(
        "model.lr: {type: float, low: 0.1, high: 1.0}\ndata.k: {type: int, low: 1, high: 3}\n"
    )
    argv = [*script("tune.py"), "--models", "ShallowCNN", "--n_trials", "2", "--space", str(space)]
    proc = subprocess.run(
        [*argv, *tiny_args(tiny_pkl, tmp_path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"tune.py: error: --space {space}: data.k: 1 is refused (--data.k: invalid value 1; "
        "expected an integer >= 2)"
    )
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_killed_trial_is_retried_without_retraining_its_folds(tmp_path, tiny_pkl):
    tune_dir = tmp_path / "lightning_logs" / "tune" / "kill"
    proc = _tune_proc(tmp_path, tiny_pkl, "kill", 3, 3)
    record = tune_dir / "trials" / "1" / "fold_0" / "record.json"
    deadline = time.time() + 300
    while not record.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert record.is_file(), proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)  # during trial 1, its fold 0 recorded
    proc.wait()
    before = record.read_text()
    again = _tune_proc(tmp_path, tiny_pkl, "kill", 3, 3)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    study = study_of(tune_dir, "kill")
    assert len(finished(study)) == 3
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    moved = tune_dir / "trials" / str(retry.number) / "fold_0" / "record.json"
    assert moved.read_text() == before  # the killed trial's fold, not trained again
    assert f"trial {retry.number}: Fold 1/3: recorded earlier, not retrained" in out


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, tiny_pkl):
    procs = [_tune_proc(tmp_path, tiny_pkl, "two", 4, 2) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    tune_dir = tmp_path / "lightning_logs" / "tune" / "two"
    done = finished(study_of(tune_dir, "two"))
    assert len(done) == 4
    assert len({t.number for t in done}) == 4
    dirs = {t.user_attrs["run_dir"] for t in done}
    assert len(dirs) == 4 and all((Path(tmp_path) / d / "results.json").is_file() for d in dirs)
    pids = {t.user_attrs["worker_pid"] for t in done}
    assert len(pids) == 2, "one worker did all the trials: nothing was shared"
    with sqlite3.connect(tune_dir / "study.db") as db:
        (n,) = db.execute("select count(*) from trials where state = 'RUNNING'").fetchone()
    assert n == 0
