"""Output shapes layer by layer, worked out by hand and checked against a real forward pass.

The notebook's Question 1 asks for each layer's output shape without torchsummary. This module
does the same arithmetic, shows it, and proves it: one forward pass on a zero image records
what every leaf layer really received and produced, and each row's formula must give exactly
that shape, or :func:`layer_table` raises.

    >>> from torch import nn
    >>> from lit_cnn.models.shapes import format_table, layer_table
    >>> rows = layer_table(nn.Sequential(nn.Conv2d(1, 33, 2, stride=2), nn.MaxPool2d(2, 2)))
    >>> rows[0].formula
    '(32 − 2 + 2·0)/2 + 1 = 16'
    >>> rows[1].out_shape
    (33, 8, 8)

Only torch is imported here (no Lightning): a LightningModule is just an ``nn.Module``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LayerRow", "SUPPORTED_LAYERS", "format_table", "layer_table"]

Shape = tuple[int, ...]

# Layers whose output has the shape of their input. Element-wise activations and
# normalisations only; anything that may resize a dimension needs its own formula.
_UNCHANGED: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool2d, nn.AvgPool2d)

#: Layer types :func:`layer_table` can compute a shape for (subclasses included).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    *_POOLS,
    nn.Flatten,
    nn.Linear,
    *_UNCHANGED,
)


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One leaf layer as the forward pass met it.

    Attributes:
        name: Dotted path of the layer in the module, e.g. ``"net.0"`` (``""`` when the
            module given to :func:`layer_table` is itself the layer).
        layer: Short description, e.g. ``"Conv2d(1, 16, k=3, s=1, p=1)"``.
        in_shape: Shape of the layer's input without the batch dimension, e.g. ``(1, 32, 32)``.
        out_shape: Shape of its output without the batch dimension, e.g. ``(16, 32, 32)``
            or ``(2048,)``.
        formula: The arithmetic giving ``out_shape``, e.g. ``"(32 − 3 + 2·1)/1 + 1 = 32"``.
        params: Number of parameters of the layer (0 when an earlier row holds them already).
    """

    name: str
    layer: str
    in_shape: Shape
    out_shape: Shape
    formula: str
    params: int


class _UnsupportedLayer(Exception):
    """Raised from a hook to stop the forward pass at a layer with no shape formula."""


def layer_table(module: nn.Module, input_shape: Sequence[int] = (1, 32, 32)) -> list[LayerRow]:
    """Lists every leaf layer's output shape, the formula that gives it, and its parameters.

    One forward pass on ``torch.zeros(1, *input_shape)`` (eval mode, no gradients) records
    the input and output shape of each leaf module (one with no children) in the order the
    layers run. For each of them the output shape is then computed from its recorded input by
    the usual formulas (conv ``⌊(H − K + 2P)/S⌋ + 1``, pooling ``⌊(H − F + 2P)/S⌋ + 1``,
    Flatten the product, Linear its ``out_features``) and must equal the real one.

    Only leaves get rows: work a container does in its own ``forward`` (the addition of a
    skip connection, a reshape, a functional call) has none, though the layers around it
    still show its effect. A leaf run twice gets two rows; a parameter shared between rows
    is counted in the first, so the rows' params add up to the module's parameter count when
    every parameter is used in the forward pass.

    The train/eval mode of every submodule is restored and all hooks removed afterwards, even
    when an error is raised.

    Args:
        module: Any ``nn.Module`` taking one image batch, e.g. a LightningModule from
            :func:`lit_cnn.get_model` or an ``nn.Sequential``.
        input_shape: Shape of one input without the batch dimension, e.g. ``(C, H, W)``.

    Returns:
        One :class:`LayerRow` per leaf layer call, in execution order.

    Raises:
        ValueError: ``input_shape`` is not positive integers; a leaf layer is not one of
            :data:`SUPPORTED_LAYERS`; the forward pass fails (e.g. the input is too small);
            or a formula disagrees with the forward pass.
    """
    input_shape = _check_input_shape(input_shape)
    # (name, layer, batched input shape, batched output shape), filled in by the hooks.
    calls: list[list[Any]] = []
    names = {id(m): name for name, m in module.named_modules()}
    leaves = [m for m in module.modules() if next(m.children(), None) is None]

    def before(layer: nn.Module, args: tuple, kwargs: dict) -> None:
        name = names[id(layer)]
        # Checked before the layer runs: an unsupported layer (an LSTM returning a tuple,
        # say) could otherwise make a later layer fail with a far less helpful message.
        if not isinstance(layer, SUPPORTED_LAYERS):
            raise _UnsupportedLayer(
                f"layer {_label(name)} ({_describe(layer)}) is not supported: layer_table "
                f"computes shapes for {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}"
            )
        calls.append([name, layer, _first_tensor(args, kwargs).shape, None])

    def after(layer: nn.Module, args: tuple, output: Any) -> None:
        # Leaves have no children, so the last call still open is this layer's.
        calls[-1][3] = output.shape

    modes = {m: m.training for m in module.modules()}
    handles = []
    try:
        for leaf in leaves:
            handles.append(leaf.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(leaf.register_forward_hook(after))
        module.eval()
        x = torch.zeros(1, *input_shape, **_factory_kwargs(module))
        try:
            with torch.no_grad():
                module(x)
        except _UnsupportedLayer as err:
            raise ValueError(str(err)) from None
        except Exception as err:
            where = f" in {_label(calls[-1][0])} ({_describe(calls[-1][1])})" if calls else ""
            raise ValueError(
                f"the forward pass on input shape {_shape_str(input_shape)} failed{where}: {err}"
            ) from err
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.train(training)

    rows = []
    seen: set[int] = set()
    for name, layer, in_shape, out_shape in calls:
        expected, formula = _expected_shape(name, layer, tuple(in_shape))
        if expected != tuple(out_shape):
            raise ValueError(
                f"shape formula for {_label(name)} ({_describe(layer)}) gives "
                f"{_unbatch(expected)} but the forward pass gave {_unbatch(tuple(out_shape))}"
            )
        params = 0
        for p in layer.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel()
        rows.append(
            LayerRow(
                name=name,
                layer=_describe(layer),
                in_shape=_unbatch(tuple(in_shape)),
                out_shape=_unbatch(tuple(out_shape)),
                formula=formula,
                params=params,
            )
        )
    return rows


def format_table(rows: Sequence[LayerRow]) -> str:
    """Renders rows from :func:`layer_table` as a fixed-width text table with a total.

    Args:
        rows: The rows to show, in order.

    Returns:
        The table (columns name, layer, output, formula, params) followed by a line
        ``total params: N`` (N with thousands separators), without a trailing newline.
    """
    header = ("name", "layer", "output", "formula", "params")
    body = [
        (_label(r.name), r.layer, _shape_str(r.out_shape), r.formula, f"{r.params:,}") for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        # Params are right-aligned so their digits line up; the text columns read left to right.
        left = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True))
        return f"{left}  {cells[-1].rjust(widths[-1])}"

    lines = [line(header), line(["-" * w for w in widths])]
    lines += [line(cells) for cells in body]
    lines.append(f"total params: {sum(r.params for r in rows):,}")
    return "\n".join(lines)


