"""profile_equivariance: the per-layer errors, the first failing layer and its cause."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import (
    EquivarianceError,
    InvalidArgument,
    Rot90,
    Shift,
    assert_equivariant,
    check_equivariance,
    equivariance_error,
    profile_equivariance,
)
from equivariance.lie import profile_lie_derivative
from equivariance.models import LeNet


def strided_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 3)
    )


def same_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def p4_then_plain() -> nn.Sequential:
    """A convolution averaged over the four rotations (p4 symmetric), then a plain one that is not."""
    p4 = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        p4.weight.copy_(sum(torch.rot90(p4.weight, k, (-2, -1)) for k in range(4)) / 4)
    return nn.Sequential(p4, nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Ramp(nn.Module):
    """Adds the column index: absolute coordinates, which do not move with the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1], dtype=x.dtype)


class Residual(nn.Module):
    """A convolution with a functional skip connection and ReLU: no leaf returns the block's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + x)


def test_a_stride_2_convolution_is_named_for_an_odd_shift() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause) == ("2", "Conv2d", "aliasing")
    assert first.stride == (2, 2)
    assert not first.divisible
    assert "blur before subsampling" in (first.fix or "")
    assert [layer.passed for layer in profile.layers] == [True, True, False, False, False]
    assert profile["0"].error == 0.0


def test_the_stride_2_cnn_passes_every_layer_for_an_even_shift() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (2, -4))
    assert profile.passed
    assert profile.first_failure is None
    assert profile["4"].output_element == profile.element / 2


def test_a_zero_padded_same_cnn_is_blamed_on_the_borders() -> None:
    profile = profile_equivariance(same_cnn(), torch.rand(2, 1, 16, 16), (1, 2))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause, first.border) == ("0", "borders", 1)
    assert profile["2"].border == 2  # two padded convolutions: two samples
    assert "margin=1" in (first.fix or "")


def test_circular_padding_passes_under_circular_shifts() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU())
    assert profile_equivariance(net, torch.rand(2, 1, 12, 12), (5, -3), boundary="circular").passed


def test_a_dense_head_is_spatial_dims_gone() -> None:
    head = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    profile = profile_equivariance(head, torch.rand(2, 1, 16, 16), (1, 2))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause, first.stride) == ("1", "Flatten", "spatial dims gone", None)


def test_a_layer_with_no_symmetry_is_no_symmetry() -> None:
    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)
            self.embed = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(self.conv(x) + torch.linspace(0, 5, x.shape[-1] - 2))

    profile = profile_equivariance(Positional(), torch.rand(3, 1, 40), (3,))
    first = profile.first_failure
    assert first is not None
    # the constant is added in forward: the row of the tensor embed is given names the break
    assert (first.name, first.type, first.cause) == ("embed (input)", "(forward)", "no symmetry")
    assert first.fix is not None
    assert "between conv and embed, in forward code" in first.fix
    assert "first failure between conv and embed (in forward, not a submodule)" in profile.summary()
    assert [layer.name for layer in profile.layers] == ["conv", "embed (input)", "embed"]


def test_a_tensor_computed_in_forward_that_keeps_the_symmetry_gets_no_row() -> None:
    class Relu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(torch.relu(self.conv1(x)) * 2)

    profile = profile_equivariance(Relu(), torch.rand(3, 1, 40), (3,))
    assert profile.passed
    assert [layer.name for layer in profile.layers] == ["conv1", "conv2"]


class Scaled(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_the_profile_does_not_depend_on_the_output_scale(scale: float) -> None:
    # float32 sums are kept only where they are exact enough: 1e-30 underflows their squares,
    # 1e30 overflows them; either way the profile measures in float64 instead
    x = canvas(batch=2, size=20, content=12)
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), Scaled(scale))
    profile = profile_equivariance(conv, x, (1, 2))
    assert profile.passed
    assert profile.layers[-1].error < 1e-6
    dense = nn.Sequential(nn.Flatten(), nn.Linear(400, 400), nn.Unflatten(1, (1, 20, 20)), Scaled(scale))
    failing = profile_equivariance(dense, x, (1, 2))
    assert failing.first_failure is not None
    assert failing.first_failure.name == "0"  # Flatten: the spatial dims are gone
    assert 0.1 < failing.layers[-1].error < 10


class Permuted(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


@pytest.mark.parametrize("scale", [1e-40, 1e-20, 1e30])
def test_channels_last_layers_are_measured_alike_at_every_scale(scale: float) -> None:
    # layers that keep their channels last in memory (a ConvNeXt block's) are compared in that order;
    # their errors, exactly zero inside and not at the borders, must not depend on the output's scale
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), Permuted(0, 2, 3, 1), nn.Linear(4, 4), Scaled(scale),
        nn.Linear(4, 4, bias=False), Permuted(0, 3, 1, 2),
    )  # fmt: skip
    plain = nn.Sequential(*list(model)[:3], Scaled(1.0), *list(model)[4:])
    scaled_rows = profile_equivariance(model, x, (1, 2)).layers
    plain_rows = profile_equivariance(plain, x, (1, 2)).layers
    assert [row.name for row in scaled_rows] == [row.name for row in plain_rows]
    assert any(row.error > 1e-3 for row in plain_rows)
    for ours, reference in zip(scaled_rows, plain_rows):
        assert math.isclose(ours.error, reference.error, rel_tol=1e-4, abs_tol=1e-12), ours.name


def test_lenet_profile_ends_in_the_dense_head() -> None:
    x = canvas(batch=2, size=28, content=20)
    profile = profile_equivariance(LeNet(), x, (2, 0))
    names = [layer.name for layer in profile.layers]
    assert names[0] == "conv1"
    first = profile.first_failure
    assert first is not None
    assert first.cause in ("spatial dims gone", "aliasing", "borders")


def test_named_layers_only() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (1, 0), layers=["0", "4"])
    assert [layer.name for layer in profile.layers] == ["0", "4"]


def test_the_table_and_the_dict() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (1, 0))
    text = str(profile)
    assert text.splitlines()[0] == (
        "equivariance profile of Sequential under shift (1, 0) (zeros): first failure at 2 (Conv2d), aliasing"
    )
    assert "FAIL (aliasing)" in text
    assert "likely cause at 2: aliasing" in text
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["first_failure"] == "2"
    assert data["layers"][2]["stride"] == [2, 2]
    assert data["layers"][2]["output_element"] == [0, 0]


def test_assert_equivariant_points_to_the_profile() -> None:
    with pytest.raises(EquivarianceError, match=r"profile_equivariance\(model, x, shift=\(1, 0\)\)"):
        assert_equivariant(strided_cnn(), canvas(size=32, content=16), [(1, 0)], stride=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": (0, 0)}, r"shift \(0, 0\) is the identity, a profile that cannot fail"),
        ({"shift": (1,)}, r"has 1 dims but x of shape \(4, 1, 32, 32\) has 2 spatial dims"),
        (
            {"shift": (1, 0), "layers": "0"},
            r"layers must be a non-empty list of layer names, found '0' \(str\); pass e\.g\. \['0'\]",
        ),
        ({"shift": (1, 0), "layers": ["conv"]}, r"no layer named 'conv'"),
        (
            {"shift": (1, 0), "up_to": "conv"},
            r"^Sequential has no layer named 'conv'; its layers include: '0', '1', '2', '3', '4'\. "
            r"Names are those of model\.named_modules\(\); pass one of them$",
        ),
        (
            {"shift": (1, 0), "up_to": 2},
            r"^up_to must be a submodule name \(str\), found 2 \(int\); pass a name from model\.named_modules\(\), "
            r"e\.g\. up_to='conv4'$",
        ),
    ],
    ids=["identity", "ndim", "layers-str", "layers-typo", "up-to-unknown", "up-to-int"],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        profile_equivariance(strided_cnn(), canvas(size=32, content=16), **kwargs)  # type: ignore[arg-type]


def test_a_plain_callable_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"needs an nn\.Module to hook its layers"):
        profile_equivariance(torch.relu, torch.rand(1, 1, 8, 8), (1, 0))  # type: ignore[arg-type]


def test_a_rotation_profile_names_the_plain_convolution() -> None:
    profile = profile_equivariance(p4_then_plain(), torch.randn(2, 1, 10, 10), Rot90(1))
    assert [layer.passed for layer in profile.layers] == [True, True, False, False, False]
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("2", "no symmetry")
    assert "average its kernels over the group" in (first.fix or "")
    assert profile.summary().startswith("equivariance profile of Sequential under transform Rot90(1)")
    assert json.loads(json.dumps(profile.to_dict()))["element"] == "Rot90(1)"


def test_a_shift_object_is_a_shift_not_a_transform() -> None:
    # Shift has an apply() method like the Transform protocol; it must still be treated as a shift.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 2, stride=2))
    x = torch.randn(2, 1, 16, 16)
    assert str(profile_equivariance(net, x, Shift(1, 0))) == str(profile_equivariance(net, x, (1, 0)))
    with pytest.raises(InvalidArgument, match="transforms must hold Rot90, Flip"):
        check_equivariance(net, x, transforms=[Shift(1, 0)])


# strides: one rule, the same in the Lie profile (equivariance._engine.grids)


def test_a_valid_convolution_on_a_small_map_keeps_stride_1_and_is_not_called_aliasing() -> None:
    """6 -> 4 and 12 -> 8 are ratios of exactly 1.5, which the old rule rounded to stride 2."""
    for size, kernel in ((6, 3), (12, 5)):
        net = nn.Sequential(nn.Conv2d(1, 2, kernel), nn.Tanh(), _Shrink(kernel))
        profile = profile_equivariance(net, torch.randn(2, 1, size, size), (1, 0))
        assert [row.stride for row in profile.layers] == [(1, 1)] * 3, str(profile)
        assert profile.passed
        assert all(row.output_element == Shift(1, 0) for row in profile.layers)


class _Shrink(nn.Module):
    """A valid convolution in ``forward``, with no ``stride`` attribute: its stride is read off the sizes."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, self.kernel // 2 + 1, stride=1)


