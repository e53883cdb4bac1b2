"""The convolution theorem, executable: impulse responses, rebuilds and the projection.

Laws: a circular convolution (any dims 1-2, channels, kernel sizes, biases)
is rebuilt from its impulse response to rounding; a dense map is not, by a
wide margin; the projection of any linear map is circularly equivariant, is
idempotent, fixes convolutions and agrees with the naive group average
``mean_g g^-1 A g`` written as a loop over the shifts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivariance import InvalidArgument, Shift, circular_group, equivariance_error
from equivariance.linear import (
    CircularConvolution,
    as_convolution,
    impulse_response,
    nearest_equivariant,
)

CONV = {1: nn.Conv1d, 2: nn.Conv2d}


@dataclass
class Case:
    op: nn.Module
    shape: tuple[int, ...]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, ...]:
    ndim = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 9 if ndim == 1 else 6)) for _ in range(ndim))
    return (channels, *spatial)


@st.composite
def circular_convolutions(draw: st.DrawFn) -> Case:
    shape = draw(grids())
    spatial = shape[1:]
    ndim = len(spatial)
    radius = draw(st.integers(0, min(2, *spatial)))
    out = draw(st.integers(1, 3))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    conv = CONV[ndim](
        shape[0], out, 2 * radius + 1, padding=radius, padding_mode="circular", bias=draw(st.booleans())
    )
    return Case(conv.double(), shape)


@st.composite
def dense_maps(draw: st.DrawFn) -> Case:
    shape = draw(grids().filter(lambda s: math.prod(s[1:]) >= 4))
    out = draw(st.integers(1, 3))
    n = math.prod(shape[1:])
    torch.manual_seed(draw(st.integers(0, 2**16)))
    dense = nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * n, out * n), nn.Unflatten(1, (out, *shape[1:])))
    return Case(dense.double(), shape)


def naive_projection(op: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """mean_g g^-1 A g as a loop over the group, the matrix written out: the reference."""
    channels, spatial = shape[0], shape[1:]
    n = math.prod(spatial)
    basis = torch.eye(channels * n, dtype=torch.float64).view(-1, *shape)
    offset = op(torch.zeros(1, *shape, dtype=torch.float64))
    matrix = (op(basis) - offset).flatten(1).T  # (C_out * n, C_in * n)
    out_shape = (matrix.shape[0] // n, *spatial)

    total = torch.zeros_like(matrix)
    for g in circular_group(spatial):
        # columns of A g: A applied to g(e_j); then g^-1 on the outputs
        moved_in = g.apply(basis, boundary="circular").flatten(1).T  # (C_in n, C_in n), columns g e_j
        a_g = matrix @ moved_in
        back = (-g).apply(a_g.T.reshape(-1, *out_shape), boundary="circular").flatten(1).T
        total += back
    mean = total / len(circular_group(spatial))
    # the kernel is the projected operator's impulse response (column of the origin, per channel)
    columns = mean[:, torch.arange(channels) * n]  # (C_out n, C_in)
    return columns.T.reshape(channels, *out_shape).transpose(0, 1)


# -- laws ----------------------------------------------------------------------------------------


@given(circular_convolutions())
def test_a_circular_convolution_is_rebuilt_from_its_impulse_response_and_is_its_own_projection(
    case: Case,
) -> None:
    fit = as_convolution(case.op, case.shape)
    assert fit.error < 1e-12
    x = torch.randn(3, *case.shape, dtype=torch.float64)
    torch.testing.assert_close(fit.operator(x), case.op(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fit.kernel, impulse_response(case.op, case.shape))
    projection = nearest_equivariant(case.op, case.shape)
    assert projection.distance < 1e-6
    torch.testing.assert_close(projection.kernel, fit.kernel)
    torch.testing.assert_close(projection.operator(x), case.op(x), rtol=1e-10, atol=1e-10)


@given(dense_maps())
def test_a_dense_map_is_far_from_a_convolution_by_the_frobenius_distance(case: Case) -> None:
    assert as_convolution(case.op, case.shape).error > 0.5
    projection = nearest_equivariant(case.op, case.shape)
    assert projection.distance > 0.3
    basis = torch.eye(math.prod(case.shape), dtype=torch.float64).view(-1, *case.shape)
    zero = torch.zeros(1, *case.shape, dtype=torch.float64)
    with torch.no_grad():
        a = case.op(basis) - case.op(zero)
    p = projection.operator(basis) - projection.operator(zero)
    assert projection.distance == pytest.approx(float((a - p).norm() / a.norm()), rel=1e-6)


@given(dense_maps(), st.data())
def test_the_projection_of_a_dense_map_is_equivariant_and_idempotent(case: Case, data: st.DataObject) -> None:
    once = nearest_equivariant(case.op, case.shape)
    x = torch.randn(2, *case.shape, dtype=torch.float64)
    shift = Shift([data.draw(st.integers(-(s - 1), s - 1)) for s in case.shape[1:]])
    assert float(equivariance_error(once.operator, x, shift, boundary="circular")) < 1e-10
    twice = nearest_equivariant(once.operator, case.shape)
    assert twice.distance < 1e-6
    torch.testing.assert_close(twice.kernel, once.kernel, rtol=1e-10, atol=1e-12)


@given(dense_maps(), st.integers(1, 7))
def test_the_projection_is_the_group_average(case: Case, batch_size: int) -> None:
    projection = nearest_equivariant(case.op, case.shape, batch_size=batch_size)
    torch.testing.assert_close(projection.kernel, naive_projection(case.op, case.shape))


# -- examples ------------------------------------------------------------------------------------


def test_impulse_response_of_a_shift_is_a_dirac_at_the_shift() -> None:
    def shift(x: torch.Tensor) -> torch.Tensor:
        return Shift(2, -1).apply(x, boundary="circular")

    h = impulse_response(shift, (1, 5, 4))
    expected = torch.zeros(1, 1, 5, 4)
    expected[0, 0, 2, 3] = 1.0
    torch.testing.assert_close(h, expected)


def test_a_bias_is_reported_as_the_offset_and_projected_to_its_mean() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular").double()
    fit = as_convolution(conv, (1, 5, 5))
    assert fit.offset is not None
    torch.testing.assert_close(fit.offset, conv.bias.detach().view(2, 1, 1).expand(2, 5, 5))
    dense = nn.Linear(9, 9).double()
    projection = nearest_equivariant(dense, (1, 3, 3))
    assert projection.offset is not None
    torch.testing.assert_close(projection.offset, dense.bias.detach().mean().expand(1, 3, 3))
    assert as_convolution(nn.Conv1d(1, 1, 1, bias=False), (1, 4)).offset is None


def test_a_matrix_an_nn_linear_and_a_callable_give_the_same_projection() -> None:
    linear = nn.Linear(12, 24, bias=False).double()
    by_module = nearest_equivariant(linear, (1, 3, 4))
    by_matrix = nearest_equivariant(linear.weight.detach(), (1, 3, 4))
    by_callable = nearest_equivariant(
        lambda x: linear(x.flatten(1)).view(-1, 2, 3, 4), (1, 3, 4), dtype=torch.float64
    )
    assert by_module.kernel.shape == (2, 1, 3, 4)
    torch.testing.assert_close(by_module.kernel, by_matrix.kernel)
    torch.testing.assert_close(by_module.kernel, by_callable.kernel)
    assert by_module.distance == pytest.approx(by_callable.distance)


def test_float32_operators_are_rebuilt_to_float32_rounding() -> None:
    conv = nn.Conv2d(3, 4, 5, padding=2, padding_mode="circular")
    fit = as_convolution(conv, (3, 12, 12))
    assert fit.kernel.dtype == torch.float32
    assert fit.error < 1e-6


def test_the_zero_operator_is_the_convolution_with_the_zero_kernel() -> None:
    fit = as_convolution(lambda x: torch.zeros_like(x), (2, 4))
    assert fit.error == 0.0
    assert nearest_equivariant(lambda x: torch.zeros_like(x), (2, 4)).distance == 0.0


def test_results_print_compactly() -> None:
    conv = nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular", bias=False)
    assert repr(as_convolution(conv, (1, 6))).startswith("ConvolutionFit(kernel=(1, 1, 6), error=")
    assert repr(nearest_equivariant(conv, (1, 6))).startswith("Projection(kernel=(1, 1, 6), distance=")
    assert "1 -> 1 channels, grid (6,), offset none" in repr(CircularConvolution(torch.zeros(1, 1, 6)))


# -- misuse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((4,), r"shape must be one input's shape \(C_in, \*spatial\) with 1 to 3 spatial dims, found \(4,\)"),
        ((1, 2, 2, 2, 2), r"with 1 to 3 spatial dims, found \(1, 2, 2, 2, 2\)"),
        ((1, 0, 3), r"shape entries must be positive, found \(1, 0, 3\)"),
        ((1, 2.5), r"shape entry must be an integer, found 2.5 \(float\)"),
        ("1x28x28", r"shape must be one input's shape .* found '1x28x28' \(str\)"),
    ],
    ids=["no-spatial", "four-spatial", "zero", "float", "string"],
)
def test_bad_shapes_are_refused(shape: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        impulse_response(nn.Identity(), shape)  # type: ignore[arg-type]


def test_an_operator_that_changes_the_grid_is_refused() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"op maps a batch of shape \(1, 1, 8, 8\) to \(1, 2, 6, 6\), but the theorem here is about maps "
        r"from a grid to the same grid, \(N, C_out, 8, 8\); keep the size, e.g. with padding=k//2 and "
        r"padding_mode='circular'",
    ):
        as_convolution(nn.Conv2d(1, 2, 3), (1, 8, 8))


def test_an_operator_that_fails_is_reported_with_the_shape_it_was_given() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"op failed on a batch of shape \(1, 3, 8, 8\) \(RuntimeError: .*\); op must take a batch "
        r"\(N, \*shape\) = \(N, 3, 8, 8\)",
    ):
        impulse_response(nn.Conv2d(1, 1, 3, padding=1), (3, 8, 8))


def test_a_matrix_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"a matrix operator on inputs of shape \(1, 4, 4\) needs 16 columns and a multiple of 16 rows "
        r"\(C_out \* 16\), found a 10x16 matrix",
    ):
        nearest_equivariant(torch.zeros(10, 16), (1, 4, 4))
    with pytest.raises(InvalidArgument, match=r"a matrix operator must be 2-D \(C_out \* n, C_in \* n\)"):
        nearest_equivariant(torch.zeros(16), (1, 4, 4))


def test_other_misuse() -> None:
    with pytest.raises(InvalidArgument, match=r"op must be a callable .* found 3 \(int\)"):
        as_convolution(3, (1, 4))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"op must return a tensor, found 'x' \(str\)"):
        as_convolution(lambda x: "x", (1, 4))  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidArgument, match=r"batch_size must be positive, found 0"):
        as_convolution(nn.Identity(), (1, 4), batch_size=0)
    with pytest.raises(InvalidArgument, match=r"dtype must be a floating torch.dtype, found torch.int64"):
        impulse_response(nn.Identity(), (1, 4), dtype=torch.int64)
    with pytest.raises(InvalidArgument, match=r"kernel must be a tensor \(C_out, C_in, \*spatial\)"):
        CircularConvolution(torch.zeros(3, 3))
    with pytest.raises(
        InvalidArgument, match=r"offset must be None or a tensor \(C_out, \*spatial\) = \(1, 6\)"
    ):
        CircularConvolution(torch.zeros(1, 1, 6), torch.zeros(6))
    with pytest.raises(
        InvalidArgument, match=r"this CircularConvolution takes batches \(N, 1, 6\), found \(2, 1, 5\)"
    ):
        CircularConvolution(torch.zeros(1, 1, 6))(torch.zeros(2, 1, 5))


# -- nonlinear operators are refused (issue 12, item 9) ---------------------------------------------------

NONLINEAR = {
    "relu": nn.ReLU(),
    "conv-then-relu": nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular"), nn.ReLU()),
    "abs": torch.abs,
    "square": torch.square,
    "tanh": torch.tanh,
    "max-pool": nn.Sequential(nn.ZeroPad1d((0, 1)), nn.MaxPool1d(2, stride=1)),
}


@pytest.mark.parametrize("function", [as_convolution, impulse_response, nearest_equivariant])
@pytest.mark.parametrize("name", list(NONLINEAR))
def test_a_nonlinear_operator_is_refused(function: object, name: str) -> None:
    assert callable(function)
    caller = function.__name__  # type: ignore[attr-defined]
    with pytest.raises(
        InvalidArgument,
        match=r"op is not linear: on random inputs u and v its linear part L\(x\) = op\(x\) - op\(0\) fails "
        r"superposition \(L\(0.75u - 1.25v\) is \S+ away from 0.75L\(u\) - 1.25L\(v\), relative\) or scaling "
        r"\(L\(-1.5u\) is \S+ away from -1.5L\(u\)\), where float32 rounding stays below 0.001; "
        + caller
        + r" is about linear \(or affine\) operators: pass the linear part alone, e.g. the convolution "
        r"without its activation",
    ):
        function(NONLINEAR[name], (1, 8))


def test_relu_was_certified_as_a_convolution_by_its_impulses_alone() -> None:
    # why the check is needed: on impulses (and zero) ReLU is the identity, so the rebuild from the impulse
    # response is exact on every column, yet the rebuilt operator is not ReLU
    x = torch.randn(1, 1, 8, generator=_generator(0))
    identity = CircularConvolution(impulse_response(nn.Identity(), (1, 8)))
    assert float((identity(x) - torch.relu(x)).abs().max()) > 0.5
    assert torch.equal(nn.ReLU()(torch.eye(8).view(8, 1, 8)), torch.eye(8).view(8, 1, 8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_deep_linear_and_affine_stacks_pass_the_check_in_every_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular") for _ in range(8)]  # biases: affine
    stack = nn.Sequential(*layers).to(dtype)
    fit = as_convolution(stack, (8, 6, 6))
    assert fit.offset is not None
    assert fit.error < {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 0.1)


def test_the_linearity_check_leaves_the_global_rng_alone() -> None:
    conv = nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular")
    state = torch.get_rng_state()
    as_convolution(conv, (1, 8))
    with pytest.raises(InvalidArgument, match="not linear"):
        impulse_response(torch.relu, (1, 8))
    assert torch.equal(torch.get_rng_state(), state)
