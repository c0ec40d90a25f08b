"""Models: the six networks as plain torch modules (:mod:`.nets`, no Lightning), their
LightningModules and registry (:mod:`.modules`), and shape tables (:mod:`.shapes`).

The registry's names are imported lazily, so ``lit_cnn.models.nets`` loads without Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "CNNModule",
    "LOGGED_METRICS",
    "get_model",
    "get_model_class",
    "list_models",
    "register",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module("lit_cnn.models.modules"), name)
    raise AttributeError(f"module 'lit_cnn.models' has no attribute {name!r}")
