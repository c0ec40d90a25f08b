"""lit_cnn.data.loading: accepted formats, scaling, refusals, hostile pickles, the sample."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_cnn.data import loading as data
from lit_cnn.data import unpickle
from lit_cnn.data.loading import (
    DEFAULT_PATH,
    SAMPLE,
    DataError,
    ImageData,
    load_dataset,
    load_images,
    to_float,
)


def images(n: int, shape: tuple[int, ...], dtype=np.uint8, high: float = 256, seed: int = 0):
    """Random images of the given per-image shape, integers in [0, high)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(high), size=(n, *shape)).astype(dtype)


def labels(n: int, dtype=np.int64) -> np.ndarray:
    return (np.arange(n) % 10).astype(dtype)


def dataset(shape=(32, 32), n_train=20, n_test=10, dtype=np.uint8, high=256):
    train = (images(n_train, shape, dtype, high, seed=1), labels(n_train))
    test = (images(n_test, shape, dtype, high, seed=2), labels(n_test))
    return train, test


def write(path: Path, obj, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def refused(path: Path, *phrases: str) -> str:
    """Load ``path``, expect a one-line DataError naming it and containing ``phrases``."""
    with pytest.raises(DataError) as info:
        load_images(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for phrase in phrases:
        assert phrase in message
    return message


# --- accepted formats --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (28, 28), (784,), (1, 32, 32), (1, 28, 28)], ids=str)
def test_accepted_shapes(tmp_path, shape):
    (x, y), test = dataset(shape)
    path = write(tmp_path / "d.pkl", ((x, y), test))
    d = load_images(path)
    assert isinstance(d, ImageData)
    side = 32 if 32 in shape else 28
    # Stored at the file's size; network input is always 32 x 32.
    assert d.x_train.shape == (20, 1, side, side) and d.x_test.shape == (10, 1, side, side)
    assert d.x_train.dtype == d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.scale == 255.0
    assert d.source == str(path)
    assert torch.equal(d.y_train, torch.from_numpy(y))
    original = torch.from_numpy(x.reshape(20, 1, side, side))
    assert torch.equal(d.x_train, original)
    net_input = to_float(d.x_train, d.scale)
    assert net_input.shape == (20, 1, 32, 32)
    if side == 32:
        assert torch.equal(net_input, original / 255.0)
    else:
        # Zero-padded by 2 on each side: the digit sits in [2:30, 2:30].
        assert torch.equal(net_input[:, :, 2:30, 2:30], original / 255.0)
        border = net_input.clone()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()


def test_padded_digits_are_stored_without_their_border(tmp_path):
    # 32 x 32 images with a zero 2-pixel border keep their 28 x 28 interior; the network
    # still gets the same 32 x 32 floats.
    (x, y), (xt, yt) = dataset((28, 28))
    padded = np.zeros((20, 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = x.reshape(20, 28, 28)
    d = load_images(write(tmp_path / "d.pkl", ((padded, y), (xt, yt))))
    assert d.x_train.shape == (20, 1, 28, 28)
    assert torch.equal(to_float(d.x_train, d.scale), torch.from_numpy(padded)[:, None] / 255.0)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("container", [tuple, list])
def test_protocols_and_containers(tmp_path, protocol, container):
    (x, y), (xt, yt) = dataset()
    obj = container([container([x, y]), container([xt, yt])])
    d = load_images(write(tmp_path / "d.pkl", obj, protocol))
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(x))
    assert torch.equal(d.x_test[:, 0], torch.from_numpy(xt))
    assert torch.equal(d.y_test, torch.from_numpy(yt))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32, np.float64])
def test_integral_pixels_of_any_dtype_are_stored_as_uint8(tmp_path, dtype):
    train, test = dataset(dtype=dtype)
    d = load_images(write(tmp_path / "d.pkl", (train, test)))
    assert d.x_train.dtype == torch.uint8 and d.scale == 255.0
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(train[0].astype(np.uint8)))


