"""MNIST's own preprocessing, for real images: a scan, a phone photo, a digit drawn in a paint
program become what the networks were trained on.

Every image is turned into grayscale and, when its border is brighter than mid-grey (a dark
digit on light paper), inverted, so that every digit is light on dark. An image that is already
28 x 28 or 32 x 32 is then taken as it is, so MNIST-style files give exactly the tensors of the
data path. Any other size is normalised as MNIST was made (LeCun et al.): the background (a
plane fitted to the border, so that uneven lighting goes too) is taken away, the digit is
cropped to its bounding box, scaled to fit 20 x 20 keeping its aspect ratio, and placed in a
28 x 28 field with its centre of mass at the field's centre; :func:`lit_cnn.data.to_float`
then pads it to 32 x 32, as for the training images.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from lit_cnn.data.loading import to_float

__all__ = ["BOX", "FIELD", "PIXEL_SCALE", "digit_pixels", "normalise", "preprocess", "to_gray"]

#: The sides taken as they are (MNIST's 28 and the padded 32).
MNIST_SIDES = (28, 32)
#: The box a digit is scaled to fit, and the field it is centred in (MNIST's).
BOX, FIELD = 20, 28
#: Where a digit's centre of mass lies in MNIST's 28 x 28 field, in pixel indices: the mean
#: over the bundled sample's digits is (14.0, 14.0).
CENTRE = 14.0
#: An 8-bit image's white. The run's scale maps its training images' maximum to 1.0; an
#: image's white is mapped to 1.0 likewise.
PIXEL_SCALE = 255.0
# A pixel counts towards the bounding box from this fraction of the brightest one: the faint
# edge that resampling or a camera leaves around a stroke does not widen the box.
_BOX_LEVEL = 0.1
# Components of fewer pixels than this, or than this share of the largest, are specks.
_SPECK, _SPECK_SHARE = 4, 0.02
_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: Larger images (a phone's photo) are first shrunk to this side: the digit ends up 20 pixels
#: high, and the float arrays below stay small.
WORKING_SIDE = 1024


def _luminance(image: Image.Image) -> np.ndarray:
    # float64 luminance in [0, 255]. Pillow clips 16-bit and float pixels when it converts
    # them to "L", so those modes are scaled here instead.
    if image.mode in _16_BIT or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode in _16_BIT or values.max() > 255:
            values = values / 257.0
        return np.clip(values, 0, 255)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return np.clip(values * 255.0 if values.max() <= 1.0 else values, 0, 255)
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        gray = np.asarray(image.convert("RGBA").convert("L"), dtype=np.float64)
        alpha = rgba[..., 3] / 255.0
        if alpha.min() < 1.0:
            # Transparent pixels hold any colour; they are filled with the colour that
            # contrasts with the ink, which is what a viewer shows the digit on.
            ink = float((gray * alpha).sum() / max(alpha.sum(), 1e-9))
            background = 255.0 if ink < 128 else 0.0
            return gray * alpha + background * (1.0 - alpha)
        return gray
    return np.asarray(image.convert("L"), dtype=np.float64)


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


def to_gray(image: Image.Image) -> np.ndarray:
    """Grayscale, light digit on dark ground: the image as MNIST's polarity has it.

    Args:
        image: Any image Pillow opened; its EXIF orientation (phone photos) is applied.

    Returns:
        uint8 (H, W): inverted when the border's mean brightness is above mid-grey.
    """
    image = ImageOps.exif_transpose(image)
    if max(image.size) > WORKING_SIDE and image.mode in ("L", "LA", "RGB", "RGBA"):
        image = ImageOps.contain(image, (WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    if image.mode == "L":  # most scans and MNIST-style files: no float copy needed
        gray = np.asarray(image)
    else:
        gray = np.rint(_luminance(image)).astype(np.uint8)
    if _border(gray).mean() > 127.5:
        gray = 255 - gray
    return gray


def _flattened(gray: np.ndarray) -> np.ndarray:
    # The paper or the screen is rarely black, nor evenly lit: a plane fitted to the border
    # (refitted without the pixels far above it, where a stroke touches the edge) is taken
    # away, which leaves a photo's background near 0, as MNIST's is.
    values = gray.astype(np.float64)
    target = _border(values)
    if target.min() == target.max():  # an even ground, as drawn on a computer
        return np.clip(values - target[0], 0, None)
    height, width = values.shape
    rows, cols = np.arange(height) / height, np.arange(width) / width
    inner = rows[1:-1]
    design = np.stack(
        [
            np.ones(len(target)),
            np.concatenate([np.zeros(width), np.full(width, rows[-1]), inner, inner]),
            np.concatenate([cols, cols, np.zeros(height - 2), np.full(height - 2, cols[-1])]),
        ],
        axis=1,
    )  # the ring's coordinates, in _border's order
    keep = np.ones(len(target), dtype=bool)
    for _ in range(2):
        coef = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]
        residual = target - design @ coef
        keep = residual <= 3 * np.median(np.abs(residual)) + 1
    background = coef[0] + coef[1] * rows[:, None] + coef[2] * cols[None, :]
    return np.clip(values - background, 0, None)


def _ink_box(values: np.ndarray) -> tuple[int, int, int, int]:
    # The box of the pixels above a tenth of the brightest, without specks: components much
    # smaller than the largest (noise, dust) do not widen it.
    labels, count = ndimage.label(values >= _BOX_LEVEL * 255)
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        kept = np.flatnonzero(sizes >= max(_SPECK, _SPECK_SHARE * sizes.max())) + 1
        labels = np.where(np.isin(labels, kept), labels, 0)
    return Image.fromarray((labels > 0).astype(np.uint8)).getbbox()


def normalise(gray: np.ndarray) -> np.ndarray:
    """MNIST's normalisation of a light-on-dark digit of any size.

    Args:
        gray: uint8 (H, W), light digit on dark ground (see :func:`to_gray`).

    Returns:
        uint8 (28, 28): the digit scaled to fit 20 x 20, its centre of mass at (14, 14); all
        zero when the image holds no digit (a blank page).
    """
    values = _flattened(gray)
    top = values.max()
    field = Image.new("L", (FIELD, FIELD))
    if top <= 0:
        return np.asarray(field)
    values *= 255.0 / top
    digit = Image.fromarray(np.rint(values).astype(np.uint8)).crop(_ink_box(values))
    # Lanczos resampling anti-aliases, which is what gave MNIST's digits their grey levels.
    digit = ImageOps.contain(digit, (BOX, BOX), method=Image.Resampling.LANCZOS)
    row, col = ndimage.center_of_mass(np.asarray(digit, dtype=np.float64))
    if not np.isfinite(row):  # the resampled digit vanished: nothing to centre
        row, col = (digit.height - 1) / 2, (digit.width - 1) / 2
    field.paste(digit, (round(CENTRE - col), round(CENTRE - row)))  # paste clips at the edges
    return np.asarray(field)


def digit_pixels(image: Image.Image) -> np.ndarray:
    """An image's digit as MNIST stores one: uint8 (S, S), S = 28 or 32.

    Args:
        image: Any image Pillow opened (loaded or not).

    Returns:
        The image itself, grayscale and inverted if need be, when it is 28 x 28 or 32 x 32;
        else :func:`normalise`'s 28 x 28 digit.
    """
    gray = to_gray(image)
    if gray.shape[0] == gray.shape[1] and gray.shape[0] in MNIST_SIDES:
        return gray
    return normalise(gray)


def preprocess(image: Image.Image | str | os.PathLike[str] | np.ndarray | Any) -> torch.Tensor:
    """The network input of one image, as ``scripts/predict.py`` makes it.

    Args:
        image: A Pillow image, the path of an image file, or a 2-D array of 8-bit pixel
            values (H, W).

    Returns:
        float32 (1, 32, 32) in [0, 1]: the input of :func:`lit_cnn.load_ensemble`'s model
        (add a batch dimension with ``[None]``).
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            pixels = digit_pixels(opened)
    elif isinstance(image, np.ndarray):
        pixels = digit_pixels(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)))
    else:
        pixels = digit_pixels(image)
    return to_float(torch.from_numpy(pixels.copy())[None, None], PIXEL_SCALE)[0]
