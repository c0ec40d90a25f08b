"""Tests for scripts/prepare_data.py and lit_cnn.data.idx: IDX files in, notebook pickle out."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_cnn.data import idx
from lit_cnn.data import loading as data
from lit_cnn.data.loading import load_dataset, load_images, to_float

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_data.py"

N_TRAIN, N_TEST = 30, 12


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    if magic is None:
        magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    raw = idx_bytes(array, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_arrays(side: int = 28):
    rng = np.random.default_rng(0)
    # Every pixel non-zero, so any padding shows as zeros.
    x_train = rng.integers(1, 256, (N_TRAIN, side, side), dtype=np.uint8)
    x_test = rng.integers(1, 256, (N_TEST, side, side), dtype=np.uint8)
    return x_train, np.arange(N_TRAIN) % 10, x_test, (np.arange(N_TEST) + 3) % 10


@pytest.fixture
def idx_dir(tmp_path):
    """A directory of IDX files: the training files gzipped, the test files plain."""
    directory = tmp_path / "idx"
    directory.mkdir()
    x_train, y_train, x_test, y_test = make_arrays()
    write_idx(directory / "train-images-idx3-ubyte", x_train, gz=True)
    write_idx(directory / "train-labels-idx1-ubyte", y_train, gz=True)
    write_idx(directory / "t10k-images-idx3-ubyte", x_test)
    write_idx(directory / "t10k-labels-idx1-ubyte", y_test)
    return directory


def run(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_data.py: error: ")
    for phrase in phrases:
        assert phrase in lines[0]
    assert result.stdout == ""


def test_convert(idx_dir, tmp_path):
    out = tmp_path / "out" / "mnist.pkl"  # the parent directory is created
    result = run(idx_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"wrote {out}: {N_TRAIN} train + {N_TEST} test images, 32x32 uint8, labels 0-9"
    ]
    x_train, y_train, x_test, y_test = make_arrays()

    # The notebook's own loader: plain pickle, then torch.tensor on the arrays.
    with open(out, "rb") as file:
        train, test = pickle.load(file)
    assert train[0].dtype == np.uint8 and train[0].shape == (N_TRAIN, 32, 32)
    assert test[0].shape == (N_TEST, 32, 32)
    assert np.array_equal(train[0][:, 2:30, 2:30], x_train)
    assert np.array_equal(test[0][:, 2:30, 2:30], x_test)
    assert train[0].sum() == x_train.sum(dtype=np.int64)  # zeros around the digits
    assert np.array_equal(train[1], y_train) and np.array_equal(test[1], y_test)
    assert train[1].dtype == np.int64
    notebook_x = torch.tensor(train[0], dtype=torch.float).unsqueeze(1)
    assert notebook_x.shape == (N_TRAIN, 1, 32, 32)

    x, y, xt, yt = load_dataset(out)
    assert x.shape == (N_TRAIN, 1, 32, 32) and xt.shape == (N_TEST, 1, 32, 32)
    assert torch.equal(x[:, 0], torch.from_numpy(train[0]).float() / 255.0)
    assert torch.equal(yt, torch.from_numpy(y_test))
    assert load_images(out).x_train.dtype == torch.uint8


def test_pickle_names_only_portable_globals(idx_dir, tmp_path):
    # numpy 2's own array pickles name numpy._core, which numpy 1.x cannot import.
    out = idx.convert_idx(idx_dir, tmp_path / "m.pkl").path
    raw = out.read_bytes()
    assert b"_core" not in raw and b"_reconstruct" not in raw
    train, _ = pickle.loads(raw)
    assert train[0].flags.writeable


def test_default_output_path(idx_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run(idx_dir, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "Datasets" / "mnist.pkl").is_file()
    assert idx.DEFAULT_OUT == data.DEFAULT_PATH


def test_existing_output_needs_force(idx_dir, tmp_path):
    out = tmp_path / "mnist.pkl"
    out.write_bytes(b"precious")
    assert_error(run(idx_dir, "--out", out), str(out), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    result = run(idx_dir, "--out", out, "--force")
    assert result.returncode == 0, result.stderr
    d = load_images(out)
    assert to_float(d.x_train, d.scale).shape == (N_TRAIN, 1, 32, 32)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_idx_file(idx_dir, tmp_path):
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    out = tmp_path / "mnist.pkl"
    assert_error(run(idx_dir, "--out", out), "t10k-labels-idx1-ubyte", "no such file")
    assert not out.exists()


def test_missing_directory(tmp_path):
    assert_error(run(tmp_path / "nowhere", "--out", tmp_path / "m.pkl"), "no such directory")


def test_bad_magic(idx_dir, tmp_path):
    write_idx(idx_dir / "t10k-images-idx3-ubyte", make_arrays()[2], magic=0x0801_0000)
    assert_error(
        run(idx_dir, "--out", tmp_path / "m.pkl"), "t10k-images-idx3-ubyte", "bad magic number"
    )


def test_usage_error_exits_2():
    result = run()
    assert result.returncode == 2 and "Traceback" not in result.stderr


# In-process checks of lit_cnn.data.idx: the same errors, without a subprocess each.


def check_error(tmp_path, idx_dir, *phrases: str) -> None:
    with pytest.raises(idx.IdxError) as info:
        idx.convert_idx(idx_dir, tmp_path / "m.pkl")
    message = str(info.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message
    assert not (tmp_path / "m.pkl").exists()


def test_labels_file_in_place_of_images(idx_dir, tmp_path):
    write_idx(idx_dir / "t10k-images-idx3-ubyte", np.arange(N_TEST))
    check_error(tmp_path, idx_dir, "bad magic number 0x00000801; expected 0x00000803")


def test_truncated_file(idx_dir, tmp_path):
    path = idx_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    check_error(tmp_path, idx_dir, f"{path}: truncated", "12 x 28 x 28 = 9408 bytes")


def test_truncated_header(idx_dir, tmp_path):
    (idx_dir / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((1, 2, 2)))[:9])
    check_error(tmp_path, idx_dir, "truncated: the header needs 16 bytes")


def test_trailing_bytes(idx_dir, tmp_path):
    path = idx_dir / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    check_error(tmp_path, idx_dir, "too long")


def test_corrupt_gzip(idx_dir, tmp_path):
    path = idx_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    check_error(tmp_path, idx_dir, f"{path}: corrupt gzip data")


def test_count_mismatch(idx_dir, tmp_path):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", np.arange(N_TEST - 1) % 10)
    check_error(tmp_path, idx_dir, f"{N_TEST} images, but", f"has {N_TEST - 1} labels")


def test_label_out_of_range(idx_dir, tmp_path):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", np.full(N_TEST, 12))
    check_error(tmp_path, idx_dir, "labels must be 0-9, found 12")


def test_unsupported_image_size(idx_dir, tmp_path):
    write_idx(idx_dir / "t10k-images-idx3-ubyte", np.zeros((N_TEST, 30, 30)))
    check_error(tmp_path, idx_dir, "unsupported image size 30 x 30")


def test_32x32_images_kept(idx_dir, tmp_path):
    x_test = make_arrays(side=32)[2]
    write_idx(idx_dir / "t10k-images-idx3-ubyte", x_test)
    (_, _), (x, _) = idx.read_idx_dir(idx_dir)
    assert np.array_equal(x, x_test)


def test_unwritable_output(idx_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(idx.IdxError, match="cannot create directory"):
        idx.convert_idx(idx_dir, blocker / "sub" / "m.pkl")
    with pytest.raises(idx.IdxError, match="is a directory"):
        idx.convert_idx(idx_dir, tmp_path)


def test_unwritable_output_from_the_script(idx_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_error(run(idx_dir, "--out", blocker / "m.pkl"), str(blocker), "cannot create")


def test_failed_write_leaves_old_file_and_no_debris(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "mnist.pkl"
    out.write_bytes(b"old")

    def disk_full(self, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idx._PortablePickler, "dump", disk_full)
    with pytest.raises(idx.IdxError, match="cannot write: No space left on device"):
        idx.convert_idx(idx_dir, out, force=True)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "mnist.pkl"]