# --- shape formulas ---------------------------------------------------------------------------


def _expected_shape(name: str, layer: nn.Module, in_shape: Shape) -> tuple[Shape, str]:
    """Computes a layer's batched output shape from its batched input shape, with the working."""
    if isinstance(layer, nn.Conv2d):
        return _conv_shape(layer, in_shape)
    if isinstance(layer, _POOLS):
        return _pool_shape(layer, in_shape)
    if isinstance(layer, nn.Flatten):
        return _flatten_shape(name, layer, in_shape)
    if isinstance(layer, nn.Linear):
        return (*in_shape[:-1], layer.out_features), f"{in_shape[-1]} → {layer.out_features}"
    # Only supported layers reach here (the pre-hook rejected the rest): shape-preserving.
    return in_shape, "unchanged"


def _conv_shape(conv: nn.Conv2d, in_shape: Shape) -> tuple[Shape, str]:
    size = in_shape[-2:]
    if conv.padding == "same":
        # PyTorch pads (asymmetrically if need be) so that the output keeps the input's size.
        return (*in_shape[:-3], conv.out_channels, *size), f"padding='same' keeps {_hw(size)}"
    padding = (0, 0) if conv.padding == "valid" else _pair(conv.padding)
    return _window_shape(
        in_shape[:-3] + (conv.out_channels,),
        size,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        padding,
        _pair(conv.dilation),
        ceil_mode=False,
        show_zero_padding=True,
    )


def _pool_shape(pool: nn.Module, in_shape: Shape) -> tuple[Shape, str]:
    kernel = _pair(pool.kernel_size)
    # Both pools default the stride to the kernel size; guard against a None set later.
    stride = _pair(pool.stride) if pool.stride is not None else kernel
    return _window_shape(
        in_shape[:-2],
        in_shape[-2:],
        kernel,
        stride,
        _pair(pool.padding),
        _pair(getattr(pool, "dilation", 1)),  # AvgPool2d has no dilation
        ceil_mode=pool.ceil_mode,
        # The notebook writes pooling as (H − F)/S + 1: show the padding only when there is some.
        show_zero_padding=False,
    )