def test_float_data_in_unit_range_keeps_scale_one(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((20, 32, 32), dtype=np.float32)
    xt = rng.random((10, 32, 32)).astype(np.float64)
    d = load_images(write(tmp_path / "d.pkl", ((x, labels(20)), (xt, labels(10)))))
    assert d.scale == 1.0
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    x_train, _, x_test, _ = load_dataset(tmp_path / "d.pkl")
    assert torch.equal(x_train[:, 0], torch.from_numpy(x))
    assert torch.equal(x_test[:, 0], torch.from_numpy(xt.astype(np.float32)))


def test_fractional_float_data_up_to_255(tmp_path):
    x = images(20, (32, 32), np.float64, high=255) + 0.5
    d = load_images(write(tmp_path / "d.pkl", ((x, labels(20)), dataset()[1])))
    assert d.scale == 255.0 and d.x_train.dtype == torch.float32
    assert d.x_test.dtype == torch.float32  # one storage dtype for both sets


def test_data_beyond_255_scaled_by_training_max(tmp_path):
    x = images(20, (32, 32), np.uint16, high=4096)
    x[0, 0, 0] = 4095
    xt = images(10, (32, 32), np.uint16, high=4096)
    d = load_images(write(tmp_path / "d.pkl", ((x, labels(20)), (xt, labels(10)))))
    assert d.scale == 4095.0 and d.x_train.dtype == torch.float32
    x_train, _, _, _ = load_dataset(tmp_path / "d.pkl")
    assert x_train.max() == 1.0


def test_test_set_scaled_with_the_training_constant(tmp_path):
    # The notebook divided the test set by its own max (128 here), which would map 128 to 1.
    (x, y), _ = dataset()
    x[0, 0, 0] = 255
    xt = np.full((10, 32, 32), 128, dtype=np.uint8)
    path = write(tmp_path / "d.pkl", ((x, y), (xt, labels(10))))
    _, _, x_test, _ = load_dataset(path)
    expected = torch.tensor(128, dtype=torch.float32) / 255.0
    assert torch.equal(x_test, torch.full((10, 1, 32, 32), expected.item()))
    assert x_test.max() < 1.0


def test_to_float_matches_load_dataset_bit_for_bit(tmp_path):
    path = write(tmp_path / "d.pkl", dataset((28, 28)))
    d = load_images(path)
    x_train, y_train, x_test, y_test = load_dataset(path)
    assert x_train.dtype == torch.float32
    assert torch.equal(to_float(d.x_train, d.scale), x_train)
    assert torch.equal(to_float(d.x_test, d.scale), x_test)
    # Per batch, as the training loop calls it.
    assert torch.equal(to_float(d.x_train[5:9], d.scale), x_train[5:9])
    assert torch.equal(y_train, d.y_train) and torch.equal(y_test, d.y_test)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0


def test_float_labels_with_integral_values(tmp_path):
    (x, _), test = dataset()
    d = load_images(write(tmp_path / "d.pkl", ((x, labels(20, np.float32)), test)))
    assert d.y_train.dtype == torch.int64
    assert torch.equal(d.y_train, torch.from_numpy(labels(20)))


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str (BINSTRING), as numpy arrays pickled by Python 2 hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str_bytes(self, obj):
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str_bytes


def test_python2_numpy1_pickle(tmp_path):
    # Python 2 with numpy 1.x: raw data as str, read back via encoding="latin1", and the
    # numpy.core spelling of _reconstruct.
    (x, y), (xt, yt) = dataset()
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(((x, y), (xt, yt)))
    raw = buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)
    d = load_images(path)
    assert torch.equal(d.x_train[:, 0], torch.from_numpy(x))
    assert torch.equal(d.y_test, torch.from_numpy(yt))


def test_allow_list_resolves_both_numpy_spellings():
    unpickler = unpickle._SafeUnpickler(io.BytesIO(b""))
    for module, name in unpickle._ALLOWED:
        assert callable(unpickler.find_class(module, name))
    for module, name in [("multiarray", "_reconstruct"), ("multiarray", "scalar")]:
        old = unpickler.find_class(f"numpy.core.{module}", name)
        assert old is unpickler.find_class(f"numpy._core.{module}", name)
    frombuffer = unpickler.find_class("numpy.core.numeric", "_frombuffer")
    assert frombuffer is unpickler.find_class("numpy._core.numeric", "_frombuffer")


