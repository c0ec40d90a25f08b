"""Cross-validated hyper-parameter search on Optuna: each trial is one K-fold run.

    python scripts/tune.py --models ResNNBatch --n_trials 20 --name rnb --trainer.max_epochs 5
    python scripts/tune.py --models ResNNBatch --n_trials 20 --name rnb   # continue; a worker
    python scripts/tune.py --help

Results land in lightning_logs/tune/<name>/ (see docs/tuning.md); the last line printed is
that directory.
"""

import sys

from lit_cnn.cli.startup import collector_paused, exit_on_signals

exit_on_signals("tune.py")  # from the first line: Ctrl-C while torch loads is one line, too

from lit_cnn.cv.malloc import tune_malloc  # noqa: E402

with collector_paused():
    from lit_cnn.cli.tune import tune_main

if __name__ == "__main__":
    tune_malloc()
    sys.exit(tune_main())
