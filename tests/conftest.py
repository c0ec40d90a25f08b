"""Shared tiny fixtures."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


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


@pytest.fixture(scope="session")
def tiny_pkl(tmp_path_factory) -> Path:
    """A notebook-format pickle of 600 training and 200 test images from the bundled sample."""
    import pickle

    from lit_cnn.data import load_images

    d = load_images("sample")
    train = (d.x_train[:600, 0].numpy(), d.y_train[:600].numpy())
    test = (d.x_test[:200, 0].numpy(), d.y_test[:200].numpy())
    path = tmp_path_factory.mktemp("data") / "tiny.pkl"
    with open(path, "wb") as f:
        pickle.dump((train, test), f)
    return path
