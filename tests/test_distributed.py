"""DDP per fold and fold-parallel runs over torchrun, on the CPU with 2 processes (gloo)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, script

pytestmark = pytest.mark.slow

TIMING = {"fit_seconds", "train_epoch_seconds"}
QUIET = ["--trainer.enable_progress_bar", "false"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]


def run(cmd, tmp_path, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    env.pop("LIT_CNN_RUN_DIR", None)
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc


def results(tmp_path, model, name):
    path = tmp_path / "lightning_logs" / model / name / "results.json"
    return json.loads(path.read_text())


def common(data, name, model="ShallowCNN"):
    return [
        "--model",
        model,
        "--data.path",
        str(data),
        "--trainer.max_epochs",
        "2",
        "--run_name",
        name,
        *QUIET,
    ]


def test_ddp_scores_every_test_image_once_and_matches_one_process(tmp_path, tiny_odd_pkl):
    ddp = run(
        [
            *script("kfold.py"),
            *common(tiny_odd_pkl, "ddp"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
        ],
        tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.strip().splitlines()[-1].endswith("ShallowCNN/ddp")
    single = run([*script("kfold.py"), *common(tiny_odd_pkl, "single")], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = results(tmp_path, "ShallowCNN", "ddp"), results(tmp_path, "ShallowCNN", "single")
    assert [f["test_samples"] for f in a["folds"]] == [201, 201, 201]
    for fa, fb in zip(a["folds"], b["folds"], strict=True):
        assert fa["test_acc"] == pytest.approx(fb["test_acc"], abs=1e-3)
    # One run directory: the DDP children joined the parent's, they made none of their own.
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "ShallowCNN").iterdir()) == [
        "ddp",
        "single",
    ]


def test_fold_parallel_equals_sequential(tmp_path, tiny_odd_pkl):
    one_thread = {"OMP_NUM_THREADS": "1"}
    par = run(
        [
            *TORCHRUN,
            str(ROOT / "scripts" / "kfold.py"),
            *common(tiny_odd_pkl, "par", "ResNNBatch"),
            "--fold_parallel",
            "true",
        ],
        tmp_path,
        one_thread,
    )
    assert par.returncode == 0, par.stderr[-3000:]
    seq = run(
        [*script("kfold.py"), *common(tiny_odd_pkl, "seq", "ResNNBatch")], tmp_path, one_thread
    )
    assert seq.returncode == 0, seq.stderr[-3000:]
    a, b = results(tmp_path, "ResNNBatch", "par"), results(tmp_path, "ResNNBatch", "seq")
    strip = lambda r: [{k: v for k, v in f.items() if k not in TIMING} for f in r["folds"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert [f["test_samples"] for f in a["folds"]] == [201, 201, 201]
    for key in ("train_acc_mean", "test_acc_mean", "test_acc_std", "ensemble_test_acc"):
        assert a[key] == b[key], key
    par_dir = tmp_path / "lightning_logs" / "ResNNBatch" / "par"
    seq_dir = tmp_path / "lightning_logs" / "ResNNBatch" / "seq"
    layout = lambda d: sorted(  # noqa: E731
        str(p.relative_to(d)) for p in d.rglob("*") if "events.out" not in p.name
    )
    assert layout(par_dir) == layout(seq_dir)


def test_a_failing_fold_fails_the_run_without_hanging(tmp_path, tiny_pkl):
    shutil.copy(ROOT / "tests" / "failing_callback.py", tmp_path)
    proc = run(
        [
            *TORCHRUN,
            str(ROOT / "scripts" / "kfold.py"),
            *common(tiny_pkl, "fail", "ResNN"),
            "--fold_parallel",
            "true",
            "--trainer.callbacks+=failing_callback.FailOnFold",
        ],
        tmp_path,
        {"PYTHONPATH": str(tmp_path)},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "rank 1: RuntimeError: injected failure in fold 1" in proc.stderr
    assert not (tmp_path / "lightning_logs" / "ResNN" / "fail" / "results.json").exists()
