"""lit_cnn: train, cross-validate and compare small CNNs on MNIST-style data with Lightning.

The names below are imported lazily, so ``import lit_cnn`` stays cheap: the data layer does
not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "lit_cnn.data.loading",
    "DataError": "lit_cnn.data.loading",
    "list_models": "lit_cnn.models.modules",
    "get_model": "lit_cnn.models.modules",
    "get_model_class": "lit_cnn.models.modules",
    "CNNModule": "lit_cnn.models.modules",
    "layer_table": "lit_cnn.models.shapes",
    "load_ensemble": "lit_cnn.predict.ensemble",
    "preprocess": "lit_cnn.predict.images",
}

__all__ = [
    "CNNModule",
    "DataError",
    "__version__",
    "get_model",
    "get_model_class",
    "layer_table",
    "list_models",
    "load_dataset",
    "load_ensemble",
    "preprocess",
]

if TYPE_CHECKING:  # pragma: no cover
    from lit_cnn.data.loading import DataError, load_dataset
    from lit_cnn.models.modules import CNNModule, get_model, get_model_class, list_models
    from lit_cnn.models.shapes import layer_table
    from lit_cnn.predict.ensemble import load_ensemble
    from lit_cnn.predict.images import preprocess


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_cnn' has no attribute {name!r}")
