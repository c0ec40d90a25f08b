"""The ensemble (or one fold) as one file an application loads without lit_cnn: ONNX or
TorchScript, checked against PyTorch before it is written.

The exported model's contract is the ensemble's: input ``images`` (N, 1, 32, 32) float32 in
[0, 1] with a dynamic batch N, output ``probabilities`` (N, 10). Every architecture takes
32 x 32; a 28 x 28 digit is zero-padded by 2 pixels a side, and stored pixel values are
divided by the run's scale, exactly as in training (:func:`lit_cnn.data.to_float`), so that
[0, 1] is the networks' own input range and the model needs no rescaling inside.

ONNX goes through ``torch.onnx.export`` (the dynamo exporter, which needs onnxscript) and is
checked with onnxruntime; TorchScript through ``torch.jit.script``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportError",
    "MissingTools",
    "export",
    "largest_difference",
    "runner",
]

FORMATS = ("onnx", "torchscript")
#: The largest difference from PyTorch's probabilities an export may show.
TOLERANCE = 1e-5
INPUT, OUTPUT = "images", "probabilities"


class ExportError(RuntimeError):
    """The exported model disagrees with PyTorch: one line."""


class MissingTools(ExportError):
    """The ONNX tools (the ``export`` extra) are not installed: one line."""


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs every optional operator it skips and warns about torch internals;
    # none of it concerns the user's model.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def check_tools(fmt: str) -> None:
    """Refuses an ONNX export early when its tools (the ``export`` extra) are missing.

    Raises:
        MissingTools: onnx, onnxscript or onnxruntime cannot be imported.
    """
    if fmt != "onnx":
        return
    for module in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise MissingTools(f"--export onnx needs {module}: pip install 'lit_cnn[export]'")


def _onnx(model: nn.Module) -> bytes:
    check_tools("onnx")
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        # An example batch of 2: a batch of 1 would let the exporter fix N to 1.
        program = torch.onnx.export(
            model,
            (torch.zeros(2, 1, 32, 32),),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def _torchscript(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with _quiet_exporter():  # torch.jit is deprecated, and still what libtorch loads
        torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def export(model: nn.Module, fmt: str) -> bytes:
    """The model as an ONNX or TorchScript file's bytes.

    Args:
        model: The ensemble (:func:`lit_cnn.load_ensemble`), in eval mode.
        fmt: ``"onnx"`` or ``"torchscript"``.

    Raises:
        ExportError: The ONNX tools are not installed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected onnx or torchscript")
    return _onnx(model) if fmt == "onnx" else _torchscript(model)


def runner(data: bytes, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """Loads exported bytes the way an application would, without lit_cnn.

    Returns:
        A function mapping float32 (N, 1, 32, 32) arrays to (N, 10) probabilities.
    """
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT], {INPUT: x})[0]
    with _quiet_exporter():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    return run


@torch.inference_mode()
def largest_difference(
    model: nn.Module, run: Callable[[np.ndarray], np.ndarray], x: Tensor, batch_size: int
) -> float:
    """The largest absolute difference between an export's and PyTorch's probabilities.

    Args:
        model: The PyTorch model that was exported.
        run: The exported model (:func:`runner`).
        x: Network input, (N, 1, 32, 32).
        batch_size: Batches of this size, and the first image alone, are compared.

    Raises:
        ExportError: The output is not (n, 10) for a batch of n.
    """
    worst = 0.0
    batches = [x[:1]] + [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    for batch in batches:
        ours = model(batch).numpy()
        theirs = np.asarray(run(batch.numpy()))
        if theirs.shape != ours.shape:
            raise ExportError(
                f"the exported model returned shape {theirs.shape} for {tuple(batch.shape)}"
            )
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return worst
