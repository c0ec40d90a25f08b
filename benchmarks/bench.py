"""The benchmark: lit_cnn's training epoch against a plain PyTorch loop and the notebook's way.

Epoch throughput (the default mode) compares, in one process, on the same images and the same
initial weights, for each architecture:

- **(a) lit_cnn**: :func:`lit_cnn.cv.loop.train_fold` itself, i.e. a ``lightning.Trainer`` with
  the fold loop's settings (``TRAINER_DEFAULTS`` of :mod:`lit_cnn.cli.kfold`, ModelCheckpoint on
  ``val/loss``, :class:`~lit_cnn.cv.timing.EpochTimer`, TensorBoardLogger, the progress bar on as
  by default) over :class:`~lit_cnn.cv.datamodule.KFoldDataModule`, with Lightning's automatic
  optimization (one optimizer step per batch). Its seconds are the
  EpochTimer's, the number results.json stores as ``train_epoch_seconds``.
- **(b) plain loop**: the same model class, optimizer (``configure_optimizers()``) and
  device-resident :class:`~lit_cnn.cv.datamodule.IndexBatches` (same seed, same batch size), with
  ``F.cross_entropy`` and zero_grad / backward / step: the framework-free floor.
- **(c) the notebook's way**: ``benchmarks/notebook.py``'s DataLoader (batch size, shuffled) over
  its map-style dataset of float tensors, training loop only.

All three train on exactly the first ``n_train`` images of the training set, from the same
initial weights in a given repeat. Runs alternate a, b, c, a, b, c, ... so that drifting
machine load spreads over all three, and each ratio is the median over repeats of the
per-repeat ratio (the ratio of each way's fastest run is reported too: it is the least
disturbed by other processes).

Warm-up: before an architecture's repeats, each way trains once on 1,024 images, untimed.
The first ``Trainer.fit`` in a process pays about 2 s of one-off costs, which would otherwise
land on whichever run came first. After that, the first epoch of a run is no slower than the
next ones (measured on 2 CPU cores: epoch 0 over the mean of epochs 1-2 was 0.79-1.07 across
a, b and c, with no trend), so no epoch is discarded by default (``warmup_epochs=0``).

Options (``bench_options``) time the plain loop (b) with each memory order and with and without
the optimizer's fused kernel: the measurements behind each architecture's defaults.

Whole run (``whole_run``) times complete K-fold runs, start-up included, as subprocesses
alternating A (``scripts/kfold.py``) and B (``python benchmarks/notebook.py``), and reads each
one's peak resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from notebook import MnistDataset, Trainer  # benchmarks/notebook.py, beside this file

from lit_cnn import __version__
from lit_cnn.cli.kfold import TRAINER_DEFAULTS
from lit_cnn.cv.datamodule import IndexBatches, KFoldDataModule
from lit_cnn.cv.loop import FoldSetup, train_fold
from lit_cnn.cv.malloc import MALLOC_ENV
from lit_cnn.cv.malloc import tune_malloc as _tune_malloc
from lit_cnn.cv.timing import device_sync
from lit_cnn.data.loading import DataError, ImageData, load_images, pad_images, to_float
from lit_cnn.models.modules import CNNModule, get_model, list_models

METHODS = {
    "a": "lit_cnn: Lightning Trainer as the fold loop runs it (EpochTimer)",
    "b": "plain PyTorch loop over the same IndexBatches",
    "c": "the notebook's DataLoader over a map-style Dataset",
}
DEFAULT_N_TRAIN = 40_000
# Validation only exists because the checkpoint monitors val/loss; it runs outside the
# EpochTimer, so a small set keeps the benchmark short without touching what is timed.
N_EVAL = 1024
WARMUP_IMAGES = 1024
DEFAULT_WARMUP_EPOCHS = 0
# Targets of the epoch ratio a/b (lit_cnn over the plain loop), per architecture. ResNN's
# steps do the least arithmetic, so any fixed cost per step weighs most there.
TARGET_A_B = {"ResNN": 1.25}
TARGET_A_B_DEFAULT = 1.15
TARGET_WHOLE = 0.85
TARGET_RSS_MB = 600.0


# --- data ------------------------------------------------------------------------------------


def load_subset(path: str | os.PathLike[str] | None, n_train: int | None) -> ImageData:
    """Loads the data and keeps the first ``n_train`` training images.

    Args:
        path: As for :func:`lit_cnn.data.loading.load_images` (``None``: lit_cnn's default data).
        n_train: How many training images to keep; ``None`` keeps
            ``min(DEFAULT_N_TRAIN, available)``.

    Returns:
        The data with ``n_train`` training images and at most :data:`N_EVAL` test images
        (the test set is only used after the timed epochs).

    Raises:
        ValueError: ``n_train`` is below 1 or above the number of training images.
    """
    data = load_images(path)
    available = len(data.y_train)
    n = min(DEFAULT_N_TRAIN, available) if n_train is None else n_train
    if not 1 <= n <= available:
        raise ValueError(f"--n-train must be between 1 and {available} ({data.source}), got {n}")
    return ImageData(
        x_train=data.x_train[:n].clone(),
        y_train=data.y_train[:n].clone(),
        x_test=data.x_test[:N_EVAL].clone(),
        y_test=data.y_test[:N_EVAL].clone(),
        scale=data.scale,
        source=data.source,
    )


class SplitDataModule(KFoldDataModule):
    """A :class:`KFoldDataModule` whose single fold is a given ``(train, val)`` index split.

    Everything else (device-resident data, IndexBatches, seeds) is the parent's, so lit_cnn's
    epoch runs exactly as in the fold loop, on a training set of the benchmark's choosing.
    Build it with :func:`split_datamodule`.
    """

    split: tuple[np.ndarray, np.ndarray]

    @property
    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.split]


def split_datamodule(data: ImageData, batch_size: int, seed: int = 0) -> SplitDataModule:
    """A DataModule that trains on all of ``data``'s training images and validates on a few.

    Args:
        data: The benchmark's data (see :func:`load_subset`).
        batch_size: Training batch size.
        seed: The DataModule's seed (fold 0's batch order is drawn from it).

    Returns:
        The DataModule, fold 0 selected.
    """
    # Set after __init__, not passed to it: save_hyperparameters would otherwise record the
    # tensors as hyper-parameters and the logger would write them out.
    dm = SplitDataModule(path=None, k=2, batch_size=batch_size, seed=seed)
    dm._data = data  # in memory already: skip loading by path
    n = len(data.y_train)
    # The validation images overlap the training ones; they are only there for the checkpoint.
    dm.split = (np.arange(n), np.arange(min(n, N_EVAL)))
    dm.fold = 0
    return dm


def train_batches(dm: KFoldDataModule, device: torch.device) -> IndexBatches:
    """The IndexBatches that ``dm`` serves a Trainer on ``device``: same indices, seed, batch.

    Args:
        dm: The DataModule, with its fold selected.
        device: The training device.
    """
    # Outside a Trainer the DataModule builds its batches on the CPU: take its settings from
    # there and put the tensors on `device` as a Trainer on that device would see them.
    ref = dm.train_dataloader()
    x_train, y_train, _, _ = dm.device_data(device)
    return IndexBatches(
        x_train,
        y_train,
        ref.indices.to(device),
        ref.batch_size,
        ref.scale,
        shuffle=True,
        seed=ref.seed,
    )


# --- the three ways of training an epoch ------------------------------------------------------


def lit_epochs(
    name: str,
    dm: KFoldDataModule,
    device: torch.device,
    epochs: int,
    seed: int,
    progress_bar: bool = True,
    model: CNNModule | None = None,
) -> list[float]:
    """(a): ``epochs`` epochs of fold 0 through :func:`lit_cnn.cv.loop.train_fold`.

    Args:
        name: Architecture name.
        dm: The DataModule (fold 0 is trained).
        device: Training device.
        epochs: ``max_epochs``.
        seed: Seeds the model's initial weights.
        progress_bar: Keep Lightning's progress bar on (the fold loop's default).
        model: Train this model instead of a fresh seeded one.

    Returns:
        The EpochTimer's seconds of each epoch.
    """
    if model is None:
        torch.manual_seed(seed)
        model = get_model(name)
    trainer_kwargs: dict[str, Any] = {
        **TRAINER_DEFAULTS,
        "max_epochs": epochs,
        "accelerator": device.type,
        "devices": 1,
    }
    if not progress_bar:
        trainer_kwargs["enable_progress_bar"] = False
    with (
        tempfile.TemporaryDirectory(prefix="lit_cnn_bench_") as tmp,
        # Lightning's progress bar writes to stdout; stderr keeps it out of the results
        # table at the same cost (a write per step either way).
        contextlib.redirect_stdout(sys.stderr),
    ):
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        record, _, _ = train_fold(0, FoldSetup(model, trainer_kwargs), dm, run_dir)
    return list(record["train_epoch_seconds"])


def plain_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: IndexBatches,
    device: torch.device,
) -> float:
    """(b): one epoch of the plain loop; returns its seconds (the EpochTimer's clock and syncs).

    Args:
        model: The model, in train mode, on ``device``.
        optimizer: Its optimizer.
        batches: The epoch's batches (each iteration draws the next permutation).
        device: Training device.
    """
    device_sync(device)
    start = time.perf_counter()
    for x, y, _ in batches:  # (images, labels, loss weight); the weight is 1 on one device
        loss = F.cross_entropy(model(x), y)
        # The order of Lightning's automatic optimization: zero_grad, backward, then step.
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    device_sync(device)
    return time.perf_counter() - start


def plain_epochs(
    name: str,
    dm: KFoldDataModule,
    device: torch.device,
    epochs: int,
    seed: int,
    **hparams: Any,
) -> list[float]:
    """(b): ``epochs`` epochs of the plain loop on fold 0 of ``dm``; the seconds of each.

    ``hparams`` go to the model (``channels_last``, ``fused``); by default it is built as
    lit_cnn builds it.
    """
    torch.manual_seed(seed)
    model = get_model(name, **hparams).to(device).train()
    optimizer = model.configure_optimizers()
    batches = train_batches(dm, device)
    return [plain_epoch(model, optimizer, batches, device) for _ in range(epochs)]


def notebook_epochs(
    name: str,
    dataset: MnistDataset,
    device: torch.device,
    batch_size: int,
    epochs: int,
    seed: int,
) -> list[float]:
    """(c): ``epochs`` training epochs the notebook's way; the seconds of each.

    Args:
        name: Architecture name; its network, learning rate and L2 are lit_cnn's.
        dataset: The notebook's dataset of float images, on ``device``.
        device: Training device.
        batch_size: DataLoader batch size.
        epochs: Number of epochs.
        seed: Seeds the initial weights (the same as (a)'s and (b)'s) and the shuffling.
    """
    torch.manual_seed(seed)
    # Channels-first, as the notebook's networks were: channels_last is lit_cnn's option.
    module = get_model(name, channels_last=False)
    hp = module.hparams
    trainer = Trainer(module.net.to(device), hp.optimizer, hp.lr, batch_size, epochs, hp.l2)
    loader = trainer.loader(dataset)
    seconds = []
    for _ in range(epochs):
        device_sync(device)
        start = time.perf_counter()
        trainer.train_epoch(loader)
        device_sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


# --- the epoch benchmark ----------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def bench_epochs(
    models: Sequence[str],
    data: ImageData,
    device: torch.device,
    *,
    batch_size: int = 128,
    repeats: int = 3,
    epochs: int = 1,
    warmup_epochs: int = 0,
    progress_bar: bool = True,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures the epoch throughput of (a), (b) and (c) for each architecture.

    Args:
        models: Architecture names.
        data: The benchmark's data; every image of its training set is trained on.
        device: Training device.
        batch_size: Training batch size of all three.
        repeats: Rounds of a, b, c per architecture.
        epochs: Timed epochs per run.
        warmup_epochs: Epochs run first in each run and left out of its time.
        progress_bar: Lightning's progress bar on in (a).
        seed: Base seed; repeat ``r`` starts all three from the weights of ``seed + r``.
        log: Where progress lines go.

    Returns:
        Per architecture: every run's epoch seconds and throughput, the per-repeat ratios
        ``a/b`` and ``c/a`` (of times) and their medians.
    """
    n_train = len(data.y_train)
    dm = split_datamodule(data, batch_size, seed=seed)
    # The notebook's float tensors (its X / max), built once before training as the notebook
    # did, and on the training device as its tensors were.
    dataset = MnistDataset(to_float(data.x_train, data.scale).to(device), data.y_train.to(device))
    # Warm-up material: the first images only, so warming up costs seconds, not epochs.
    n_warm = min(n_train, WARMUP_IMAGES)
    warm_dm = split_datamodule(_head(data, n_warm), batch_size, seed=seed)
    warm_dataset = MnistDataset(dataset.X[:n_warm], dataset.y[:n_warm])

    def run(method: str, name: str, epochs: int, seed: int, warm: bool = False) -> list[float]:
        if method == "a":
            return lit_epochs(name, warm_dm if warm else dm, device, epochs, seed, progress_bar)
        if method == "b":
            return plain_epochs(name, warm_dm if warm else dm, device, epochs, seed)
        ds = warm_dataset if warm else dataset
        return notebook_epochs(name, ds, device, batch_size, epochs, seed)

    total = warmup_epochs + epochs
    results: dict[str, Any] = {}
    for name in models:
        # The first call of each way in a process pays one-off costs (lazy imports, first
        # kernel and allocator set-up: about 2 s for the first Trainer.fit here), which would
        # otherwise land on whichever run comes first.
        for method in METHODS:
            run(method, name, 1, seed, warm=True)
        runs: list[dict[str, Any]] = []
        for r in range(repeats):
            for method in METHODS:
                seconds = run(method, name, total, seed + r)
                timed = sum(seconds[warmup_epochs:])
                runs.append(
                    {
                        "method": method,
                        "repeat": r,
                        "epoch_seconds": seconds,
                        "timed_seconds": timed,
                        "images_per_s": n_train * epochs / timed,
                    }
                )
                log(f"{name} {r + 1}/{repeats} ({method}): {runs[-1]['images_per_s']:,.0f} img/s")
        results[name] = summarize(runs)
    return results


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ratios of one architecture's runs.

    Args:
        runs: The runs of :func:`bench_epochs`, repeat by repeat.

    Returns:
        ``runs``; median ``images_per_s`` per method; per-repeat ratios of times ``a/b`` and
        ``c/a`` and their medians; and ``best_ratio_*``, the ratios of each method's fastest
        run, the least disturbed by other load on the machine.
    """
    by = {m: [run for run in runs if run["method"] == m] for m in METHODS}
    times = {m: [run["timed_seconds"] for run in by[m]] for m in METHODS}
    ratio_a_b = [a / b for a, b in zip(times["a"], times["b"], strict=True)]
    ratio_c_a = [c / a for a, c in zip(times["a"], times["c"], strict=True)]
    return {
        "runs": runs,
        "images_per_s": {m: _median([run["images_per_s"] for run in by[m]]) for m in METHODS},
        "ratio_a_b": ratio_a_b,
        "ratio_c_a": ratio_c_a,
        "median_ratio_a_b": _median(ratio_a_b),
        "median_ratio_c_a": _median(ratio_c_a),
        "best_ratio_a_b": min(times["a"]) / min(times["b"]),
        "best_ratio_c_a": min(times["c"]) / min(times["a"]),
    }


# The options of bench_options: (label, model hparams). The first is the reference.
OPTIONS: list[tuple[str, dict[str, bool]]] = [
    ("NCHW", {"channels_last": False, "fused": False}),
    ("NHWC", {"channels_last": True, "fused": False}),
    ("NCHW+fused", {"channels_last": False, "fused": True}),
    ("NHWC+fused", {"channels_last": True, "fused": True}),
]


def bench_options(
    models: Sequence[str],
    data: ImageData,
    device: torch.device,
    *,
    batch_size: int = 128,
    repeats: int = 3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Times the plain loop (b) under each of :data:`OPTIONS`: what lit_cnn's defaults rest on.

    Memory order and the fused optimizer change no arithmetic beyond rounding, so the
    fastest combination can be each architecture's default. One epoch per run; the options
    alternate within each repeat.

    Args:
        models: Architecture names.
        data: The benchmark's data; every training image is trained on.
        device: Training device.
        batch_size: Training batch size.
        repeats: Rounds over the options per architecture.
        seed: Repeat ``r`` starts every option from the weights of ``seed + r``.
        log: Where progress lines go.

    Returns:
        Per architecture and option: the epoch seconds of each repeat, their median, and the
        median per-repeat ratio to the first option's time.
    """
    dm = split_datamodule(data, batch_size, seed=seed)
    warm_dm = split_datamodule(_head(data, min(len(data.y_train), WARMUP_IMAGES)), batch_size)
    results: dict[str, Any] = {}
    for name in models:
        for _, hparams in OPTIONS:
            plain_epochs(name, warm_dm, device, 1, seed, **hparams)
        seconds: dict[str, list[float]] = {label: [] for label, _ in OPTIONS}
        for r in range(repeats):
            for label, hparams in OPTIONS:
                seconds[label] += plain_epochs(name, dm, device, 1, seed + r, **hparams)
            log(
                f"{name} {r + 1}/{repeats}: "
                + ", ".join(f"{label} {v[-1]:.2f} s" for label, v in seconds.items())
            )
        ref = seconds[OPTIONS[0][0]]
        results[name] = {
            label: {
                "seconds": v,
                "median_seconds": _median(v),
                "median_ratio": _median([t / t0 for t, t0 in zip(v, ref, strict=True)]),
            }
            for label, v in seconds.items()
        }
        # What lit_cnn itself picks on this device, asked of the model rather than restated.
        model = get_model(name).to(device)
        results[name]["default"] = {
            "channels_last": model.channels_last,
            "fused": bool(model.configure_optimizers().defaults["fused"]),
        }
    return results


def format_options(results: dict[str, Any]) -> str:
    """:func:`bench_options` as a text table: median epoch seconds, ratio to the first option."""
    labels = [label for label, _ in OPTIONS]
    head = f"{'model':<18} " + " ".join(f"{label:>17}" for label in labels) + "  default"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        cells = [
            f"{res[label]['median_seconds']:6.2f} s ({res[label]['median_ratio']:.2f})"
            for label in labels
        ]
        default = res["default"]
        chosen = ("NHWC" if default["channels_last"] else "NCHW") + (
            "+fused" if default["fused"] else ""
        )
        lines.append(f"{name:<18} " + " ".join(f"{c:>17}" for c in cells) + f"  {chosen}")
    return "\n".join(lines)


def _head(data: ImageData, n: int) -> ImageData:
    return ImageData(
        x_train=data.x_train[:n],
        y_train=data.y_train[:n],
        x_test=data.x_test,
        y_test=data.y_test,
        scale=data.scale,
        source=data.source,
    )


def target_a_b(name: str) -> float:
    """The target of architecture ``name``'s epoch ratio a/b (see :data:`TARGET_A_B`)."""
    return TARGET_A_B.get(name, TARGET_A_B_DEFAULT)


def format_table(results: dict[str, Any]) -> str:
    """The epoch benchmark as a text table: medians, with the range of the per-repeat ratios."""

    def ratio(values: list[float]) -> str:
        return f"{_median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    head = (
        f"{'model':<18} {'a img/s':>9} {'b img/s':>9} {'c img/s':>9}  "
        f"{'a/b (min-max)':<17} {'c/a (min-max)':<17} {'best a/b':>8} {'best c/a':>8}  "
        "a/b target"
    )
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        ips = res["images_per_s"]
        target = target_a_b(name)
        ok = f"<={target:.2f} {'yes' if res['median_ratio_a_b'] <= target else 'NO'}"
        lines.append(
            f"{name:<18} {ips['a']:>9,.0f} {ips['b']:>9,.0f} {ips['c']:>9,.0f}  "
            f"{ratio(res['ratio_a_b']):<17} {ratio(res['ratio_c_a']):<17} "
            f"{res['best_ratio_a_b']:>8.2f} {res['best_ratio_c_a']:>8.2f}  {ok}"
        )
    return "\n".join(lines)


