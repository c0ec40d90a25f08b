"""Out-of-fold predictions: every training image scored once, by the fold model that did not
train on it; kept on disk for resume; unscored images (diverged or skipped folds) as NaN."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lit_cnn
from lit_cnn.cli.kfold import cli_main
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.report import OutOfFold

QUIET = ["--trainer.enable_progress_bar", "false"]


def kfold(*args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli_main([*args, *QUIET])
    out = buf.getvalue().strip().splitlines()
    return status, Path(out[-1]), out


def tiny_args(root, tiny_pkl, *extra):
    return [
        "--model",
        "ResNN",
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        "3",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
        *extra,
    ]


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory, tiny_pkl):
    status, run_dir, out = kfold(*tiny_args(tmp_path_factory.mktemp("oof"), tiny_pkl))
    assert status == 0
    return run_dir, json.loads((run_dir / "results.json").read_text()), out


def test_every_training_image_is_predicted_once_by_a_model_that_did_not_see_it(oof_run, tiny_pkl):
    run_dir, results, _ = oof_run
    oof = np.load(run_dir / "oof_probs.npy")
    x_train, y_train, _, _ = lit_cnn.load_dataset(tiny_pkl)
    assert oof.shape == (600, 10) and not np.isnan(oof).any()
    np.testing.assert_allclose(oof.sum(axis=1), 1, atol=1e-5)
    val_indices = json.loads((run_dir / "folds.json").read_text())["val_indices"]
    # The validation folds partition the training set: each image has exactly one scorer.
    assert sorted(i for v in val_indices for i in v) == list(range(600))
    dm = KFoldDataModule(path=str(tiny_pkl), k=3, seed=0)
    cls = lit_cnn.get_model_class("ResNN")
    for i, (train_idx, val_idx) in enumerate(dm.folds):
        assert val_idx.tolist() == val_indices[i]
        assert not set(train_idx.tolist()) & set(val_idx.tolist())  # never trained on
        best = run_dir / f"fold_{i}" / "checkpoints" / "best.ckpt"
        model = cls.load_from_checkpoint(best, map_location="cpu").eval()
        with torch.no_grad():
            expected = model(x_train[val_idx]).softmax(1).numpy()
        np.testing.assert_allclose(oof[val_idx], expected, atol=1e-6)
        # The same model and images as the fold's best validation pass.
        fold_acc = (oof[val_idx].argmax(1) == y_train[val_idx].numpy()).mean()
        assert fold_acc == pytest.approx(results["folds"][i]["val_acc"], abs=1e-6)


def test_results_and_report_show_the_out_of_fold_accuracy(oof_run, tiny_pkl):
    run_dir, results, out = oof_run
    oof = np.load(run_dir / "oof_probs.npy")
    y_train = lit_cnn.load_dataset(tiny_pkl)[1].numpy()
    acc = float((oof.argmax(1) == y_train).mean())
    assert results["oof_acc"] == pytest.approx(acc)
    assert results["oof_scored"] == 600
    assert f"Out-of-fold accuracy: {acc:.4f} (600 of 600 training images)" in out
    assert f"{acc:.4f} over 600 images" in (run_dir / "summary.md").read_text()
    assert (run_dir / "oof_confusion_matrix.png").stat().st_size > 0
    for i in range(3):
        assert (run_dir / f"fold_{i}" / "val_probs.npy").is_file()


def test_resume_reads_the_recorded_folds_probabilities(oof_run, tmp_path):
    run_dir, results, _ = oof_run
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    for name in ("results.json", "oof_probs.npy", "oof_confusion_matrix.png"):
        (copy / name).unlink()
    shutil.rmtree(copy / "fold_2")  # as if killed before fold 2 began
    status, _, out = kfold("--resume", str(copy))
    assert status == 0
    assert sum("recorded earlier, not retrained" in line for line in out) == 2
    np.testing.assert_allclose(
        np.load(copy / "oof_probs.npy"), np.load(run_dir / "oof_probs.npy"), atol=1e-6
    )
    resumed = json.loads((copy / "results.json").read_text())
    assert resumed["oof_acc"] == pytest.approx(results["oof_acc"])


def test_a_diverged_fold_leaves_its_images_unscored(oof_run, tmp_path, tiny_pkl):
    run_dir, _, _ = oof_run
    copy = Path(shutil.copytree(run_dir, tmp_path / "diverged"))
    record = json.loads((copy / "fold_1" / "record.json").read_text())
    record.update(diverged=True, diverged_epoch=0)
    (copy / "fold_1" / "record.json").write_text(json.dumps(record))
    (copy / "results.json").unlink()
    status, _, _ = kfold("--resume", str(copy))
    assert status == 1  # a diverged fold
    oof = np.load(copy / "oof_probs.npy")
    val_indices = json.loads((copy / "folds.json").read_text())["val_indices"]
    unscored = np.isnan(oof).any(axis=1)
    assert np.flatnonzero(unscored).tolist() == sorted(val_indices[1])
    y_train = lit_cnn.load_dataset(tiny_pkl)[1].numpy()
    results = json.loads((copy / "results.json").read_text())
    assert results["oof_scored"] == 600 - len(val_indices[1])
    expected = (oof[~unscored].argmax(1) == y_train[~unscored]).mean()
    assert results["oof_acc"] == pytest.approx(expected)


def test_early_break_scores_the_first_fold_only(tmp_path, tiny_pkl):
    status, run_dir, out = kfold(*tiny_args(tmp_path, tiny_pkl, "--early_break", "true"))
    assert status == 0
    oof = np.load(run_dir / "oof_probs.npy")
    val0 = json.loads((run_dir / "folds.json").read_text())["val_indices"][0]
    assert np.flatnonzero(~np.isnan(oof).any(axis=1)).tolist() == val0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["oof_scored"] == len(val0)
    assert results["oof_acc"] == pytest.approx(results["folds"][0]["val_acc"], abs=1e-6)


def test_assemble_places_rows_and_refuses_overlaps():
    labels = np.array([0, 1, 2, 1])
    p_a = np.eye(3, dtype=np.float32)[[1, 2]]  # images 1 and 2: classes 1 and 2 (right)
    p_b = np.eye(3, dtype=np.float32)[[0]]  # image 3: class 0 (wrong)
    oof = OutOfFold.assemble(labels, [(np.array([1, 2]), p_a), (np.array([3]), p_b)])
    assert oof.scored.tolist() == [False, True, True, True]
    np.testing.assert_array_equal(oof.probs[1:], np.eye(3)[[1, 2, 0]])
    assert oof.summary() == {"oof_acc": pytest.approx(2 / 3), "oof_scored": 3}
    assert OutOfFold.assemble(labels, []).summary() == {"oof_acc": None, "oof_scored": 0}
    with pytest.raises(ValueError, match="two folds"):
        OutOfFold.assemble(labels, [(np.array([1, 2]), p_a), (np.array([2]), p_b)])
    with pytest.raises(ValueError, match="probabilities for"):
        OutOfFold.assemble(labels, [(np.array([1]), p_a)])


@pytest.mark.slow
def test_under_ddp_rank_0_keeps_every_images_out_of_fold_prediction(tmp_path, tiny_odd_pkl):
    import os
    import subprocess

    from conftest import script

    def run(name, *extra):
        env = {k: v for k, v in os.environ.items() if k != "LIT_CNN_RUN_DIR"}
        cmd = [*script("kfold.py"), "--model", "ShallowCNN", "--data.path", str(tiny_odd_pkl)]
        cmd += ["--trainer.max_epochs", "2", "--run_name", name, *QUIET, *extra]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = tmp_path / "lightning_logs" / "ShallowCNN" / name
        return run_dir, json.loads((run_dir / "results.json").read_text())

    ddp = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    ddp_dir, ddp_results = run("ddp", *ddp)
    single_dir, single_results = run("single")
    oof = np.load(ddp_dir / "oof_probs.npy")
    assert oof.shape == (601, 10) and not np.isnan(oof).any()  # 601: no rank count divides it
    assert ddp_results["oof_scored"] == 601
    assert ddp_results["oof_acc"] == pytest.approx(single_results["oof_acc"], abs=1e-2)
    np.testing.assert_allclose(oof, np.load(single_dir / "oof_probs.npy"), atol=1e-2)
