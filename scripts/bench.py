"""Benchmark lit_cnn's training epoch and whole K-fold runs against the notebook's code.

    python scripts/bench.py --data /tmp/fmnist.pkl --n-train 40000 --repeats 3
    python scripts/bench.py --models ResNN DeepCNN --epochs 2 --json /tmp/bench.json
    python scripts/bench.py --data /tmp/fmnist.pkl --whole-run --repeats 3
    python scripts/bench.py --help                            # every option

The logic lives in benchmarks/bench.py, the notebook baseline in benchmarks/notebook.py:
tooling, not part of the lit_cnn package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
