"""The strided layers a rotation or flip check records (``equivariance._engine.alignment``)."""

from __future__ import annotations

import torch
from torch import nn

from equivariance import Rot90, check_equivariance
from equivariance._engine.alignment import strided_layers


class PaddedSame(nn.Conv2d):
    """A subclass whose name ends in no digit (as timm's ``Conv2dSame``)."""


def test_subclasses_pools_and_strides_are_read_from_the_module_not_its_class_name() -> None:
    model = nn.Sequential(
        PaddedSame(1, 2, 3, stride=2, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1),
        nn.AvgPool1d(3, stride=1), nn.ConvTranspose2d(2, 2, 2, stride=2),
    )  # fmt: skip
    with strided_layers(model, enabled=True) as seen:
        model[:3](torch.zeros(1, 1, 16, 16))
    assert [(s.name, s.size, s.kernel, s.stride, s.padding) for s in seen] == [
        ("0", (16, 16), (3, 3), (2, 2), (1, 1)),
        ("1", (8, 8), (2, 2), (2, 2), (0, 0)),  # a pooling's stride is its kernel
    ]  # the stride-1 layers and the transposed convolution (it upsamples) are not recorded
    assert (seen[0].misaligned(), seen[0].aligned_size(0)) == ([0, 1], 17)
    assert seen[1].misaligned() == []
    with strided_layers(model, enabled=False) as none:
        model[:3](torch.zeros(1, 1, 16, 16))
    assert none == []


def test_a_rotation_check_names_a_misaligned_subclass_instead_of_failing() -> None:
    report = check_equivariance(
        PaddedSame(1, 2, 3, stride=2, padding=1), torch.randn(1, 1, 16, 16), transforms=[Rot90(1)]
    )
    assert not report.passed
    assert any(
        "layer 'PaddedSame' (kernel 3, stride 2, padding 1) gets a map of size 16" in h for h in report.hints
    )
