"""Data: the notebook's pickle format behind a restricted unpickler, IDX conversion, and the
bundled MNIST sample. Needs numpy and torch only."""

from lit_cnn.data.loading import (
    SAMPLE,
    DataError,
    ImageData,
    load_dataset,
    load_images,
    pad_images,
    to_float,
)

__all__ = [
    "SAMPLE",
    "DataError",
    "ImageData",
    "load_dataset",
    "load_images",
    "pad_images",
    "to_float",
]
