"""predict.py --export: ONNX (run with onnxruntime) and TorchScript match PyTorch on the run's
test set for a batch of 1 and of 257, and an export that disagrees is not written. The model
is test_predict.py's session run."""

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from test_predict import run_predict, trained_run

import lit_cnn
from lit_cnn.data.loading import load_images, to_float
from lit_cnn.predict import export

# torch.jit is deprecated in this torch; TorchScript is still what the issue and libtorch ask for.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="session")
def test_x():
    data = load_images("sample")
    return to_float(data.x_test, data.scale)


@pytest.fixture(scope="session")
def onnx_file(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "ensemble.onnx"
    status, out, err = run_predict(run_dir, "--export", "onnx", path)
    assert status == 0, err
    return path, out


def _onnx(path: Path):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def _torchscript(path: Path):
    model = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(x).numpy()

    return run


def _worst(model, exported, x: torch.Tensor) -> float:
    with torch.inference_mode():
        ours = model(x).numpy()
        theirs = exported(x)
    assert theirs.shape == (len(x), 10)
    return float(np.abs(theirs - ours).max())


def test_onnx_matches_pytorch_for_batches_of_1_and_257(run_dir, onnx_file, test_x):
    path, out = onnx_file
    model = lit_cnn.load_ensemble(run_dir)
    run = _onnx(path)
    for batch in (test_x[:1], test_x[:257], test_x[743:]):
        assert _worst(model, run, batch) <= 1e-5
    assert "onnx: largest difference from PyTorch" in out and f"wrote {path}" in out
    # The contract an application relies on: named input and output, a dynamic batch.
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.shape[1:], given.type) == ("images", [1, 32, 32], "tensor(float)")
    assert returned.name == "probabilities" and returned.shape[1:] == [10]
    assert isinstance(given.shape[0], str)  # symbolic: any batch size


def test_torchscript_of_one_fold_matches_that_fold(run_dir, test_x, tmp_path):
    path = tmp_path / "fold1.pt"
    status, out, err = run_predict(run_dir, "--export", "torchscript", path, "--fold", "1")
    assert status == 0, err
    run = _torchscript(path)
    fold = lit_cnn.load_ensemble(run_dir, fold=1)
    for batch in (test_x[:1], test_x[:257]):
        assert _worst(fold, run, batch) <= 1e-5
    saved = np.load(run_dir / "fold_1" / "test_probs.npy")
    np.testing.assert_allclose(run(test_x), saved, atol=1e-5)
    assert "torchscript: largest difference from PyTorch" in out


def test_torchscript_of_the_ensemble_matches_pytorch(run_dir, test_x, tmp_path):
    path = tmp_path / "ensemble.pt"
    assert run_predict(run_dir, "--export", "torchscript", path)[0] == 0
    model = lit_cnn.load_ensemble(run_dir)
    for batch in (test_x[:1], test_x[:257]):
        assert _worst(model, _torchscript(path), batch) <= 1e-5


def test_an_export_that_disagrees_is_not_written(run_dir, tmp_path, monkeypatch):
    real = export.runner

    def off_by_a_little(data, fmt):
        run = real(data, fmt)
        return lambda x: run(x) + 2e-5

    monkeypatch.setattr(export, "runner", off_by_a_little)
    path = tmp_path / "m.pt"
    status, out, err = run_predict(run_dir, "--export", "torchscript", path)
    assert status == 1 and out == "" and not path.exists()
    assert err.count("\n") == 1 and "above 1e-05; nothing written" in err
    assert list(tmp_path.iterdir()) == []  # no temporary file left either
