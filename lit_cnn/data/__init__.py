"""Data: the MNIST files people have (pickles, gzipped or not, npz, IDX folders) read behind
a restricted unpickler and size checks, IDX conversion, and the bundled MNIST sample. Needs
numpy and torch only."""

from lit_cnn.data.loading import (
    SAMPLE,
    DataError,
    ImageData,
    data_path,
    load_dataset,
    load_images,
    pad_images,
    to_float,
)

__all__ = [
    "SAMPLE",
    "DataError",
    "ImageData",
    "data_path",
    "load_dataset",
    "load_images",
    "pad_images",
    "to_float",
]
