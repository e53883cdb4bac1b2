"""The action protocol: every element acts on inputs and outputs alike, and a user's own plugs in."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import (
    EquivarianceError,
    Flip,
    InvalidArgument,
    Rot90,
    Shift,
    assert_equivariant,
    check_equivariance,
    equivariance_error,
    profile_equivariance,
)
from equivariance.actions import Action, Grid, Identity, Where
from equivariance.fractional import FractionalShift


class Transpose(Action):
    """The worked example of the docs: swap the two spatial axes of an image."""

    moves_positions_only = True

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x.transpose(-1, -2)

    def inverse(self) -> Transpose:
        return self


def symmetric_conv(channels: int = 2) -> nn.Conv2d:
    conv = nn.Conv2d(1, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.transpose(-1, -2)) / 2)
    return conv


ELEMENTS = [Shift(1, -2), Rot90(1), Rot90(3, dims=(-1, -2)), Flip(-1), Flip(-2), Identity(), Transpose()]


@pytest.mark.parametrize("element", ELEMENTS, ids=repr)
def test_the_inverse_undoes_the_element_on_the_torus(element: Action) -> None:
    x = torch.randn(2, 3, 6, 6)
    grid = Grid.of_input(2, "circular")
    assert torch.equal(element.inverse().act(element.act(x, grid), grid), x)
    assert element.region((6, 6), grid) == (slice(0, 6), slice(0, 6))


def test_identity_and_json() -> None:
    assert Identity().is_identity
    assert Shift(0, 0).is_identity
    assert not Shift(0, 1).is_identity
    assert Rot90(4).is_identity
    assert not Flip(-1).is_identity
    assert FractionalShift(0.0, 0.0).is_identity
    assert [e.to_json() for e in (Shift(1, -2), Rot90(1), Transpose())] == [
        [1, -2],
        "Rot90(1)",
        "Transpose()",
    ]
    assert [e.noun for e in (Shift(1), Rot90(1), FractionalShift(0.5))] == [
        "shift",
        "transform",
        "sub-pixel shift",
    ]


def test_a_shift_acts_on_a_subsampled_grid_by_its_quotient() -> None:
    y = torch.arange(8.0).reshape(1, 1, 8)
    grid = Grid(1, (2,), "zeros")
    assert torch.equal(Shift(4).act(y, grid), Shift(2).apply(y))
    assert Shift(4).region((8,), grid) == (slice(2, 8),)
    with pytest.raises(InvalidArgument, match=r"Shift\(3\) is not a multiple of stride 2"):
        Shift(3).act(y, grid)
    assert FractionalShift(1.0).act(y, grid).allclose(FractionalShift(0.5).apply(y), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(-7, 7), flip=st.booleans())
def test_rotations_and_flips_form_a_group(k: int, flip: bool) -> None:
    x = torch.randn(1, 2, 5, 5)
    grid = Grid.of_input(2)
    g: Action = Flip(-1) if flip else Rot90(k)
    composed = Rot90(k).act(Rot90(-k).act(x, grid), grid)
    assert torch.equal(composed, x)
    assert torch.equal(g.act(g.inverse().act(x, grid), grid), x)


def test_a_users_action_plugs_into_every_entry_point() -> None:
    x = torch.randn(2, 1, 9, 9)
    conv = symmetric_conv()
    report = check_equivariance(conv, x, transforms=[Transpose()])
    assert report.passed
    assert [str(e) for e in report.elements] == ["Transpose()"]
    assert report.boundary.startswith("none")
    assert float(equivariance_error(conv, x, Transpose())) < 1e-6
    assert_equivariant(conv, x, transforms=[Transpose()])
    profile = profile_equivariance(nn.Sequential(conv, nn.ReLU()), x, Transpose())
    assert profile.passed
    assert [layer.output_element for layer in profile.layers] == [Transpose(), Transpose()]
    # negative controls: a kernel without the symmetry fails everywhere
    plain = nn.Conv2d(1, 2, 3, padding=1)
    assert float(equivariance_error(plain, x, Transpose())) > 0.1
    with pytest.raises(EquivarianceError, match=r"1 transform, 1 failed.*Transpose\(\)"):
        assert_equivariant(plain, x, transforms=[Transpose()])
    failed = profile_equivariance(nn.Sequential(plain, nn.ReLU()), x, Transpose())
    assert failed.first_failure is not None
    assert failed.first_failure.name == "0"


class ChannelReversal(Action):
    """Flips the image and reverses the channels: an action that is not on positions only."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        if grid.layout.name != "channels_first" and x.dim() != 4:
            raise AssertionError("the engine must hand an action (N, C, H, W) tensors only")
        return torch.flip(x, (1, -1))


