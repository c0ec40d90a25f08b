"""Prediction with a finished run: the fold ensemble as one model, MNIST's preprocessing for
real images, the inputs ``scripts/predict.py`` reads, and the export to ONNX or TorchScript.

:func:`load_ensemble` and :func:`preprocess` are also ``lit_cnn.load_ensemble`` and
``lit_cnn.preprocess``; this package imports neither Lightning nor the ONNX tools.
"""

from lit_cnn.predict.ensemble import Ensemble, RunDirError, load_ensemble
from lit_cnn.predict.images import preprocess

__all__ = ["Ensemble", "RunDirError", "load_ensemble", "preprocess"]
