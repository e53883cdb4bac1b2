"""Shift equivariance in your own test suite, three ways.

1. ``assert_equivariant`` in plain code: a test, a script or a notebook.
2. The ``assert_equivariant`` fixture of the pytest plugin: the same check, with the
   session's ``--equivariance-*`` options, the ``equivariance`` marker and a summary table.
3. Property tests with the strategies: your own layer on top of random conv stacks.

Run it with the plugin's options::

    pytest examples/test_in_your_suite.py                               # float32
    pytest examples/test_in_your_suite.py --equivariance-dtype float64  # every fixture check again in float64
    pytest examples/test_in_your_suite.py -m equivariance               # only the checks
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from torch import nn

from equivariance import assert_equivariant
from equivariance.models import LeNet
from equivariance.strategies import ConvStack, conv_stacks, shifts


def digits_on_a_canvas(batch: int = 2) -> torch.Tensor:
    """Random 28x28 'digits' on a zero 38x38 canvas, as in the seed article."""
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(batch, 1, 38, 38)
    x[..., 5:33, 5:33] = torch.rand(batch, 1, 28, 28, generator=generator)
    return x


class ResidualBlock(nn.Module):
    """The layer under test: a circularly padded residual block, ``x + relu(conv(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


# 1. Plain code: the library's function raises EquivarianceError (an AssertionError) with the report.
def test_lenet_features_follow_a_moving_digit() -> None:
    report = assert_equivariant(LeNet(), digits_on_a_canvas(), max_shift=3, layer="conv4")
    assert len(report.elements) == 49


# 2. The fixture: the same call; --equivariance-dtype float64 runs it again in float64.
def test_lenet_with_the_fixture(assert_equivariant) -> None:  # type: ignore[no-untyped-def]
    assert_equivariant(LeNet(), digits_on_a_canvas(), max_shift=3, layer="conv4")


# 3. A property: whatever conv stack comes before it, the block keeps the model equivariant.
@settings(max_examples=20, deadline=None)
@given(conv_stacks(padding="circular"), shifts(max_shift=5, nonzero=True))
def test_my_block_keeps_any_conv_stack_equivariant(assert_equivariant, stack: ConvStack, shift) -> None:  # type: ignore[no-untyped-def]
    model = nn.Sequential(stack.model, ResidualBlock(stack.out_channels))
    x = torch.randn(2, stack.in_channels, 16, 16)
    assert_equivariant(model, x, [shift], boundary=stack.boundary)
