"""Compare architectures on paired folds, with significance tests.

    python scripts/compare.py --models ResNN ResNNBatch --data.k 3 --repeats 2
    python scripts/compare.py --models ResNNBatch_NoSkip ResNNBatch_Skip --scheme 5x2cv
    python scripts/compare.py --resume lightning_logs/compare/version_0
    python scripts/compare.py --help                          # every option

Results land in lightning_logs/compare/<name or version_N>/; the last line printed is that
directory.
"""

from lit_cnn.startup import collector_paused

with collector_paused():  # 0.5-0.6 s less start-up (see lit_cnn/startup.py)
    from lit_cnn.cli import exit_now
    from lit_cnn.compare import compare_main

if __name__ == "__main__":
    exit_now(compare_main())
