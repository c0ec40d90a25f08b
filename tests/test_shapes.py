"""Tests of lit_cnn.models.shapes: hand-computed output shapes checked against forward passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import lit_cnn
from lit_cnn.models.shapes import LayerRow, format_table, layer_table

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "shapes.py"


def _out_shapes(rows: list[LayerRow]) -> list[tuple[int, ...]]:
    return [row.out_shape for row in rows]


def _row(rows: list[LayerRow], name: str) -> LayerRow:
    (match,) = [row for row in rows if row.name == name]
    return match


# --- the notebook's Question 1 ----------------------------------------------------------------


def test_question_1a() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 33, kernel_size=2, stride=2, padding=0),
        nn.Conv2d(33, 55, kernel_size=3, stride=1, padding=1),
        nn.Conv2d(55, 77, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(2, 2),
    )
    rows = layer_table(net, (1, 32, 32))
    assert _out_shapes(rows) == [(33, 16, 16), (55, 16, 16), (77, 16, 16), (77, 8, 8)]
    assert [row.name for row in rows] == ["0", "1", "2", "3"]
    assert rows[0].formula == "(32 − 2 + 2·0)/2 + 1 = 16"
    assert rows[0].layer == "Conv2d(1, 33, k=2, s=2, p=0)"
    assert rows[1].formula == "(16 − 3 + 2·1)/1 + 1 = 16"
    assert rows[3].formula == "(16 − 2)/2 + 1 = 8"
    assert rows[0].in_shape == (1, 32, 32)


def test_question_1b() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 33, kernel_size=2, stride=2, padding=0),
        nn.ReLU(),
        nn.Conv2d(33, 55, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=1),
        nn.Conv2d(55, 77, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )
    rows = [row for row in layer_table(net) if not row.layer.startswith("ReLU")]
    assert _out_shapes(rows) == [
        (33, 16, 16),
        (55, 16, 16),
        (55, 14, 14),
        (77, 14, 14),
        (77, 7, 7),
    ]
    assert rows[2].formula == "(16 − 3)/1 + 1 = 14"
    assert rows[4].formula == "(14 − 2)/2 + 1 = 7"


# --- every registered architecture ------------------------------------------------------------


@pytest.fixture(scope="module", params=lit_cnn.list_models())
def model_and_rows(request: pytest.FixtureRequest) -> tuple[nn.Module, list[LayerRow]]:
    model = lit_cnn.get_model(request.param)
    return model, layer_table(model)


def test_architecture_ends_in_ten_logits(model_and_rows) -> None:
    _, rows = model_and_rows
    assert rows[-1].out_shape == (10,)
    assert rows[0].in_shape == (1, 32, 32)


def test_architecture_params_add_up(model_and_rows) -> None:
    model, rows = model_and_rows
    assert sum(row.params for row in rows) == sum(p.numel() for p in model.parameters())


def test_architecture_rows_match_a_forward_pass(model_and_rows) -> None:
    """Independently of layer_table's own check: each leaf's output shape, in call order."""
    model, rows = model_and_rows
    seen: list[tuple[int, ...]] = []
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [
        m.register_forward_hook(lambda _m, _a, out: seen.append(tuple(out.shape[1:])))
        for m in leaves
    ]
    try:
        model.eval()
        with torch.no_grad():
            logits = model(torch.zeros(1, 1, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert _out_shapes(rows) == seen
    assert rows[-1].out_shape == tuple(logits.shape[1:])
    # Consecutive rows chain: each layer's input is the previous one's output, except inside
    # the skip block, whose shortcut starts again from the block's input.
    for prev, row in zip(rows, rows[1:], strict=False):
        if not row.name.endswith("shortcut.0"):
            assert row.in_shape == prev.out_shape, row.name


def test_known_intermediate_shapes() -> None:
    deep = layer_table(lit_cnn.get_model("DeepCNN"))
    assert _row(deep, "net.6").out_shape == (2048,)
    assert _row(deep, "net.6").formula == "32·8·8 = 2048"
    assert _row(deep, "net.7").formula == "2048 → 120"

    resnn = layer_table(lit_cnn.get_model("ResNN"))
    flatten = [row for row in resnn if row.layer == "Flatten()"]
    assert [row.out_shape for row in flatten] == [(300,)]

    skip = layer_table(lit_cnn.get_model("ResNNBatch_Skip"))
    shortcut = _row(skip, "net.4.shortcut.0")
    assert shortcut.layer == "Conv2d(6, 12, k=1, s=3, p=1)"
    assert shortcut.in_shape == (6, 15, 15)
    assert shortcut.out_shape == (12, 6, 6)
    # 16/3 is not whole: the floor shows.
    assert shortcut.formula == "⌊(15 − 1 + 2·1)/3⌋ + 1 = 6"
    assert _row(skip, "net.4.conv").formula == "(15 − 2 + 2·1)/3 + 1 = 6"


def test_softmax_output_row() -> None:
    rows = layer_table(lit_cnn.get_model("ResNN", softmax_output=True))
    assert rows[-1].layer.startswith("Softmax")
    assert rows[-1].formula == "unchanged"
    assert rows[-1].out_shape == (10,)


# --- the formulas in less common settings -----------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(2, 4, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
        nn.Conv2d(2, 4, kernel_size=3, stride=3, dilation=2),
        nn.Conv2d(2, 4, kernel_size=3, padding="same"),
        nn.Conv2d(2, 4, kernel_size=3, padding="valid", bias=False),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.MaxPool2d(2, stride=2, ceil_mode=True),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.MaxPool2d(2, stride=1, dilation=2),
        nn.AvgPool2d((2, 3), stride=(2, 3), padding=(1, 1)),
        nn.AvgPool2d(3, stride=2, ceil_mode=True),
    ],
    ids=repr,
)
def test_formulas_agree_with_torch(layer: nn.Module) -> None:
    """layer_table raises on any disagreement, so running it on odd sizes is the test."""
    for size in [(2, 9, 9), (2, 10, 13), (2, 7, 8)]:
        (row,) = layer_table(layer, size)
        assert row.out_shape == tuple(layer(torch.zeros(1, *size)).shape[1:])


def test_ceil_mode_formula() -> None:
    (row,) = layer_table(nn.MaxPool2d(2, stride=2, ceil_mode=True), (3, 7, 7))
    assert row.out_shape == (3, 4, 4)
    assert row.formula == "⌈(7 − 2)/2⌉ + 1 = 4"


def test_non_square_formula_names_both_dimensions() -> None:
    (row,) = layer_table(nn.Conv2d(1, 1, kernel_size=(3, 1)), (1, 8, 6))
    assert row.out_shape == (1, 6, 6)
    assert row.formula == "H: (8 − 3 + 2·0)/1 + 1 = 6; W: (6 − 1 + 2·0)/1 + 1 = 6"
    assert row.layer == "Conv2d(1, 1, k=(3, 1), s=1, p=0)"


def test_shared_layer_is_counted_once() -> None:
    conv = nn.Conv2d(3, 3, 3, padding=1)
    rows = layer_table(nn.Sequential(conv, nn.ReLU(), conv), (3, 8, 8))
    assert [row.name for row in rows] == ["0", "1", "0"]
    assert [row.params for row in rows] == [84, 0, 0]


# --- errors -----------------------------------------------------------------------------------


def test_unsupported_layer_is_named() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Flatten())
    with pytest.raises(ValueError, match=r"layer 1 \(Upsample\(.*\) is not supported") as info:
        layer_table(net)
    assert "Conv2d" in str(info.value) and "Linear" in str(info.value)


def test_unsupported_layer_before_it_breaks_the_next() -> None:
    net = nn.Sequential(nn.LSTM(32, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(LSTM\(.*is not supported"):
        layer_table(net, (4, 32))


class _CroppingConv(nn.Conv2d):
    """A conv whose forward drops a row and a column: its formula can no longer be right."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[..., 1:, 1:]