# --- machine header ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, command: str) -> dict[str, Any]:
    """What the numbers were measured on and with.

    Args:
        device: The training device.
        command: The command line that ran the benchmark.
    """
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({cpu_model()})"
    return {
        "command": command,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine skew the timings: the load average says how busy it
        # was when the benchmark started (see also "load_after").
        "load_before": os.getloadavg(),
        "device": device_name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "lit_cnn": __version__,
    }


def _loads(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def format_header(info: dict[str, Any]) -> str:
    """The machine header, one fact per line."""
    return "\n".join(
        [
            f"command:  {info['command']}",
            f"machine:  {info['platform']}; CPU {info['cpu']}; cores (os.cpu_count) "
            f"{info['cores']}; torch threads {info['torch_threads']}; malloc "
            f"{info.get('malloc', 'default')}; load average "
            f"{_loads(info['load_before'])} before"
            + (f", {_loads(info['load_after'])} after" if "load_after" in info else ""),
            f"device:   {info['device']}",
            f"versions: python {info['python']}, torch {info['torch']}, "
            f"lightning {info['lightning']}, lit_cnn {info['lit_cnn']}",
        ]
    )


# --- whole runs as subprocesses ---------------------------------------------------------------

# Runs one command and reports its wall time and peak RSS. Peak RSS comes from wait4() on that
# very child, which is exact per process, with one catch: Linux carries a process's pre-exec
# high-water mark across exec, so a child forked from a big parent (this benchmark has torch
# loaded) would report at least the parent's size. Forking from this small stdlib-only Python
# instead bounds that floor at its own ~10 MB.
_LAUNCHER = """\
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"seconds": seconds, "maxrss_kb": usage.ru_maxrss,
               "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def measure_command(
    command: Sequence[str],
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs ``command`` to completion and measures it.

    Args:
        command: The program and its arguments (the program as an absolute path).
        cwd: Working directory of the command.
        env: Its environment; ``None`` inherits this one.

    Returns:
        ``seconds`` (wall time from fork to exit), ``peak_rss_mib`` (the child's maximum
        resident set), ``exit`` (its status) and ``output`` (its stdout and stderr).
    """
    with tempfile.TemporaryDirectory(prefix="lit_cnn_measure_") as tmp:
        report, log_path = Path(tmp) / "report.json", Path(tmp) / "output.txt"
        with open(log_path, "wb") as out:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *command],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        measured = json.loads(report.read_text())
        output = log_path.read_text(errors="replace")
    return {
        "seconds": measured["seconds"],
        "peak_rss_mib": measured["maxrss_kb"] / 1024,  # Linux reports ru_maxrss in KiB
        "exit": measured["exit"],
        "output": output,
    }


