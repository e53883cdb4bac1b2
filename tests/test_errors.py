"""Misuse gets InvalidArgument saying what was expected, what was found and how to fix it.

One test per case, each pinning its message.
"""

from __future__ import annotations

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import InvalidArgument, Shift, check_equivariance, equivariance_error
from equivariance.models import LeNet

conv2d = nn.Conv2d(1, 2, 3)
x2d = torch.randn(2, 1, 16, 16)


def test_invalid_argument_is_a_value_error() -> None:
    assert issubclass(InvalidArgument, ValueError)


def test_x_of_a_rank_that_does_not_fit() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"x must be a batch \(N, C, L\), \(N, C, H, W\) or \(N, C, D, H, W\), found a tensor of shape \(16, 16\) \(2 dims\); add the missing batch and channel dims",
    ):
        equivariance_error(conv2d, torch.randn(16, 16), (1, 1))
    with pytest.raises(InvalidArgument, match=r"shape \(1, 1, 1, 4, 4, 4\) \(6 dims\); fold the extra dims"):
        equivariance_error(conv2d, torch.randn(1, 1, 1, 4, 4, 4), (1, 1, 1, 1))


def test_x_that_is_not_a_tensor() -> None:
    with pytest.raises(InvalidArgument, match=r"x must be a torch.Tensor, found \[1, 2, 3\] \(list\)"):
        equivariance_error(conv2d, [1, 2, 3], (1,))  # type: ignore[arg-type]


def test_a_shift_with_more_dims_than_x_has_spatial_dims() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"shift \(3, 0, 1\) has 3 dims but x of shape \(2, 1, 16, 16\) has 2 spatial dims; pass a shift of length 2",
    ):
        equivariance_error(conv2d, x2d, (3, 0, 1))


def test_a_shift_with_fewer_dims_than_x_has_spatial_dims() -> None:
    with pytest.raises(InvalidArgument, match=r"shift \(3,\) has 1 dims but x .* has 2 spatial dims"):
        equivariance_error(conv2d, x2d, 3)


def test_a_shift_as_large_as_the_signal() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"shift \(16, 0\) is as large as the signal or larger \(spatial size \(16, 16\)\).*offsets in \(-16, 16\)",
    ):
        equivariance_error(conv2d, x2d, (16, 0))
    with pytest.raises(InvalidArgument, match="as large as the signal or larger"):
        check_equivariance(conv2d, x2d, max_shift=20, boundary="circular")


def test_non_integer_shift_values() -> None:
    with pytest.raises(
        InvalidArgument, match=r"shift offsets must be integers, found 0\.5 \(float\) in \(0\.5, 1\)"
    ):
        equivariance_error(conv2d, x2d, (0.5, 1))  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument, match=r"shift must be a Shift or a tuple of ints, found 'up' \(str\)"
    ):
        equivariance_error(conv2d, x2d, "up")  # type: ignore[arg-type]


def test_stride_not_positive() -> None:
    with pytest.raises(InvalidArgument, match="stride must be positive, found 0"):
        equivariance_error(conv2d, x2d, (2, 2), stride=0)
    with pytest.raises(InvalidArgument, match="stride must be positive, found -2"):
        check_equivariance(conv2d, x2d, stride=(1, -2))
    with pytest.raises(
        InvalidArgument, match=r"stride \(1, 2, 3\) has 3 entries but there are 2 spatial dims"
    ):
        check_equivariance(conv2d, x2d, stride=(1, 2, 3))


def test_a_layer_the_model_does_not_have_lists_close_names() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"LeNet has no layer named 'conv5'; close names: 'conv4', 'conv3', 'conv2', 'conv1'",
    ):
        equivariance_error(LeNet(), canvas(), (1, 1), layer="conv5")
    with pytest.raises(InvalidArgument, match=r"no layer named 'xyz'; its layers include: 'conv1'"):
        equivariance_error(LeNet(), canvas(), (1, 1), layer="xyz")


