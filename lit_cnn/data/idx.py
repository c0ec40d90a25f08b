"""Convert MNIST-style IDX files into the notebook's pickle format.

MNIST, Fashion-MNIST and KMNIST are all distributed as four IDX files (optionally gzipped):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``. :func:`convert_idx` reads them and writes the pickle that the
homework notebook (and :func:`lit_cnn.data.loading.load_dataset`) reads::

    ((X_train, y_train), (X_test, y_test))

with images uint8 of shape (N, 32, 32), 28 x 28 digits zero-padded by 2 pixels on each side,
and labels int64.

:func:`read_idx_pair` reads one set unpadded, for :mod:`lit_cnn.data.formats`, which loads an
IDX folder directly.

This module needs only the standard library and numpy, so that ``scripts/prepare_data.py``
starts quickly.
"""

from __future__ import annotations

import gzip
import os
import pickle
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OUT",
    "IDX_FILES",
    "ConversionResult",
    "IdxError",
    "convert_idx",
    "find_idx_file",
    "read_idx",
    "read_idx_dir",
    "read_idx_pair",
    "write_notebook_pickle",
]

# The same path as lit_cnn.data.loading.DEFAULT_PATH, repeated so this module need not import torch.
DEFAULT_OUT = Path("Datasets/mnist.pkl")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_UBYTE = 0x08
_IMAGES_MAGIC = 0x0803
_LABELS_MAGIC = 0x0801
_SIDE = 32
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# Protocol 4 is readable by every Python 3.4+; numpy arrays need nothing newer.
_PROTOCOL = 4


class IdxError(ValueError):
    """A problem with the IDX input or the output file.

    The message is one line of the form ``"<path>: <what is wrong>"``.
    """


def _error(path: Path | str, what: str) -> IdxError:
    return IdxError(f"{path}: {' '.join(what.split())}")