def test_numpy_scalars_in_lists(tmp_path):
    (x, _), test = dataset()
    y = [np.int64(i % 10) for i in range(20)]
    path = write(tmp_path / "d.pkl", ((x, np.array(y)), test))
    assert torch.equal(load_images(path).y_train, torch.from_numpy(labels(20)))
    # A numpy scalar on its own unpickles (allowed), but is not an array.
    refused(write(tmp_path / "s.pkl", ((x, y), test)), "must be a numpy array; found a list")


# --- refusals ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.pkl", "no such file")


def test_directory_without_idx_files(tmp_path):
    # A directory is read as a folder of IDX files (tests/test_data_formats.py).
    (tmp_path / "d.pkl").mkdir()
    refused(tmp_path / "d.pkl", "a directory without IDX files", "train-images-idx3-ubyte")


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path / "d.pkl", dataset())

    # Tests may run as root, which chmod cannot lock out; fake the failure instead.
    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(unpickle, "open", denied, raising=False)  # where the file is opened
    refused(path, "permission denied")


def test_empty_file(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(b"")
    refused(path, "empty file")


@pytest.mark.parametrize("protocol", [2, 5])
def test_truncated_pickle(tmp_path, protocol):
    raw = pickle.dumps(dataset(), protocol=protocol)
    path = tmp_path / "d.pkl"
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, "truncated pickle")


@pytest.mark.parametrize(
    "content",
    [
        b"x,y\n1,2\n3,4\n",
        b"hello world\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x20\x00\x00\x00\x20\x08\x00",
        np.random.default_rng(3).integers(1, 128, 4096).astype(np.uint8).tobytes(),
    ],
    ids=["csv", "text", "png", "random"],
)
def test_not_a_pickle(tmp_path, content):
    path = tmp_path / "d.pkl"
    path.write_bytes(content)
    refused(path, "not a pickle file")


def test_text_that_starts_like_a_global(tmp_path):
    path = tmp_path / "d.pkl"
    path.write_bytes(b"c\x00 \nfoo bar\n.")
    refused(path, "not a pickle file", "not a Python name")


def test_truncated_protocol_0_pickle(tmp_path):
    raw = pickle.dumps(dataset(), protocol=0)
    path = tmp_path / "d.pkl"
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, "not a pickle file, or a truncated one")


def test_corrupt_pickle(tmp_path):
    raw = bytearray(pickle.dumps(dataset(), protocol=4))
    raw[1] = 99  # an unknown protocol number
    path = tmp_path / "d.pkl"
    path.write_bytes(bytes(raw))
    refused(path, "corrupt pickle")


def replace_part(index: int, value):
    """The default dataset with one of x_train, y_train, x_test, y_test replaced."""
    (x, y), (xt, yt) = dataset()
    parts = [x, y, xt, yt]
    parts[index] = value
    return (parts[0], parts[1]), (parts[2], parts[3])


