"""Gzip-compressed pickles, such as deeplearning.net's ``mnist.pkl.gz``, read without letting a
gzip bomb fill memory.

A plain pickle cannot make the restricted unpickler read more than the file holds, but a few
kilobytes of gzip can inflate to gigabytes. A compressed pickle is therefore read twice, both
times as a stream:

1. A sizing pass runs the pickle through Python's own pure-Python unpickler, with the same
   allow-list but stand-ins that build nothing. Each byte string of 64 KiB or more is skipped
   (inflated a chunk at a time and dropped), stood in for by its length, and must be the data
   of an array whose declared shape and dtype need that many bytes. Everything else, the
   pickle's structure, small strings and whatever follows the pickle, may take 8 MiB at most.
2. The real load, by the restricted unpickler of :mod:`lit_cnn.data.unpickle`, through a reader
   that refuses to yield more bytes than the sizing pass counted.

So the decompressed bytes are bounded by the sizes the pickle's arrays declare, plus 8 MiB:
a small file that inflates to far more is refused in one line, holding a chunk at a time.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_cnn.data.unpickle import (
    _ALLOWED,
    _NUMERIC_DTYPE,
    _Bounded,
    _error,
    _os_error,
    _Refused,
    _resolve,
    _size,
    _unpickle,
    _unpickling_error,
)

GZIP_MAGIC = b"\x1f\x8b"

_PREFIX = "gzip-compressed data: "
_BIG = 1 << 16  # strings this long are skipped in the sizing pass; CPython frames are smaller
_MAX_READ = 1 << 20  # the most one read of pickle structure (a frame, a line) may take
_CHUNK = 1 << 20
_STRUCTURE = 8 << 20  # bytes besides array data: MNIST's pickles need a few hundred
# Array data written as text (protocol 0, or Python 3's protocols 0-2 via _codecs.encode) takes
# 1 to 6 bytes a byte: UTF-8 takes 2 for bytes >= 0x80, escapes such as \u000a take 6.
_TEXT_RATIO = 6


class _Broken(Exception):
    """The gzip stream itself is damaged: raised by :class:`_Inflating`."""


class _Inflating:
    """The decompressed stream for the sizing pass: counts bytes and caps every read."""

    def __init__(self, gz: gzip.GzipFile) -> None:
        self.gz = gz
        self.total = 0  # bytes inflated so far
        self.structure = 0  # of which not array data

    def _take(self, read: Any, n: int) -> bytes:
        try:
            data = read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise _Broken(f"{type(exc).__name__}: {exc}") from None
        self.total += len(data)
        return data

    def _count(self, n: int) -> None:
        self.structure += n
        if self.structure > _STRUCTURE:
            raise _Refused(
                f"it decompresses to more than its arrays declare: over {_STRUCTURE >> 20} MiB "
                "besides array data (a gzip bomb?)"
            )

    def read(self, n: int = -1) -> bytes:
        # Array data never comes here (see _SizingUnpickler): a longer read is a frame or an
        # integer far beyond what any pickler writes.
        if n is None or n < 0 or n > _MAX_READ:
            raise _Refused(f"a {n:,}-byte pickle item that is not array data")
        data = self._take(self.gz.read, n)
        self._count(len(data))
        return data

    def peek(self) -> bytes:
        """The first byte, left in the stream."""
        first = self._take(self.gz.peek, 1)[:1]
        self.total = 0
        if not first:
            raise pickle.UnpicklingError("it decompresses to nothing")
        return first

    def readline(self) -> bytes:
        line = self._take(self.gz.readline, _MAX_READ)
        self._count(len(line))
        if len(line) == _MAX_READ and not line.endswith(b"\n"):
            raise _Refused(f"a line of pickle text over {_MAX_READ:,} bytes")
        return line

    def skip(self, n: int) -> None:
        """Inflates and drops n bytes of array data, a chunk at a time."""
        while n:
            chunk = self._take(self.gz.read, min(n, _CHUNK))
            if not chunk:
                raise EOFError(f"the data ends {n:,} bytes short of a declared byte string")
            n -= len(chunk)

    def line(self) -> bytes | _Payload:
        """The next line: as bytes when short, else skipped and stood in for by a _Payload."""
        line = self._take(self.gz.readline, _BIG)
        if len(line) < _BIG or line.endswith(b"\n"):
            self._count(len(line))
            return line
        n = len(line)
        while not line.endswith(b"\n"):
            line = self._take(self.gz.readline, _CHUNK)
            if not line:
                break
            n += len(line)
        return _Payload(n, text=True)

    def rest(self) -> None:
        """Inflates what follows the pickle, counting it as structure, to the end."""
        while chunk := self._take(self.gz.read, _CHUNK):
            self._count(len(chunk))


class _Payload:
    """Stands in for a skipped byte string in the sizing pass."""

    __slots__ = ("claimed", "n", "text")

    def __init__(self, n: int, text: bool) -> None:
        self.n, self.text, self.claimed = n, text, False


def _claim(data: Any, nbytes: int) -> None:
    # An array declared to need nbytes takes data; a skipped string must fit it.
    if not isinstance(data, _Payload):
        return  # a short string, in memory already; the real load checks it
    if data.text:
        fits = nbytes <= data.n <= _TEXT_RATIO * nbytes + 8
    else:
        fits = data.n == nbytes
    if not fits:
        raise _Refused(
            f"an array of {nbytes:,} bytes given a byte string of {data.n:,} bytes as its data"
        )
    data.claimed = True


def _itemsize(dtype: Any) -> int:
    return _NUMERIC_DTYPE(dtype).itemsize


class _Sized:
    """Stands in for an array in the sizing pass; numpy's BUILD state gives it its data."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        # ndarray's state: (version, shape, dtype, is_fortran, data), or without the version.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array's state is not numpy's")
        shape, dtype, _, data = state[-4:]
        _claim(data, _size(shape) * _itemsize(dtype))