def test_a_map_upsampled_past_the_input_is_at_a_fraction_of_its_stride_and_follows_the_shift() -> None:
    circular = {"padding": 1, "padding_mode": "circular"}
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, **circular), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3, **circular),
        nn.Upsample(scale_factor=3),
    )  # fmt: skip
    x = torch.randn(2, 1, 8, 8)
    profile = profile_equivariance(net, x, (1, 0), boundary="circular")
    strides = [(1, 1), (0.5, 0.5), (0.5, 0.5), (1 / 6, 1 / 6)]
    assert [row.stride for row in profile.layers] == strides
    assert profile.passed  # before: stride 1 after the upsampling, and "no symmetry"
    assert (profile["3"].output_element, profile["3"].divisible) == (Shift(6, 0), True)
    assert "(1/6, 1/6)" in str(profile)
    assert [row.stride for row in profile_lie_derivative(net, x).layers[:-1]] == strides
    # the negative control: subsampled by 3 and upsampled by 2, a map at stride 3/2 cannot follow 1
    aliased = nn.Sequential(nn.Conv2d(1, 2, 3, stride=3, **circular), nn.Upsample(scale_factor=2))
    profile = profile_equivariance(aliased, torch.randn(2, 1, 12, 12), (1, 0), boundary="circular")
    assert (profile["1"].stride, profile["1"].divisible) == ((1.5, 1.5), False)
    assert not profile.passed
    assert [
        row.divisible for row in profile_equivariance(aliased, x, (3, 0), boundary="circular").layers
    ] == [
        True,
        True,
    ]


