"""predict.py's model and preprocessing: the fold ensemble reproduces the run's, image files
reproduce the data path, and MNIST's normalisation recovers digits drawn at another size.

The model: ShallowCNN (the cheapest architecture to train) trained once per session on the
bundled sample (4,000 training and 1,000 test digits), 2 folds of 2 epochs at batch 32: about
89% test accuracy, enough for predictions that resampling does not flip at random. Every test
here and in test_predict_cli.py and test_predict_export.py reuses it.
"""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lit_cnn
from lit_cnn.cli.predict import main as predict_main
from lit_cnn.data.loading import load_images, pad_images, to_float

_RUNS: dict[Path, Path] = {}


def trained_run(tmp_path_factory) -> Path:
    """The session's run directory, trained on first use (shared by the predict test files)."""
    key = tmp_path_factory.getbasetemp()
    if key not in _RUNS:
        from lit_cnn.cli.kfold import cli_main

        root = tmp_path_factory.mktemp("predict_run")
        args = [
            "--model", "ShallowCNN", "--data.path", "sample", "--data.k", "2",
            "--data.batch_size", "32", "--trainer.max_epochs", "2",
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--run_name", "predict",
        ]  # fmt: skip
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli_main(args) == 0
        _RUNS[key] = Path(out.getvalue().strip().splitlines()[-1])
    return _RUNS[key]


def run_predict(*args: str) -> tuple[int, str, str]:
    """predict.py in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = predict_main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="session")
def digits():
    """The sample's test digits as stored (uint8, 1000 x 28 x 28), their labels, and the
    network input the data path makes of them."""
    data = load_images("sample")
    return data.x_test[:, 0].numpy(), data.y_test.numpy(), to_float(data.x_test, data.scale)


def run_ensemble_predictions(run_dir: Path) -> np.ndarray:
    """The run's own ensemble on its test set, from the probabilities its folds saved."""
    results = json.loads((run_dir / "results.json").read_text())
    probs = [
        np.load(run_dir / f"fold_{r['fold']}" / "test_probs.npy")
        for r in results["folds"]
        if not r["diverged"]
    ]
    return np.mean(probs, axis=0).argmax(axis=1)


def save_pngs(folder: Path, images: np.ndarray, mode: str = "L") -> list[Path]:
    # Two subfolders, so the walk must recurse and sort to give the images back in order.
    paths = []
    for i, image in enumerate(images):
        path = folder / f"part_{i // 500}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert(mode).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ the ensemble


def test_ensemble_reproduces_the_runs_ensemble(run_dir, digits):
    _, y, x = digits
    model = lit_cnn.load_ensemble(run_dir)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    results = json.loads((run_dir / "results.json").read_text())
    with torch.inference_mode():
        probs = model(x).numpy()
        for fold, net in zip((0, 1), model.nets, strict=True):
            saved = np.load(run_dir / f"fold_{fold}" / "test_probs.npy")
            np.testing.assert_allclose(net(x).softmax(dim=-1).numpy(), saved, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), run_ensemble_predictions(run_dir))
    assert float((probs.argmax(axis=1) == y).mean()) == results["ensemble_test_acc"]


def test_fold_selects_one_models_predictions(run_dir, digits):
    x = digits[2]
    with torch.inference_mode():
        one = lit_cnn.load_ensemble(run_dir, fold=1)(x).numpy()
        both = lit_cnn.load_ensemble(run_dir)(x).numpy()
    np.testing.assert_allclose(one, np.load(run_dir / "fold_1" / "test_probs.npy"), atol=1e-5)
    assert np.abs(one - both).max() > 1e-3  # the ensemble is not fold 1 alone


# ------------------------------------------------------------------------ the data path


def test_png_files_reproduce_the_data_path(run_dir, digits, tmp_path):
    raw, _, x = digits
    save_pngs(tmp_path / "pngs", raw)
    np.save(tmp_path / "digits.npy", raw)
    status, out, err = run_predict(run_dir, tmp_path / "pngs", tmp_path / "digits.npy")
    assert status == 0, err
    rows = read_csv(out)
    files, array = rows[: len(raw)], rows[len(raw) :]
    assert [r["source"] for r in files] == [
        str(tmp_path / "pngs" / f"part_{i // 500}" / f"{i:04d}.png") for i in range(len(raw))
    ]
    assert [int(r["index"]) for r in array] == list(range(len(raw)))
    from_files = [int(r["prediction"]) for r in files]
    from_array = [int(r["prediction"]) for r in array]
    assert from_files == from_array == run_ensemble_predictions(run_dir).tolist()
    # Not only the same classes: the very tensors of the data path.
    for i in (0, 1, 999):
        path = tmp_path / "pngs" / f"part_{i // 500}" / f"{i:04d}.png"
        assert torch.equal(lit_cnn.preprocess(path), x[i])