def _sized_ndarray(shape: Any, dtype: Any = float, buffer: Any = None, *rest: Any) -> _Sized:
    nbytes = _size(shape) * _itemsize(dtype)
    if buffer is None and nbytes:
        raise _Refused("an array declared without its data")
    _claim(buffer, nbytes)
    return _Sized()


def _sized_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Sized:
    if subtype is not _sized_ndarray or _size(shape) != 0:
        raise _Refused("an array declared without its data")
    return _Sized()


def _sized_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> _Sized:
    # Protocol 5 gives an array its data before its shape: hence a pass to size it.
    _claim(buffer, _size(shape) * _itemsize(dtype))
    return _Sized()


def _sized_scalar(dtype: Any, data: Any = None) -> None:
    if isinstance(data, _Payload):
        raise _Refused(f"a numpy scalar with a byte string of {data.n:,} bytes")


def _passing(real: Any) -> Any:
    # bytes(s), bytearray(s) and _codecs.encode(s, "latin1") hand a skipped string on as it is.
    def stand_in(*args: Any) -> Any:
        if args and isinstance(args[0], _Payload):
            return args[0]
        return real(*args)

    return stand_in


_SIZING_STAND_INS: dict[str, Any] = {
    "ndarray": _sized_ndarray,
    "dtype": _NUMERIC_DTYPE,
    "_reconstruct": _sized_reconstruct,
    "scalar": _sized_scalar,
    "_frombuffer": _sized_frombuffer,
}


def _sizing(name: str, real: Callable[[], Any]) -> Callable[[], Any]:
    stand_in = _SIZING_STAND_INS.get(name) or _passing(real())
    return lambda: stand_in


# The same names as the real allow-list, each resolved to its sizing stand-in.
_SIZING = {key: _sizing(key[1], real) for key, real in _ALLOWED.items()}