# up_to: the pass stops after the named layer, as a check's layer= does


def test_lenet_on_a_38x38_canvas_is_profiled_up_to_conv4() -> None:
    profile = profile_equivariance(LeNet(), canvas(), (2, 1), up_to="conv4")
    assert [layer.name for layer in profile.layers] == ["conv1", "conv2", "conv3", "conv4"]
    assert profile.passed
    assert all(layer.stride == (1, 1) and layer.output_element == Shift(2, 1) for layer in profile.layers)
    assert profile["conv4"].output_shape == (4, 5, 22, 22)
    assert profile.up_to == "conv4"
    assert profile.summary() == (
        "equivariance profile of LeNet up to conv4 under shift (2, 1) (zeros): every layer within rtol 1e-04"
    )
    assert json.loads(json.dumps(profile.to_dict()))["up_to"] == "conv4"


def test_lenet_on_a_38x38_canvas_without_up_to_raises_the_heads_error() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"^LeNet's head takes 28x28 inputs \(fc1 expects 6\*6\*5 features\), found \(38, 38\); for "
        r"larger canvases use model\.features\(x\), layer='conv4' in a check, or up_to='conv4' in a profile$",
    ):
        profile_equivariance(LeNet(), canvas(), (2, 1))


def test_up_to_stops_earlier_too() -> None:
    profile = profile_equivariance(LeNet(), canvas(), (2, 1), up_to="conv2")
    assert [layer.name for layer in profile.layers] == ["conv1", "conv2"]
    assert profile.passed


