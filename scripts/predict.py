"""Predict digits with a finished run's fold ensemble; export it to ONNX or TorchScript.

    python scripts/predict.py lightning_logs/DeepCNN/version_0 scans/ photo.jpg
    python scripts/predict.py lightning_logs/DeepCNN/version_0 digits.npy --out preds.csv
    python scripts/predict.py lightning_logs/DeepCNN/version_0 --export onnx model.onnx
    python scripts/predict.py --help                          # every option

One CSV row per image: source,index,prediction,confidence,p0,...,p9 (docs/predict.md).
"""

import sys

from lit_cnn.cli.startup import collector_paused, exit_on_signals

exit_on_signals("predict.py")  # from the first line: Ctrl-C while torch loads is one line, too

from lit_cnn.cv.malloc import tune_malloc  # noqa: E402

with collector_paused():  # a faster start-up (see lit_cnn/startup.py)
    from lit_cnn.cli.predict import main

if __name__ == "__main__":
    tune_malloc()  # a batch's activations are reused, not faulted in again per batch
    sys.exit(main())