class _SizingUnpickler(pickle._Unpickler):
    """Python's pure-Python unpickler, whose long strings are skipped rather than read.

    Pure Python because the C unpickler reads a string's length and its bytes in one step.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, stream: _Inflating) -> None:
        super().__init__(stream, encoding="latin1")
        self.stream = stream
        self.payloads: list[_Payload] = []

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(_SIZING, module, name)

    def _in_frame(self) -> bool:
        # Inside a protocol 4 frame, whose bytes (at most _MAX_READ) are in memory already.
        return self._unframer.current_frame is not None

    def _counted(self, length: str, kind: str) -> None:
        # length: the struct format of the string's length, which precedes it.
        (n,) = struct.unpack(length, self.read(struct.calcsize(length)))
        if n < 0:
            raise pickle.UnpicklingError("a string of negative length")
        if n >= _BIG and not self._in_frame():
            self.stream.skip(n)
            payload = _Payload(n, text=kind == "utf-8")
            self.payloads.append(payload)
            self.append(payload)
            return
        data = self.read(n)
        if kind == "str":
            self.append(self._decode_string(data))
        elif kind == "utf-8":
            self.append(str(data, "utf-8", "surrogatepass"))
        else:
            self.append(bytearray(data) if kind == "bytearray" else data)

    def _line(self, load: Any) -> None:
        # STRING and UNICODE (protocol 0) carry their string as a line of text.
        if self._in_frame():
            load(self)
            return
        got = self.stream.line()
        if isinstance(got, _Payload):
            self.payloads.append(got)
            self.append(got)
            return
        self.readline = lambda: got
        try:
            load(self)
        finally:
            self.readline = self._unframer.readline

    dispatch[pickle.BINSTRING[0]] = lambda self: self._counted("<i", "str")
    dispatch[pickle.BINBYTES[0]] = lambda self: self._counted("<I", "bytes")
    dispatch[pickle.BINBYTES8[0]] = lambda self: self._counted("<Q", "bytes")
    dispatch[pickle.BYTEARRAY8[0]] = lambda self: self._counted("<Q", "bytearray")
    dispatch[pickle.BINUNICODE[0]] = lambda self: self._counted("<I", "utf-8")
    dispatch[pickle.BINUNICODE8[0]] = lambda self: self._counted("<Q", "utf-8")
    dispatch[pickle.STRING[0]] = lambda self: self._line(pickle._Unpickler.load_string)
    dispatch[pickle.UNICODE[0]] = lambda self: self._line(pickle._Unpickler.load_unicode)


def read_gzip_pickle(path: Path, source: str) -> Any:
    """What a gzip-compressed pickle holds, read by the restricted unpickler.

    Args:
        path: The gzip file.
        source: The name to give in error messages.

    Returns:
        The unpickled object: arrays, tuples and lists only.

    Raises:
        DataError: The file is unreadable, not a gzip-compressed safe pickle, or inflates to
            more than its arrays declare (plus 8 MiB).
    """
    first = b""
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            stream = _Inflating(gz)
            first = stream.peek()
            sizer = _SizingUnpickler(stream)
            sizer.load()
            size = stream.total
            for payload in sizer.payloads:
                if not payload.claimed:
                    raise _Refused(
                        f"a byte string of {payload.n:,} bytes that is no array's data "
                        "(a gzip bomb?)"
                    )
            stream.rest()
            raw.seek(0)
            # The real load, through a fresh gzip stream over the same file.
            with gzip.GzipFile(fileobj=raw) as again:
                return _unpickle(_Bounded(again, size), first, source, _PREFIX)
    except _Broken as exc:
        raise _error(source, f"corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:  # opening or rewinding the file; gzip's own errors are _Broken
        raise _os_error(exc, source) from None
    except Exception as exc:
        raise _unpickling_error(exc, first, source, _PREFIX) from None