BAD_CONTENT = {
    "dict": ({"train": 1, "test": 2}, "expected (train, test)"),
    "1-tuple": ((dataset()[0],), "found a tuple of length 1"),
    "4-tuple": ((*dataset(), *dataset()), "found a tuple of length 4"),
    "array": (np.zeros((2, 2)), "found a numpy array"),
    "train not a pair": ((np.zeros((4, 32, 32)), dataset()[1]), "train set must be an (X, y)"),
    "test 3-tuple": ((dataset()[0], (*dataset()[1], 1)), "test set must be an (X, y)"),
    "x list": (replace_part(0, [[0] * 784] * 20), "train images must be a numpy array"),
    "y list": (replace_part(3, list(range(10))), "test labels must be a numpy array"),
    "x strings": (replace_part(0, np.full((20, 28, 28), "a")), "not numeric"),
    "x bool": (replace_part(0, np.zeros((20, 32, 32), bool)), "dtype bool"),
    "x complex": (replace_part(2, np.zeros((10, 32, 32), np.complex64)), "test images"),
    "y strings": (replace_part(1, np.array(["1"] * 20)), "train labels have dtype"),
    "lengths differ": (replace_part(1, labels(19)), "20 images but 19 labels"),
    "y 2-D": (replace_part(1, labels(20).reshape(20, 1)), "labels must be 1-D"),
    "negative label": (replace_part(1, labels(20) - 1), "integers 0-9, found -1"),
    "label 12": (replace_part(3, np.where(labels(10) == 4, 12, labels(10))), "found 12"),
    "label 1.5": (replace_part(1, labels(20) + 0.5), "integers 0-9, found 0.5"),
    "label nan": (replace_part(1, np.full(20, np.nan)), "integers 0-9, found nan"),
    "nan pixel": (replace_part(0, np.full((20, 32, 32), np.nan)), "NaN or infinite"),
    "inf pixel": (replace_part(2, np.full((10, 32, 32), np.inf)), "NaN or infinite"),
    "30x30": (replace_part(0, np.zeros((20, 30, 30), np.uint8)), "unsupported shape (20, 30, 30)"),
    "N x 100": (replace_part(0, np.zeros((20, 100), np.uint8)), "unsupported shape (20, 100)"),
    "3 channels": (replace_part(0, np.zeros((20, 3, 32, 32))), "unsupported shape"),
    "28 x 32": (replace_part(0, np.zeros((20, 28, 32))), "unsupported shape"),
    "1-D images": (replace_part(0, np.zeros(20)), "unsupported shape"),
    "empty train": (
        ((np.zeros((0, 32, 32), np.uint8), labels(0)), dataset()[1]),
        "train set is empty",
    ),
    "empty test": (
        (dataset()[0], (np.zeros((0, 784)), np.zeros(0))),
        "test set is empty",
    ),
}


@pytest.mark.parametrize("content,phrase", BAD_CONTENT.values(), ids=BAD_CONTENT.keys())
def test_bad_content(tmp_path, content, phrase):
    refused(write(tmp_path / "bad.pkl", content), phrase)


@pytest.mark.parametrize("name", [b"builtins\nbytes", b"builtins\nbytearray"])
def test_bytes_of_a_declared_length_refused(tmp_path, name):
    # bytes(n) would make n zero bytes that the file does not hold: 2 GB from 30 bytes.
    path = tmp_path / "d.pkl"
    path.write_bytes(b"\x80\x02c" + name + b"\nJ\xff\xff\xff\x7f\x85R.")
    refused(path, "refused: a byte string declared by its length without its data")


def test_object_array_refused_before_its_elements_are_built(tmp_path):
    marker = tmp_path / "MARKER"
    hostile = np.array([1, Reduce(builtins.exec, f"open({str(marker)!r}, 'w').close()")])
    refused(write(tmp_path / "bad.pkl", replace_part(1, hostile)), "dtype object")
    assert not marker.exists()
    harmless = np.array(["a", 1, None], dtype=object)
    refused(write(tmp_path / "bad2.pkl", replace_part(3, harmless)), "dtype object")


# --- hostile pickles ---------------------------------------------------------------------------


class Reduce:
    """Pickles as a call of ``func(*args)``, the way a hostile pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that each create ``marker`` when loaded by plain pickle."""
    touch = f"touch {marker}"
    create = f"open({str(marker)!r}, 'w').close()"
    # Hand-written protocol 0 and 2 opcodes: GLOBAL 'os system', a string, TUPLE, REDUCE.
    os_system_0 = b"cos\nsystem\n(S'" + touch.encode() + b"'\ntR."
    os_system_2 = b"\x80\x02cos\nsystem\nq\x00X" + len(touch).to_bytes(4, "little")
    os_system_2 += touch.encode() + b"\x85R."
    return {
        "os.system p0": os_system_0,
        "os.system p2": os_system_2,
        "posix.system": pickle.dumps(Reduce(os.system, touch)),
        "builtins.eval": pickle.dumps(Reduce(builtins.eval, create)),
        "builtins.exec": pickle.dumps(Reduce(builtins.exec, create), protocol=2),
        "subprocess.Popen": pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)])),
        # Hidden where the labels belong, inside an otherwise valid file.
        "nested": pickle.dumps(replace_part(1, Reduce(os.system, touch))),
        "numpy.load": pickle.dumps(Reduce(np.load, str(marker))),
        "shutil.rmtree": pickle.dumps(Reduce(shutil.rmtree, str(marker))),
        "numpy.testing": b"cnumpy.testing._private.utils\nrunstring\n(S'"
        + create.encode()
        + b"'\n(dtR.",
    }