def test_a_layer_that_is_never_called() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(InvalidArgument, match=r"layer 'unused' was never called during the forward pass"):
        equivariance_error(Skips(), x2d, (1, 1), layer="unused")


def test_layer_on_a_plain_function() -> None:
    with pytest.raises(InvalidArgument, match=r"layer='conv1' needs an nn.Module"):
        equivariance_error(torch.relu, x2d, (1, 1), layer="conv1")


def test_a_tuple_output_without_output() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"the model returned a tuple of 2 items, not a tensor; pass output=0 \(an index\)",
    ):
        equivariance_error(lambda t: (t, t), x2d, (1, 1))


def test_a_dict_output_without_output() -> None:
    with pytest.raises(
        InvalidArgument, match=r"returned a dict with keys \['a'\], not a tensor; pass output='a'"
    ):
        equivariance_error(lambda t: {"a": t}, x2d, (1, 1))


def test_an_output_that_is_not_a_tensor() -> None:
    with pytest.raises(
        InvalidArgument, match=r"the selected output must be a torch.Tensor, found None \(NoneType\)"
    ):
        equivariance_error(lambda t: None, x2d, (1, 1))


def test_integer_dtypes() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"x must have a floating-point dtype, found torch.int64; convert it, e.g. x.float\(\)",
    ):
        equivariance_error(conv2d, torch.ones(2, 1, 8, 8, dtype=torch.long), (1, 1))
    with pytest.raises(InvalidArgument, match=r"found torch\.bool"):
        equivariance_error(conv2d, torch.ones(2, 1, 8, 8, dtype=torch.bool), (1, 1))


def test_an_integer_output() -> None:
    with pytest.raises(
        InvalidArgument, match=r"has dtype torch.int64; equivariance errors need a floating-point output"
    ):
        equivariance_error(lambda t: t.long(), x2d, (1, 1))


def test_an_empty_batch() -> None:
    with pytest.raises(
        InvalidArgument, match=r"x is an empty batch \(shape \(0, 1, 16, 16\)\); pass at least one sample"
    ):
        equivariance_error(conv2d, torch.randn(0, 1, 16, 16), (1, 1))


def test_model_and_x_on_different_devices() -> None:
    on_meta = nn.Conv2d(1, 2, 3, device="meta")
    with pytest.raises(
        InvalidArgument,
        match=r"the model is on meta but x is on cpu; move x with x.to\('meta'\) or the model with model.to\('cpu'\)",
    ):
        equivariance_error(on_meta, x2d, (1, 1))


def test_model_and_x_of_different_dtypes() -> None:
    with pytest.raises(
        InvalidArgument, match=r"the model's parameters are torch.float32 but x is torch.float64"
    ):
        equivariance_error(conv2d, x2d.double(), (1, 1))


def test_an_output_whose_spatial_dims_cannot_carry_the_shift() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"the output's spatial dims \(2, 2\) cannot carry shift \(3, 0\): nothing of the output is left to compare",
    ):
        equivariance_error(LeNet(), torch.zeros(1, 1, 18, 18), (3, 0), layer="conv4")
    with pytest.raises(InvalidArgument, match=r"cannot carry output shift \(4, 0\)"):  # 10 -> 4
        equivariance_error(nn.Conv2d(1, 1, 4, stride=2), torch.zeros(1, 1, 10, 10), (8, 0), stride=2)


def test_an_output_with_no_spatial_dims() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"output of shape \(2, 10\) has no channel dim and 2 spatial dims .*expected \(N, C, \*spatial\).*use check_invariance",
    ):
        equivariance_error(LeNet(), canvas(batch=2, size=28, content=20), (1, 1))


def test_a_margin_that_leaves_nothing() -> None:
    with pytest.raises(
        InvalidArgument, match=r"cannot carry shift \(1, 1\) and margin \(7, 7\).*or a smaller margin"
    ):
        equivariance_error(conv2d, x2d, (1, 1), margin=7)
    with pytest.raises(InvalidArgument, match="margin must be >= 0, found -1"):
        equivariance_error(conv2d, x2d, (1, 1), margin=-1)


