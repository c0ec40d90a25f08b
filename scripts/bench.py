"""Benchmark lit_cnn's training epoch and whole K-fold runs against the notebook's code.

    python scripts/bench.py --data /tmp/fmnist.pkl --n-train 40000 --repeats 3
    python scripts/bench.py --models ResNN DeepCNN --epochs 2 --json /tmp/bench.json
    python scripts/bench.py --data /tmp/fmnist.pkl --whole-run --repeats 3
    python scripts/bench.py --help                            # every option

The logic lives in :mod:`lit_cnn.bench`.
"""

import sys

from lit_cnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
