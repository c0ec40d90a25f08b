"""The MNIST files people have, read as they are: gzipped pickles, the classic three-set
``mnist.pkl.gz`` (Python 2), Keras' ``mnist.npz``, IDX folders; and their refusals.

"Loads to the same tensors" means: :func:`load_dataset` returns, for each of the four tensors,
one that ``torch.equal`` (same dtype, shape and every value) the tensor it returns for a
notebook-format pickle of ``((X_train, y_train), (X_test, y_test))`` holding the same images
and labels, and :func:`load_images` records the same scale and storage dtype.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import pickletools
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import script

from lit_cnn.cli.kfold import cli_main
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.data import gzipped, unpickle
from lit_cnn.data.loading import DataError, data_path, load_dataset, load_images

QUIET = ["--trainer.enable_progress_bar", "false"]


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random 28 x 28 uint8 "digits" and labels 0-9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def notebook(tmp_path: Path, train, test, name: str = "notebook.pkl") -> Path:
    """The reference: the same arrays in the notebook's format, a plain pickle."""
    path = tmp_path / name
    path.write_bytes(pickle.dumps((train, test)))
    return path


def assert_same(path: Path, reference: Path) -> None:
    """``path`` loads to the same tensors as ``reference`` (see the module docstring)."""
    for got, want in zip(load_dataset(path), load_dataset(reference), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    got, want = load_images(path), load_images(reference)
    assert got.scale == want.scale and got.x_train.dtype == want.x_train.dtype


def refused(path: Path, *phrases: str) -> str:
    with pytest.raises(DataError) as info:
        load_images(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for phrase in phrases:
        assert phrase in message, message
    return message


# --- the classic mnist.pkl.gz: three sets, Python 2, gzip -------------------------------------


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did: byte and text strings both as Python 2 str
    (SHORT_BINSTRING, BINSTRING), which Python 3 reads back with encoding="latin1"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    # Python 2's numpy 1.x named its reconstructor in numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def classic_sets(n_train=30, n_valid=10, n_test=10):
    """Three sets as in mnist.pkl.gz: float32 (N, 784) images in [0, 1], int64 labels."""
    sets = []
    for seed, n in enumerate((n_train, n_valid, n_test)):
        x, y = digits(n, seed)
        sets.append(((x.reshape(n, 784) / np.float32(255)).astype(np.float32), y))
    return sets


def test_the_classic_three_set_python2_gzip_pickle(tmp_path):
    train, valid, test = classic_sets()
    raw = python2_pickle((train, valid, test))
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    # Written the way Python 2 wrote it: data as str, no bytes or unicode opcodes at all.
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and "BINSTRING" in ops
    assert not ops & {"BINBYTES", "SHORT_BINBYTES", "BINUNICODE", "SHORT_BINUNICODE"}
    # Train images (94 KB) exceed the sizing pass's skip threshold; valid ones do not.
    assert train[0].nbytes >= gzipped._BIG > valid[0].nbytes
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw))

    # The same images in the notebook's format: train and valid concatenated.
    merged = (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))
    reference = notebook(tmp_path, merged, test)
    assert_same(path, reference)
    d = load_images(path)
    assert d.scale == 1.0 and d.x_train.dtype == torch.float32  # [0, 1] floats are kept
    assert d.x_train.shape == (40, 1, 28, 28)
    assert torch.equal(d.x_train[30:].reshape(10, 784), torch.from_numpy(valid[0]))
    assert d.source == f"{path} (train and valid merged: 30 + 10 training images)"


def test_the_merge_is_recorded_in_results_json(tmp_path, capsys):
    # dm.source is what results.json's "data" holds; it still names a loadable file.
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(python2_pickle(tuple(classic_sets(40, 20, 16)))))
    dm = KFoldDataModule(path=str(path), k=2)
    assert dm.source == f"{path} (train and valid merged: 40 + 20 training images)"
    assert data_path(dm.source) == str(path)
    assert torch.equal(load_images(dm.source).x_train, dm.data.x_train)
    args = ["--model", "ShallowCNN", "--data.path", str(path), "--data.k", "2"]
    args += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path), *QUIET]
    assert cli_main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"] == dm.source
    assert (
        sum(len(f) for f in json.loads((run_dir / "folds.json").read_text())["val_indices"]) == 60
    )


def test_valid_images_of_another_size_are_refused(tmp_path):
    train, valid, test = classic_sets()
    padded = np.zeros((10, 32, 32), np.float32)
    padded[:, 2:30, 2:30] = 0.5
    padded[:, 0, 0] = 0.25  # a non-zero border: kept at 32 x 32
    path = tmp_path / "three.pkl"
    path.write_bytes(pickle.dumps((train, (padded, valid[1]), test)))
    refused(path, "train and valid images differ in size: 28 x 28 and 32 x 32")


def test_bad_valid_labels_are_named(tmp_path):
    train, (x, y), test = classic_sets()
    path = tmp_path / "three.pkl"
    path.write_bytes(pickle.dumps((train, (x, y + 10), test)))
    refused(path, "valid labels must be integers 0-9")


