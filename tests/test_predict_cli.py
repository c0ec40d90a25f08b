"""predict.py's command line: the CSV, the inputs it reads (every data format that
``--data.path`` reads among them), runs trained on data of every format, and every refusal
(one line, exit status 2, nothing written). The model is test_predict.py's session run."""

import builtins
import gzip
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, script
from PIL import Image
from test_predict import read_csv, run_ensemble_predictions, run_predict, trained_run

from lit_cnn.data.loading import load_images

N_TEST = 200  # test images in each data file below (and in conftest's tiny_pkl)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="session")
def raw():
    return load_images("sample").x_test[:, 0].numpy()


def _idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    return header + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.fixture(scope="session")
def data_files(tmp_path_factory, tiny_pkl) -> dict[str, Path]:
    """The sample's first 200 test digits in every format load_images reads, and as .npy.

    Each holds 300 + 100 training images of the sample too (uint8: scale 255, the session
    run's), as tests/test_data_formats.py builds them.
    """
    folder = tmp_path_factory.mktemp("formats")
    d = load_images("sample")
    x, y = d.x_train[:400, 0].numpy(), d.y_train[:400].numpy()
    xt, yt = d.x_test[:N_TEST, 0].numpy(), d.y_test[:N_TEST].numpy()
    files = {"npy": folder / "digits.npy", "pkl": tiny_pkl, "pkl.gz": folder / "tiny.pkl.gz"}
    np.save(files["npy"], xt)
    files["pkl.gz"].write_bytes(gzip.compress(tiny_pkl.read_bytes()))
    # deeplearning.net's layout: (train, valid, test), N x 784 images.
    files["three.pkl.gz"] = folder / "mnist.pkl.gz"
    flat = ((x[:300], y[:300]), (x[300:], y[300:]), (xt, yt))
    flat = tuple((images.reshape(len(images), 784), labels) for images, labels in flat)
    files["three.pkl.gz"].write_bytes(gzip.compress(pickle.dumps(flat)))
    files["keras.npz"] = folder / "mnist.npz"
    np.savez(files["keras.npz"], x_train=x, y_train=y, x_test=xt, y_test=yt)
    files["idx"] = folder / "MNIST"
    files["idx"].mkdir()
    arrays = {
        "train-images-idx3-ubyte": x,
        "train-labels-idx1-ubyte": y.astype(np.uint8),
        "t10k-images-idx3-ubyte": xt,
        "t10k-labels-idx1-ubyte": yt.astype(np.uint8),
    }
    for name, array in arrays.items():
        (files["idx"] / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    return files


def _by_source(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    grouped: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        grouped.setdefault(r.pop("source"), []).append(r)
    return grouped


def _run_on(path: Path, run_dir: Path, data: str) -> Path:
    """A copy of the session run (its folds linked) whose results.json 'data' is ``data``."""
    path.mkdir(parents=True)
    results = json.loads((run_dir / "results.json").read_text())
    (path / "results.json").write_text(json.dumps({**results, "data": data}))
    for fold in run_dir.glob("fold_*"):
        (path / fold.name).symlink_to(fold.resolve(), target_is_directory=True)
    return path


def test_csv_rows_name_each_image(run_dir, raw, tmp_path):
    Image.fromarray(raw[0]).save(tmp_path / "one.png")
    np.save(tmp_path / "two.npy", raw[1:3])
    np.savez(tmp_path / "three.npz", raw[3:6][:, None])  # N x 1 x 28 x 28 works as well
    out = tmp_path / "preds.csv"
    inputs = [tmp_path / "one.png", tmp_path / "two.npy", tmp_path / "three.npz"]
    status, stdout, err = run_predict(run_dir, *inputs, "--out", out, "--batch_size", "2")
    assert status == 0, err
    assert stdout == f"6 predictions written to {out}\n"
    rows = read_csv(out.read_text())
    assert list(rows[0]) == ["source", "index", "prediction", "confidence"] + [
        f"p{i}" for i in range(10)
    ]
    names = [str(p) for p in inputs]
    assert [(r["source"], int(r["index"])) for r in rows] == [
        (names[0], 0), (names[1], 0), (names[1], 1), (names[2], 0), (names[2], 1), (names[2], 2)
    ]  # fmt: skip
    expected = run_ensemble_predictions(run_dir)[:6].tolist()
    assert [int(r["prediction"]) for r in rows] == expected
    for r in rows:
        p = [float(r[f"p{i}"]) for i in range(10)]
        assert abs(sum(p) - 1) < 1e-4 and float(r["confidence"]) == max(p)
        assert p.index(max(p)) == int(r["prediction"])


def test_notebook_pickle_predicts_its_test_images(run_dir, tiny_pkl):
    # tiny_pkl's test set: the sample's first 200 test digits, padded to 32 x 32.
    status, out, err = run_predict(run_dir, tiny_pkl)
    assert status == 0, err
    rows = read_csv(out)
    assert [int(r["index"]) for r in rows] == list(range(200))
    assert [int(r["prediction"]) for r in rows] == run_ensemble_predictions(run_dir)[:200].tolist()


def test_every_data_format_predicts_its_test_images_as_the_same_array_does(
    run_dir, raw, data_files, tmp_path
):
    # An IDX folder that also holds image files is a folder of images: the images win.
    scans = tmp_path / "scans"
    shutil.copytree(data_files["idx"], scans)
    Image.fromarray(raw[0]).save(scans / "0.png")
    kinds = ["npy", "pkl", "pkl.gz", "three.pkl.gz", "keras.npz", "idx"]
    # One batch per file: the same images in the same batch give the very same floats.
    args = [*(data_files[k] for k in kinds), scans, "--batch_size", str(N_TEST)]
    status, out, err = run_predict(run_dir, *args)
    assert status == 0, err
    grouped = _by_source(read_csv(out))
    assert list(grouped) == [*(str(data_files[k]) for k in kinds), str(scans / "0.png")]
    want = grouped[str(data_files["npy"])]
    assert [int(r["index"]) for r in want] == list(range(N_TEST))
    expected = run_ensemble_predictions(run_dir)[:N_TEST].tolist()
    assert [int(r["prediction"]) for r in want] == expected
    for kind in kinds[1:]:
        assert grouped[str(data_files[kind])] == want, kind  # indices, classes, probabilities
    assert [int(r["prediction"]) for r in grouped[str(scans / "0.png")]] == expected[:1]


def test_a_data_file_in_other_units_is_scaled_by_its_own_constant(run_dir, data_files, tmp_path):
    # deeplearning.net's mnist.pkl.gz stores float32 pixels in [0, 1]; the run's are 0-255.
    xt = np.load(data_files["npy"])
    flat = (xt.reshape(len(xt), 784) / 255).astype(np.float32)
    sets = tuple((flat[:100], np.zeros(100, np.int64)) for _ in range(2))
    floats = tmp_path / "floats.pkl.gz"
    floats.write_bytes(gzip.compress(pickle.dumps((*sets, (flat, np.zeros(len(flat), np.int64))))))
    status, out, err = run_predict(run_dir, data_files["npy"], floats, "--batch_size", str(N_TEST))
    assert status == 0, err
    grouped = _by_source(read_csv(out))
    want, got = grouped[str(data_files["npy"])], grouped[str(floats)]
    assert [r["prediction"] for r in got] == [r["prediction"] for r in want]
    for a, b in zip(want, got, strict=True):
        assert all(abs(float(a[f"p{i}"]) - float(b[f"p{i}"])) < 1e-4 for i in range(10))


def test_an_input_file_named_sample_is_that_file(run_dir, data_files, tmp_path, monkeypatch):
    shutil.copy(data_files["pkl.gz"], tmp_path / "sample")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_predict(run_dir, "sample")
    assert status == 0, err
    rows = read_csv(out)  # its 200 test images, not the bundled sample's 1000
    assert len(rows) == N_TEST and {r["source"] for r in rows} == {"sample"}


@pytest.mark.parametrize("kind", ["three.pkl.gz", "keras.npz", "idx"])
def test_a_run_on_relative_data_of_any_format_predicts_and_exports(
    run_dir, data_files, tmp_path, monkeypatch, kind
):
    # Trained with --data.path NAME from `project`: results.json's 'data' is the data's
    # ImageData.source, a three-set file's with its merge note.
    project = tmp_path / "project"
    project.mkdir()
    name = data_files[kind].name
    copy = shutil.copytree if data_files[kind].is_dir() else shutil.copy
    copy(data_files[kind], project / name)
    monkeypatch.chdir(project)
    source = load_images(name).source
    if kind == "three.pkl.gz":
        assert source == f"{name} (train and valid merged: 300 + 100 training images)"
    run = _run_on(project / "lightning_logs" / "ShallowCNN" / "version_0", run_dir, source)
    status, out, err = run_predict(run, data_files["npy"], "--batch_size", str(N_TEST))
    assert status == 0, err
    predictions = [int(r["prediction"]) for r in read_csv(out)]
    assert predictions == run_ensemble_predictions(run_dir)[:N_TEST].tolist()
    # From elsewhere, the data is found beside lightning_logs/; the export is checked on the
    # run's own test set, the data file's 200 images (the session run's has 1000).
    monkeypatch.chdir(tmp_path)
    exported = tmp_path / "model.pt"
    status, out, err = run_predict(run, "--export", "torchscript", exported)
    assert status == 0, err
    assert f"on the run's {N_TEST} test images; wrote {exported}" in out
    assert exported.is_file()


def test_fold_option_predicts_with_that_fold(run_dir, raw, tmp_path):
    np.save(tmp_path / "d.npy", raw)
    _, out, _ = run_predict(run_dir, tmp_path / "d.npy", "--fold", "0")
    saved = np.load(run_dir / "fold_0" / "test_probs.npy")
    rows = read_csv(out)
    assert [int(r["prediction"]) for r in rows] == saved.argmax(axis=1).tolist()
    np.testing.assert_allclose([float(r["p3"]) for r in rows], saved[:, 3], atol=2e-6)


# ------------------------------------------------------------------------------ refusals


def _png(path: Path, raw: np.ndarray) -> Path:
    Image.fromarray(raw[0]).save(path)
    return path


def _unfinished(tmp: Path, run_dir: Path) -> Path:
    copy = tmp / "unfinished"
    shutil.copytree(run_dir, copy)
    (copy / "results.json").unlink()
    return copy


CASES = {
    # name: (make the arguments from (tmp_path, run_dir, raw), what the message says)
    "missing input": (lambda t, r, x: [r, t / "nope.png"], "nope.png: no such file"),
    "empty directory": (lambda t, r, x: [r, _mkdir(t / "empty")], "without image files"),
    "an IDX folder missing files": (
        lambda t, r, x: [r, _holding(t / "idx", "train-images-idx3-ubyte.gz")],
        "idx: an IDX directory without train-labels-idx1-ubyte or",
    ),
    "a gzipped file that is no pickle": (
        lambda t, r, x: [r, _write(t / "notes.gz", gzip.compress(b"not a pickle"))],
        "notes.gz: gzip-compressed data: not a pickle",
    ),
    "a pickle of something else": (
        lambda t, r, x: [r, _write(t / "p.pkl", pickle.dumps({"x": [1, 2]}))],
        "p.pkl: expected (train, test) or (train, valid, test)",
    ),
    "unsupported file": (
        lambda t, r, x: [r, _write(t / "notes.txt", b"not an image")],
        "notes.txt: unsupported file",
    ),
    "corrupt image": (
        lambda t, r, x: [r, _write(t / "bad.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)],
        "bad.png: corrupt image",
    ),
    "truncated image": (
        lambda t, r, x: [r, _truncated(t / "cut.png", x)],
        "cut.png: corrupt image",
    ),
    "corrupt image in a directory": (
        lambda t, r, x: [r, _corrupt_dir(t / "scans", x)],
        "scans/b.png: corrupt image",
    ),
    "bad array shape": (
        lambda t, r, x: [r, _npy(t / "a.npy", np.zeros((4, 27, 27), np.uint8))],
        "a.npy: array of shape (4, 27, 27)",
    ),
    "pickled object array": (
        lambda t, r, x: [r, _npy(t / "o.npy", np.array([None, 1], dtype=object))],
        "o.npy: unreadable .npy array",
    ),
    "negative pixels": (
        lambda t, r, x: [r, _npy(t / "n.npy", -np.ones((2, 28, 28), np.float32))],
        "n.npy: holds negative pixel values",
    ),
    "npz of several arrays": (
        lambda t, r, x: [r, _npz(t / "s.npz", x=x[:2], y=np.zeros(2))],
        "s.npz: holds 2 arrays (x, y); an .npz to predict holds one array of images, or Keras'",
    ),
    "npz of some of Keras' arrays": (
        lambda t, r, x: [r, _npz(t / "k.npz", x_train=x[:2], x_test=x[:2])],
        "k.npz: holds 2 arrays (x_train, x_test)",
    ),
    "the run's data is gone": (
        lambda t, r, x: [
            _run_on(t / "run", r, "gone.pkl.gz (train and valid merged: 3 + 1 training images)"),
            _npy(t / "d.npy", x[:2]),
        ],
        "run: the run's data gone.pkl.gz (results.json 'data') is not found from this",
    ),
    "existing --out": (
        lambda t, r, x: [r, _png(t / "d.png", x), "--out", _write(t / "o.csv", b"keep")],
        "o.csv: exists; predict.py never overwrites a file",
    ),
    "existing export file": (
        lambda t, r, x: [r, "--export", "onnx", _write(t / "m.onnx", b"keep")],
        "m.onnx: exists",
    ),
    "bad export format": (lambda t, r, x: [r, "--export", "tflite", t / "m"], "invalid format"),
    "unfinished run": (
        lambda t, r, x: [_unfinished(t, r), _png(t / "d.png", x)],
        "an unfinished run (no results.json)",
    ),
    "not a run": (lambda t, r, x: [t, _png(t / "d.png", x)], "not a K-fold run directory"),
    "a comparison's directory": (
        lambda t, r, x: [_holding(t / "cmp", "compare.yaml"), _png(t / "d.png", x)],
        "a comparison's directory; give one model's run in it, e.g. <model>/rep_0",
    ),
    "a tuning directory": (
        lambda t, r, x: [_holding(t / "study", "trials/0/fold_0"), _png(t / "d.png", x)],
        "a tuning directory; give one trial's run, e.g. trials/0",
    ),
    "no such fold": (
        lambda t, r, x: [r, _png(t / "d.png", x), "--fold", "5"],
        "--fold 5: the run has no fold 5; valid folds: 0, 1",
    ),
    "batch size 0": (
        lambda t, r, x: [r, _png(t / "d.png", x), "--batch_size", "0"],
        "--batch_size: invalid value 0",
    ),
    "nothing to do": (lambda t, r, x: [r], "give INPUT files to predict, or --export"),
}


def _holding(path: Path, name: str) -> Path:
    (path / name).parent.mkdir(parents=True)
    if "." in name:
        (path / name).touch()
    else:
        (path / name).mkdir()
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "readme.txt").write_text("no images here")
    return path


def _truncated(path: Path, raw: np.ndarray) -> Path:
    big = Image.fromarray(np.kron(raw[0], np.ones((8, 8), np.uint8)))  # 224 x 224
    big.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a header Pillow reads, then half the pixels
    return path


def _corrupt_dir(path: Path, raw: np.ndarray) -> Path:
    path.mkdir()
    _png(path / "a.png", raw)
    (path / "b.png").write_bytes(b"garbage")
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(run_dir, raw, tmp_path, case):
    make, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    args = make(work, run_dir, raw)
    out = work / "new.csv"
    if "--out" not in args and "--export" not in args and len(args) > 1:
        args = [*args, "--out", out]  # the file that must not appear
    before = _snapshot(tmp_path)
    status, stdout, err = run_predict(*args)
    assert status == 2, (status, err)
    assert stdout == "" and err.count("\n") == 1 and err.startswith("predict.py: error: ")
    assert message in err, err
    assert _snapshot(tmp_path) == before  # no file made, none changed (o.csv still "keep")


def _snapshot(folder: Path) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_unreadable_image_is_refused(run_dir, raw, tmp_path, monkeypatch):
    # As root, a chmod 000 file can still be read: the open that reads it is refused instead.
    target = _png(tmp_path / "locked.png", raw)
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if Path(str(file)) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    status, stdout, err = run_predict(run_dir, target, "--out", tmp_path / "o.csv")
    assert status == 2 and stdout == ""
    assert err == f"predict.py: error: {target}: cannot be read (Permission denied)\n"
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_the_script_predicts_and_refuses_in_a_process(run_dir, raw, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(255 - raw[i]).convert("RGB").save(folder / f"{i}.jpg", quality=95)
    done = subprocess.run(
        [*script("predict.py"), str(run_dir), str(folder)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = read_csv(done.stdout)
    assert [Path(r["source"]).name for r in rows] == ["0.jpg", "1.jpg", "2.jpg"]
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    bad = subprocess.run(
        [*script("predict.py"), str(run_dir), str(folder), "--out", str(tmp_path / "o.csv")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "3.png: corrupt image" in bad.stderr
    assert not (tmp_path / "o.csv").exists()


def test_onnx_export_without_its_tools_is_refused_first(run_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    status, stdout, err = run_predict(run_dir, "--export", "onnx", tmp_path / "m.onnx")
    assert (status, stdout) == (2, "")
    assert err == (
        "predict.py: error: --export onnx needs onnxscript: pip install 'lit_cnn[export]'\n"
    )
    assert list(tmp_path.iterdir()) == []
