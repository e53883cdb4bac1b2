"""Each layer's stride as the hooks follow it (``equivariance._engine.layers``): the one rule, layer by
layer, for the profile and the Lie derivative alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.grids import stride_of
from equivariance._engine.layers import Follower
from equivariance.models import LeNet


def followed(model: nn.Module, x: torch.Tensor) -> tuple[Follower, dict[str, tuple[float, ...] | None]]:
    """The follower after one pass, and each leaf's output stride by name."""
    follower = Follower(x)
    strides: dict[str, tuple[float, ...] | None] = {}

    def keep(name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            strides.setdefault(name, follower.stride(out))

        return hook

    with follower.following(model):  # its hooks first, then these
        handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if not m._modules]
        model(x)
    for handle in handles:
        handle.remove()
    return follower, strides


def test_valid_convolutions_keep_stride_one_however_much_they_shrink_the_map() -> None:
    follower, _ = followed(LeNet(), torch.zeros(1, 1, 28, 28))  # 28 -> 24 -> 20 -> 16 -> 12
    assert [follower.stride(torch.zeros(1, 5, n, n)) for n in (24, 20, 16, 12)] == [(1, 1)] * 4
    assert stride_of(28, 12) == 2  # what reading the sizes alone would say
    assert follower.stride(torch.zeros(1, 10)) is None  # logits have no grid


def test_strides_multiply_along_the_chain_and_upsampling_divides_them() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1), nn.Upsample(scale_factor=3),
    )  # fmt: skip
    _, strides = followed(model, torch.zeros(1, 1, 32, 32))  # 16 -> 8 -> 6 -> 12 -> 23 -> 69
    assert list(strides.values()) == [(2, 2), (2, 2), (4, 4), (4, 4), (2, 2), (1, 1), (1 / 3, 1 / 3)]


def test_a_stated_stride_wins_over_the_sizes() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 1, 3, stride=2),  # 6 -> 2: the sizes alone say 3
        nn.Upsample(scale_factor=4),  # 2 -> 8
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),  # 8 -> 5: one more than ceil(8 / 2)
    )
    _, strides = followed(model, torch.zeros(1, 1, 6, 6))
    assert (stride_of(6, 2), stride_of(8, 5)) == (3, 1)  # the negative controls: what the sizes say
    assert list(strides.values()) == [(2, 2), (0.5, 0.5), (1, 1)]


def test_a_map_no_module_made_is_read_against_the_input() -> None:
    class Functional(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 2)

    follower, _ = followed(Functional(), torch.zeros(1, 1, 16, 9))
    assert follower.stride(torch.zeros(1, 1, 8, 4)) == (2, 2)
    assert follower.stride(torch.zeros(1, 1, 4, 3)) == (4, 3)  # no one stride: each dim its own


def test_a_module_without_a_stride_is_read_off_its_own_input_not_the_models() -> None:
    class Crop(nn.Module):  # a module with no stride that shrinks the map by a third: stride 1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., 1:-1, 1:-1]

    model = nn.Sequential(nn.Conv2d(1, 1, 2, stride=2), Crop(), nn.AdaptiveAvgPool2d(2))
    _, strides = followed(model, torch.zeros(1, 1, 12, 12))  # 6 -> 4 -> 2
    assert list(strides.values()) == [(2, 2), (2, 2), (4, 4)]
