"""The data files lit_cnn reads, told apart by their content rather than their names.

- A pickle (the notebook's ``Datasets/mnist.pkl``, or any pickle of numpy arrays), read by the
  restricted unpickler of :mod:`lit_cnn.data.unpickle`.
- A gzip-compressed pickle (deeplearning.net's ``mnist.pkl.gz``), read by
  :mod:`lit_cnn.data.gzipped`, which bounds the inflated bytes by what its arrays declare.
- An ``.npz`` with Keras' keys ``x_train``, ``y_train``, ``x_test``, ``y_test`` (Keras'
  ``mnist.npz``, and the bundled sample), loaded with ``allow_pickle=False``.
- A directory holding the four IDX files of MNIST, Fashion-MNIST or KMNIST, plain or gzipped.

Each is returned in the nesting that pickles use, ``(train, test)`` or ``(train, valid, test)``
with each set an ``(X, y)`` pair, so that :mod:`lit_cnn.data.loading` validates every format
in the same way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lit_cnn.data.gzipped import GZIP_MAGIC, read_gzip_pickle
from lit_cnn.data.idx import IDX_FILES, IdxError, read_idx_pair
from lit_cnn.data.unpickle import DataError, _error, _os_error, _read_head, _read_pickle

__all__ = ["NPZ_KEYS", "read_content", "read_npz"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


def read_content(path: Path, source: str) -> Any:
    """What a data file or IDX directory holds, as nested (X, y) pairs of numpy arrays.

    Args:
        path: The file or directory.
        source: The name to give in error messages.

    Returns:
        ``((X_train, y_train), (X_test, y_test))`` for an npz or an IDX directory; whatever
        the pickle holds (arrays, tuples and lists only) for a pickle, compressed or not.

    Raises:
        DataError: The file is missing, unreadable, of no known format, or refused.
    """
    if path.is_dir():
        return _read_idx_dir(path, source)
    head = _read_head(path, source, len(_NPY_MAGIC))
    if head.startswith(GZIP_MAGIC):
        return read_gzip_pickle(path, source)
    if head.startswith(_ZIP_MAGIC):
        return read_npz(path, source)
    if head.startswith(_NPY_MAGIC):
        raise _error(
            source,
            "a single .npy array; expected an .npz with x_train/y_train/x_test/y_test, "
            "or a pickle of (train, test)",
        )
    return _read_pickle(path, source)


# --- npz -------------------------------------------------------------------------------------


def read_npz(path: Path | BinaryIO, source: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The four arrays of an npz with Keras' keys, as ``((x_train, y_train), (x_test, y_test))``.

    Args:
        path: The npz file, or a binary file object holding it.
        source: The name to give in error messages.

    Returns:
        The train and test pairs.

    Raises:
        DataError: Not a readable zip, without the four keys, or an array that is not plain
            numeric .npy data of the size the zip declares.
    """
    try:
        with zipfile.ZipFile(path) as npz:
            members = {info.filename.removesuffix(".npy"): info for info in npz.infolist()}
            missing = [key for key in NPZ_KEYS if key not in members]
            if missing:
                found = ", ".join(sorted(members)) or "nothing"
                raise _error(source, f"an .npz without {'/'.join(NPZ_KEYS)} (found: {found})")
            arrays = [_npz_array(npz, members[key], source) for key in NPZ_KEYS]
    except zipfile.BadZipFile as exc:
        raise _error(source, f"not a readable .npz (zip) file ({exc})") from None
    except OSError as exc:
        raise _os_error(exc, source) from None
    x_train, y_train, x_test, y_test = arrays
    return (x_train, y_train), (x_test, y_test)


def _npz_array(npz: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> np.ndarray:
    # zipfile inflates a member to no more than the size the zip declares for it; the .npy
    # header is checked against that size first, because numpy allocates what the header
    # declares before it reads. allow_pickle=False: an object array is refused, never unpickled.
    name = info.filename
    fmt = np.lib.format
    try:
        with npz.open(info) as file:
            version = fmt.read_magic(file)
            read_header = (
                fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
            if dtype.hasobject:
                raise _error(source, f"{name} is an array of Python objects, which is not loaded")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if nbytes > info.file_size:
                raise _error(
                    source,
                    f"{name} declares {nbytes:,} bytes of data, but the zip holds "
                    f"{info.file_size:,} for it",
                )
        with npz.open(info) as file:
            return fmt.read_array(file, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise _error(
            source, f"{name} is not readable .npy data ({type(exc).__name__}: {exc})"
        ) from None


# --- IDX directories -------------------------------------------------------------------------


def _read_idx_dir(path: Path, source: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    stems = list(IDX_FILES.values())
    missing = [s for s in stems if not ((path / s).is_file() or (path / f"{s}.gz").is_file())]
    if len(missing) == len(stems):
        raise _error(
            source,
            f"a directory without IDX files: none of {', '.join(stems)} (plain or .gz) is in it",
        )
    if missing:
        raise _error(source, f"an IDX directory without {' or '.join(missing)} (plain or .gz)")
    try:
        # Unpadded: loading.py keeps 28 x 28 digits as they are and pads them per batch.
        return read_idx_pair(path, "train", pad=False), read_idx_pair(path, "test", pad=False)
    except IdxError as exc:
        raise DataError(str(exc)) from None
