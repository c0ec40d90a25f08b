"""Image data for lit_cnn: the data files people have, validated alike, and the bundled sample.

A data file is what the homework notebook read from ``Datasets/mnist.pkl``, a pickle of
``(train, test)``, each an ``(X, y)`` pair of numpy arrays, or one of the formats that
:mod:`lit_cnn.data.formats` recognises by content: a gzip-compressed pickle, the three-set
``(train, valid, test)`` layout of deeplearning.net's ``mnist.pkl.gz`` (train and valid are
merged into the training set), Keras' ``mnist.npz``, or a directory of IDX files. Pickles are
opened with a restricted unpickler that only builds numpy arrays, tuples and lists, so a
hostile file is refused before any of its code can run.

Images are kept compact and unscaled (uint8 whenever the pixels allow it) and are turned into
float32 network input by :func:`to_float`, with one scaling constant taken from the training
images and used for the test images as well.

This module imports only the standard library, numpy and torch, so that loading data does not
pull in Lightning or scikit-learn.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_cnn.data.formats import read_content, read_npz
from lit_cnn.data.unpickle import DataError, _error, read_pickle

__all__ = [
    "DEFAULT_PATH",
    "SAMPLE",
    "DataError",
    "ImageData",
    "data_path",
    "load_dataset",
    "load_images",
    "pad_images",
    "read_pickle",
    "to_float",
]

SAMPLE = "sample"
DEFAULT_PATH = Path("Datasets/mnist.pkl")

_SAMPLE_FILE = "mnist_sample.npz"
_SIDE = 32
_SHAPES_WANTED = "N x 32 x 32, N x 28 x 28, N x 784, or N x 1 x H x W with H = W = 28 or 32"
# How ImageData.source records that a three-set file's train and valid sets were merged.
_MERGED = " (train and valid merged: {} + {} training images)"
_MERGED_RE = re.compile(r"(?P<path>.*) \(train and valid merged: \d+ \+ \d+ training images\)")


@dataclass(eq=False)
class ImageData:
    """Images and labels as stored in memory, before scaling.

    Attributes:
        x_train: Training images, shape (N, 1, S, S): S = 28 for 28 x 28 images and for
            32 x 32 ones with an all-zero 2-pixel border (padded digits), else 32;
            :func:`to_float` pads 28 to 32. uint8 when every pixel of the training and test
            images is an integer in [0, 255], float32 otherwise. May be read-only (shared
            with the file's buffer): never write into it.
        y_train: Training labels 0-9, int64, shape (N,).
        x_test: Test images, like ``x_train``.
        y_test: Test labels, like ``y_train``.
        scale: The divisor that maps the training images to [0, 1]; applied to both sets by
            :func:`to_float`.
        source: Where the data came from: the file's or directory's path, or ``"sample"``.
            For a three-set file, the path followed by
            ``" (train and valid merged: 50000 + 10000 training images)"`` (with its own
            counts); :func:`load_images` and :func:`data_path` accept that form too.
    """

    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    scale: float
    source: str


def to_float(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Turn stored images into float32 network input.

    Both the training loop (per batch) and :func:`load_dataset` (whole sets) go through this
    one function, so their floats are bit-identical.

    Args:
        x: Stored images (uint8 or float32).
        scale: The data's scaling constant, :attr:`ImageData.scale`.

    Returns:
        ``x`` as float32 divided by ``scale``, (N, 1, 32, 32): 28 x 28 images are zero-padded
        by 2 pixels on each side, as LeNet did.
    """
    # Padded per batch rather than once at load time: a padded copy of a whole 28 x 28 set
    # would coexist with the file's buffer while it was made, and stay larger.
    return pad_images(x).to(torch.float32) / scale


def pad_images(x: torch.Tensor) -> torch.Tensor:
    """Zero-pads (N, 1, 28, 28) images by 2 pixels on each side to 32 x 32, as LeNet did.

    Args:
        x: Images of any dtype, (N, 1, 28, 28) or (N, 1, 32, 32).

    Returns:
        (N, 1, 32, 32) images: ``x`` itself when it is 32 x 32 already.
    """
    if x.shape[-1] == _SIDE:
        return x
    pad = (_SIDE - x.shape[-1]) // 2
    return torch.nn.functional.pad(x, (pad, pad, pad, pad))


def load_images(path: str | os.PathLike[str] | None = None) -> ImageData:
    """Load images and labels, unscaled and compact.

    Args:
        path: A data file (a pickle of ``(train, test)`` or ``(train, valid, test)``, gzipped
            or not; an npz with Keras' keys) or a directory of IDX files, told apart by
            content; ``"sample"`` for the bundled MNIST sample; or None for
            ``Datasets/mnist.pkl`` (relative to the working directory) if it exists, else the
            bundled sample. A file that is really named ``sample`` in the working directory
            can be reached as ``"./sample"``. An :attr:`ImageData.source` is accepted too.

    Returns:
        The data, stored unpadded (:func:`to_float` pads 28 x 28 images to 32 x 32).

    Raises:
        DataError: The file is missing, unreadable, of no known format, refused (a pickle
            that names anything but arrays, a gzip bomb), or holds invalid images or labels.
    """
    if path is None:
        path = DEFAULT_PATH if DEFAULT_PATH.exists() else SAMPLE
    if os.fspath(path) == SAMPLE:
        return _load_sample()
    source = data_path(os.fspath(path))
    content = read_content(Path(source), source)
    *arrays, merged = _split(content, source)
    data = _build(*arrays, source)
    if merged is not None:
        data.source = source + _MERGED.format(*merged)
    return data


def data_path(source: str) -> str:
    """The file or directory that an :attr:`ImageData.source` names.

    Args:
        source: A path, ``"sample"``, or a source with a note of merged sets.

    Returns:
        ``source`` without the note, unless a file of that very name exists.
    """
    match = _MERGED_RE.fullmatch(source)
    if match is None or os.path.exists(source):
        return source
    return match["path"]


def load_dataset(
    path: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load the data as network-ready tensors.

    Args:
        path: As for :func:`load_images`.

    Returns:
        ``(X_train, y_train, X_test, y_test)``: images float32 of shape (N, 1, 32, 32), scaled
        by the training set's constant; labels int64 of shape (N,).

    Raises:
        DataError: As for :func:`load_images`.
    """
    data = load_images(path)
    return (
        to_float(data.x_train, data.scale),
        data.y_train,
        to_float(data.x_test, data.scale),
        data.y_test,
    )


# --- validation ------------------------------------------------------------------------------


def _describe(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    if isinstance(obj, np.ndarray):
        return f"a numpy array of shape {obj.shape}"
    return f"a {type(obj).__name__}"


def _split(
    content: Any, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None]:
    # Checks the (train, test) or (train, valid, test) nesting of (X, y) pairs; returns the
    # four arrays, train and valid merged, and the sizes merged (None for two sets).
    if not isinstance(content, (tuple, list)) or len(content) not in (2, 3):
        raise _error(
            source,
            "expected (train, test) or (train, valid, test), each an (X, y) pair; "
            f"found {_describe(content)}",
        )
    parts = ("train", "test") if len(content) == 2 else ("train", "valid", "test")
    arrays: list[np.ndarray] = []
    for part, pair in zip(parts, content, strict=True):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise _error(source, f"the {part} set must be an (X, y) pair; found {_describe(pair)}")
        for what, array in zip(("images", "labels"), pair, strict=True):
            if not isinstance(array, np.ndarray):
                raise _error(
                    source, f"{part} {what} must be a numpy array; found {_describe(array)}"
                )
            arrays.append(array)
    if len(parts) == 2:
        x_train, y_train, x_test, y_test = arrays
        return x_train, y_train, x_test, y_test, None
    x_train, y_train, x_valid, y_valid, x_test, y_test = arrays
    x_train, y_train, sizes = _merge(x_train, y_train, x_valid, y_valid, source)
    return x_train, y_train, x_test, y_test, sizes


def _merge(
    x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    # Train and valid together are MNIST's own 60,000 training images, which the folds split:
    # a held-out validation set of its own would only shrink what each fold trains on.
    x_train = _check_images(x_train, "train", source)
    x_valid = _check_images(x_valid, "valid", source)
    y_train = _check_labels(y_train, len(x_train), "train", source)
    y_valid = _check_labels(y_valid, len(x_valid), "valid", source)
    if x_train.shape[1:] != x_valid.shape[1:]:
        raise _error(
            source,
            f"train and valid images differ in size: {x_train.shape[2]} x {x_train.shape[3]} "
            f"and {x_valid.shape[2]} x {x_valid.shape[3]}",
        )
    sizes = (len(x_train), len(x_valid))
    return np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), sizes


def _check_dtype(array: np.ndarray, what: str, source: str) -> None:
    # Integers and floats only: bool arrays are masks rather than pixel values or classes,
    # and complex, string, structured and datetime arrays are not numbers we can train on.
    if array.dtype.kind not in "uif":
        raise _error(
            source,
            f"{what} have dtype {array.dtype}, which is not numeric (integer or float expected)",
        )


def _check_images(x: np.ndarray, part: str, source: str) -> np.ndarray:
    # Returns x as an (N, 1, side, side) view with side 28 or 32.
    _check_dtype(x, f"{part} images", source)
    shape = x.shape
    if x.ndim == 2 and shape[1] == 28 * 28:
        x = x.reshape(-1, 28, 28)
    if x.ndim == 3:
        x = x[:, None]
    square = x.ndim == 4 and x.shape[1] == 1 and x.shape[2] == x.shape[3]
    if not (square and x.shape[2] in (28, 32)):
        raise _error(
            source, f"{part} images have unsupported shape {shape}; expected {_SHAPES_WANTED}"
        )
    if len(x) == 0:
        raise _error(source, f"the {part} set is empty")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise _error(source, f"{part} images contain NaN or infinite values")
    return x


def _format_label(value: Any) -> str:
    value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_labels(y: np.ndarray, n_images: int, part: str, source: str) -> np.ndarray:
    _check_dtype(y, f"{part} labels", source)
    if y.ndim != 1:
        raise _error(source, f"{part} labels must be 1-D; found shape {y.shape}")
    if len(y) != n_images:
        raise _error(source, f"the {part} set has {n_images} images but {len(y)} labels")
    with np.errstate(invalid="ignore"):
        bad = (y < 0) | (y > 9)
        if y.dtype.kind == "f":
            bad |= ~np.isfinite(y) | (y != np.floor(y))
    if bad.any():
        found = _format_label(y[np.argmax(bad)])
        raise _error(source, f"{part} labels must be integers 0-9, found {found}")
    return y.astype(np.int64)


def _fits_uint8(x: np.ndarray) -> bool:
    # True when every pixel is an integer in [0, 255], so uint8 storage loses nothing.
    if x.dtype == np.uint8:
        return True
    if x.dtype.kind in "ui":
        return bool(x.min() >= 0 and x.max() <= 255)
    # Float data: checked in chunks to bound the temporaries, and to stop at the first
    # fractional pixel, which for [0, 1] data is in the first chunk.
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096]
        if chunk.min() < 0 or chunk.max() > 255 or not np.array_equal(chunk, np.floor(chunk)):
            return False
    return True


def _store(x: np.ndarray, dtype: type) -> torch.Tensor:
    # The images in the storage dtype, as small as they can be kept without loss: 32 x 32
    # images whose 2-pixel border is all zero (28 x 28 digits padded, as the notebook's file
    # and prepare_data.py hold them) keep only their 28 x 28 interior, which to_float pads
    # back. Otherwise no copy at all when the file holds the
    # images in that dtype already, so the file's buffer is the only copy in memory.
    lo, hi = 2, _SIDE - 2
    if x.shape[2] == _SIDE and not (
        x[:, :, :lo].any() or x[:, :, hi:].any() or x[:, :, :, :lo].any() or x[:, :, :, hi:].any()
    ):
        x = x[:, :, lo:hi, lo:hi]
    out = np.ascontiguousarray(x, dtype=dtype)
    with warnings.catch_warnings():
        # Buffers from the file are read-only; lit_cnn only ever reads stored images.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(out)


def _scale_of(x_train: torch.Tensor) -> float:
    # One constant from the training images, used for train and test alike. (The notebook
    # divided the test set by its own max.)
    top = float(x_train.max())
    if top <= 1.0:
        return 1.0
    if top <= 255.0:
        return 255.0
    return top


def _build(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
) -> ImageData:
    x_train = _check_images(x_train, "train", source)
    x_test = _check_images(x_test, "test", source)
    y_train = _check_labels(y_train, len(x_train), "train", source)
    y_test = _check_labels(y_test, len(x_test), "test", source)
    dtype = np.uint8 if _fits_uint8(x_train) and _fits_uint8(x_test) else np.float32
    train = _store(x_train, dtype)
    return ImageData(
        x_train=train,
        y_train=torch.from_numpy(y_train),
        x_test=_store(x_test, dtype),
        y_test=torch.from_numpy(y_test),
        # Taken from the stored (possibly float32-rounded) images, so that the training max
        # maps to exactly 1.0.
        scale=_scale_of(train),
        source=source,
    )


# --- bundled sample --------------------------------------------------------------------------


def _load_sample() -> ImageData:
    sample = resources.files(__package__).joinpath("sample", _SAMPLE_FILE)
    try:
        # The sample is an npz of Keras' layout: plain .npy arrays, needing no unpickler.
        with sample.open("rb") as file:
            (x_train, y_train), (x_test, y_test) = read_npz(file, SAMPLE)
    except FileNotFoundError:
        raise _error(SAMPLE, f"the bundled sample file {_SAMPLE_FILE} is missing") from None
    except DataError as exc:
        raise _error(
            SAMPLE, f"the bundled sample file {_SAMPLE_FILE} is unreadable ({exc})"
        ) from None
    return _build(x_train, y_train, x_test, y_test, SAMPLE)
