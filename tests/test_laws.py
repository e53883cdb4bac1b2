"""Property tests of the laws the library rests on.

Convolutions (any dims, kernel sizes, channels, dilations, biases; valid or
circular padding) are shift equivariant for every shift; the seed's LeNet
conv stack is equivariant on a zero-bordered canvas; dense networks are not;
a stride-2 convolution follows even shifts at half the offset and no odd
shift; global average pooling after a circular CNN is shift invariant.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivariance import InvalidArgument, Shift, check_equivariance, equivariance_error, invariance_error
from equivariance.models import MLP, LeNet
from equivariance.strategies import ConvStack, conv_stacks, shifts
from equivariance.tolerances import default_tolerance

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
RTOL32 = default_tolerance(torch.float32).rtol


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple[ConvStack, torch.Tensor, Shift]:
    """A public conv stack (any dims, kernel sizes, channels, dilations, biases; valid or
    circular padding), an input it takes, and any shift smaller than what it can compare."""
    ndim = draw(st.integers(1, 3))
    small = ndim == 3
    stack = draw(
        conv_stacks(
            ndim=ndim,
            depth=(1, 2 if small else 3),
            channels=(1, 4),
            kernel_sizes=(1, 3 if small else 5),
            dilations=(1, 2),
        )
    )
    x = draw(stack.inputs(batch=2, output_size=(4, 10 if small else 16), min_value=-3.0, max_value=3.0))
    sizes = x.shape[2:] if stack.boundary == "circular" else stack.model(x).shape[2:]
    bounds = tuple(n - 1 for n in sizes)
    return stack, x, draw(shifts(ndim=ndim, max_shift=bounds))


@pytest.mark.filterwarnings("ignore::equivariance.errors.EquivarianceWarning")  # dead ReLUs happen
@given(conv_cases())
def test_convolutions_are_equivariant_for_every_shift(case: tuple[ConvStack, torch.Tensor, Shift]) -> None:
    stack, x, shift = case
    err = equivariance_error(stack.model, x, shift, boundary=stack.boundary, reduction="max")
    assert err <= RTOL32, f"{stack.model} {shift}: {float(err):.2e}"


@given(st.integers(0, 2**16), st.integers(-5, 5), st.integers(-5, 5))
def test_lenet_conv_stack_is_equivariant_on_a_zero_bordered_canvas(seed: int, dy: int, dx: int) -> None:
    torch.manual_seed(seed)
    x = torch.zeros(2, 1, 38, 38)
    x[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
    model = LeNet()
    assert equivariance_error(model, x, (dy, dx), layer="conv4", reduction="max") <= RTOL32
    features = equivariance_error(model.features, x, (dy, dx), reduction="max")
    assert features <= RTOL32


@given(
    st.integers(0, 2**16),
    st.tuples(st.integers(-5, 5), st.integers(-5, 5)).filter(lambda s: s != (0, 0)),
)
def test_mlp_is_not_equivariant_for_any_nonzero_shift(seed: int, shift: tuple[int, int]) -> None:
    torch.manual_seed(seed)
    x = torch.zeros(2, 1, 24, 24)
    x[..., 4:20, 4:20] = torch.rand(2, 1, 16, 16)
    err = equivariance_error(MLP(input_size=24, hidden=64), x, shift, reduction="max")
    assert err > 1000 * RTOL32


@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(-4, 4), st.integers(-4, 4))
def test_stride_two_convolution_follows_even_shifts_only(seed: int, kernel: int, a: int, b: int) -> None:
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, kernel, stride=2)
    x = torch.randn(2, 2, 20, 20)
    even = Shift(2 * a, 2 * b)
    assert equivariance_error(conv, x, even, stride=2, reduction="max") <= RTOL32
    odd = Shift(2 * a + 1, 2 * b)
    with pytest.raises(InvalidArgument, match="is not a multiple of stride 2"):
        equivariance_error(conv, x, odd, stride=2)

    # Neither neighbouring output shift explains an odd input shift: the conv aliases.
    def rounded(down: bool):  # type: ignore[no-untyped-def]
        def action(y: torch.Tensor, s: Shift) -> torch.Tensor:
            return Shift(tuple((o - (0 if down else -1)) // 2 for o in s)).apply(y)

        return action

    for down in (True, False):
        assert equivariance_error(conv, x, odd, output_action=rounded(down), reduction="max") > 1e-2


@given(st.integers(0, 2**16), st.integers(-7, 7), st.integers(-7, 7))
def test_global_average_pooling_after_a_circular_cnn_is_invariant(seed: int, dy: int, dx: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(4, 4, 5, padding=2, padding_mode="circular"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    x = torch.randn(3, 2, 16, 16)
    assert invariance_error(model, x, (dy, dx), boundary="circular", reduction="max") <= RTOL32


def test_the_laws_have_teeth() -> None:
    """The same checks reject near-misses: zero padding on a torus, a position-dependent bias."""
    padded = nn.Conv2d(1, 2, 3, padding=1)  # zero padding, not circular
    x = torch.randn(2, 1, 12, 12)
    assert equivariance_error(padded, x, (3, 3), boundary="circular") > 1e-2

    class PositionBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.bias = nn.Parameter(torch.linspace(0, 1e-2, 10).expand(10, 10).clone())

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.conv(t) + self.bias

    report = check_equivariance(PositionBias(), x, max_shift=1)
    assert not report.passed
    assert report.max_error > 10 * report.rtol
    assert {r.element for r in report.results if r.passed} == {Shift(-1, 0), Shift(0, 0), Shift(1, 0)}
