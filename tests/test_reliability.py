"""Resume after SIGKILL, SIGINT/SIGTERM, divergence, and bad input refused with status 2."""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import script

from lit_cnn.cli.kfold import cli_main

QUIET = ["--trainer.enable_progress_bar", "false"]
METRICS = ("best_epoch", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def kfold(*args, cwd):
    return subprocess.Popen(
        [*script("kfold.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc, timeout=240):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkill_mid_fold_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_pkl):
    args = [
        "--model",
        "ResNNBatch",
        "--data.path",
        str(tiny_pkl),
        "--trainer.max_epochs",
        "6",
        *QUIET,
    ]
    full = kfold(*args, "--run_name", "full", cwd=tmp_path)
    assert full.wait(timeout=600) == 0, full.communicate()
    killed = kfold(*args, "--run_name", "killed", cwd=tmp_path)
    run = tmp_path / "lightning_logs" / "ResNNBatch" / "killed"
    # Mid second fold: after its first epoch's checkpoint, before its record.
    wait_for(run / "fold_1" / "checkpoints" / "last.ckpt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (run / "fold_1" / "record.json").exists()
    fold0 = {
        p: (digest(p), p.stat().st_mtime_ns) for p in (run / "fold_0" / "checkpoints").iterdir()
    }

    resumed = kfold("--resume", str(run), *QUIET, cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "Fold 1/3: recorded earlier, not retrained" in out
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in fold0} == fold0
    assert sorted(p.name for p in (run / "fold_1" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    a = json.loads((tmp_path / "lightning_logs/ResNNBatch/full/results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    for fa, fb in zip(a["folds"], b["folds"], strict=True):
        for key in METRICS:
            assert fb[key] == pytest.approx(fa[key], abs=1e-6), (fa["fold"], key)
        assert len(fb["train_epoch_seconds"]) == 6
    assert b["ensemble_test_acc"] == pytest.approx(a["ensemble_test_acc"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_a_resumable_run(tmp_path, tiny_pkl, sig, status):
    proc = kfold(
        "--model",
        "ResNN",
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        "2",
        "--trainer.max_epochs",
        "400",
        "--run_name",
        "r",
        *QUIET,
        cwd=tmp_path,
    )
    run = tmp_path / "lightning_logs" / "ResNN" / "r"
    wait_for(run / "fold_0" / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    assert f"--resume {run.relative_to(tmp_path)}" in err
    assert "Traceback" not in err
    assert (run / "fold_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "results.json").exists()


def test_a_nan_loss_is_caught_and_recorded(tmp_path, tiny_pkl, capsys):
    status = cli_main(
        [
            "--model",
            "ResNN",
            "--data.path",
            str(tiny_pkl),
            "--data.k",
            "2",
            "--trainer.max_epochs",
            "3",
            "--model.optimizer",
            "sgdm",
            "--model.lr",
            "1e8",
            "--trainer.default_root_dir",
            str(tmp_path),
            *QUIET,
        ]
    )
    assert status == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "left out of mean+/-std" in out
    run = Path(out.strip().splitlines()[-1])
    results = json.loads((run / "results.json").read_text())
    assert results["diverged_folds"] == [0, 1]
    for rec in results["folds"]:
        assert rec["diverged"] is True and rec["diverged_epoch"] == 0
        # Stopped within the first epoch: 600 images at batch 128 make 3 steps per fold.
        assert len(rec["history"]) == 1
    assert results["test_acc_mean"] is None
    assert "Diverged folds [0, 1]" in (run / "summary.md").read_text()


def refused(capsys, tmp_path, *args, root=True):
    extra = ["--trainer.default_root_dir", str(tmp_path)] if root else []
    status = cli_main([*args, *extra, *QUIET])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "lightning_logs").exists() or not any(
        (tmp_path / "lightning_logs").rglob("config.yaml")
    )
    return err


BAD_OPTIONS = [
    (["--model", "Foo"], "valid models: DeepCNN"),
    (["--model.optimizer", "rmsprop"], "one of adam, sgdm"),
    (["--data.k", "1"], "--data.k: invalid value 1; expected an integer >= 2"),
    (["--data.k", "601"], "--data.k: invalid value 601; expected at most the number of training"),
    (["--data.k", "70", "--data.stratified", "true"], "smallest class"),
    (["--data.batch_size", "0"], "--data.batch_size: invalid value 0; expected an integer >= 1"),
    (["--data.seed", "-1"], "--data.seed: invalid value -1; expected an integer from 0"),
    (["--model.lr", "0"], "--model.lr: invalid value 0.0; expected a finite number > 0"),
    (["--model.lr", "-1"], "--model.lr: invalid value -1.0; expected a finite number > 0"),
    (["--model.lr", "inf"], "--model.lr: invalid value 'inf' for DeepCNN; expected a finite"),
    (["--model.lr", "nan"], "--model.lr: invalid value 'nan'"),
    (["--model.l2", "-0.5"], "--model.l2: invalid value -0.5; expected a finite number >= 0"),
    (["--trainer.max_epochs", "0"], "--trainer.max_epochs: invalid value 0; expected an integer"),
    (["--patience", "0"], "--patience: invalid value 0; expected an integer >= 1"),
    (["--trainer.min_epochs", "40"], "--trainer.min_epochs: invalid value 40; expected at most"),
]


@pytest.mark.parametrize(
    "args,message", BAD_OPTIONS, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_bad_options(capsys, tmp_path, tiny_pkl, args, message):
    err = refused(capsys, tmp_path, "--data.path", str(tiny_pkl), *args)
    assert message in err


def _write(path: Path, obj=None, raw: bytes | None = None) -> Path:
    path.write_bytes(raw if raw is not None else pickle.dumps(obj))
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_data_files(capsys, tmp_path):
    x = np.zeros((4, 28, 28), np.uint8)
    y = np.arange(4)
    cases = {
        "missing": (tmp_path / "nope.pkl", "no such file"),
        "directory": (tmp_path, "directory"),
        "empty": (_write(tmp_path / "empty.pkl", raw=b""), "empty"),
        "text": (_write(tmp_path / "t.pkl", raw=b"hello, world\n"), "not a pickle"),
        "truncated": (_write(tmp_path / "tr.pkl", raw=pickle.dumps(((x, y), (x, y)))[:200]), ""),
        "dict": (_write(tmp_path / "d.pkl", {"x": x}), ""),
        "nan": (_write(tmp_path / "n.pkl", ((x.astype(float) * np.nan, y), (x, y))), "NaN"),
        "labels": (_write(tmp_path / "l.pkl", ((x, y + 10), (x, y))), "label"),
        "size": (_write(tmp_path / "s.pkl", ((np.zeros((4, 30, 30)), y), (x, y))), "30"),
    }
    for name, (path, phrase) in cases.items():
        out = tmp_path / "out" / name
        err = refused(capsys, out, "--data.path", str(path))
        assert str(path.name) in err or str(path) in err, (name, err)
        assert phrase.lower() in err.lower(), (name, err)


def test_a_hostile_pickle_never_runs(capsys, tmp_path):
    marker = tmp_path / "MARKER"
    path = _write(tmp_path / "evil.pkl", _Payload(marker))
    err = refused(capsys, tmp_path / "out", "--data.path", str(path))
    assert "refused" in err and "system" in err
    assert not marker.exists()


def test_resume_refuses_what_is_not_a_run(capsys, tmp_path):
    err = refused(capsys, tmp_path, "--resume", str(tmp_path), root=False)
    assert "not a run directory" in err
    err = refused(capsys, tmp_path, "--resume", str(tmp_path / "missing"), root=False)
    assert "no such directory" in err


def test_resume_refuses_options_that_change_the_results(capsys, tmp_path, tiny_pkl):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    (run / "folds.json").write_text("{}")
    err = refused(capsys, tmp_path, "--resume", str(run), "--model.lr", "0.1", root=False)
    assert "--model.lr would change" in err


def test_an_unwritable_output_directory(capsys, tmp_path, tiny_pkl):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status = cli_main(
        ["--data.path", str(tiny_pkl), "--trainer.default_root_dir", str(blocker), *QUIET]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "--trainer.default_root_dir" in err and "cannot write" in err
    assert blocker.read_text() == "not a directory"