def test_a_layer_without_symmetry_before_up_to_is_the_first_failure() -> None:
    # the Linear head takes the 2x24x24 map of a 28x28 input, so a 38x38 canvas only runs with up_to
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), Ramp(), nn.Conv2d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 24 * 24, 10)
    )
    with pytest.raises(
        InvalidArgument,
        match=r"the model raised RuntimeError on x and its moved copy, one batch of shape \(8, 1, 38",
    ):
        profile_equivariance(net, canvas(), (2, 1))
    profile = profile_equivariance(net, canvas(), (2, 1), up_to="2")
    assert [layer.name for layer in profile.layers] == ["0", "1", "2"]
    assert [layer.passed for layer in profile.layers] == [True, False, False]
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause) == ("1", "Ramp", "no symmetry")
    assert profile_equivariance(net, canvas(), (2, 1), up_to="0").passed  # the control: the conv alone


def test_up_to_composes_with_layers() -> None:
    profile = profile_equivariance(LeNet(), canvas(), (2, 1), layers=["conv1", "conv3"], up_to="conv4")
    # conv4 is not named in layers=, but the pass ends with its output, which is compared like the model's
    assert [layer.name for layer in profile.layers] == ["conv1", "conv3", "conv4"]
    assert profile["conv4"].type == "Conv2d"
    later = profile_equivariance(LeNet(), canvas(), (2, 1), layers=["conv1", "fc1"], up_to="conv2")
    assert [layer.name for layer in later.layers] == ["conv1", "conv2"]  # fc1 runs after conv2: left out
    assert later.passed


def test_up_to_a_block_whose_output_no_leaf_returns() -> None:
    # no bias before the zero-padded convolution: the map is zero near the edges, like its padding
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), Residual(), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))
    profile = profile_equivariance(net, canvas(size=32, content=16), (1, 2), up_to="1")
    assert [(layer.name, layer.type) for layer in profile.layers] == [
        ("0", "Conv2d"),
        ("1.conv", "Conv2d"),
        ("1", "Residual"),
    ]
    assert profile.passed


def test_up_to_composes_with_a_rotation() -> None:
    net = p4_then_plain()
    x = torch.randn(2, 1, 10, 10)
    before = profile_equivariance(net, x, Rot90(1), up_to="1")
    assert [layer.name for layer in before.layers] == ["0", "1"]
    assert before.passed
    after = profile_equivariance(net, x, Rot90(1), up_to="2")
    assert [layer.name for layer in after.layers] == ["0", "1", "2"]
    assert after.first_failure is not None
    assert (after.first_failure.name, after.first_failure.cause) == ("2", "no symmetry")


def test_an_up_to_layer_that_never_runs() -> None:
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.spare = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    with pytest.raises(
        InvalidArgument,
        match=r"^up_to='spare' names a layer that was never called during the forward pass, so the profile "
        r"cannot stop after it; pass the name of a layer that the model's forward uses$",
    ):
        profile_equivariance(Spare(), canvas(size=16, content=8), (1, 0), up_to="spare")


def test_an_unknown_up_to_name_lists_the_close_ones() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"^LeNet has no layer named 'conv5'; close names: 'conv4', 'conv3', 'conv2', 'conv1'\. ",
    ):
        profile_equivariance(LeNet(), canvas(), (2, 1), up_to="conv5")


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_every_layers_error_is_the_checks_error_at_that_layer(boundary: str) -> None:
    """The profile's per-layer comparison (one translation, slices of the reference) against the
    metric's, layer by layer, with the shift wrapping around under the circular boundary."""
    torch.manual_seed(0)
    mode = "circular" if boundary == "circular" else "zeros"
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode=mode), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode=mode), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1, padding_mode=mode),
    )  # fmt: skip
    x = torch.randn(3, 2, 16, 16)
    for shift in ((2, -4), (6, 2)):
        profile = profile_equivariance(net, x, shift, boundary=boundary)
        for name, stride in (("0", 1), ("1", 1), ("2", 2), ("4", 2)):
            expected = equivariance_error(
                net, x, shift, layer=name, stride=stride, boundary=boundary, reduction="max"
            )
            assert profile[name].error == pytest.approx(float(expected), rel=1e-5, abs=1e-9)
        if boundary == "circular":
            assert profile.passed
        else:
            assert not profile.passed  # zero padding: the borders