class UnpacksFourDims(Action):
    """An action written for images: it unpacks (N, C, H, W)."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        _n, _c, _h, _w = x.shape  # would fail on an (N, H, W) map of norms
        return torch.flip(x, (-1,))

    def __repr__(self) -> str:
        return "UnpacksFourDims()"


def test_actions_get_grids_of_channels_never_maps_of_norms() -> None:
    x = torch.randn(2, 1, 8, 8)
    flipped = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():  # a filter bank whose channel 1 is channel 0 mirrored
        flipped.weight[1].copy_(torch.flip(flipped.weight[0], (-1,)))
        flipped.bias[1].copy_(flipped.bias[0])
    assert check_equivariance(flipped, x, transforms=[ChannelReversal()]).passed
    assert not check_equivariance(nn.Conv2d(1, 2, 3, padding=1), x, transforms=[ChannelReversal()]).passed
    report = check_equivariance(nn.Conv2d(1, 2, 3, padding=1), x, transforms=[UnpacksFourDims()])
    assert [str(e) for e in report.elements] == ["UnpacksFourDims()"]
    assert not report.passed


def test_an_action_that_does_not_map_the_grid_onto_itself_is_refused() -> None:
    class Crop(Action):
        def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
            return x[..., 1:]

    with pytest.raises(InvalidArgument, match=r"Crop\(\) must map the grid of x onto itself"):
        check_equivariance(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8), transforms=[Crop()])


def test_an_element_of_ones_own_that_is_not_a_grid_move_gets_no_advice_of_grids() -> None:
    """A node permutation written as a 10-line Action on a (N, C, nodes) tensor: a failure is not advised
    regular('p4') nor averaged kernels, and its profile is not labelled with a boundary."""
    from equivariance import profile_equivariance

    class Reverse(Action):
        def act(self, x, grid):  # type: ignore[no-untyped-def]
            return x.flip(-1)

        def inverse(self) -> Action:
            return self

    torch.manual_seed(0)
    mixing = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 48), torch.nn.Unflatten(1, (8, 6)))
    report = check_equivariance(mixing, torch.randn(2, 4, 6), transforms=[Reverse()])
    assert not report.passed
    text = " ".join(report.hints)
    assert "p4" not in text, text
    assert "regular(" not in text, text
    assert report.hints[-1].startswith(
        "the output does not follow the transforms of the input: the model does not commute with these "
        "elements; check an earlier layer with layer= to find where it breaks"
    )
    profile = profile_equivariance(mixing, torch.randn(2, 4, 6), shift=Reverse())
    assert profile.summary().startswith("equivariance profile of Sequential under transform Reverse(): ")


def test_elements_are_equal_by_class_and_key_and_hash_alike() -> None:
    """One rule (``Action._key``): equal keys of one class are equal and hash alike; equal keys of
    two classes are not equal; a class without a key compares its attributes."""
    from equivariance.euclidean import Rotation, Translation
    from equivariance.permutations import Permutation

    pairs = [
        (Shift(1, 2), Shift((1, 2))),
        (FractionalShift(0.5), FractionalShift((0.5,))),
        (Rot90(1), Rot90(5)),
        (Flip(-1), Flip(-1)),
        (Rot90(1) * Flip(-1), Flip(-2) * Rot90(1)),
        (Rotation.about("z", 90, degrees=True), Rotation.about("z", 90, degrees=True)),
        (Translation([1.0, 0.0, 0.0]), Translation([1.0, -0.0, 0.0])),
        (Permutation([1, 0, 2]), Permutation([1, 0, 2])),
        (
            Translation([1.0, 0.0, 0.0]) * Permutation([1, 0]),
            Translation([1.0, 0.0, 0.0]) * Permutation([1, 0]),
        ),
    ]
    for a, b in pairs:
        assert a == b, (a, b)
        assert hash(a) == hash(b), (a, b)
    assert Shift(1) != FractionalShift(1.0)
    assert FractionalShift(1.0) != Shift(1)
    assert Rot90(1) != Rot90(2)
    assert Flip(-1) != Flip(-2)
    assert Permutation([1, 0, 2]) != Permutation([0, 1, 2])
    assert Rotation.about("z", 90, degrees=True) != Rotation.about("z", -90, degrees=True)
    assert len({Shift(1, 2), Shift(1, 2), Rot90(1), Rot90(5), Flip(-1)}) == 3

    class Scale(Action):
        def __init__(self, factor: float) -> None:
            self.factor = factor

        def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
            return x * self.factor

    assert Scale(2.0) == Scale(2.0)
    assert Scale(2.0) != Scale(3.0)
    assert hash(Scale(2.0)) == hash(Scale(3.0))  # attributes need not be hashable: the class is hashed


def test_a_subclass_that_redefines_act_is_moved_by_its_own_act_not_the_inherited_batched_path() -> None:
    class FlippedShift(Shift):
        """A shift followed by a flip: a conv is not equivariant to it (the negative control)."""

        def act(self, x: torch.Tensor, grid: Where) -> torch.Tensor:
            return super().act(x, grid).flip(-1)

    class SameShift(Shift):
        def act(self, x: torch.Tensor, grid: Where) -> torch.Tensor:
            return super().act(x, grid)

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False)
    x = torch.randn(2, 1, 8, 8)
    flipped = check_equivariance(conv, x, shifts=[FlippedShift((1, 2))], boundary="circular")
    assert not flipped.passed  # it passed when Shift's batched roll stood in for the subclass's act
    assert check_equivariance(conv, x, shifts=[SameShift((1, 2))], boundary="circular").passed


def test_a_factor_that_redefines_act_is_moved_by_its_own_act_in_a_product() -> None:
    from equivariance.euclidean import Rotation, Translation
    from equivariance.fields import Positions, Vectors

    class Doubling(Rotation):
        """A rotation that also doubles what it moves: not a symmetry of ``c |c|`` (the negative control)."""

        def act(self, x: torch.Tensor, grid: Where) -> torch.Tensor:
            return 2 * super().act(x, grid)

    def centred_squares(pos: torch.Tensor) -> torch.Tensor:
        c = pos - pos.mean(-2, keepdim=True)
        return c * c.norm(dim=-1, keepdim=True)

    model = nn.Sequential()
    model.forward = centred_squares  # type: ignore[method-assign]
    pos = torch.randn(2, 5, 3, dtype=torch.float64)
    plain = Rotation.about("z", 30, degrees=True) * Translation([1.0, 0.0, 0.0])
    doubled = Doubling.about("z", 30, degrees=True) * Translation([1.0, 0.0, 0.0])
    kwargs = {"inputs": (Positions(),), "outputs": Vectors()}
    assert check_equivariance(model, (pos,), transforms=[plain], **kwargs).passed
    assert not check_equivariance(model, (pos,), transforms=[doubled], **kwargs).passed
