"""A tuning worker's overhead per trial, beyond the K-fold run it drives.

    python benchmarks/tune_overhead.py            # DeepCNN, 3 folds, 2 epochs, bundled sample
    python benchmarks/tune_overhead.py --trials 8 --model ResNNBatch

Runs one study in this process (one worker, SQLite storage in a temporary directory, the
default space, no pruning) and prints, per stage, the median seconds per trial and the
median share of the trial's wall time. The stages are tune.json's ``overhead_seconds``:

- ``storage``: Optuna's storage and sampler, inside the trial and around it (ask, tell,
  heartbeat, the after-trial callback that writes the hparams row);
- ``setup``: parsing and checking the trial's options and building its first Trainer;
- ``kfold``: the K-fold run itself (``fits``: its ``Trainer.fit`` calls alone; the rest of it
  is the test passes, the records and the run's report, which kfold.py spends as well);
- the worker's one data load, timed on its own, is shared by every trial.

The overhead of tuning is ``storage + setup`` (plus the load, divided by the trials).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--model", default="DeepCNN")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args(argv)

    from lit_cnn.cli.tune import tune_main
    from lit_cnn.data.loading import load_images

    start = time.perf_counter()
    load_images("sample")
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        status = tune_main(
            [
                "--models", args.model, "--n_trials", str(args.trials), "--name", "bench",
                "--pruner", "none", "--sampler_seed", "0", "--data.k", str(args.k),
                "--trainer.max_epochs", str(args.epochs), "--trainer.default_root_dir", root,
            ]
        )  # fmt: skip
        if status:
            return status
        summary = json.loads((Path(root) / "lightning_logs/tune/bench/tune.json").read_text())
    stages = list(summary["overhead_seconds"].values())
    # The first trial also pays the process's first Trainer and first fit: shown apart.
    first, rest = stages[0], stages[1:] or stages
    print(f"\n{args.model}, {args.k} folds, {args.epochs} epochs, {args.trials} trials")
    print(f"data load (once per worker): {load_s:.2f} s")
    print("| stage | median s per trial | median share of the trial | trial 0 |")
    print("| --- | ---: | ---: | ---: |")
    for key in ("storage", "setup", "kfold", "fits", "total"):
        seconds = statistics.median(s[key] for s in rest)
        share = statistics.median(s[key] / s["total"] for s in rest)
        print(f"| {key} | {seconds:.2f} | {100 * share:.1f}% | {first[key]:.2f} |")
    overhead = statistics.median((s["storage"] + s["setup"]) / s["total"] for s in rest)
    with_load = overhead + load_s / args.trials / statistics.median(s["total"] for s in rest)
    print(f"tuning overhead (storage + setup): {100 * overhead:.1f}% of a trial; "
          f"{100 * with_load:.1f}% with the data load spread over the trials")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