class WritesInPlace(nn.Module):
    """A circular convolution whose output the forward then overwrites in place, in two ways: an
    in-place ReLU module, and a row set to zero by indexing (not translation-equivariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        y[..., 0, :] = 0
        return self.conv2(y)


class RampInPlace(nn.Module):
    """Adds a ramp over the width to its input in place and returns it: not equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(torch.linspace(0.0, 1.0, x.shape[-1]))


def test_a_layer_that_writes_its_input_in_place_is_compared_on_its_own() -> None:
    """The ramp returns the very tensor the convolution did, written to: its row must not take the
    convolution's comparison (as a view of it, unchanged, would); the Identity after it takes the
    ramp's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    profile = profile_equivariance(
        nn.Sequential(conv, RampInPlace(), nn.Identity()), torch.randn(2, 1, 12, 12), (0, 3),
        boundary="circular",
    )  # fmt: skip
    assert profile["0"].passed
    assert not profile["1"].passed
    assert profile["1"].cause == "no symmetry"
    assert profile["2"].error == profile["1"].error


def test_layer_outputs_are_recorded_before_the_model_writes_to_them() -> None:
    """The pass compares each layer's outputs as they were returned: the in-place ReLU does not leak
    into conv1's row, nor the zeroed row into the ReLU's (which would then fail); the break shows
    where the written map is used."""
    torch.manual_seed(0)
    profile = profile_equivariance(WritesInPlace(), torch.randn(2, 1, 12, 12), (3, 1), boundary="circular")
    assert profile["conv1"].passed
    assert profile["relu"].passed
    first = profile.first_failure
    assert first is not None
    assert first.name == "conv2"


def _zero_padded_stages() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(1, 1),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("x", "shift", "boundary"),
    [
        (canvas(batch=3, size=24, content=20), (2, -2), "zeros"),  # errors at the borders
        (canvas(batch=3, size=24, content=20), (1, 0), "zeros"),  # aliasing after the stride
        (torch.randn(2, 1, 16, 16), (5, -3), "circular"),  # shifts that wrap around
        (torch.randn(2, 1, 16, 16, dtype=torch.float64), (2, 4), "zeros"),  # float64 sums
    ],
)
def test_pooled_sums_judge_every_layer_as_one_sink_per_layer_would(
    x: torch.Tensor, shift: tuple[int, int], boundary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile sums every translated layer together (equivariance._engine.layer_sums); a sink of its own
    per layer (the engine's GridSums and FlatSums, taken when a float64 output needs scaling) must
    give each layer the same error, verdict, border and cause."""
    import equivariance._engine.passes as passes

    model = _zero_padded_stages().to(x.dtype)
    pooled = profile_equivariance(model, x, shift, boundary=boundary)
    monkeypatch.setattr(passes, "sample_scale", lambda base: torch.ones(len(base)))
    alone = profile_equivariance(model, x, shift, boundary=boundary)
    assert [row.name for row in pooled.layers] == [row.name for row in alone.layers]
    assert any(not row.passed for row in pooled.layers)
    for a, b in zip(pooled.layers, alone.layers):
        assert a.error == pytest.approx(b.error, rel=1e-5, abs=1e-12), a.name
        assert (a.passed, a.border, a.cause) == (b.passed, b.border, b.cause), a.name


def test_the_pass_keeps_no_large_layer_output_alive() -> None:
    """The profile compares a large layer's two outputs as the layer returns them: by the time the
    last layer runs, the first layer's output is gone, as it is in a plain forward pass."""
    import gc
    import weakref

    first: list[weakref.ref[torch.Tensor]] = []
    alive: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gc.collect()
            alive.append(first[-1]() is not None)
            return x

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1, padding_mode="circular"), Probe(),
    )  # fmt: skip
    model[0].register_forward_hook(lambda module, args, out: first.append(weakref.ref(out)))
    with torch.no_grad():
        model(torch.randn(4, 1, 64, 64))
    profile = profile_equivariance(model, torch.randn(2, 1, 64, 64), (1, 2), boundary="circular")
    assert profile.passed
    assert alive == [False, False]  # the plain pass, then the profile's