_KFOLD_SCRIPT = """\
import sys
from lit_cnn.cv.malloc import tune_malloc
from lit_cnn.cli.startup import collector_paused
with collector_paused():
    from lit_cnn.cli.kfold import cli_main
tune_malloc()
sys.exit(cli_main())
"""


def _kfold_command(
    model: str, data: Path, k: int, epochs: int, batch_size: int, device: str, root: Path
) -> list[str]:
    script = Path(__file__).resolve().parents[1] / "scripts" / "kfold.py"
    # Without a source checkout, run what the script runs.
    entry = [str(script)] if script.exists() else ["-c", _KFOLD_SCRIPT]
    return [
        sys.executable, *entry,
        "--model", model,
        "--data.path", str(data),
        "--data.k", str(k),
        "--trainer.max_epochs", str(epochs),
        "--data.batch_size", str(batch_size),
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.accelerator", device,
    ]  # fmt: skip


def _notebook_command(
    model: str, data: Path, k: int, epochs: int, batch_size: int, device: str
) -> list[str]:
    return [
        sys.executable, str(Path(__file__).with_name("notebook.py")),
        "--model", model,
        "--data", str(data),
        "--k", str(k),
        "--epochs", str(epochs),
        "--batch-size", str(batch_size),
        "--device", device,
    ]  # fmt: skip


