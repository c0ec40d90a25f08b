"""K-fold cross-validation of one architecture: the notebook's KFoldCrossValidation, on Lightning.

    python scripts/kfold.py                                   # DeepCNN, 3 folds, 30 epochs
    python scripts/kfold.py --model ShallowCNN --trainer.max_epochs 5
    python scripts/kfold.py --config scripts/configs/resnn_batch.yaml
    python scripts/kfold.py --help                            # every option

Results land in lightning_logs/<model>/<run>/; the last line printed is that directory.
"""

import sys

from lit_cnn.cli.startup import collector_paused, exit_on_signals

exit_on_signals("kfold.py")  # from the first line: Ctrl-C while torch loads is one line, too

from lit_cnn.cv.malloc import tune_malloc  # noqa: E402

with collector_paused():  # a faster start-up (see lit_cnn/startup.py)
    from lit_cnn.cli.kfold import cli_main

if __name__ == "__main__":
    tune_malloc()
    sys.exit(cli_main())
