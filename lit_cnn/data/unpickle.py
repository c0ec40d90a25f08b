"""The restricted unpickler: a pickle may name only what numeric numpy arrays, tuples and lists
need, and an array is built only from data the file holds.

A pickle can run any code when it is loaded, so plain ``pickle.load`` is never called on a
user's file. ``find_class`` resolves only the names in ``_ALLOWED``, before any of them can be
called; array constructors are stood in for by versions that refuse shapes declared without
their data, and the file is read through a wrapper that refuses reads past its end.
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class DataError(Exception):
    """A problem with the image data.

    The message is a single line of the form ``"<path>: <what is wrong>"``, fit to show a user
    as it is.
    """


def _error(source: str, what: str) -> DataError:
    # Messages quote exception texts and names taken from the file, which may hold newlines;
    # collapsing whitespace keeps the promise of a one-line message.
    return DataError(f"{source}: {' '.join(what.split())}")


def _numpy_attr(submodule: str, name: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core; pickles from either side name either
    # spelling. Both resolve to this numpy's own function, and the module a pickle names is
    # never imported on its say-so.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


class _NumericDtype:
    """Stands in for numpy.dtype in pickles: builds the dtype, refusing object dtypes.

    An instance without attributes rather than a function, so that a pickle's BUILD opcode
    cannot set attributes on it.
    """

    __slots__ = ()

    def __call__(self, *args: Any) -> np.dtype:
        dtype = np.dtype(*args)
        # An object array would unpickle its elements as arbitrary Python objects; stopping
        # at its dtype refuses it before any element is built.
        if dtype.hasobject:
            raise _Refused(
                "the pickle holds an array of Python objects (dtype object); only numeric "
                "arrays are allowed"
            )
        return dtype


_NUMERIC_DTYPE = _NumericDtype()


class _Refused(Exception):
    """Raised inside the unpickler; turned into a DataError that names the file."""


# Everything a pickle may name: what plain numeric numpy arrays and numpy scalars need under
# pickle protocols 0-5, written by numpy 1.x or 2.x. None of these can run code or touch files.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: _new_array,
    ("numpy", "dtype"): lambda: _NUMERIC_DTYPE,
    # Protocols 0-4 rebuild an array from an empty one plus its raw bytes (BUILD, which
    # numpy refuses unless the bytes are exactly the declared shape times the item size).
    ("numpy.core.multiarray", "_reconstruct"): lambda: _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _empty_array,
    # numpy scalars (e.g. a label stored as np.int64 inside a list).
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_attr("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_attr("multiarray", "scalar"),
    # Protocol 5 rebuilds an array straight from a buffer.
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    # Protocols 0-2 have no bytes opcode: Python 3 writes bytes as _codecs.encode(text,
    # "latin1"), and empty bytes or a bytearray as a call to the type. Python 2 pickles spell
    # the builtins module __builtin__.
    ("_codecs", "encode"): lambda: codecs.encode,
    ("builtins", "bytes"): lambda: _bytes,
    ("__builtin__", "bytes"): lambda: _bytes,
    ("builtins", "bytearray"): lambda: _buffer,
    ("__builtin__", "bytearray"): lambda: _buffer,
}


def _size(shape: Any) -> int:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise _Refused(f"an array of shape {shape!r}")
    return int(np.prod(dims, dtype=np.float64))


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # Stands in for numpy's _reconstruct: numpy's own pickles make an empty (0,) array here
    # and give it its data with BUILD. A non-empty shape would allocate memory the file
    # does not hold.
    if subtype is not _new_array or _size(shape) != 0:
        raise _Refused("an array declared without its data")
    return _numpy_attr("multiarray", "_reconstruct")(np.ndarray, shape, dtype)


def _new_array(
    shape: Any, dtype: Any = float, buffer: Any = None, offset: int = 0, *rest: Any
) -> np.ndarray:
    # Stands in for numpy.ndarray: an array only over bytes the file holds, exactly.
    size = _size(shape)
    if buffer is None:
        if size:
            raise _Refused(
                f"an array of shape {tuple(np.atleast_1d(shape))} declared without its data"
            )
        return np.ndarray(shape, dtype)
    itemsize = _NUMERIC_DTYPE(dtype).itemsize
    if rest or offset or memoryview(buffer).nbytes != size * itemsize:
        raise _Refused("an array whose data do not match its declared shape")
    return np.ndarray(shape, dtype, buffer)


def _no_size(args: tuple[Any, ...]) -> None:
    # bytes(n) and bytearray(n) make n zero bytes: memory that the file does not hold.
    if args and isinstance(args[0], int):
        raise _Refused("a byte string declared by its length without its data")


def _bytes(*args: Any) -> bytes:
    # Stands in for bytes: protocols 0-2 write empty bytes as bytes().
    _no_size(args)
    return bytes(*args)


def _buffer(*args: Any) -> bytes | bytearray:
    # Stands in for bytearray, which pickles use to hand an array its raw bytes (so does
    # scripts/prepare_data.py). bytearray(b) would copy b while the unpickler still holds b:
    # twice the images in memory. The array gets the bytes themselves instead, read-only.
    if len(args) == 1 and isinstance(args[0], bytes):
        return args[0]
    _no_size(args)
    return bytearray(*args)


_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names in ``_ALLOWED``.

    ``find_class`` runs when the pickle names a global, before the global can be called, so a
    refused name never executes.
    """

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(_ALLOWED, module, name)