def test_a_model_that_raises_is_reported_with_the_input_shape() -> None:
    def picky(t: torch.Tensor) -> torch.Tensor:
        if len(t) != 2:
            raise RuntimeError("expected a batch of 2")
        return t

    with pytest.raises(
        InvalidArgument,
        match=r"the model raised RuntimeError on an input of shape \(19, 1, 16, 16\).*expected a batch of 2.*pass batch_size=2",
    ):
        check_equivariance(picky, x2d, max_shift=1)
    assert check_equivariance(picky, x2d, max_shift=1, batch_size=2).passed


def test_a_model_that_changes_the_batch_size() -> None:
    with pytest.raises(
        InvalidArgument, match=r"returned a tensor of shape \(1, 1, 16, 16\) for an input batch of 2"
    ):
        equivariance_error(lambda t: t[:1], x2d, (1, 1))


def test_a_model_that_is_not_callable() -> None:
    with pytest.raises(
        InvalidArgument, match=r"model must be a torch.nn.Module or a callable .* found 3 \(int\)"
    ):
        equivariance_error(3, x2d, (1, 1))  # type: ignore[arg-type]


def test_bad_boundary_batch_size_and_output_action() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"boundary must be 'zeros', 'circular' or Crop\(size\), found 'reflect' \(str\)",
    ):
        equivariance_error(conv2d, x2d, (1, 1), boundary="reflect")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="batch_size must be positive, found 0"):
        check_equivariance(conv2d, x2d, batch_size=0)
    with pytest.raises(
        InvalidArgument,
        match=r"output_action must be a callable \(f\(x\), shift\) -> tensor, found 2 \(int\)",
    ):
        equivariance_error(conv2d, x2d, (1, 1), output_action=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="pass either stride= or output_action=, not both"):
        equivariance_error(conv2d, x2d, (2, 2), stride=2, output_action=lambda y, s: y)


def test_shifts_that_are_not_a_list() -> None:
    shift = Shift(1, 1)
    with pytest.raises(
        InvalidArgument,
        match=r"shifts must be a list of shifts, found the single shift Shift\(1, 1\); wrap it in a list: "
        r"shifts=\[Shift\(1, 1\)\]",
    ):
        check_equivariance(conv2d, x2d, shift)  # type: ignore[arg-type]
    # a tuple of ints is one shift where the list belongs: it used to be read as two 1-D shifts, and the
    # message then said the shift had 1 dim and to pass one of length 2
    with pytest.raises(
        InvalidArgument,
        match=r"shifts \(1, 0\) is a tuple of ints, which reads as one shift; pass a list of shifts: "
        r"\[\(1, 0\)\] for that shift, or a list of ints, e.g. \[1, 0\], for shifts of a 1-D signal",
    ):
        check_equivariance(conv2d, x2d, (1, 0))  # type: ignore[arg-type]
    assert check_equivariance(conv2d, x2d, [(1, 0)]).results[0].element == Shift(1, 0)


def test_non_finite_input() -> None:
    x = x2d.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidArgument, match=r"x contains 1 non-finite values \(nan or inf\)"):
        equivariance_error(conv2d, x, (1, 1))


def test_output_index_on_a_plain_tensor() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"output=0 picks from a tuple or dict, but the model returned a tensor of shape \(2, 2, 14, 14\); drop output=",
    ):
        equivariance_error(conv2d, x2d, (1, 1), output=0)


def test_x_on_the_meta_device() -> None:
    with pytest.raises(InvalidArgument, match="x is on the meta device"):
        equivariance_error(torch.relu, torch.empty(2, 1, 8, 8, device="meta"), (1, 1))


def test_boundary_must_be_a_string() -> None:
    import numpy as np

    with pytest.raises(InvalidArgument, match=r"boundary must be .zeros., .circular. or Crop\(size\)"):
        equivariance_error(conv2d, x2d, (1, 1), boundary=np.array(["zeros"]))  # type: ignore[arg-type]
