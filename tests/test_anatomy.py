"""The rules the check's hints and the profile's causes share: what a model's layers do at the borders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance._engine.anatomy import (
    Padded,
    covering,
    padding_of,
    reach,
    reaching,
    read_structure,
    sampling,
    varies_over_positions,
)

PADDINGS = {
    "same conv": (nn.Conv2d(1, 1, 5, padding="same", dilation=2), ((4, 4), "zeros")),
    "int padding": (nn.Conv2d(1, 1, 3, padding=(1, 2)), ((1, 2), "zeros")),
    "circular conv": (nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), ((1, 1), "circular")),
    "valid conv": (nn.Conv2d(1, 1, 3), None),
    "'valid' conv": (nn.Conv2d(1, 1, 3, padding="valid"), None),
    "transposed conv": (nn.ConvTranspose2d(1, 1, 3, padding=1), None),
    "max pool": (nn.MaxPool2d(3, 2, padding=1), ((1, 1), "-inf")),
    "avg pool": (nn.AvgPool2d(3, 1, padding=1), ((1, 1), "zeros")),
    "unpadded pool": (nn.MaxPool2d(2), None),
    "zero pad": (nn.ZeroPad2d((1, 0, 3, 2)), ((3, 1), "zeros")),
    "constant pad": (nn.ConstantPad2d(1, 0.5), ((1, 1), "constant")),
    "reflection pad": (nn.ReflectionPad2d((0, 0, 2, 2)), ((2, 0), "reflect")),
    "circular pad": (nn.CircularPad2d(1), ((1, 1), "circular")),
    "relu": (nn.ReLU(), None),
}


@pytest.mark.parametrize("name", sorted(PADDINGS))
def test_padding_is_read_per_dim_with_its_mode(name: str) -> None:
    module, expected = PADDINGS[name]
    assert padding_of(module, 2) == expected


def test_a_strided_layer_rounds_the_reach_to_its_output_and_one_that_neither_pads_nor_strides_is_none() -> (
    None
):
    strided = sampling("down", nn.Conv2d(1, 1, 2, stride=2), 2, (4, 4))
    assert strided == Padded("down", "Conv2d", (0, 0), "zeros", (4, 4), (2, 2))
    assert strided.reach() == (4, 4)  # no padding, but a step of 2 at stride 4
    padded = sampling("pool", nn.MaxPool2d(3, 2, padding=1), 2, (2, 2))
    assert padded is not None
    assert padded.reach() == (4, 4)  # (1 + 2 - 1) * 2
    assert sampling("relu", nn.ReLU(), 2, (1, 1)) is None


def _layer(name: str, padding: int, mode: str, stride: int) -> Padded:
    return Padded(name, "Conv2d", (padding, padding), mode, (stride, stride), (1, 1))


def test_the_reach_starts_at_the_first_padding_the_boundary_does_not_match() -> None:
    layers = [
        _layer("a", 1, "circular", 1),
        Padded("pool", "MaxPool2d", (1, 1), "-inf", (1, 1), (2, 2)),
        _layer("b", 1, "circular", 2),
    ]
    assert [layer.name for layer in reaching(layers, "zeros")] == ["a", "pool", "b"]
    assert [layer.name for layer in reaching(layers, "circular")] == ["pool", "b"]
    assert reach(reaching(layers, "circular"), 2) == (4, 4)  # (1 + 1) * 1, then 1 * 2
    assert reaching([_layer("a", 1, "circular", 1)], "circular") == []  # every padding matches: none


def test_a_reach_covers_a_map_only_where_twice_it_is_a_moved_side() -> None:
    layers = [_layer("dw", 3, "zeros", 4)]  # 12 input samples: 3 samples at stride 4
    cover = covering(layers, "zeros", (4, 4), (5, 6), [0])
    assert cover is not None
    assert (cover.reach, cover.side, cover.dim) == ((3, 3), 5, 0)
    assert covering(layers, "zeros", (4, 4), (7, 6), [0]) is None  # a sample 3 from each edge is out
    assert covering(layers, "zeros", (4, 4), (6, 6), [0]) is not None  # the edge: twice the reach is the side
    assert covering(layers, "zeros", (4, 4), (7, 6), [1]) is not None
    assert covering(layers, "circular", (4, 4), (5, 6), [0]) is not None
    assert covering([_layer("dw", 3, "circular", 4)], "circular", (4, 4), (5, 6), [0]) is None


def test_a_parameter_constant_over_positions_is_no_position_embedding() -> None:
    assert varies_over_positions(torch.randn(1, 17, 16))
    assert not varies_over_positions(torch.zeros(1, 17, 16))
    assert not varies_over_positions(torch.randn(1, 1, 16).expand(1, 17, 16))  # a bias per channel
    assert not varies_over_positions(torch.randn(8, 1, 1).expand(8, 6, 6))  # channels first, too
    one = torch.zeros(8, 6, 6)
    one[3, 2, 4] = 1.0  # the edge: a single position of a single channel differs
    assert varies_over_positions(one)


def test_the_structure_of_a_function_is_read_where_it_calls_one_module() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1)
    other = nn.Conv2d(2, 2, 3, padding=1)
    x = torch.rand(1, 1, 8, 8)

    def one(t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = conv(t)
        return out

    def two(t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = other(conv(t))
        return out

    structure = read_structure(one, one, x, None)
    assert structure is not None
    assert [layer.name for layer in structure.padded] == ["Conv2d"]  # the model is its own layer
    assert read_structure(two, two, x, None) is None  # which module's layers? none are guessed


def test_the_structure_names_a_global_pooling_and_measures_its_change() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.zeros(1, 1, 12, 12)
    x[..., 4:8, 4:8] = torch.rand(1, 1, 4, 4)
    with torch.no_grad():
        inside = read_structure(model, model, x, torch.roll(x, 1, -1))
        leaving = read_structure(model, model, x, torch.roll(x, 6, -1) * (torch.arange(12) >= 6))
    assert inside is not None
    assert leaving is not None
    assert [p.name for p in inside.pooled] == ["1"]
    assert inside.pooled[0].change < 1e-6  # the content stays inside: the average does not change
    assert leaving.pooled[0].change > 1e-2


class PooledInForward(nn.Module):
    """Squeeze-excite as torchvision writes it: the pooling in ``forward``, then 1x1 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(torch.nn.functional.adaptive_avg_pool2d(y, 1)))))
        return y * scale


def test_a_pooling_in_forward_is_named_by_the_layer_it_feeds_and_counted_once() -> None:
    model = PooledInForward().eval()
    x = torch.rand(2, 1, 10, 10)
    with torch.no_grad():
        structure = read_structure(model, model, x, torch.roll(x, 3, -1) * (torch.arange(10) >= 3))
    assert structure is not None
    assert [p.name for p in structure.pooled] == ["the input of 'fc1'"]  # not fc2's: computed from it
    assert structure.pooled[0].change > 1e-3