def _resolve(allowed: dict[tuple[str, str], Callable[[], Any]], module: str, name: str) -> Any:
    # find_class for an allow-list; shared with the sizing pass of lit_cnn.data.gzipped.
    resolve = allowed.get((module, name))
    if resolve is not None:
        return resolve()
    if not (_DOTTED_NAME.fullmatch(module) and _DOTTED_NAME.fullmatch(name)):
        # Text that happens to start like a GLOBAL opcode: report it as not being a
        # pickle at all, rather than quote the garbage as a name.
        raise pickle.UnpicklingError("it names a global that is not a Python name")
    raise _Refused(
        f"the pickle names {module}.{name}, which is not allowed "
        "(only numpy arrays, tuples and lists are)"
    )


def read_pickle(path: str | os.PathLike[str]) -> Any:
    """What a pickle holds, read by the restricted unpickler (arrays, tuples, lists only).

    Raises:
        DataError: The file is unreadable, not a pickle, or names anything else.
    """
    return _read_pickle(Path(path), str(path))


def _read_pickle(path: Path, source: str) -> Any:
    try:
        with open(path, "rb") as file:
            first = file.read(1)
            if not first:
                raise _error(source, "empty file")
            file.seek(0)
            return _unpickle(_Bounded(file), first, source)
    except OSError as exc:
        raise _os_error(exc, source) from None


def _read_head(path: Path, source: str, n: int) -> bytes:
    # The file's first n bytes, by which lit_cnn.data.formats tells the formats apart.
    try:
        with open(path, "rb") as file:
            head = file.read(n)
    except OSError as exc:
        raise _os_error(exc, source) from None
    if not head:
        raise _error(source, "empty file")
    return head


def _os_error(exc: OSError, source: str) -> DataError:
    """The one-line DataError for an OSError raised while reading ``source``."""
    if isinstance(exc, FileNotFoundError):
        return _error(source, "no such file")
    if isinstance(exc, IsADirectoryError):
        return _error(source, "is a directory, not a data file")
    if isinstance(exc, PermissionError):
        return _error(source, "permission denied")
    return _error(source, f"cannot read: {exc.strerror or exc}")


class _Bounded:
    """A file for the unpickler that refuses to read past its end before reading.

    A bytes opcode declares its length first; one that declares more than the file holds is
    refused here, without allocating the declared size.
    """

    def __init__(self, file: Any, size: int | None = None) -> None:
        # size: the bytes the stream may yield, for a stream that cannot seek to its end
        # cheaply (a gzip stream); by default the file's own size.
        self.file = file
        if size is None:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(0)
        self.size = size

    def _check(self, n: int) -> None:
        left = self.size - self.file.tell()
        if n > left:  # reported as a truncated pickle (see _unpickle)
            raise EOFError(f"it declares {n:,} bytes of data where {left:,} remain in the file")

    def read(self, n: int = -1) -> bytes:
        if n is not None and n >= 0:
            self._check(n)
        return self.file.read(n)

    def readinto(self, buffer: Any) -> int:
        self._check(memoryview(buffer).nbytes)
        return self.file.readinto(buffer)

    def readline(self, limit: int = -1) -> bytes:
        # Never past the end either: a gzip stream's lines are not bounded by a file's size.
        left = self.size - self.file.tell()
        return self.file.readline(left if limit is None or limit < 0 else min(limit, left))


def _unpickle(reader: Any, first: bytes, source: str, what: str = "") -> Any:
    # reader: a bounded stream (_Bounded). what: prefixed to the reason in messages about the
    # bytes, e.g. "gzip-compressed: ".
    try:
        # latin1 lets numpy arrays pickled by Python 2 load; for Python 3 pickles it changes
        # nothing.
        return _SafeUnpickler(reader, encoding="latin1").load()
    except Exception as exc:
        raise _unpickling_error(exc, first, source, what) from None


def _unpickling_error(exc: Exception, first: bytes, source: str, prefix: str = "") -> DataError:
    """The one-line DataError for an exception raised while unpickling ``source``."""
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, _Refused):
        return _error(source, f"{prefix}refused: {exc}")
    # Whatever the unpickler or numpy raised about the bytes, the user gets one line.
    detail = f"{type(exc).__name__}: {exc}"
    truncated = isinstance(exc, EOFError) or "truncated" in str(exc)
    # Every pickle of protocol 2 or later starts with the PROTO opcode, 0x80; without it
    # the file is far more likely something else than an old, damaged pickle.
    if first != b"\x80":
        what = "not a pickle file, or a truncated one" if truncated else "not a pickle file"
    elif truncated:
        what = "truncated pickle: the data ends early"
    else:
        what = "corrupt pickle"
    return _error(source, f"{prefix}{what} ({detail})")