def write_subset_pickle(source: str | os.PathLike[str], n_train: int, out: Path) -> Path:
    """Writes a notebook-format pickle of ``source``'s first ``n_train`` training images.

    The test set is kept whole. Images are written uint8 (N, 32, 32), as
    ``scripts/prepare_data.py`` writes them and the notebook read them.

    Raises:
        ValueError: ``n_train`` is below 1 or above the number of training images.
    """
    data = load_images(source)
    available = len(data.y_train)
    if not 1 <= n_train <= available:
        raise ValueError(
            f"--n-train must be between 1 and {available} ({data.source}), got {n_train}"
        )
    train = (pad_images(data.x_train[:n_train])[:, 0].numpy(), data.y_train[:n_train].numpy())
    test = (pad_images(data.x_test)[:, 0].numpy(), data.y_test.numpy())
    with open(out, "wb") as f:
        pickle.dump((train, test), f, protocol=4)
    return out


def whole_run(
    data: str | os.PathLike[str],
    *,
    model: str = "ShallowCNN",
    k: int = 3,
    epochs: int = 2,
    batch_size: int = 128,
    repeats: int = 3,
    n_train: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    malloc_env: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Times whole K-fold runs, start-up included, alternating A (lit_cnn) and B (notebook).

    Args:
        data: A notebook-format pickle.
        model: Architecture of both runs.
        k: Folds.
        epochs: Epochs per fold.
        batch_size: Batch size.
        repeats: Rounds of A, B.
        n_train: Train on the file's first ``n_train`` training images (a subset pickle is
            written to a temporary directory); ``None`` uses the file as it is.
        device: ``"cpu"`` or ``"cuda"``, passed to both.
        threads: ``OMP_NUM_THREADS`` of both (torch's thread count); ``None`` leaves it.
        malloc_env: Run both with :data:`MALLOC_ENV` (see :func:`tune_malloc`).
        log: Where progress lines go.

    Returns:
        Every run's seconds, peak RSS and last output lines, and the per-repeat ratios A/B of
        wall time. B imports torch, scikit-learn and matplotlib, as the notebook did, and no
        Lightning (its layers come from :mod:`lit_cnn.models.nets`).

    Raises:
        RuntimeError: A run failed; the message holds the end of its output.
    """
    runs: list[dict[str, Any]] = []
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if malloc_env:
        env.update(MALLOC_ENV)
    with tempfile.TemporaryDirectory(prefix="lit_cnn_whole_") as tmp:
        tmp_path = Path(tmp)
        path = Path(data).resolve()
        if n_train is not None:
            path = write_subset_pickle(path, n_train, tmp_path / f"first_{n_train}.pkl")
        for r in range(repeats):
            for which in ("A", "B"):
                root = tmp_path / f"run_{which}_{r}"
                root.mkdir()
                if which == "A":
                    command = _kfold_command(model, path, k, epochs, batch_size, device, root)
                else:
                    command = _notebook_command(model, path, k, epochs, batch_size, device)
                measured = measure_command(command, cwd=root, env=env)
                lines = measured.pop("output").strip().splitlines()
                if measured["exit"] != 0:
                    tail = "\n".join(lines[-20:])
                    raise RuntimeError(f"{shlex.join(command)} failed:\n{tail}")
                measured.update(which=which, repeat=r, command=shlex.join(command), tail=lines[-4:])
                runs.append(measured)
                log(
                    f"whole run {which} {r + 1}/{repeats}: {measured['seconds']:.1f} s, "
                    f"peak RSS {measured['peak_rss_mib']:.0f} MiB"
                )
    a_runs = [run for run in runs if run["which"] == "A"]
    b_runs = [run for run in runs if run["which"] == "B"]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(a_runs, b_runs, strict=True)]
    return {
        "data": str(data),
        "n_train": n_train,
        "model": model,
        "k": k,
        "epochs": epochs,
        "batch_size": batch_size,
        "runs": runs,
        "ratio_a_b": ratios,
        "median_ratio_a_b": _median(ratios),
        "median_seconds": {
            "A": _median([run["seconds"] for run in a_runs]),
            "B": _median([run["seconds"] for run in b_runs]),
        },
        "peak_rss_mib": {
            "A": max(run["peak_rss_mib"] for run in a_runs),
            "B": max(run["peak_rss_mib"] for run in b_runs),
        },
    }


def format_whole_run(res: dict[str, Any]) -> str:
    """The whole-run results as text."""
    lines = [f"{'run':<24} {'median s':>9} {'per repeat s':<26} {'peak RSS':>20}"]
    for which, label in (("A", "A lit_cnn (kfold.py)"), ("B", "B notebook")):
        runs = [run for run in res["runs"] if run["which"] == which]
        per = " ".join(f"{run['seconds']:.1f}" for run in runs)
        rss = res["peak_rss_mib"][which]
        lines.append(
            f"{label:<24} {res['median_seconds'][which]:>9.1f} {per:<26} "
            f"{rss:>7.0f} MiB ({rss * 1.048576:.0f} MB)"
        )
    ratios = " ".join(f"{x:.2f}" for x in res["ratio_a_b"])
    ok = "yes" if res["median_ratio_a_b"] <= TARGET_WHOLE else "NO"
    lines.append(
        f"A/B wall time: median {res['median_ratio_a_b']:.2f} (per repeat {ratios}); "
        f"target <= {TARGET_WHOLE:.2f}: {ok}"
    )
    rss_a_mb = res["peak_rss_mib"]["A"] * 1.048576
    lines.append(
        f"peak RSS of A: {rss_a_mb:.0f} MB; target <= {TARGET_RSS_MB:.0f} MB: "
        f"{'yes' if rss_a_mb <= TARGET_RSS_MB else 'NO'}"
    )
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------


# glibc's malloc gives large freed blocks back to the kernel (its mmap and trim thresholds
# adapt at run time); the next step then faults the same pages in again. On 2 CPU cores that
# cost DeepCNN about a third of its epoch time, and more so in lit_cnn's loop than in the plain
# one. Fixed thresholds keep the blocks in the heap. M_MMAP_THRESHOLD's ceiling is 32 MiB.
def tune_malloc() -> None:
    """Applies lit_cnn's allocator settings (:func:`lit_cnn.cv.malloc.tune_malloc`) here.

    Raises:
        OSError: The C library is not glibc, or refused a value.
    """
    if not _tune_malloc():
        raise OSError("--tune-malloc needs glibc's mallopt")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    # Each run builds a Trainer, which logs its device summary at INFO: dozens of repeats of
    # the same lines would bury the results. Nothing timed depends on it.
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_benchmark(args: Any, command: str, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs what the parsed command line asks for and prints the results.

    Args:
        args: The parsed options of ``scripts/bench.py``.
        command: The command line, for the header.
        out: Where the results go (progress goes to stderr).

    Returns:
        Everything measured, as written by ``--json``.
    """

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.whole_run:
        # As lit_cnn's kfold.py does at start-up; (b) and (c) share the process, so the floor
        # and the notebook's way get the same allocator. There is no undoing it.
        tune_malloc()
    try:
        return _run_benchmark(args, command, out, log)
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back


def _run_benchmark(
    args: Any, command: str, out: Callable[[str], None], log: Callable[[str], None]
) -> dict[str, Any]:
    device = torch.device(args.device)
    info = machine_info(device, command)
    if args.tune_malloc or not args.whole_run:
        info["malloc"] = ", ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
    out(format_header(info))
    report: dict[str, Any] = {"machine": info, "options": vars(args)}
    if args.whole_run:
        res = whole_run(
            args.data,
            model=args.whole_run_model,
            k=args.whole_run_k,
            epochs=args.whole_run_epochs,
            batch_size=args.batch_size,
            repeats=args.repeats,
            n_train=args.n_train,
            device=device.type,
            threads=args.threads,
            malloc_env=args.tune_malloc,
            log=log,
        )
        n = f"first {args.n_train:,} training images of " if args.n_train else ""
        out(
            f"whole run: {args.whole_run_model}, {args.whole_run_k} folds, "
            f"{args.whole_run_epochs} epochs, batch {args.batch_size}, {n}{args.data}; "
            f"runs alternate A, B x {args.repeats}"
        )
        out(format_whole_run(res))
        report["whole_run"] = res
    elif args.options:
        data = load_subset(args.data, args.n_train)
        out(
            f"data:     {data.source}: first {len(data.y_train):,} training images; batch "
            f"{args.batch_size}; the plain loop (b), one epoch per run, {args.repeats} repeats "
            "alternating the options"
        )
        results = bench_options(
            args.models, data, device, batch_size=args.batch_size, repeats=args.repeats, log=log
        )
        out(
            "median epoch seconds (median per-repeat ratio to NCHW); fused: the optimizer's "
            "fused kernel; default: what lit_cnn uses on this device"
        )
        out(format_options(results))
        report.update(n_train=len(data.y_train), options=results)
    else:
        data = load_subset(args.data, args.n_train)
        n_train = len(data.y_train)
        out(
            f"data:     {data.source}: first {n_train:,} training images; batch "
            f"{args.batch_size}; {args.epochs} timed epoch(s) per run after "
            f"{args.warmup_epochs} warm-up; {args.repeats} repeats alternating a, b, c; "
            f"progress bar {'on' if args.progress_bar else 'off'} in (a)"
        )
        for key, what in METHODS.items():
            out(f"({key}) {what}")
        with _quiet_lightning():
            results = bench_epochs(
                args.models,
                data,
                device,
                batch_size=args.batch_size,
                repeats=args.repeats,
                epochs=args.epochs,
                warmup_epochs=args.warmup_epochs,
                progress_bar=args.progress_bar,
                log=log,
            )
        out(
            "img/s: median over repeats; a/b, c/a: median (min-max) of the per-repeat ratios "
            "of epoch times; best: ratio of each way's fastest run"
        )
        out(format_table(results))
        report.update(n_train=n_train, epochs=results)
    info["load_after"] = os.getloadavg()
    out(f"load average after: {_loads(info['load_after'])}")
    return report


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/bench.py``."""
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=(
            "Epoch throughput of lit_cnn's Trainer (a) vs a plain PyTorch loop (b) vs the "
            "notebook's DataLoader (c); or, with --whole-run, whole K-fold runs of lit_cnn (A) "
            "vs the notebook (B) as subprocesses."
        ),
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list_models(),
        default=list_models(),
        metavar="MODEL",
        help="architectures (default: all six)",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="notebook-format pickle (default: lit_cnn's default data); required by --whole-run",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        metavar="N",
        help=f"train on the first N training images (default: {DEFAULT_N_TRAIN:,} or all if "
        "fewer; with --whole-run: the whole file)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per run (default 1)")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=DEFAULT_WARMUP_EPOCHS,
        help=f"untimed epochs before the timed ones in every run (default {DEFAULT_WARMUP_EPOCHS})",
    )
    parser.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Lightning's progress bar in (a), as the fold loop's default (default: on)",
    )
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="whole runs: give the notebook's process lit_cnn's malloc thresholds too (lit_cnn "
        "sets them itself; epoch runs always use them, since (a) runs as lit_cnn does)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (OMP_NUM_THREADS of whole runs); default: torch's own choice",
    )
    parser.add_argument("--whole-run", action="store_true", help="time whole K-fold runs")
    parser.add_argument(
        "--options",
        action="store_true",
        help="time the plain loop with channels-first/last memory order and the plain/fused "
        "optimizer: the measurements behind each architecture's defaults",
    )
    parser.add_argument("--whole-run-model", choices=list_models(), default="ShallowCNN")
    parser.add_argument("--whole-run-epochs", type=int, default=2)
    parser.add_argument("--whole-run-k", type=int, default=3)
    parser.add_argument("--json", metavar="OUT", type=Path, help="write every raw number here")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark from the command line.

    Args:
        argv: Arguments; ``None`` takes ``sys.argv[1:]``.

    Returns:
        The exit status (bad options exit through argparse with status 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "epochs", "whole_run_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.warmup_epochs < 0:
        parser.error("--warmup-epochs must be at least 0")
    if args.whole_run and args.options:
        parser.error("--whole-run and --options are separate benchmarks: give one")
    if args.whole_run and args.data is None:
        parser.error("--whole-run needs --data PATH (a notebook-format pickle)")
    if args.whole_run_k < 2:
        parser.error("--whole-run-k must be at least 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if argv is None:
        command = shlex.join(sys.orig_argv)
    else:  # called in-process: show the equivalent command
        command = shlex.join(["python", "scripts/bench.py", *argv])
    try:
        report = run_benchmark(args, command)
    except (DataError, ValueError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"raw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