NAMES = {
    "os.system p0": "os.system",
    "os.system p2": "os.system",
    "posix.system": f"{os.system.__module__}.system",
    "builtins.eval": "builtins.eval",
    "builtins.exec": "__builtin__.exec",  # protocol 2 uses the Python 2 name
    "subprocess.Popen": "subprocess.Popen",
    "nested": f"{os.system.__module__}.system",
    "numpy.load": "numpy.load",
    "shutil.rmtree": "shutil.rmtree",
    "numpy.testing": "numpy.testing._private.utils.runstring",
}

LIVE = ["os.system p0", "os.system p2", "posix.system", "builtins.eval", "subprocess.Popen"]


@pytest.mark.parametrize("name", LIVE)
def test_payloads_are_live(tmp_path, name):
    # The refusal tests mean something only if plain pickle really runs these payloads.
    marker = tmp_path / "CONTROL"
    result = pickle.loads(payloads(marker)[name])
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("name", NAMES)
def test_hostile_pickle_refused_before_running(tmp_path, name):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(payloads(marker)[name])
    message = refused(path, "refused", f"names {NAMES[name]}, which is not allowed")
    assert "only numpy arrays, tuples and lists" in message
    assert not marker.exists()


def test_default_path_with_hostile_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DEFAULT_PATH.parent.mkdir()
    DEFAULT_PATH.write_bytes(payloads(tmp_path / "MARKER")["posix.system"])
    with pytest.raises(DataError, match=r"^Datasets/mnist\.pkl: refused"):
        load_dataset()
    assert not (tmp_path / "MARKER").exists()


# --- the bundled sample ------------------------------------------------------------------------


def test_sample():
    d = load_images(SAMPLE)
    assert d.source == "sample"
    # MNIST's 28 x 28 digits, kept at that size; to_float pads them.
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == d.x_test.dtype == torch.uint8
    assert d.scale == 255.0
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 400))
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 100))
    assert d.x_train.max() == 255


def test_sample_file_is_plain_npz():
    path = Path(data.__file__).parent / "sample" / "mnist_sample.npz"
    with np.load(path, allow_pickle=False) as npz:
        assert npz["x_train"].shape == (4000, 28, 28) and npz["x_train"].dtype == np.uint8
        assert npz["x_test"].shape == (1000, 28, 28)
        assert npz["y_train"].shape == (4000,) and npz["y_test"].shape == (1000,)


def test_default_is_sample_without_datasets_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_images().source == "sample"
    x_train, y_train, x_test, _ = load_dataset()
    assert x_train.shape == (4000, 1, 32, 32) and x_test.shape == (1000, 1, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64


def test_default_is_datasets_file_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DEFAULT_PATH.parent.mkdir()
    write(DEFAULT_PATH, dataset())
    assert load_images().source == str(DEFAULT_PATH)
    x_train, _, x_test, _ = load_dataset()
    assert x_train.shape == (20, 1, 32, 32) and x_test.shape == (10, 1, 32, 32)


def test_sample_path_accepts_pathlike():
    assert load_images(Path(SAMPLE)).source == "sample"


def test_build_cannot_modify_allowed_objects(tmp_path):
    # BUILD with a slot state calls setattr on the object before it: the dtype stand-in is
    # the one allowed object written in Python, and must not take attributes.
    raw = b"\x80\x02cnumpy\ndtype\nN}X\x07\x00\x00\x00__doc__K\x01s\x86b."
    path = tmp_path / "d.pkl"
    path.write_bytes(raw)
    refused(path, "corrupt pickle")
    assert unpickle._NUMERIC_DTYPE.__doc__ != 1