def find_idx_file(idx_dir: Path, stem: str) -> Path:
    """Find one of the four IDX files, plain or gzipped.

    Args:
        idx_dir: The directory holding the IDX files.
        stem: The file's standard name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.

    Returns:
        ``idx_dir/stem`` if it is a file, else ``idx_dir/stem.gz``.

    Raises:
        IdxError: Neither exists.
    """
    plain = idx_dir / stem
    for candidate in (plain, idx_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise _error(plain, f"no such file (nor {stem}.gz)")


def _read_bytes(path: Path) -> bytes | bytearray:
    try:
        with open(path, "rb") as file:
            # Decided by content rather than by name, so a gzipped file without .gz (or the
            # reverse) still reads.
            if file.read(2) != _GZIP_MAGIC:
                file.seek(0)
                return file.read()
            file.seek(0)
            with gzip.GzipFile(fileobj=file) as stream:
                return _inflate(stream, path)
    except OSError as exc:
        if isinstance(exc, gzip.BadGzipFile):
            raise _error(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from None
        raise _error(path, f"cannot read: {exc.strerror or exc}") from None
    except (EOFError, zlib.error) as exc:
        raise _error(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from None


def _inflate(stream: gzip.GzipFile, path: Path) -> bytes | bytearray:
    # Inflates no more than the header says the file holds, plus one byte to tell a file that
    # is too long: a gzip bomb stops there, a chunk at a time, instead of filling memory.
    head = stream.read(4)
    if len(head) < 4:
        return head
    ndim = head[3]
    head += stream.read(4 * ndim)
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(head) < 4 + 4 * ndim or head[2] != _UBYTE:
        return head  # read_idx reports the short header or the wrong magic number
    limit = len(head) + int(np.prod(dims, dtype=np.float64)) + 1
    data = bytearray(head)
    while len(data) < limit and (chunk := stream.read(min(_CHUNK, limit - len(data)))):
        data += chunk
    if len(data) == limit:
        raise _error(path, "too long: it decompresses to more bytes than its header promises")
    return data


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file.

    Args:
        path: The file, plain or gzipped.
        magic: The expected magic number: 0x0803 for images, 0x0801 for labels.

    Returns:
        The data as a uint8 array whose shape is the file's dimensions.

    Raises:
        IdxError: The file is unreadable, has another magic number, or its size does not
            match its header.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise _error(path, f"too short for an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise _error(
            path,
            f"bad magic number 0x{found:08X}; expected 0x{magic:08X} (IDX unsigned-byte {kind})",
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _error(path, f"truncated: the header needs {header} bytes, the file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    found_bytes = len(raw) - header
    if found_bytes != expected:
        problem = "truncated" if found_bytes < expected else "too long"
        shape = " x ".join(map(str, dims))
        raise _error(
            path,
            f"{problem}: the header promises {shape} = {expected} bytes of data, "
            f"the file has {found_bytes}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(
    idx_dir: str | os.PathLike[str], part: str, pad: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read the images and labels of one set from a directory of IDX files.

    Args:
        idx_dir: The directory holding the IDX files.
        part: ``"train"`` or ``"test"``.
        pad: Zero-pad 28 x 28 images to 32 x 32 (as the notebook's file holds them); else
            return them as the file holds them, read-only.

    Returns:
        ``(X, y)``: images uint8 (N, 32, 32), or (N, 28, 28) unpadded; labels int64.

    Raises:
        IdxError: A file is missing or invalid, or image and label counts differ.
    """
    idx_dir = Path(idx_dir)
    images_path = find_idx_file(idx_dir, IDX_FILES[f"{part}_images"])
    labels_path = find_idx_file(idx_dir, IDX_FILES[f"{part}_labels"])
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    n, rows, cols = images.shape
    if rows != cols or rows not in (28, _SIDE):
        raise _error(images_path, f"unsupported image size {rows} x {cols}; expected 28 x 28")
    if n == 0:
        raise _error(images_path, "holds no images")
    if len(labels) != n:
        raise _error(images_path, f"{n} images, but {labels_path} has {len(labels)} labels")
    if labels.max() > 9:
        raise _error(labels_path, f"labels must be 0-9, found {labels.max()}")
    if not pad or rows == _SIDE:
        return images, labels.astype(np.int64)
    padded = np.zeros((n, _SIDE, _SIDE), dtype=np.uint8)
    lo = (_SIDE - rows) // 2
    padded[:, lo : lo + rows, lo : lo + cols] = images
    return padded, labels.astype(np.int64)


def read_idx_dir(
    idx_dir: str | os.PathLike[str],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read the four IDX files of a directory into the notebook's structure.

    Args:
        idx_dir: The directory holding the IDX files.

    Returns:
        ``((X_train, y_train), (X_test, y_test))``: images uint8 (N, 32, 32), labels int64.

    Raises:
        IdxError: A file is missing or invalid, or image and label counts differ.
    """
    idx_dir = Path(idx_dir)
    if not idx_dir.exists():
        raise _error(idx_dir, "no such directory")
    if not idx_dir.is_dir():
        raise _error(idx_dir, "not a directory")
    return read_idx_pair(idx_dir, "train"), read_idx_pair(idx_dir, "test")


class _PortablePickler(pickle.Pickler):
    # numpy's own pickles name numpy._core.multiarray._reconstruct under numpy 2, which numpy
    # 1.x cannot import. Writing each array as numpy.ndarray(shape, dtype, bytearray) names
    # only numpy.ndarray and builtins.bytearray, which every numpy and Python 3 has, so the
    # notebook's plain pickle.load reads the file whatever its numpy version. The bytearray
    # keeps the loaded arrays writable.
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.dtype.kind in "uif":
            array = np.ascontiguousarray(obj)
            return np.ndarray, (array.shape, array.dtype.str, bytearray(array.data))
        return NotImplemented


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise _error(out, "is a directory")
    if out.exists() and not force:
        raise _error(out, "already exists; pass --force to overwrite it")


def write_notebook_pickle(data: Any, out: str | os.PathLike[str], force: bool = False) -> Path:
    """Pickle data atomically, in a form plain ``pickle.load`` reads.

    The data go to a temporary file in the output's directory that is then renamed over the
    output, so a reader never sees a half-written file and a failure leaves no debris.

    Args:
        data: What to pickle, e.g. the result of :func:`read_idx_dir`.
        out: The file to write; missing parent directories are created.
        force: Overwrite ``out`` if it exists.

    Returns:
        ``out`` as a Path.

    Raises:
        IdxError: ``out`` exists and ``force`` is false, or it cannot be written.
    """
    out = Path(out)
    _check_out(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(out.parent, f"cannot create directory: {exc.strerror or exc}") from None
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with mode 0o666 lets the umask decide the permissions, as for any new file;
        # tempfile would make it private (0o600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            _PortablePickler(file, protocol=_PROTOCOL).dump(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        raise _error(out, f"cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_idx` wrote.

    Attributes:
        path: The pickle file.
        n_train: Number of training images.
        n_test: Number of test images.
    """

    path: Path
    n_train: int
    n_test: int

    def __str__(self) -> str:
        return (
            f"wrote {self.path}: {self.n_train} train + {self.n_test} test images, "
            f"{_SIDE}x{_SIDE} uint8, labels 0-9"
        )


def convert_idx(
    idx_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] = DEFAULT_OUT,
    force: bool = False,
) -> ConversionResult:
    """Convert a directory of IDX files into a notebook-format pickle.

    Args:
        idx_dir: The directory holding the four IDX files, plain or gzipped.
        out: The pickle to write.
        force: Overwrite ``out`` if it exists.

    Returns:
        The path written and the image counts.

    Raises:
        IdxError: Bad input, or ``out`` exists without ``force``, or cannot be written.
    """
    out = Path(out)
    # Checked before the (slow) read too, so a refusal comes at once.
    _check_out(out, force)
    train, test = read_idx_dir(idx_dir)
    write_notebook_pickle((train, test), out, force=force)
    return ConversionResult(path=out, n_train=len(train[0]), n_test=len(test[0]))