def test_formula_mismatch_raises() -> None:
    net = nn.Sequential(nn.ReLU(), _CroppingConv(1, 4, kernel_size=3, padding=1))
    pattern = (
        r"shape formula for 1 \(_CroppingConv\(1, 4, k=3, s=1, p=1\)\) gives \(4, 32, 32\) "
        r"but the forward pass gave \(4, 31, 31\)"
    )
    with pytest.raises(ValueError, match=pattern):
        layer_table(net)


def test_failed_forward_names_the_layer() -> None:
    with pytest.raises(ValueError, match=r"failed in net\.7 \(Linear\(2048, 120\)\)"):
        layer_table(lit_cnn.get_model("DeepCNN"), (1, 28, 28))


@pytest.mark.parametrize("shape", [(), (1, 0, 32), (1, 32.0, 32), (1, True, 4), "abc", 5])
def test_bad_input_shape(shape) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        layer_table(nn.ReLU(), shape)


def test_input_shape_accepts_integer_likes() -> None:
    rows = layer_table(nn.MaxPool2d(2), torch.tensor([3, 8, 8]))
    assert rows[0].out_shape == (3, 4, 4)


def test_flatten_of_the_batch_dimension_is_rejected() -> None:
    with pytest.raises(ValueError, match="flattens the batch dimension"):
        layer_table(nn.Sequential(nn.Flatten(0)), (3, 4))


# --- side effects -----------------------------------------------------------------------------


def _hook_counts(module: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()]


@pytest.mark.parametrize("training", [True, False])
def test_mode_and_hooks_restored(training: bool) -> None:
    model = lit_cnn.get_model("ResNNBatch_Skip")
    model.train(training)
    # A submodule in the other mode (a frozen BatchNorm, say) must keep it too.
    model.net[1].train(not training)
    modes = [m.training for m in model.modules()]
    before = _hook_counts(model)
    layer_table(model)
    assert [m.training for m in model.modules()] == modes
    assert _hook_counts(model) == before


def test_mode_and_hooks_restored_after_an_error() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Upsample(scale_factor=2))
    net.train()
    with pytest.raises(ValueError):
        layer_table(net)
    assert all(m.training for m in net.modules())
    assert all(count == 0 for count in _hook_counts(net))


def test_no_gradients_recorded() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 30 * 30, 3))
    layer_table(net)
    assert all(p.grad is None for p in net.parameters())


# --- the table and the script -----------------------------------------------------------------


def test_format_table() -> None:
    text = format_table(layer_table(lit_cnn.get_model("DeepCNN")))
    lines = text.splitlines()
    assert lines[0].split() == ["name", "layer", "output", "formula", "params"]
    assert lines[-1] == "total params: 251,890"
    # Fixed width: every row of the table proper is as long as the header.
    assert {len(line) for line in lines[:-1]} == {len(lines[0])}
    assert any("32×8×8" in line for line in lines)
    assert format_table([]).splitlines()[-1] == "total params: 0"


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_script_prints_the_table() -> None:
    result = _run_script("DeepCNN")
    assert result.returncode == 0, result.stderr
    assert "2048" in result.stdout
    assert "total params: 251,890" in result.stdout


@pytest.mark.slow
def test_script_unknown_model() -> None:
    result = _run_script("Foo")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("shapes.py: error: unknown model 'Foo'; valid models: ")
    assert all(name in lines[0] for name in lit_cnn.list_models())
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