def _window_shape(
    lead: Shape,
    size: Shape,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    *,
    ceil_mode: bool,
    show_zero_padding: bool,
) -> tuple[Shape, str]:
    """Applies the sliding-window formula to H and W; one text when both work out alike."""
    outs, texts = [], []
    for i in range(2):
        out, text = _window_dim(
            size[i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode, show_zero_padding
        )
        outs.append(out)
        texts.append(text)
    formula = texts[0] if texts[0] == texts[1] else f"H: {texts[0]}; W: {texts[1]}"
    return (*lead, *outs), formula


def _window_dim(
    size: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    ceil_mode: bool,
    show_zero_padding: bool,
) -> tuple[int, str]:
    """One spatial dimension: ``⌊(H − K + 2P)/S⌋ + 1``, or ``⌈…⌉`` in ceil mode."""
    span = dilation * (kernel - 1) + 1
    numerator = size - span + 2 * padding
    quotient = -(-numerator // stride) if ceil_mode else numerator // stride
    out = quotient + 1

    kernel_text = str(kernel) if dilation == 1 else f"({dilation}·({kernel} − 1) + 1)"
    pad_text = f" + 2·{padding}" if padding or show_zero_padding else ""
    inner = f"({size} − {kernel_text}{pad_text})/{stride}"
    # Brackets only when the division is inexact, so the reader sees where rounding happened.
    if numerator % stride:
        inner = f"⌈{inner}⌉" if ceil_mode else f"⌊{inner}⌋"
    text = f"{inner} + 1 = {out}"
    # PyTorch drops a last window that would start beyond the input and its left padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
        text = f"{inner} + 1 − 1 = {out} (the last window would start past the input)"
    return out, text


def _flatten_shape(name: str, flatten: nn.Flatten, in_shape: Shape) -> tuple[Shape, str]:
    ndim = len(in_shape)
    start = flatten.start_dim % ndim
    end = flatten.end_dim % ndim
    if start == 0:
        # Rows are shown without the batch dimension; merging it in would make that meaningless.
        raise ValueError(
            f"layer {_label(name)} ({_describe(flatten)}) flattens the batch dimension; "
            "layer_table needs start_dim >= 1"
        )
    merged = in_shape[start : end + 1]
    total = math.prod(merged)
    formula = f"{'·'.join(map(str, merged))} = {total}" if len(merged) > 1 else "unchanged"
    return (*in_shape[:start], total, *in_shape[end + 1 :]), formula


# --- helpers ----------------------------------------------------------------------------------


def _check_input_shape(input_shape: Sequence[int]) -> Shape:
    # operator.index accepts NumPy and torch integers but refuses floats, which torch.zeros
    # would otherwise reject with a less direct message.
    try:
        if isinstance(input_shape, str) or any(isinstance(n, bool) for n in input_shape):
            raise TypeError
        shape = tuple(operator.index(n) for n in input_shape)
    except TypeError:
        raise ValueError(
            f"input_shape must be a sequence of integers, got {input_shape!r}"
        ) from None
    if not shape:
        raise ValueError("input_shape must have at least one dimension")
    if min(shape) < 1:
        raise ValueError(f"input_shape must be positive, got {shape}")
    return shape


def _factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """Device and dtype of the module's first floating-point parameter (CPU float32 if none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return {"device": p.device, "dtype": p.dtype}
    return {}


def _first_tensor(args: tuple, kwargs: dict) -> Tensor:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    raise TypeError("layer called without a tensor input")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return first, second


def _unbatch(shape: Shape) -> Shape:
    return shape[1:]


def _label(name: str) -> str:
    return name or "(root)"


def _shape_str(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def _hw(size: Sequence[int]) -> str:
    return str(size[0]) if size[0] == size[1] else _shape_str(size)


def _int_or_pair(value: int | Sequence[int]) -> str:
    first, second = _pair(value)
    return str(first) if first == second else f"({first}, {second})"


def _describe(layer: nn.Module) -> str:
    """A short, one-line description of a layer, e.g. ``Conv2d(1, 16, k=3, s=1, p=1)``."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Conv2d):
        padding = layer.padding if isinstance(layer.padding, str) else _int_or_pair(layer.padding)
        parts = [
            str(layer.in_channels),
            str(layer.out_channels),
            f"k={_int_or_pair(layer.kernel_size)}",
            f"s={_int_or_pair(layer.stride)}",
            f"p={padding}",
        ]
        if _pair(layer.dilation) != (1, 1):
            parts.append(f"d={_int_or_pair(layer.dilation)}")
        if layer.groups != 1:
            parts.append(f"groups={layer.groups}")
        if layer.bias is None:
            parts.append("bias=False")
        return f"{kind}({', '.join(parts)})"
    if isinstance(layer, _POOLS):
        parts = [f"k={_int_or_pair(layer.kernel_size)}"]
        if layer.stride is not None:
            parts.append(f"s={_int_or_pair(layer.stride)}")
        if _pair(layer.padding) != (0, 0):
            parts.append(f"p={_int_or_pair(layer.padding)}")
        if _pair(getattr(layer, "dilation", 1)) != (1, 1):
            parts.append(f"d={_int_or_pair(layer.dilation)}")
        if layer.ceil_mode:
            parts.append("ceil_mode=True")
        return f"{kind}({', '.join(parts)})"
    if isinstance(layer, nn.Linear):
        bias = "" if layer.bias is not None else ", bias=False"
        return f"{kind}({layer.in_features}, {layer.out_features}{bias})"
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{kind}({layer.num_features})"
    if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) == (1, -1):
        return f"{kind}()"
    # Anything else: its own extra_repr, which is short for the simple layers.
    return f"{kind}({layer.extra_repr()})"
