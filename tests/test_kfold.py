"""The fold loop end to end on tiny data: run directory, reproducibility, best checkpoint, CLI."""

import contextlib
import inspect
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, script

import lit_cnn
from lit_cnn.cli.kfold import cli_main

TIMING = {"fit_seconds", "train_epoch_seconds"}


def run(tmp_path, tiny_pkl, capsys, *extra, model="ResNN", epochs=2, k=3):
    args = [
        "--model",
        model,
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        str(k),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    assert cli_main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    run_dir = Path(out[-1])
    return json.loads((run_dir / "results.json").read_text()), run_dir, out


def metrics(results):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in results["folds"]]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_pkl):
    tmp = tmp_path_factory.mktemp("base")
    args = [
        "--model",
        "ResNN",
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        "3",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(tmp),
        "--trainer.enable_progress_bar",
        "false",
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli_main(args) == 0
    out = buf.getvalue().strip().splitlines()
    run_dir = Path(out[-1])
    return json.loads((run_dir / "results.json").read_text()), run_dir, out


def test_run_directory_holds_every_file(base_run, tmp_path):
    results, run_dir, out = base_run
    assert run_dir.parent.name == "ResNN" and run_dir.name == "version_0"
    for name in ("folds.json", "results.json", "summary.md", "curves.png", "confusion_matrix.png"):
        assert (run_dir / name).stat().st_size > 0, name
    for i in range(3):
        ckpts = sorted(p.name for p in (run_dir / f"fold_{i}" / "checkpoints").iterdir())
        assert ckpts == ["best.ckpt", "last.ckpt"]
    assert len(results["folds"]) == 3
    keys = {
        "fold",
        "best_epoch",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "test_samples",
        "fit_seconds",
        "train_epoch_seconds",
        "diverged",
    }
    assert keys <= set(results["folds"][0])
    assert all(r["test_samples"] == 200 for r in results["folds"])
    assert all(len(r["train_epoch_seconds"]) == 2 for r in results["folds"])
    assert set(results["versions"]) == {"lit_cnn", "torch", "lightning"}
    assert results["config"]["data"]["k"] == 3


def test_summary_is_printed_like_the_notebook(base_run):
    results, run_dir, out = base_run
    assert out[-1] == str(run_dir)
    assert sum(line.startswith("Fold ") and "/3: test acc" in line for line in out) == 3
    train = f"Training accuracy: {results['train_acc_mean']:.4f}+/-{results['train_acc_std']:.4f}"
    test = f"Test accuracy: {results['test_acc_mean']:.4f}+/-{results['test_acc_std']:.4f}"
    assert train in out and test in out
    accs = [r["test_acc"] for r in results["folds"]]
    assert results["test_acc_mean"] == pytest.approx(np.mean(accs))
    assert results["test_acc_std"] == pytest.approx(np.std(accs))
    md = (run_dir / "summary.md").read_text()
    assert md.count("\n| ") == 6  # header, rule, 3 folds, mean row


def test_validation_sets_are_disjoint_and_cover_the_training_set(base_run):
    _, run_dir, _ = base_run
    vals = json.loads((run_dir / "folds.json").read_text())["val_indices"]
    assert len(vals) == 3
    assert sorted(i for v in vals for i in v) == list(range(600))


def test_test_acc_is_the_best_checkpoints(base_run, tiny_pkl):
    results, run_dir, _ = base_run
    _, _, x_test, y_test = lit_cnn.load_dataset(tiny_pkl)
    cls = lit_cnn.get_model_class("ResNN")
    for rec in results["folds"]:
        ckpt = run_dir / f"fold_{rec['fold']}" / "checkpoints" / "best.ckpt"
        assert torch.load(ckpt, weights_only=False)["epoch"] == rec["best_epoch"]
        model = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        assert acc == pytest.approx(rec["test_acc"], abs=1e-6)


def test_ensemble_votes_with_the_fold_models(base_run, tiny_pkl):
    results, run_dir, _ = base_run
    _, _, x_test, y_test = lit_cnn.load_dataset(tiny_pkl)
    cls = lit_cnn.get_model_class("ResNN")
    probs = 0
    for i in range(3):
        model = cls.load_from_checkpoint(
            run_dir / f"fold_{i}" / "checkpoints" / "best.ckpt", map_location="cpu"
        ).eval()
        with torch.no_grad():
            fold_probs = model(x_test).softmax(1)
        # Kept from the fold's test pass, in test-set order: the best model's probabilities.
        saved = np.load(run_dir / f"fold_{i}" / "test_probs.npy")
        np.testing.assert_allclose(saved, fold_probs.numpy(), atol=1e-6)
        probs = probs + fold_probs
    acc = (probs.argmax(1) == y_test).float().mean().item()
    assert results["ensemble_test_acc"] == pytest.approx(acc, abs=1e-6)


def test_tensorboard_shows_scalars_hparams_and_images(base_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = base_run
    fold = EventAccumulator(str(run_dir / "fold_0")).Reload()
    scalars = set(fold.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert tag in scalars, tag
    assert len(fold.Scalars("val/acc")) == 2  # one per validation pass
    top = EventAccumulator(str(run_dir)).Reload()
    assert {"curves", "confusion_matrix"} <= set(top.Tags()["images"])
    assert "summary/text_summary" in top.Tags()["tensors"]  # mean +/- std as text


def test_tensorboard_hparams_view_shows_option_names_and_best_metrics(base_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    results, run_dir, _ = base_run
    fold = EventAccumulator(str(run_dir / "fold_1")).Reload()
    content = fold.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    shown = {k: v.ListFields()[0][1] for k, v in start.hparams.items()}
    assert shown == {
        "model": "ResNN",
        "optimizer": "Adam",
        "lr": pytest.approx(1e-3),
        "l2": pytest.approx(1e-2),
        "batch_size": 128,
        "k": 3,
        "seed": 0,
        "fold": 1,
    }
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert tags == ["best/val/loss", "best/val/acc", "best/test/acc"]
    record = results["folds"][1]
    assert fold.Scalars("best/val/loss")[-1].value == pytest.approx(record["val_loss"])
    assert fold.Scalars("best/test/acc")[-1].value == pytest.approx(record["test_acc"])


def test_same_seed_same_metrics(base_run, tmp_path, tiny_pkl, capsys):
    results, _, _ = base_run
    again, _, _ = run(tmp_path, tiny_pkl, capsys)
    assert metrics(again) == metrics(results)
    assert again["ensemble_test_acc"] == results["ensemble_test_acc"]


def test_early_break_trains_one_fold(tmp_path, tiny_pkl, capsys):
    results, run_dir, _ = run(tmp_path, tiny_pkl, capsys, "--early_break", "true", epochs=1)
    assert len(results["folds"]) == 1
    assert sorted(p.name for p in run_dir.glob("fold_*")) == ["fold_0"]


def test_patience_stops_a_fold_early(tmp_path, tiny_pkl, capsys):
    # At lr 1e-12 the weights cannot move in float32, so val/loss never improves.
    results, _, _ = run(
        tmp_path,
        tiny_pkl,
        capsys,
        "--patience",
        "2",
        "--model.lr",
        "1e-12",
        "--early_break",
        "true",
        epochs=20,
    )
    assert len(results["folds"][0]["history"]) == 3


def test_print_config_round_trips(tmp_path, tiny_pkl, capsys):
    args = [
        "--model",
        "ResNN",
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--early_break",
        "true",
    ]
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--print_config"])
    assert exc.value.code == 0
    cfg = tmp_path / "run.yaml"
    cfg.write_text(capsys.readouterr().out)
    assert cli_main(args) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli_main(["--config", str(cfg)]) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert first != second
    a = json.loads((Path(first) / "results.json").read_text())
    b = json.loads((Path(second) / "results.json").read_text())
    assert metrics(a) == metrics(b)
    assert a["config"] == b["config"]


def test_run_name_is_never_reused(tmp_path, tiny_pkl, capsys):
    run(tmp_path, tiny_pkl, capsys, "--run_name", "mine", "--early_break", "true", epochs=1)
    assert (
        cli_main(
            [
                "--data.path",
                str(tiny_pkl),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--run_name",
                "mine",
                "--model",
                "ResNN",
            ]
        )
        == 2
    )
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_the_script_runs_and_prints_the_run_directory(tmp_path, tiny_pkl):
    proc = subprocess.run(
        [
            *script("kfold.py"),
            "--model",
            "ShallowCNN",
            "--data.path",
            str(tiny_pkl),
            "--data.k",
            "2",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == str(tmp_path / "lightning_logs" / "ShallowCNN" / "version_0")


def test_a_bad_option_is_one_line_and_status_2(tmp_path, capsys):
    assert cli_main(["--model", "NoSuchNet", "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NoSuchNet" in err
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "option,message",
    [
        (["--model.channels_last", "maybe"], "--model.channels_last: invalid value 'maybe'"),
        (["--data.k", "1"], "--data.k: invalid value 1; expected an integer >= 2"),
    ],
)
@pytest.mark.slow
def test_the_script_s_stderr_is_one_line_for_a_bad_option(tmp_path, option, message):
    # As a user sees it: the script's whole stderr, Lightning's own warnings included.
    proc = subprocess.run(
        [*script("kfold.py"), *option, "--trainer.default_root_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfold.py: error: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "lightning_logs").exists()


CONFIGS = sorted((ROOT / "scripts" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_notebook_configs_parse(config, capsys):
    import yaml

    with pytest.raises(SystemExit) as exc:
        cli_main(["--config", str(config), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    given = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"] == given["model"]["class_path"]
    for key, value in (given["model"].get("init_args") or {}).items():
        assert printed["model"]["init_args"][key] == value, key
    # lr and l2 left to the architecture: None in the config, its own values when built
    assert printed["model"]["init_args"]["lr"] is None
    assert printed["trainer"]["max_epochs"] == given["trainer"]["max_epochs"]
    assert printed["early_break"] == given["early_break"]


def printed_model(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--print_config"])
    assert exc.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)["model"]


@pytest.mark.parametrize("name", lit_cnn.list_models())
def test_a_named_model_gets_its_own_defaults(name, capsys):
    # jsonargparse #460: with DeepCNN as the parser default, `--model X` kept DeepCNN's lr/l2.
    model = printed_model(capsys, "--model", name)
    defaults = inspect.signature(lit_cnn.get_model_class(name)).parameters
    assert model["class_path"] == f"lit_cnn.models.modules.{name}"
    assert model["init_args"]["lr"] == defaults["lr"].default
    assert model["init_args"]["l2"] == defaults["l2"].default


def test_default_model_and_options_given_without_it(capsys):
    assert printed_model(capsys)["class_path"] == "lit_cnn.models.modules.DeepCNN"
    model = printed_model(capsys, "--model.lr", "0.5")
    assert model["class_path"] == "lit_cnn.models.modules.DeepCNN"
    assert model["init_args"]["lr"] == 0.5
    # An option given after the class keeps its value; the others are the class's.
    model = printed_model(capsys, "--model", "ShallowCNN", "--model.l2", "0.5")
    # lr None: the architecture's own (ShallowCNN's 2e-3), whatever class came before.
    assert (model["init_args"]["lr"], model["init_args"]["l2"]) == (None, 0.5)