# --- gzip-compressed pickles ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_gzipped_two_set_pickle(tmp_path, protocol):
    # 100 digits: 78 KB, so the data go through the sizing pass's skip.
    train, test = digits(100, 1), digits(20, 2)
    path = tmp_path / "data.bin"  # no telling name: the content decides
    path.write_bytes(gzip.compress(pickle.dumps((train, test), protocol=protocol)))
    assert_same(path, notebook(tmp_path, train, test))
    assert load_images(path).source == str(path)


def test_a_hostile_gzipped_pickle_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    command = f"touch {marker}".encode()
    # GLOBAL os.system, BINUNICODE command, TUPLE1, REDUCE, STOP.
    raw = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    control = tmp_path / "control.pkl"
    control.write_bytes(raw.replace(b"MARKER", b"CONTRL"))
    pickle.loads(control.read_bytes())  # the payload is live
    assert (tmp_path / "CONTRL").exists()
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(raw))
    refused(path, "gzip-compressed data: refused", "names os.system, which is not allowed")
    assert not marker.exists()


def refused_in_little_memory(path: Path, *phrases: str) -> str:
    """As refused(), and the refusal takes less than 16 MiB of memory at its peak."""
    tracemalloc.start()
    try:
        message = refused(path, *phrases)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes"
    return message


def test_a_gzip_bomb_of_trailing_zeros(tmp_path):
    # A valid small pickle, then 200 MB of zeros: 200 KB on disk.
    path = tmp_path / "bomb.pkl.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(pickle.dumps((digits(4, 1), digits(4, 2))))
        zeros = bytes(1 << 20)
        for _ in range(200):
            file.write(zeros)
    assert path.stat().st_size < 1 << 20
    message = refused_in_little_memory(path)
    assert message == (
        f"{path}: gzip-compressed data: refused: it decompresses to more than its arrays "
        "declare: over 8 MiB besides array data (a gzip bomb?)"
    )


def test_a_gzip_bomb_declaring_a_huge_byte_string(tmp_path):
    # A pickle of ((train, test), 200 MB string): the string is no array's data.
    head = pickle.dumps((digits(4, 1), digits(4, 2)), protocol=2)
    assert head.endswith(b".")  # STOP: before it, (train, test) is on the stack
    path = tmp_path / "bomb.pkl.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(head[:-1] + b"\x8e" + (200 << 20).to_bytes(8, "little"))  # BINBYTES8
        zeros = bytes(1 << 20)
        for _ in range(200):
            file.write(zeros)
        file.write(b"\x86.")  # TUPLE2, STOP
    assert path.stat().st_size < 1 << 20
    # Refused for this reason only once the sizing pass has read the whole pickle.
    refused_in_little_memory(path, "a byte string of 209,715,200 bytes that is no array's data")


def test_a_byte_string_that_does_not_fit_its_array(tmp_path):
    # A 100 MB string is given to a 100-image array as its data (protocol 5 order: the data
    # come first, the shape after).
    x = np.zeros((100, 28, 28), np.uint8)  # 78 KB: written outside protocol 5's frames
    raw = pickle.dumps((x, np.arange(100)), protocol=5)
    assert raw.count(b"\x96" + x.nbytes.to_bytes(8, "little")) == 1  # BYTEARRAY8, its length
    start = raw.index(b"\x96" + x.nbytes.to_bytes(8, "little"))
    path = tmp_path / "bomb.pkl.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(raw[:start] + b"\x96" + (100 << 20).to_bytes(8, "little"))
        zeros = bytes(1 << 20)
        for _ in range(100):
            file.write(zeros)
        file.write(raw[start + 9 + x.nbytes :])
    refused(path, "an array of 78,400 bytes given a byte string of 104,857,600 bytes")


def test_a_truncated_gzip_file(tmp_path):
    raw = gzip.compress(pickle.dumps((digits(100, 1), digits(20, 2))))
    path = tmp_path / "cut.pkl.gz"
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, "corrupt or truncated gzip data")


def test_gzip_of_something_else(tmp_path):
    path = tmp_path / "text.gz"
    path.write_bytes(gzip.compress(b"hello, world\n" * 10))
    refused(path, "gzip-compressed data: not a pickle file")


def test_every_allowed_name_has_a_sizing_stand_in():
    # The sizing pass must admit exactly what the real load admits, and build no array.
    assert gzipped._SIZING.keys() == unpickle._ALLOWED.keys()
    for key, resolve in gzipped._SIZING.items():
        if key != ("numpy", "dtype"):  # the one shared: it builds a dtype, never an array
            assert resolve() is not unpickle._ALLOWED[key](), key


# --- Keras' mnist.npz -------------------------------------------------------------------------


def test_a_keras_npz(tmp_path):
    (x, y), (xt, yt) = digits(30, 1), digits(10, 2)
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, x_train=x, y_train=y.astype(np.uint8), x_test=xt, y_test=yt)
    assert_same(path, notebook(tmp_path, (x, y), (xt, yt)))
    assert load_images(path).source == str(path)


