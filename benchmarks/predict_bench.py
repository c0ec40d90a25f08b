"""Prediction throughput: a folder of PNGs and an array, and whether decoding keeps the model
waiting.

    python benchmarks/predict_bench.py RUN_DIR [--n 2000] [--repeats 5] [--batch_size 256]

Writes the bundled sample's test digits (repeated up to ``--n``) into a temporary folder,
twice: as 28 x 28 PNGs (taken as they are) and as 3x digits on 100 x 80 canvases (normalised
the MNIST way, the costlier path), and as one ``.npy`` array. Each is predicted in this
process with the command's own functions (``collect``, ``decoded_batches``,
``predict_batches``), start-up excluded. The folders are predicted with decoding in one
background thread (``--decode_workers 1``, the default), in the model's thread (0) and in
two threads (2), alternating A B C A B C, and each ratio against 0 is the median of the
per-repeat ratios. "Model idle" is the share of
the wall time the model spent waiting for its next batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lit_cnn.cv.malloc import tune_malloc
from lit_cnn.data.loading import load_images
from lit_cnn.predict.ensemble import ensemble_of, open_run
from lit_cnn.predict.inputs import collect, decoded_batches


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _digits(n: int) -> np.ndarray:
    x = load_images("sample").x_test[:, 0].numpy()
    return np.resize(x, (n, *x.shape[1:]))


def _write_folders(root: Path, digits: np.ndarray) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    small, large = root / "png28", root / "png100x80"
    small.mkdir()
    large.mkdir()
    for i, image in enumerate(digits):
        Image.fromarray(image).save(small / f"{i:05d}.png")
        digit = Image.fromarray(image)
        digit = digit.crop(digit.getbbox())
        digit = digit.resize((3 * digit.width, 3 * digit.height), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (100, 80), 255)
        left = int(rng.integers(0, 100 - digit.width + 1))
        top = int(rng.integers(0, 80 - digit.height + 1))
        canvas.paste(Image.fromarray(255 - np.asarray(digit)), (left, top))
        canvas.save(large / f"{i:05d}.png")
    np.save(root / "digits.npy", digits)
    return {"28x28 PNGs": small, "100x80 PNGs": large, ".npy array": root / "digits.npy"}


def _timed(batches: Iterator, model: torch.nn.Module) -> tuple[float, float, int]:
    # Wall seconds, seconds the model waited for a batch, images predicted.
    waited, n = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        while True:
            t = time.perf_counter()
            try:
                x, _ = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - t
            model(x)
            n += len(x)
    return time.perf_counter() - start, waited, n


def _once(path: Path, model, scale: float, batch_size: int, workers: int):
    sources = collect([path])  # the up-front checks are part of what a user waits for
    return _timed(decoded_batches(sources, batch_size, scale, workers), model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()
    tune_malloc()  # as scripts/predict.py does
    run = open_run(args.run_dir)
    model, scale = ensemble_of(run), run.scale
    print(f"# {_cpu()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{run.model_name}, {len(model.nets)} folds; {args.n} images, batch "
          f"{args.batch_size}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        inputs = _write_folders(Path(tmp), _digits(args.n))
        for path in inputs.values():  # warm-up: page cache, allocator, first-call costs
            _once(path, model, scale, args.batch_size, 1)
        print("| input | decoding | predictions/s (median) | model idle | with/without |")
        print("| --- | --- | --- | --- | --- |")
        for name, path in inputs.items():
            modes = (1,) if path.suffix == ".npy" else (1, 0, 2)
            runs: dict[int, list[tuple[float, float, int]]] = {w: [] for w in modes}
            for _ in range(args.repeats):
                for workers in modes:  # A B C A B C: load drifts over all alike
                    runs[workers].append(_once(path, model, scale, args.batch_size, workers))
            for workers in modes:
                rate = statistics.median(n / wall for wall, _, n in runs[workers])
                idle = statistics.median(w / wall for wall, w, _ in runs[workers])
                # Against decoding in the model's thread: the median of per-repeat ratios.
                ratio = statistics.median(
                    b[0] / a[0] for a, b in zip(runs[workers], runs[0], strict=True)
                ) if workers and 0 in runs else None  # fmt: skip
                how = "array slices" if path.suffix == ".npy" else (
                    f"{workers} background thread{'s' * (workers > 1)}" if workers
                    else "in the model's thread"
                )  # fmt: skip
                shown = f"{ratio:.2f}x" if ratio else ""
                print(f"| {name} | {how} | {rate:,.0f} | {idle:.0%} | {shown} |")
    print(f"# {' '.join(sys.argv)}; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
