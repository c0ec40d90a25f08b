"""Nothing lost, nothing out of bounds: kills at any moment, damaged checkpoints, the run
directory's seal, file modes, hostile run names and pickles, signals during start-up."""

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import script

from lit_cnn.cli.kfold import cli_main

TESTS = Path(__file__).resolve().parent
QUIET = ["--trainer.enable_progress_bar", "false"]
METRICS = ("best_epoch", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
ENV = {**os.environ, "PYTHONPATH": str(TESTS)}


def kfold(*args, cwd):
    return subprocess.Popen(
        [*script("kfold.py"), *args], cwd=cwd, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def same_results(a: dict, b: dict) -> None:
    for fa, fb in zip(a["folds"], b["folds"], strict=True):
        for key in METRICS:
            assert fb[key] == pytest.approx(fa[key], abs=1e-6), (fa["fold"], key)
    assert b["ensemble_test_acc"] == pytest.approx(a["ensemble_test_acc"], abs=1e-6)


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def snapshot(run: Path) -> dict:
    return {
        p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def run_in_process(tmp_path, tiny_pkl, capsys, *extra, name="r", k="2", epochs="2"):
    args = [
        "--model", "ResNN", "--data.path", str(tiny_pkl), "--data.k", k,
        "--trainer.max_epochs", epochs, "--trainer.default_root_dir", str(tmp_path),
        "--run_name", name, *QUIET, *extra,
    ]  # fmt: skip
    assert cli_main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    return tmp_path / "lightning_logs" / "ResNN" / name


# ----------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_random_kills_then_resumes_equal_an_uninterrupted_run(tmp_path, tiny_pkl):
    args = ["--model", "ResNN", "--data.path", str(tiny_pkl), "--data.k", "2"]
    args += ["--trainer.max_epochs", "3", "--trainer.plugins", "probe_callbacks.SlowCheckpointIO"]
    args += QUIET
    full = kfold(*args, "--run_name", "full", cwd=tmp_path)
    assert full.wait(timeout=600) == 0, full.communicate()
    run = tmp_path / "lightning_logs" / "ResNN" / "killed"

    def kill_when(ready, first: bool) -> None:
        proc = (
            kfold(*args, "--run_name", "killed", cwd=tmp_path)
            if first
            else kfold("--resume", str(run), *QUIET, cwd=tmp_path)
        )
        end = time.time() + 300
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < end
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def writing() -> bool:  # inside a checkpoint write: its temporary file exists
        return any(run.rglob(".*.ckpt.*.tmp"))

    kill_when(writing, first=True)  # during fold 0's first checkpoint write
    kill_when(lambda: (run / "fold_1" / "checkpoints" / "last.ckpt").is_file(), first=False)
    assert (run / "fold_0" / "record.json").is_file()
    kill_when(writing, first=False)  # during a write in fold 1
    resumed = kfold("--resume", str(run), *QUIET, cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "Fold 1/2: recorded earlier, not retrained" in out
    assert not list(run.rglob("*.tmp"))
    same_results(results(tmp_path / "lightning_logs" / "ResNN" / "full"), results(run))


def test_a_truncated_last_checkpoint_restarts_its_fold(tmp_path, tiny_pkl, capsys):
    full = run_in_process(tmp_path, tiny_pkl, capsys, name="full")
    run = run_in_process(tmp_path, tiny_pkl, capsys, name="cut")
    # What a kill during fold 1 leaves when another tool wrote last.ckpt in place.
    for name in ("results.json", "summary.md", "curves.png", "confusion_matrix.png"):
        (run / name).unlink()
    for name in ("record.json", "test_probs.npy"):
        (run / "fold_1" / name).unlink()
    last = run / "fold_1" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    assert cli_main(["--resume", str(run), *QUIET]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(last) in warnings[0] and "restarts" in warnings[0]
    assert "Fold 1/2: recorded earlier, not retrained" in out
    same_results(results(full), results(run))


# ----------------------------------------------------------------------------- the seal


def test_resume_refuses_an_edited_config(tmp_path, tiny_pkl, capsys):
    run = run_in_process(tmp_path, tiny_pkl, capsys)
    (run / "results.json").unlink()  # as if unfinished
    config = run / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["max_epochs"] = 6
    config.write_text(yaml.safe_dump(cfg))
    before = snapshot(run)
    assert cli_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml was changed" in err
    assert "trainer.max_epochs: 2 -> 6" in err
    assert snapshot(run) == before


def test_resume_refuses_a_changed_split(tmp_path, tiny_pkl, capsys):
    run = run_in_process(tmp_path, tiny_pkl, capsys)
    (run / "results.json").unlink()
    folds = json.loads((run / "folds.json").read_text())
    folds["val_indices"][0][:2] = folds["val_indices"][0][1::-1]
    (run / "folds.json").write_text(json.dumps(folds))
    assert cli_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folds.json differs from the split" in err


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_pkl, capsys):
    run = run_in_process(tmp_path, tiny_pkl, capsys)
    before = snapshot(run)
    assert cli_main(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "the run is finished; nothing to do" in out
    assert snapshot(run) == before  # bytes, mtimes, and no file added


# ----------------------------------------------------------------------------- files


def test_files_are_readable_by_group_and_others_under_umask_022(tmp_path, tiny_pkl, capsys):
    old = os.umask(0o022)
    try:
        run = run_in_process(tmp_path, tiny_pkl, capsys)
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 15
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path, oct(mode))


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".", "n" * 300])
def test_hostile_run_names_are_refused_and_nothing_is_made(tmp_path, tiny_pkl, capsys, name):
    root = tmp_path / "root"
    args = ["--data.path", str(tiny_pkl), "--trainer.default_root_dir", str(root)]
    assert cli_main([*args, "--run_name", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kfold.py: error: --run_name: invalid value")
    assert list(tmp_path.iterdir()) == []  # not even the root


HOSTILE = r"""
import pickle, struct, sys, time
from lit_cnn.data.loading import DataError, load_images

def g(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"

def pair(x, y):
    return x + y + b"\x86"

shape = pickle.dumps((5_000_000, 32, 32), protocol=2)[2:-1]
dtype = g("numpy", "dtype") + pickle.dumps(("u1", False, True), protocol=2)[2:-1] + b"R"
labels = pickle.dumps(list(range(4)), protocol=2)[2:-1]
ndarray = g("numpy", "ndarray") + b"(" + shape + dtype + b"tR"
state = b"(K\x01" + shape + dtype + b"\x89C\x04abcd" + b"tb"
rec = g("numpy.core.multiarray", "_reconstruct") + b"(" + g("numpy", "ndarray")
frombuffer = g("numpy.core.numeric", "_frombuffer") + b"(C\x04abcd" + dtype + shape
cases = {
    "ndarray": ndarray,
    "reconstruct": rec + shape + b"C\x01btR" + state,
    "reconstruct-build": rec + pickle.dumps((0,), protocol=2)[2:-1] + b"C\x01btR" + state,
    "frombuffer": frombuffer + b"X\x01\x00\x00\x00CtR",
}
out = {}
for name, x in cases.items():
    path = f"{sys.argv[1]}/{name}.pkl"
    open(path, "wb").write(b"\x80\x02" + pair(pair(x, labels), pair(x, labels)) + b".")
    start = time.perf_counter()
    try:
        load_images(path)
        out[name] = "loaded"
    except DataError as err:
        out[name] = [time.perf_counter() - start, str(err)]
path = f"{sys.argv[1]}/bytes8.pkl"
open(path, "wb").write(b"\x80\x04\x8e" + struct.pack("<Q", 5 * 2**30) + b"abc")
start = time.perf_counter()
try:
    load_images(path)
except DataError as err:
    out["binbytes8"] = [time.perf_counter() - start, str(err)]
# VmHWM, this process image's peak: ru_maxrss would carry over the forking parent's.
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
out["maxrss_mb"] = int(hwm.split()[1]) / 1024
print(__import__("json").dumps(out))
"""


def test_hostile_pickles_are_refused_fast_without_allocating(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", HOSTILE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    out = json.loads(proc.stdout)
    assert out.pop("maxrss_mb") < 500, out
    assert set(out) == {"ndarray", "reconstruct", "reconstruct-build", "frombuffer", "binbytes8"}
    for name, (seconds, message) in out.items():
        assert seconds < 1 and ".pkl: " in message, (name, message)
    assert "declared without its data" in out["ndarray"][1]
    assert "5,368,709,120 bytes" in out["binbytes8"][1]


@pytest.mark.slow
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_is_one_line(tmp_path, tiny_pkl, sig, status):
    # SIGINT back to its default first: a background job may start with it ignored.
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, *script("kfold.py")[1:], "--data.path", str(tiny_pkl)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert len(err.strip().splitlines()) == 1 and "interrupted by" in err, err
    assert not (tmp_path / "lightning_logs").exists()
