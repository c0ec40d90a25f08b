# ruff: noqa: E501  (the message tables read better one case a line)
"""Lightning's conventions: Trainer options, optimizers and schedulers, loggers, refusals,
messages, a quiet terminal, per-architecture defaults and a normal exit."""

import csv
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from architectures import EXPECTED
from conftest import ROOT, script

import lit_cnn
from lit_cnn.cli.kfold import KFoldCLI, cli_main

TESTS = Path(__file__).resolve().parent


def run(tmp_path, tiny_pkl, capsys, *extra, epochs=1, early_break=True):
    """One in-process kfold.py run on tiny data; returns results.json and the run directory."""
    args = [
        "--model", "ResNN", "--data.path", str(tiny_pkl), "--data.batch_size", "32",
        "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--early_break", str(early_break).lower(),
        *extra,
    ]  # fmt: skip
    status = cli_main(args)
    out, err = capsys.readouterr()
    assert status == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    return json.loads((run_dir / "results.json").read_text()), run_dir


def probed(tmp_path, tiny_pkl, capsys, *extra, epochs=1):
    out = tmp_path / "probe.json"
    results, run_dir = run(
        tmp_path, tiny_pkl, capsys, "--trainer.callbacks+=probe_callbacks.Probe",
        f"--trainer.callbacks.out={out}", *extra, epochs=epochs,
    )  # fmt: skip
    return json.loads(out.read_text())[0], results["folds"][0]


@pytest.fixture(autouse=True)
def _tests_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


# ----------------------------------------------------------------------------- Trainer options
# tiny_pkl: 600 training images, 3 folds: 400 per fold, 13 batches of 32.


def test_gradient_clipping_bounds_the_norm(tmp_path, tiny_pkl, capsys):
    free, _ = probed(tmp_path / "a", tiny_pkl, capsys)
    clipped, _ = probed(tmp_path / "b", tiny_pkl, capsys, "--trainer.gradient_clip_val", "0.05")
    assert free["max_grad_norm"] > 0.05  # so the bound below means something
    assert clipped["max_grad_norm"] <= 0.05 * (1 + 1e-4)


def test_accumulation_takes_one_step_per_group(tmp_path, tiny_pkl, capsys):
    plain, _ = probed(tmp_path / "a", tiny_pkl, capsys)
    acc, _ = probed(tmp_path / "b", tiny_pkl, capsys, "--trainer.accumulate_grad_batches", "4")
    assert plain["optimizer_steps"] == plain["global_step"] == 13
    assert acc["optimizer_steps"] == acc["global_step"] == 4  # ceil(13 / 4)


def test_max_steps_stops_the_fit(tmp_path, tiny_pkl, capsys):
    probe, record = probed(tmp_path, tiny_pkl, capsys, "--trainer.max_steps", "5", epochs=3)
    assert probe["global_step"] == 5
    # Stopped before the epoch's validation: the final weights are validated and tested.
    assert len(record["validations"]) == 1 and not record["diverged"]
    assert record["test_samples"] == 200


def test_double_precision_trains_float64_weights(tmp_path, tiny_pkl, capsys):
    probe, record = probed(tmp_path, tiny_pkl, capsys, "--trainer.precision", "64-true")
    assert probe["dtype"] == "torch.float64"
    assert 0 <= record["test_acc"] <= 1


def test_bf16_mixed_completes(tmp_path, tiny_pkl, capsys):
    _, record = probed(tmp_path, tiny_pkl, capsys, "--trainer.precision", "bf16-mixed")
    assert record["test_samples"] == 200 and 0 <= record["test_acc"] <= 1


def test_check_val_every_n_epoch_validates_those_epochs(tmp_path, tiny_pkl, capsys):
    probe, record = probed(
        tmp_path, tiny_pkl, capsys, "--trainer.check_val_every_n_epoch", "2", epochs=4
    )
    assert probe["val_passes"] == 2
    assert [v["epoch"] for v in record["validations"]] == [1, 3]
    best = min(record["validations"], key=lambda v: v["val/loss"])
    assert record["best_epoch"] == best["epoch"] and record["val_loss"] == best["val/loss"]


def test_val_check_interval_validates_within_epochs(tmp_path, tiny_pkl, capsys):
    probe, record = probed(
        tmp_path, tiny_pkl, capsys, "--trainer.val_check_interval", "0.5", epochs=2
    )
    assert probe["val_passes"] == len(record["validations"]) == 4
    steps = [v["step"] for v in record["validations"]]
    assert len(set(steps)) == 4
    best = min(record["validations"], key=lambda v: v["val/loss"])
    assert record["best_step"] == best["step"] and record["val_acc"] == best["val/acc"]