def test_an_npz_without_the_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3), b=np.ones(2))
    message = refused(path)
    assert message == f"{path}: an .npz without x_train/y_train/x_test/y_test (found: a, b)"


def test_an_npz_is_never_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    (x, _), (xt, yt) = digits(4, 1), digits(4, 2)
    objects = np.array([1, "a", None], dtype=object)
    np.savez(path, x_train=x, y_train=objects, x_test=xt, y_test=yt)
    refused(path, "y_train.npy is an array of Python objects, which is not loaded")


def test_an_npz_member_declaring_more_than_it_holds(tmp_path):
    # An .npy header of 10**9 images over a few bytes: numpy would allocate them first.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
    )
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as npz:
        npz.writestr("x_train.npy", header.getvalue() + bytes(100))
        for key in ("y_train", "x_test", "y_test"):
            buffer = io.BytesIO()
            np.save(buffer, np.zeros(3, np.uint8))
            npz.writestr(f"{key}.npy", buffer.getvalue())
    refused(path, "x_train.npy declares 784,000,000,000 bytes of data, but the zip holds")


def test_a_single_npy_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 28, 28)))
    refused(path, "a single .npy array")


def test_a_damaged_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros(3))
    path.write_bytes(path.read_bytes()[:40])
    refused(path, "not a readable .npz (zip) file")


# --- IDX folders -------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    return header + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def idx_folder(directory: Path, train, test, gz: bool) -> Path:
    directory.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": train[0],
        "train-labels-idx1-ubyte": train[1].astype(np.uint8),
        "t10k-images-idx3-ubyte": test[0],
        "t10k-labels-idx1-ubyte": test[1].astype(np.uint8),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (directory / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return directory


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_an_idx_folder(tmp_path, gz):
    train, test = digits(30, 1), digits(10, 2)
    folder = idx_folder(tmp_path / "MNIST" / "raw", train, test, gz)
    assert_same(folder, notebook(tmp_path, train, test))
    d = load_images(folder)
    assert d.source == str(folder) and d.x_train.shape == (30, 1, 28, 28)


def test_an_idx_folder_missing_one_file(tmp_path):
    folder = idx_folder(tmp_path / "idx", digits(3, 1), digits(3, 2), gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    message = refused(folder)
    assert message == f"{folder}: an IDX directory without t10k-labels-idx1-ubyte (plain or .gz)"


def test_an_idx_gzip_bomb(tmp_path):
    # A labels file whose header promises 3 labels, followed by 200 MB of zeros.
    folder = idx_folder(tmp_path / "idx", digits(3, 1), digits(3, 2), gz=False)
    labels = folder / "t10k-labels-idx1-ubyte"
    valid = labels.read_bytes()
    with gzip.open(labels, "wb", compresslevel=1) as file:
        file.write(valid)
        zeros = bytes(1 << 20)
        for _ in range(200):
            file.write(zeros)
    with pytest.raises(DataError, match=f"^{labels}: too long: it decompresses to more"):
        tracemalloc.start()
        try:
            load_images(folder)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes"


def test_a_bad_idx_file_is_named(tmp_path):
    folder = idx_folder(tmp_path / "idx", digits(3, 1), digits(3, 2), gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"^{images}: truncated"):
        load_images(folder)


# --- refusals through the command line: one line, status 2 -----------------------------------


def kfold_refuses(capsys, tmp_path, path: Path) -> str:
    out = tmp_path / "out"
    assert cli_main(["--data.path", str(path), "--trainer.default_root_dir", str(out), *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kfold.py: error: "), err
    assert not out.exists() or not any(out.rglob("config.yaml"))
    return err


def test_the_refusals_through_the_cli(tmp_path, capsys):
    npz = tmp_path / "other.npz"
    np.savez(npz, a=np.zeros(3), b=np.ones(2))
    assert "an .npz without x_train/y_train/x_test/y_test (found: a, b)" in kfold_refuses(
        capsys, tmp_path, npz
    )
    bomb = tmp_path / "bomb.pkl.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as file:
        file.write(pickle.dumps((digits(4, 1), digits(4, 2))))
        file.write(bytes(16 << 20))
    assert "a gzip bomb?" in kfold_refuses(capsys, tmp_path, bomb)
    folder = idx_folder(tmp_path / "idx", digits(3, 1), digits(3, 2), gz=True)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    assert "an IDX directory without train-images-idx3-ubyte" in kfold_refuses(
        capsys, tmp_path, folder
    )


@pytest.mark.slow
def test_the_script_refuses_a_gzip_bomb_in_one_line(tmp_path):
    bomb = tmp_path / "bomb.pkl.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as file:
        file.write(pickle.dumps((digits(4, 1), digits(4, 2))))
        file.write(bytes(16 << 20))
    proc = subprocess.run(
        [*script("kfold.py"), "--data.path", str(bomb), "--trainer.max_epochs", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kfold.py: error: {bomb}: "), proc.stderr
    assert "a gzip bomb?" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "lightning_logs").exists()
