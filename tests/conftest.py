"""Shared tiny fixtures."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
# The benchmark and the notebook baseline are tooling beside the package, not in it.
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="session")
def sample_batch():
    """256 images of the bundled sample, as float inputs and labels."""
    import lit_cnn

    x, y, _, _ = lit_cnn.load_dataset("sample")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=gen)[:256]
    return x[idx], y[idx]


def script(name: str) -> list[str]:
    """The command that runs ``scripts/<name>`` with this interpreter."""
    return [sys.executable, str(SCRIPTS / name)]


def _tiny(tmp_path_factory, n_train: int, n_test: int) -> Path:
    import pickle

    from lit_cnn.data.loading import load_images, pad_images

    d = load_images("sample")
    # (N, 32, 32) uint8, as the notebook's file held them
    train = (pad_images(d.x_train[:n_train])[:, 0].numpy(), d.y_train[:n_train].numpy())
    test = (pad_images(d.x_test[:n_test])[:, 0].numpy(), d.y_test[:n_test].numpy())
    path = tmp_path_factory.mktemp("data") / f"tiny_{n_train}_{n_test}.pkl"
    with open(path, "wb") as f:
        pickle.dump((train, test), f)
    return path


@pytest.fixture(scope="session")
def tiny_pkl(tmp_path_factory) -> Path:
    """A notebook-format pickle of 600 training and 200 test images from the bundled sample."""
    return _tiny(tmp_path_factory, 600, 200)


@pytest.fixture(scope="session")
def tiny_odd_pkl(tmp_path_factory) -> Path:
    """601 training and 201 test images: counts that no number of ranks > 1 divides evenly."""
    return _tiny(tmp_path_factory, 601, 201)
