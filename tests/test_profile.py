"""profile_equivariance: the per-layer errors, the first failing layer and its cause."""

from __future__ import annotations

import json

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
    profile_equivariance,
)
from equivariance.models import LeNet


def strided_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 3)
    )


def same_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def test_a_stride_2_convolution_is_named_for_an_odd_shift() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause) == ("2", "Conv2d", "aliasing")
    assert first.stride == (2, 2)
    assert not first.exact
    assert "blur before subsampling" in (first.fix or "")
    assert [layer.passed for layer in profile.layers] == [True, True, False, False, False]
    assert profile["0"].error == 0.0


def test_the_stride_2_cnn_passes_every_layer_for_an_even_shift() -> None:
    profile = profile_equivariance(strided_cnn(), canvas(size=32, content=16), (2, -4))
    assert profile.passed
    assert profile.first_failure is None
    assert profile["4"].output_shift == profile.shift / 2


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
    assert profile.first_failure is not None
    assert (profile.first_failure.name, profile.first_failure.cause) == ("embed", "no symmetry")


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
    assert data["layers"][2]["output_shift"] == [0, 0]


def test_assert_equivariant_points_to_the_profile() -> None:
    with pytest.raises(EquivarianceError, match=r"profile_equivariance\(model, x, shift=\(1, 0\)\)"):
        assert_equivariant(strided_cnn(), canvas(size=32, content=16), [(1, 0)], stride=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": (0, 0)}, r"shift \(0, 0\) is the identity, a profile that cannot fail"),
        ({"shift": (1,)}, r"has 1 dims but x of shape \(4, 1, 32, 32\) has 2 spatial dims"),
        ({"shift": (1, 0), "layers": "0"}, r"layers must be a list of layer names, found '0'; pass \['0'\]"),
        ({"shift": (1, 0), "layers": ["conv"]}, r"no layer named 'conv'"),
    ],
    ids=["identity", "ndim", "layers-str", "layers-typo"],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        profile_equivariance(strided_cnn(), canvas(size=32, content=16), **kwargs)  # type: ignore[arg-type]


def test_a_plain_callable_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"needs an nn\.Module to hook its layers"):
        profile_equivariance(torch.relu, torch.rand(1, 1, 8, 8), (1, 0))  # type: ignore[arg-type]


def test_a_rotation_profile_names_the_plain_convolution() -> None:
    torch.manual_seed(0)
    p4 = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        p4.weight.copy_(sum(torch.rot90(p4.weight, k, (-2, -1)) for k in range(4)) / 4)
    net = nn.Sequential(p4, nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    profile = profile_equivariance(net, torch.randn(2, 1, 10, 10), Rot90(1))
    assert [layer.passed for layer in profile.layers] == [True, True, False, False, False]
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("2", "no symmetry")
    assert "average its kernels over the group" in (first.fix or "")
    assert profile.summary().startswith("equivariance profile of Sequential under transform Rot90(1)")
    assert json.loads(json.dumps(profile.to_dict()))["shift"] == "Rot90(1)"


def test_a_shift_object_is_a_shift_not_a_transform() -> None:
    # Shift has an apply() method like the Transform protocol; it must still be treated as a shift.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 2, stride=2))
    x = torch.randn(2, 1, 16, 16)
    assert str(profile_equivariance(net, x, Shift(1, 0))) == str(profile_equivariance(net, x, (1, 0)))
    with pytest.raises(InvalidArgument, match="transforms must hold Rot90, Flip"):
        check_equivariance(net, x, transforms=[Shift(1, 0)])