def test_a_batch_that_does_not_fit_asks_for_fewer_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile runs x and its moved copy as one batch: out of GPU memory, it says so and what to
    pass (faked here: CI has no GPU)."""
    import equivariance._engine.passes as passes

    def out_of_memory(model: nn.Module, batch: torch.Tensor, stop: object) -> object:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(passes, "call_until", out_of_memory)
    with pytest.raises(
        InvalidArgument,
        match=r"out of memory running x and its moved copy as one batch of shape \(16, 1, 12, 12\) on "
        r"cpu: .*profile fewer samples \(x\[:4\]\)",
    ):
        profile_equivariance(nn.Conv2d(1, 2, 3), torch.randn(8, 1, 12, 12), (1, 0))


class NanCorner(nn.Module):
    """Writes nan into one corner of its input: every output not finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., 0, 0] = float("nan")
        return x


@pytest.mark.parametrize(
    "after", [2, 128]
)  # small layers are compared together at the end; a large one at once
def test_a_layer_with_nan_outputs_is_refused_with_its_name(after: int) -> None:
    """Sums that come out not finite are measured again in float64, the outputs tested for nan: the
    message names the first such layer, and the batch it came from."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), NanCorner(), nn.Conv2d(2, after, 3, padding=1))
    with pytest.raises(
        InvalidArgument,
        match=r"the model's output is not finite \(nan or inf\) for 2 of 2 samples of layer '1' for x; ",
    ):
        profile_equivariance(model, canvas(batch=2, size=12, content=6), (1, 0))


class Centred(nn.Module):
    """Subtracts the mean over the batch: every sample's output depends on the others (in eval mode too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=0, keepdim=True)


class BatchAttention(nn.Module):
    """At every position, attention across the samples of the batch (a batch-first mix-up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.permute(2, 3, 0, 1)  # (H, W, N, C)
        weights = torch.softmax(q @ q.transpose(-1, -2) / x.shape[1] ** 0.5, dim=-1)
        return (weights @ q).permute(2, 3, 0, 1)


def _circular(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular", dtype=torch.float64)


@pytest.mark.parametrize("mixer", [Centred, BatchAttention], ids=["batch-mean", "attention-across-the-batch"])
def test_samples_that_interact_are_profiled_in_two_passes(
    mixer: Callable[[], nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21, item 3: x and its moved copy in one batch of 2N influence each other in such a model;
    run separately, it is exact. The output of x[:1] alone shows it, and the profile runs two passes,
    joined layer by layer, instead of marking the layer "no symmetry" at 0.38."""
    import equivariance._engine.passes as passes

    torch.manual_seed(0)
    model = nn.Sequential(_circular(1, 4), mixer(), _circular(4, 2)).eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    calls = []
    call_until = passes.call_until
    monkeypatch.setattr(passes, "call_until", lambda *a: calls.append(len(a[1])) or call_until(*a))
    profile = profile_equivariance(model, x, (0, 1), boundary="circular")
    # the one batch, x[:1] alone up to the first failing layer, then x and its moved copy apart
    assert calls == [8, 1, 4, 4]
    assert profile.passed, str(profile)
    assert max(row.error for row in profile.layers) < 1e-12
    assert profile.separate_passes is not None
    assert profile.separate_passes.startswith(
        "the first failing row, 1, gives x[:1] run alone another value than in the batch of x and its moved "
        "copy (a difference of "
    )
    assert "two passes: the first failing row, 1," in str(profile)
    assert profile.to_dict()["separate_passes"] == profile.separate_passes


