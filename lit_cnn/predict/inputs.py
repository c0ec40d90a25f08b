"""What ``scripts/predict.py`` reads: image files, directories of them, arrays and data
files, checked before anything is predicted and then decoded in the background.

A file's kind is decided by its first bytes, not its name: ``.npy`` and ``.npz`` arrays
(read with ``allow_pickle=False``), or a data file that :func:`lit_cnn.data.load_images`
reads (a notebook-format pickle, a gzip-compressed pickle, the three-set ``mnist.pkl.gz``,
a Keras-style ``.npz`` with ``x_train``/``y_train``/``x_test``/``y_test``), whose test images
are predicted, or else an image Pillow identifies. Directories are walked recursively in
sorted order and give their image files; other files in them are skipped. A directory with
no image files that holds IDX files (``train-images-idx3-ubyte`` and the three others,
plain or gzipped) is an IDX folder instead: its test images are predicted. Every file is
opened and its header or array checked up front; an image's pixels are decoded later, in
worker threads that run ahead of the model.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lit_cnn.data.formats import NPZ_KEYS
from lit_cnn.data.idx import IDX_FILES
from lit_cnn.data.loading import SAMPLE, DataError, load_images, to_float
from lit_cnn.predict.images import PIXEL_SCALE, WORKING_SIDE, digit_pixels

__all__ = ["Source", "collect", "decoded_batches", "read_digit"]

_NPY, _ZIP, _PICKLE, _GZIP = b"\x93NUMPY", b"PK\x03\x04", b"\x80", b"\x1f\x8b"
_SIDES = (28, 32)
_SHAPES = "N x 28 x 28 or N x 32 x 32 images (or N x 1 x 28 x 28, N x 1 x 32 x 32)"


@dataclass
class Source:
    """One file to predict.

    Attributes:
        name: The file as the CSV's ``source`` column shows it.
        kind: ``"image"`` (one image, decoded when its batch comes), or ``"array"``
            (stored images in the run's units, ``images`` below).
        count: How many images it holds.
        images: For arrays: (N, 1, S, S) or (N, S, S), S = 28 or 32; memory-mapped for .npy.
        scale: For a data file, its own scaling constant (its loader knows its units); None
            for a bare array, which is taken in the run's units.
    """

    name: str
    kind: str
    count: int
    images: Any = None
    scale: float | None = None


def _error(name: str, what: str) -> DataError:
    # A file's name may hold a newline; the message stays one line.
    return DataError(" ".join(f"{name}: {what}".split()))


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError as err:
        raise _error(str(path), f"cannot be read ({err.strerror or _reason(err)})") from None


def _image_source(path: Path) -> Source:
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError:
        if path.suffix.lower() in Image.registered_extensions():
            raise _error(
                str(path), f"corrupt image: Pillow reads no {path.suffix} (or other) image in it"
            ) from None
        raise _error(
            str(path),
            "unsupported file: not an image Pillow reads, nor a .npy/.npz array or a data file "
            "(pickle, gzipped pickle)",
        ) from None
    except Image.DecompressionBombError as err:
        raise _error(str(path), f"refused: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's plugins raise all three
        raise _error(str(path), f"corrupt image ({_reason(err)})") from None
    if width < 1 or height < 1:
        raise _error(str(path), f"an image of size {width} x {height}")
    return Source(str(path), "image", 1)


def _check_array(array: np.ndarray, name: str) -> np.ndarray:
    shape = array.shape
    if array.dtype.kind not in "uif":
        raise _error(name, f"array of dtype {array.dtype}; expected integer or float pixels")
    if array.ndim == 4 and shape[1] == 1:
        array = array[:, 0]
    if not (array.ndim == 3 and shape[-1] == shape[-2] and shape[-1] in _SIDES):
        raise _error(name, f"array of shape {shape}; expected {_SHAPES}")
    if len(array) == 0:
        raise _error(name, "holds no images (N = 0)")
    for start in range(0, len(array), 4096):  # in chunks: a memory-mapped file stays on disk
        chunk = array[start : start + 4096]
        if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
            raise _error(name, "holds NaN or infinite pixel values")
        if chunk.min() < 0:
            raise _error(name, f"holds negative pixel values (down to {chunk.min()})")
    return array


def _npy_source(path: Path) -> Source:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _error(str(path), f"unreadable .npy array ({_reason(err)})") from None
    array = _check_array(array, str(path))
    return Source(str(path), "array", len(array), array)


def _npz_source(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if set(NPZ_KEYS) <= set(names):
                keras = True
            elif len(names) != 1:
                listed = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
                raise _error(
                    str(path),
                    f"holds {len(names)} arrays ({listed or 'none'}); an .npz to predict holds "
                    f"one array of images, or Keras' {'/'.join(NPZ_KEYS)}",
                )
            else:
                keras = False
                array = npz[names[0]]
    except DataError:
        raise
    except Exception as err:  # a damaged zip, a member that is not a plain array ...
        raise _error(str(path), f"unreadable .npz archive ({_reason(err)})") from None
    if keras:
        return _data_source(path)  # Keras' mnist.npz: its x_test, as kfold.py reads it
    array = _check_array(array, f"{path}")
    return Source(str(path), "array", len(array), array)


def _data_source(path: Path) -> Source:
    # The safe loader of --data.path, for every format it reads; its DataError names the file.
    # A file named "sample" is that file, not the bundled sample load_images gives for it.
    data = load_images(f"./{path}" if os.fspath(path) == SAMPLE else path)
    return Source(str(path), "array", len(data.x_test), data.x_test, data.scale)


def _file_source(path: Path) -> Source:
    head = _head(path)
    if head.startswith(_NPY):
        return _npy_source(path)
    if head.startswith(_ZIP):
        return _npz_source(path)
    if head.startswith((_PICKLE, _GZIP)) or path.suffix.lower() in (".pkl", ".pickle"):
        return _data_source(path)  # a pickle, gzipped or not, (train, test) or three sets
    return _image_source(path)


def _holds_idx(directory: Path) -> bool:
    # Any of the four IDX files, plain or gzipped, directly in it: load_images names the
    # missing ones, if any.
    return any(
        (directory / stem).is_file() or (directory / f"{stem}.gz").is_file()
        for stem in IDX_FILES.values()
    )


def _image_files(directory: Path) -> list[Path]:
    extensions = Image.registered_extensions()
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .ipynb_checkpoints ...
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(Path(root) / name)
    return sorted(found)


def collect(inputs: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """Checks every input and lists the files to predict, in order.

    Args:
        inputs: Image files, directories (of images, or an IDX folder), .npy/.npz arrays and
            data files that :func:`lit_cnn.data.load_images` reads.

    Raises:
        DataError: One line naming the file and what is wrong with it.
    """
    sources: list[Source] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _image_files(path)
            if files:  # image files win: a folder of scans that also holds IDX files
                sources.extend(_image_source(f) for f in files)
            elif _holds_idx(path):
                sources.append(_data_source(path))  # an IDX folder: its test images
            else:
                raise _error(str(path), "a directory without image files (nor IDX files)")
        elif path.is_file():
            sources.append(_file_source(path))
        elif path.exists():
            raise _error(str(path), "not a file or a directory")
        else:
            raise _error(str(path), "no such file or directory")
    return sources


def read_digit(name: str) -> np.ndarray:
    """Decodes an image file and preprocesses it (see :mod:`lit_cnn.predict.images`).

    Returns:
        uint8 (32, 32): the digit, padded as the data path pads 28 x 28 images.

    Raises:
        DataError: The file's pixel data is truncated or corrupt.
    """
    try:
        with Image.open(name) as image:
            # JPEG decodes at a fraction of the size when asked first: a photo's megapixels
            # are not needed for a 20-pixel digit.
            image.draft("L", (WORKING_SIDE, WORKING_SIDE))
            image.load()
            pixels = digit_pixels(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _error(name, f"corrupt image ({_reason(err)})") from None
    padded = np.zeros((32, 32), np.uint8)  # 28 x 28 is zero-padded by 2, as pad_images does
    pad = (32 - pixels.shape[0]) // 2
    padded[pad : 32 - pad, pad : 32 - pad] = pixels
    return padded


Chunk = list[tuple[Source, int, int]]


def _chunks(sources: Iterable[Source], batch_size: int) -> Iterator[Chunk]:
    chunk: Chunk = []
    filled = 0
    for source in sources:
        start = 0
        while start < source.count:
            stop = min(source.count, start + batch_size - filled)
            chunk.append((source, start, stop))
            filled += stop - start
            start = stop
            if filled == batch_size:
                yield chunk
                chunk, filled = [], 0
    if chunk:
        yield chunk


def _decode(chunk: Chunk, scale: float | None) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    parts, rows = [], []
    images: list[np.ndarray] = []  # consecutive image files, scaled together

    def flush() -> None:
        if images:
            parts.append(to_float(torch.from_numpy(np.stack(images))[:, None], PIXEL_SCALE))
            images.clear()

    for source, start, stop in chunk:
        rows.extend((source.name, i) for i in range(start, stop))
        if source.kind == "image":
            images.append(read_digit(source.name))
        else:
            flush()
            part = source.images[start:stop]
            # A copy of a memory-mapped slice: its buffer is read-only, torch's are not.
            stored = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
            stored = stored if stored.ndim == 4 else stored[:, None]
            own = source.scale if source.scale is not None else scale
            if own is None:
                raise ValueError("arrays need the run's scale")
            # Through the data path's function: bit-identical input to the run's own.
            parts.append(to_float(stored, own))
    flush()
    return torch.cat(parts), rows


def _ahead(work: Callable[[Chunk], Any], chunks: Iterator[Chunk], workers: int) -> Iterator[Any]:
    if workers == 0:
        yield from map(work, chunks)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    pending: deque[Future[Any]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(work, chunk))
            # A few batches in flight per worker keeps the model fed without holding the
            # whole input in memory.
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decoded_batches(
    sources: Sequence[Source], batch_size: int, scale: float | None, workers: int = 1
) -> Iterator[tuple[torch.Tensor, list[tuple[str, int]]]]:
    """Network-ready batches of the sources, in order, decoded ahead of their use.

    Args:
        sources: What :func:`collect` returned.
        batch_size: Images per batch (batches span files).
        scale: The run's scaling constant, for arrays; images' 8-bit pixels are divided by
            255.
        workers: Threads decoding images while the caller runs the model; 0 decodes each
            batch when it is asked for.

    Yields:
        float32 (n, 1, 32, 32) images and their ``(source, index)`` rows.
    """
    yield from _ahead(lambda c: _decode(c, scale), _chunks(sources, batch_size), workers)
