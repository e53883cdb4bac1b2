"""The strides of a model's maps, followed module by module (for the Lie derivative's generators)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.grids import Grids, ratio_stride
from equivariance.models import LeNet


def followed(model: nn.Module, x: torch.Tensor) -> Grids:
    grids = Grids(tuple(x.shape[2:]))
    with grids.following(model):
        model(x)
    return grids


def test_valid_convolutions_keep_stride_one_however_much_they_shrink_the_map() -> None:
    grids = followed(LeNet(), torch.zeros(1, 1, 28, 28))  # 28 -> 24 -> 20 -> 16 -> 12
    assert [grids.stride((1, 5, n, n)) for n in (24, 20, 16, 12)] == [(1, 1)] * 4
    assert ratio_stride((12, 12), (28, 28)) == (2, 2)  # what reading the sizes alone would say
    assert grids.stride((1, 10)) is None  # logits have no grid


def test_strides_multiply_along_the_chain_and_upsampling_divides_them() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3),
        nn.Upsample(scale_factor=2),
    )  # fmt: skip
    grids = followed(model, torch.zeros(1, 1, 32, 32))  # 16 -> 8 -> 6 -> 12
    assert grids.stride((1, 2, 16, 16)) == (2, 2)
    assert grids.stride((1, 2, 8, 8)) == (4, 4)
    assert grids.stride((1, 2, 6, 6)) == (4, 4)  # a valid convolution on the coarse grid
    assert grids.stride((1, 2, 12, 12)) == (2, 2)


def test_a_map_no_module_made_is_read_against_the_input() -> None:
    class Functional(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 2)

    grids = followed(Functional(), torch.zeros(1, 1, 16, 9))
    assert grids.stride((1, 1, 8, 4)) == (2, 2)
