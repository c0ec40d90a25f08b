"""Write Datasets/mnist.pkl (the notebook's data file) from MNIST-style IDX files.

Usage::

    python scripts/prepare_data.py IDX_DIR [--out FILE] [--force]

IDX_DIR holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each possibly gzipped (``.gz``), as
MNIST, Fashion-MNIST and KMNIST are distributed. The output is a pickle of
``((X_train, y_train), (X_test, y_test))`` with uint8 images of 32 x 32 pixels (28 x 28 digits
zero-padded by 2 on each side) and int64 labels.

lit_cnn itself reads an IDX folder as it is (``--data.path IDX_DIR``); this script is for the
homework notebook, which reads only its own pickle.

Errors are reported on one line, ``prepare_data.py: error: <what>``, with exit status 2.
Needs lit_cnn installed (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_cnn.data.idx import DEFAULT_OUT, IdxError, convert_idx


def main(argv: list[str] | None = None) -> int:
    """Run the script.

    Args:
        argv: Command-line arguments; None for sys.argv.

    Returns:
        The exit status (errors exit through argparse with status 2).
    """
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Write the notebook's pickle file from MNIST-style IDX files.",
    )
    parser.add_argument("idx_dir", metavar="IDX_DIR", type=Path, help="directory of IDX files")
    parser.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        default=DEFAULT_OUT,
        help=f"pickle file to write (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    args = parser.parse_args(argv)
    try:
        result = convert_idx(args.idx_dir, args.out, force=args.force)
    except (IdxError, OSError) as exc:
        # One line, no usage text: the arguments were well formed, the files were not.
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(exc).split())}\n")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