def test_padded_32_pixel_images_are_taken_as_they_are(digits):
    raw, _, x = digits
    padded = pad_images(torch.from_numpy(raw[:20])[:, None])[:, 0].numpy()
    for image, expected in zip(padded, x[:20], strict=True):
        assert torch.equal(lit_cnn.preprocess(Image.fromarray(image)), expected)


# ------------------------------------------------------------------------ preprocessing


def test_dark_on_light_digits_predict_the_same(run_dir, digits, tmp_path):
    raw = digits[0][:300]
    save_pngs(tmp_path / "light", raw)
    save_pngs(tmp_path / "dark", 255 - raw, mode="RGB")  # black ink on white paper, in colour
    _, light, _ = run_predict(run_dir, tmp_path / "light")
    _, dark, _ = run_predict(run_dir, tmp_path / "dark")
    predictions = [[r["prediction"] for r in read_csv(text)] for text in (light, dark)]
    assert len(predictions[0]) == 300 and predictions[0] == predictions[1]
    assert torch.equal(lit_cnn.preprocess(Image.fromarray(255 - raw[7])), digits[2][7])


def big_off_centre(image: np.ndarray, rng: np.random.Generator, dark: bool) -> Image.Image:
    """The digit at 3x its size, somewhere on a 100 x 80 canvas."""
    digit = Image.fromarray(image)
    digit = digit.crop(digit.getbbox())
    digit = digit.resize((3 * digit.width, 3 * digit.height), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (100, 80))
    left = int(rng.integers(0, 100 - digit.width + 1))
    top = int(rng.integers(0, 80 - digit.height + 1))
    canvas.paste(digit, (left, top))
    return Image.fromarray(255 - np.asarray(canvas)) if dark else canvas


def test_large_off_centre_digits_mostly_predict_the_same(run_dir, digits, tmp_path):
    raw = digits[0]
    rng = np.random.default_rng(0)
    folder = tmp_path / "big"
    folder.mkdir()
    for i, image in enumerate(raw):
        big_off_centre(image, rng, dark=i % 2 == 1).save(folder / f"{i:04d}.png")
    status, out, err = run_predict(run_dir, folder)
    assert status == 0, err
    big = np.array([int(r["prediction"]) for r in read_csv(out)])
    agreement = float((big == run_ensemble_predictions(run_dir)).mean())
    assert agreement >= 0.95, agreement


def photo(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The digit in dark ink on unevenly lit, noisy grey paper, 400 x 300, as a camera sees it."""
    ink = Image.fromarray(255 - image).resize((120, 120), Image.Resampling.BICUBIC)
    paper = np.linspace(140, 215, 400)[None, :] + np.linspace(-15, 15, 300)[:, None]
    paper = paper + rng.normal(0, 6, (300, 400))
    top, left = int(rng.integers(20, 160)), int(rng.integers(20, 260))
    paper[top : top + 120, left : left + 120] *= np.asarray(ink) / 255.0
    return Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB")


def test_photographed_digits_mostly_predict_the_same(run_dir, digits, tmp_path):
    raw = digits[0][:100]
    rng = np.random.default_rng(1)
    for i, image in enumerate(raw):
        photo(image, rng).save(tmp_path / f"{i:03d}.jpg", quality=85)
    _, out, _ = run_predict(run_dir, tmp_path)
    got = np.array([int(r["prediction"]) for r in read_csv(out)])
    assert float((got == run_ensemble_predictions(run_dir)[:100]).mean()) >= 0.9


def test_sixteen_bit_and_transparent_images_match_their_8_bit_digit(digits):
    image, expected = digits[0][3], digits[2][3]
    sixteen = Image.fromarray(image.astype(np.uint16) * 257)  # 16-bit grayscale, "I;16"
    assert torch.equal(lit_cnn.preprocess(sixteen), expected)
    # Black ink on a transparent ground, as drawing programs save it: alpha is the digit.
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = image
    assert torch.equal(lit_cnn.preprocess(Image.fromarray(rgba, "RGBA")), expected)


def test_normalisation_centres_the_digit_in_20_by_20(digits):
    canvas = np.zeros((90, 120), np.uint8)
    canvas[10:70, 80:110] = 255  # a bar, 60 high and 30 wide, far from the centre
    tensor = lit_cnn.preprocess(canvas)[0]
    assert tensor.shape == (32, 32)
    inner = tensor[2:30, 2:30].numpy()
    rows, cols = np.nonzero(inner > 0.5)
    assert rows.max() - rows.min() + 1 == 20  # the longer side fills the box
    assert 9 <= cols.max() - cols.min() + 1 <= 11  # the aspect ratio is kept
    from scipy import ndimage

    assert np.allclose(ndimage.center_of_mass(inner), (14, 14), atol=0.75)
    assert not lit_cnn.preprocess(np.zeros((50, 40), np.uint8)).any()  # blank stays blank
