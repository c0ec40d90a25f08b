"""Compare architectures on paired folds: the Bayesian correlated t-test with a region of
practical equivalence, the corrected resampled t-test (the combined F-test under 5x2cv),
McNemar on the test set, Holm across pairs.

    python scripts/compare.py --models ResNN ResNNBatch --data.k 3 --repeats 2
    python scripts/compare.py --models ResNNBatch_NoSkip ResNNBatch_Skip --scheme 5x2cv --rope 0.5
    python scripts/compare.py --resume lightning_logs/compare/version_0
    python scripts/compare.py --help                          # every option

Results land in lightning_logs/compare/<name or version_N>/; the last line printed is that
directory.
"""

import sys

from lit_cnn.cli.startup import collector_paused, exit_on_signals

exit_on_signals("compare.py")  # from the first line: Ctrl-C while torch loads is one line, too

from lit_cnn.cv.malloc import tune_malloc  # noqa: E402

with collector_paused():  # a faster start-up (see lit_cnn/startup.py)
    from lit_cnn.cli.compare import compare_main

if __name__ == "__main__":
    tune_malloc()
    sys.exit(compare_main())