@pytest.mark.parametrize(
    "option,check",
    [
        (["--trainer.limit_train_batches", "3"], lambda p: p["global_step"] == 3),
        (["--trainer.overfit_batches", "2"], lambda p: p["global_step"] == 2),
        (["--trainer.max_time", "00:00:05:00"], lambda p: p["global_step"] == 13),
        (["--trainer.deterministic", "true"], lambda p: p["global_step"] == 13),
        (["--trainer.profiler", "simple"], lambda p: p["global_step"] == 13),
        (
            ["--trainer.devices", "1", "--trainer.strategy", "auto"],
            lambda p: p["global_step"] == 13,
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_other_trainer_options_work(tmp_path, tiny_pkl, capsys, option, check):
    probe, record = probed(tmp_path, tiny_pkl, capsys, *option)
    assert check(probe), probe
    assert record["test_samples"] == 200


# ----------------------------------------------------------------------------- optimizers


def _csv_column(path: Path, column: str) -> list[float]:
    with open(path) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_step_lr_schedule_shows_in_learning_rate_monitor(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(
        tmp_path, tiny_pkl, capsys,
        "--optimizer", "SGD", "--optimizer.lr", "0.1", "--lr_scheduler", "StepLR",
        "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5",
        "--trainer.callbacks", "LearningRateMonitor", "--trainer.logger", "CSVLogger",
        "--data.k", "2", epochs=3, early_break=False,
    )  # fmt: skip
    for fold in (0, 1):  # made fresh for every fold: each starts at 0.1 again
        lrs = _csv_column(run_dir / f"fold_{fold}" / "metrics.csv", "lr-SGD")
        assert lrs == pytest.approx([0.1, 0.05, 0.025])
    assert results["config"]["optimizer"]["class_path"] == "torch.optim.SGD"


def test_one_cycle_gets_its_total_steps_from_the_trainer(tmp_path, tiny_pkl, capsys):
    _, run_dir = run(
        tmp_path, tiny_pkl, capsys,
        "--optimizer", "AdamW", "--optimizer.lr", "3e-3", "--lr_scheduler", "OneCycleLR",
        "--lr_scheduler.max_lr", "0.01", "--trainer.logger", "CSVLogger",
        "--trainer.callbacks", "LearningRateMonitor",
        "--trainer.callbacks.logging_interval", "step", "--trainer.log_every_n_steps", "1",
        epochs=2,
    )  # fmt: skip
    lrs = _csv_column(run_dir / "fold_0" / "metrics.csv", "lr-AdamW")
    assert len(lrs) == 26  # one per optimizer step: 2 epochs x 13
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1 and lrs[peak] == pytest.approx(0.01, rel=0.05)
    assert lrs[-1] < lrs[0]  # annealed to below the start by the last step


def test_both_optimizer_forms_are_refused(tmp_path, tiny_pkl, capsys):
    args = ["--data.path", str(tiny_pkl), "--trainer.default_root_dir", str(tmp_path)]
    assert cli_main([*args, "--optimizer", "AdamW", "--model.lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model.lr and --optimizer" in err
    assert not (tmp_path / "lightning_logs").exists()


# ----------------------------------------------------------------------------- loggers


def _files(run_dir: Path, pattern: str) -> list[Path]:
    return sorted(run_dir.rglob(pattern))


def test_csv_logger_alone(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(tmp_path, tiny_pkl, capsys, "--trainer.logger", "CSVLogger")
    assert (run_dir / "fold_0" / "metrics.csv").is_file()
    assert _files(run_dir, "events.out.tfevents*") == []
    assert results["loggers"] == ["CSVLogger"]
    assert "CSVLogger" in results["config"]["trainer"]["logger"]["class_path"]
    assert (run_dir / "curves.png").is_file() and (run_dir / "summary.md").is_file()


def test_a_list_of_loggers(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(
        tmp_path, tiny_pkl, capsys,
        "--trainer.logger+=TensorBoardLogger", "--trainer.logger+=CSVLogger",
    )  # fmt: skip
    assert (run_dir / "fold_0" / "metrics.csv").is_file()
    assert _files(run_dir / "fold_0", "events.out.tfevents*")
    assert results["loggers"] == ["TensorBoardLogger", "CSVLogger"]


def test_no_logger_writes_no_logger_files_but_the_report(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(tmp_path, tiny_pkl, capsys, "--trainer.logger", "false")
    assert _files(run_dir, "events.out.tfevents*") == []
    assert _files(run_dir, "metrics.csv") == [] and _files(run_dir, "hparams.yaml") == []
    for name in ("results.json", "summary.md", "curves.png", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    assert results["loggers"] == [] and results["config"]["trainer"]["logger"] is False


def test_tensorboard_is_the_default(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(tmp_path, tiny_pkl, capsys)
    assert _files(run_dir / "fold_0", "events.out.tfevents*")
    assert results["loggers"] == ["TensorBoardLogger"]


def test_a_tracking_logger_gets_a_run_per_fold(tmp_path, tiny_pkl, capsys):
    results, run_dir = run(
        tmp_path, tiny_pkl, capsys, "--trainer.logger", "probe_loggers.TrackingLogger",
        "--data.k", "2", early_break=False,
    )  # fmt: skip
    runs = json.loads((run_dir / "tracking.json").read_text())
    assert [r["run_name"] for r in runs] == [f"{run_dir.name}/fold_0", f"{run_dir.name}/fold_1"]
    assert [r["tags"]["fold"] for r in runs] == ["0", "1"]


# ----------------------------------------------------------------------------- messages

BROKEN_YAML = "model:\n  class_path: ResNN\n  init_args: {lr: [1, 2\n"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config", "nope.yaml"], "--config nope.yaml: no such file"),
        (["--config", "{broken}"], "not valid YAML at line 4"),
        (["--trainer.precision", "8"], "--trainer.precision: invalid value '8'; expected one of"),
        (["--trainer.callbacks", "NoSuchCallback"], "--trainer.callbacks: invalid value 'NoSuchCallback'; expected a Callback class"),
        (["--trainer.logger", "CSVLoggr"], "--trainer.logger: invalid value 'CSVLoggr'; expected a Logger class"),
        (["--data.seed", "-1"], "--data.seed: invalid value -1; expected an integer from 0"),
        (["--model.lr", "nan"], "--model.lr: invalid value 'nan' for DeepCNN; expected a finite number > 0"),
        (["--data.k", "abc"], "--data.k: invalid value 'abc'; expected an integer"),
        (["--trainer.callbacks", "EarlyStopping"], "EarlyStopping needs --trainer.callbacks.monitor"),
        (["--trainer.callbacks", "EarlyStopping", "--trainer.callbacks.monitr", "val/loss"], "EarlyStopping has no argument 'monitr'"),
        (["--model", "Nope"], "--model: unknown model 'Nope'; valid models: DeepCNN"),
        (["--trainer.logger", "CSVLogger", "--trainer.logger.name", "mine"], "--trainer.logger.name: lit_cnn writes each fold's CSVLogger logs"),
        (["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "elsewhere"], "--trainer.logger.save_dir: lit_cnn writes"),
        (["--no_such_option", "1"], "--no_such_option: unknown option"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)  # fmt: skip
def test_messages_name_the_option_and_the_value(tmp_path, capsys, args, expected):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    args = [str(broken) if a == "{broken}" else a for a in args]
    assert cli_main([*args, "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kfold.py: error: "), err
    assert expected in err, err
    if "broken" in err:
        assert str(broken) in err
    assert not (tmp_path / "lightning_logs").exists()


def test_a_bad_value_inside_a_config_file_names_the_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  k: three\n")
    assert cli_main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"--config {cfg}: data.k: invalid value" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- defaults


CONFIGS = sorted((ROOT / "scripts" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", lit_cnn.list_models())
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_a_swapped_in_architecture_keeps_its_own_defaults(config, name):
    cli = KFoldCLI(args=["--config", str(config), "--model", name])
    hp = cli.model.hparams
    assert type(cli.model).__name__ == name
    assert (hp.lr, hp.l2, hp.optimizer) == (EXPECTED[name]["lr"], EXPECTED[name]["l2"], "adam")
    given = KFoldCLI(args=["--config", str(config), "--model", name, "--model.lr", "0.123"])
    assert given.model.hparams.lr == 0.123


def test_the_run_prints_its_effective_optimizer_once(tmp_path, tiny_pkl, capsys):
    args = ["--model", "ShallowCNN", "--data.path", str(tiny_pkl), "--data.k", "2"]
    args += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--trainer.enable_progress_bar", "false"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ShallowCNN: Adam, lr 0.002, L2 0.01"
    assert sum("Adam" in line for line in out) == 1


# ----------------------------------------------------------------------------- fast_dev_run


def test_fast_dev_run_runs_every_fold_and_keeps_nothing(tmp_path, tiny_pkl, capsys):
    # Test batches of 64: the one batch fast_dev_run tests is a part of the test set.
    args = ["--data.path", str(tiny_pkl), "--trainer.fast_dev_run", "true"]
    args += ["--data.eval_batch_size", "64"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert [line[:9] for line in out.splitlines() if line.startswith("Fold")] == [
        "Fold 1/3:", "Fold 2/3:", "Fold 3/3:"
    ]  # fmt: skip
    assert "Test accuracy" in out
    assert list(tmp_path.iterdir()) == []


def test_a_failing_fit_is_one_line_and_resumable(tmp_path, tiny_pkl, capsys):
    args = ["--model", "ResNN", "--data.path", str(tiny_pkl), "--trainer.max_epochs", "1"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    args += ["--run_name", "r"]
    marker = tmp_path / "failed.txt"
    callback = ["--trainer.callbacks", "probe_callbacks.FailInFold", f"--trainer.callbacks.marker={marker}"]
    assert cli_main([*args, *callback]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "injected failure in fold 1" in err
    run_dir = tmp_path / "lightning_logs" / "ResNN" / "r"
    assert "RuntimeError" in (run_dir / "error.txt").read_text()
    assert (run_dir / "fold_0" / "record.json").is_file()
    # The callback fails once: resumed, fold 0 is kept and the rest is trained.
    assert cli_main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Fold 1/3: recorded earlier, not retrained" in out
    assert not (run_dir / "error.txt").exists()


# ----------------------------------------------------------------------------- subprocesses


def _script(tmp_path, *args, env=None, name="kfold.py"):
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(
        [*script(name), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )


REFUSALS = [
    ["--trainer.accelerator", "tpu"],
    ["--trainer.enable_checkpointing", "false"],
    ["--trainer.devices", "0"],
    ["--trainer.barebones", "true"],
    ["--trainer.limit_val_batches", "0"],
    ["--trainer.limit_train_batches", "0.01"],
    ["--trainer.check_val_every_n_epoch", "2"],
    ["--trainer.callbacks", "EarlyStopping", "--trainer.callbacks.monitor", "val_loss"],
    ["--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val_acc"],
]
if not torch.cuda.is_available():  # on a machine without a GPU, asking for one is refused
    REFUSALS.append(["--trainer.accelerator", "gpu"])


@pytest.mark.slow
@pytest.mark.parametrize("option", REFUSALS, ids=" ".join)
def test_refusals_are_one_line_before_anything_is_written(tmp_path, tiny_pkl, option):
    proc = _script(
        tmp_path, "--data.path", str(tiny_pkl), "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path / "root"), *option,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfold.py: error: " + option[0]), proc.stderr
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_a_normal_run_is_quiet_and_exits_normally(tmp_path, tiny_pkl):
    marker = tmp_path / "atexit.txt"
    proc = _script(
        tmp_path, "--model", "ResNN", "--data.path", str(tiny_pkl), "--trainer.max_epochs", "2",
        "--trainer.callbacks", "probe_callbacks.AtExitProbe",
        f"--trainer.callbacks.path={marker}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stderr.replace("\r", "\n").splitlines()]
    counts = Counter(
        line
        for line in lines
        if line and not line.startswith(("Epoch", "Validation", "Training", "Testing"))
    )
    assert not [line for line, n in counts.items() if n >= 3], proc.stderr
    assert "Restoring states" not in proc.stderr and "LeafSpec" not in proc.stderr
    assert marker.read_text() == "atexit ran"  # the interpreter exited normally


@pytest.mark.slow
def test_ddp_logs_no_sync_dist_warnings(tmp_path, tiny_pkl):
    proc = _script(
        tmp_path, "--model", "ResNN", "--data.path", str(tiny_pkl), "--trainer.max_epochs", "1",
        "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--data.k", "2", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sync_dist" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_compare_takes_the_same_options(tmp_path, tiny_pkl):
    common = ["--models", "ResNN", "ResNNBatch", "--data.path", str(tiny_pkl), "--data.k", "2"]
    common += ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    proc = _script(tmp_path, *common, "--trainer.enable_checkpointing", "false", name="compare.py")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--trainer.enable_checkpointing false" in proc.stderr
    assert not (tmp_path / "lightning_logs").exists()
    proc = _script(
        tmp_path, *common, "--optimizer", "SGD", "--optimizer.lr", "0.05",
        "--trainer.logger", "CSVLogger", name="compare.py",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cmp_dir = tmp_path / proc.stdout.strip().splitlines()[-1]  # relative to its cwd
    for model in ("ResNN", "ResNNBatch"):
        run_dir = cmp_dir / model / "rep_0"
        assert (run_dir / "fold_1" / "metrics.csv").is_file()
        results = json.loads((run_dir / "results.json").read_text())
        assert results["loggers"] == ["CSVLogger"]