def test_two_passes_measure_what_runs_apart_gives_and_one_batch_is_kept_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The numbers of the two passes are those of the model run on x and on its moved copy apart (a
    positional ramp after the batch mean: a real failure, measured by hand); a model whose samples do
    not interact keeps the one batch: passing, without running anything more; failing, for the price
    of x[:1] alone up to the first failure, unless the layer's geometry explains it (a stride)."""
    import equivariance._engine.passes as passes

    class Ramp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.linspace(0, 1, x.shape[-1], dtype=x.dtype)

    torch.manual_seed(0)
    model = nn.Sequential(_circular(1, 4), Centred(), Ramp(), _circular(4, 2)).eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    profile = profile_equivariance(model, x, (0, 2), boundary="circular")
    assert profile.separate_passes is not None
    with torch.no_grad():
        moved = model(torch.roll(x, 2, dims=-1))
        expected = torch.roll(model(x), 2, dims=-1)
    by_hand = float(((moved - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1)).max())
    assert profile["3"].error == pytest.approx(by_hand, rel=1e-9)
    assert by_hand > 0.01
    assert [row.passed for row in profile.layers] == [True, True, False, False]
    calls = []
    call_until = passes.call_until
    monkeypatch.setattr(passes, "call_until", lambda *a: calls.append(len(a[1])) or call_until(*a))
    alone = nn.Sequential(_circular(1, 4), nn.GroupNorm(2, 4, dtype=torch.float64), _circular(4, 2)).eval()
    kept = profile_equivariance(alone, x, (0, 2), boundary="circular")
    assert kept.separate_passes is None
    assert calls == [6]
    assert kept.passed
    positional = nn.Sequential(_circular(1, 4), Ramp(), _circular(4, 2)).eval()
    failing = profile_equivariance(positional, x, (0, 2), boundary="circular")
    assert failing.separate_passes is None
    assert failing.first_failure is not None
    assert (failing.first_failure.name, failing.first_failure.cause) == ("1", "no symmetry")
    assert calls == [6, 6, 1]
    strided = nn.Sequential(_circular(1, 4), nn.AvgPool2d(2), _circular(4, 2)).eval()
    aliased = profile_equivariance(strided, x, (0, 1), boundary="circular")
    assert aliased.first_failure is not None
    assert aliased.first_failure.cause == "aliasing"
    assert calls == [6, 6, 1, 6]  # a stride that does not divide the shift: no batch can cause that
    # batch statistics that a circular shift leaves alone: one batch, passed, as two passes give
    statistics = nn.Sequential(
        _circular(1, 4), nn.BatchNorm2d(4, track_running_stats=False, dtype=torch.float64), _circular(4, 2)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared = profile_equivariance(statistics, x, (0, 2), boundary="circular")
    assert shared.separate_passes is None
    assert shared.passed
    monkeypatch.setattr(passes, "_interaction", lambda *_: "forced")
    apart = profile_equivariance(statistics, x, (0, 2), boundary="circular")
    assert apart.passed
    assert [row.error for row in apart.layers] == pytest.approx(
        [row.error for row in shared.layers], abs=1e-12
    )


def test_a_model_that_needs_more_than_one_sample_is_profiled_in_two_passes() -> None:
    """x[:1] alone raises: the samples' outputs depend on their batch, and the profile says so and runs
    two passes of N."""

    class Pairwise(Centred):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(x) < 2:
                raise ValueError("expected more than 1 sample")
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(_circular(1, 4), Pairwise(), _circular(4, 2)).eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    profile = profile_equivariance(model, x, (0, 1), boundary="circular")
    assert profile.separate_passes is not None
    assert profile.separate_passes.startswith(
        "the model raised ValueError on x[:1] alone (expected more than 1 sample)"
    )
    assert profile.passed


class TinyRamp(nn.Module):
    """A convolution, then (in forward, between submodules) a ramp added and everything scaled to
    1e-25, where float32 squares underflow; then a blur that subsamples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular", bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.pool((y + torch.linspace(0.0, 1.0, y.shape[-1])) * 1e-25)


def test_tiny_tensors_computed_in_forward_and_blurred_inputs_are_judged_in_float64() -> None:
    """Float32 squares of 1e-25 underflow to zero: the pass runs again in float64 for those rows,
    the tensor computed in forward as well as the blur's input subsampled without the blur."""
    torch.manual_seed(0)
    profile = profile_equivariance(TinyRamp(), torch.randn(2, 1, 12, 12), (0, 1), boundary="circular")
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("pool (input)", "no symmetry")
    assert 0.01 < first.error < 10
    blurred = profile["pool"]
    assert blurred.cause == "aliasing"
    assert "its input subsampled by the same step without the blur: " in (blurred.fix or "")
