"""Group-convolution outputs: the regular action of p4 / p4m on orientation channels, on group CNNs built here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equivariance import (
    Flip,
    InvalidArgument,
    Rot90,
    Shift,
    check_equivariance,
    check_invariance,
    equivariance_error,
)
from equivariance.actions import Action, Grid
from equivariance.regular import Regular, regular
from equivariance.transforms import Transpose

ROTATIONS = [Rot90(1), Rot90(2), Rot90(3)]


def rotated_bank(weight: torch.Tensor, flips: bool = False) -> torch.Tensor:
    """Copies of a filter bank ``(K, C, k, k)``: channel ``|G| j + 4 f + i`` is filter ``j`` flipped
    ``f`` times (left-right), then turned ``i`` quarter turns."""
    flipped = [weight, torch.flip(weight, (-1,))] if flips else [weight]
    copies = [torch.rot90(w, i, (-2, -1)) for w in flipped for i in range(4)]
    return torch.stack(copies, 1).flatten(0, 1)


class Lifting(nn.Module):
    """A p4 (or p4m) lifting convolution: the image against every rotated (and flipped) copy of a bank."""

    def __init__(self, channels: int, fields: int, kernel: int = 3, flips: bool = False, stride: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fields, channels, kernel, kernel))
        self.flips, self.stride = flips, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bank = rotated_bank(self.weight, self.flips)
        return F.conv2d(x, bank, padding=self.weight.shape[-1] // 2, stride=self.stride)


class GroupConv(nn.Module):
    """A p4 group convolution: output orientation ``i`` uses the bank turned by ``i`` quarter turns with its
    input orientations cyclically moved by ``i``; a bias per field."""

    def __init__(self, fields_in: int, fields_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fields_out, fields_in, 4, kernel, kernel) / 6)
        self.bias = nn.Parameter(torch.randn(fields_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, fin, _, k, _ = self.weight.shape
        per_orientation = [torch.rot90(torch.roll(self.weight, i, dims=2), i, (-2, -1)) for i in range(4)]
        bank = torch.stack(per_orientation, 1).reshape(4 * out, 4 * fin, k, k)
        return F.conv2d(x, bank, self.bias.repeat_interleave(4), padding=k // 2)


def p4_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Lifting(1, 3), nn.ReLU(), GroupConv(3, 2))


def images(n: int = 2, size: int = 11) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 1, size, size, dtype=torch.float64)


def by_element(report: object) -> dict[str, bool]:
    return {str(r.element): r.passed for r in report.results}  # type: ignore[attr-defined]


# -- the regular action passes; the spatial action and the roll the wrong way fail ------------------------


def test_a_lifting_convolution_is_equivariant_under_the_regular_action_only() -> None:
    torch.manual_seed(0)
    lift, x = Lifting(1, 3).double(), images()
    report = check_equivariance(lift, x, transforms=ROTATIONS, output_action=regular("p4"))
    assert report.passed
    assert report.max_error < 1e-12
    assert report.output_action == "regular representation of p4 (4 orientation channels a field)"
    plain = check_equivariance(lift, x, transforms=ROTATIONS)
    assert not any(by_element(plain).values())  # the map rotates, but its channels must cycle too
    assert plain.max_error > 0.5
    wrong = check_equivariance(lift, x, transforms=ROTATIONS, output_action=regular("p4", direction=-1))
    assert by_element(wrong) == {"Rot90(1)": False, "Rot90(2)": True, "Rot90(3)": False}


def test_a_group_convolution_layer_of_a_p4_network() -> None:
    net, x = p4_net().double(), images()
    for layer in ("0", "1", "2"):
        passed = check_equivariance(net, x, transforms=ROTATIONS, layer=layer, output_action=regular("p4"))
        assert passed.passed, layer
    assert not check_equivariance(net, x, transforms=ROTATIONS, layer="2").passed
    wrong = check_equivariance(net, x, transforms=ROTATIONS, output_action=regular("p4", direction=-1))
    assert by_element(wrong) == {"Rot90(1)": False, "Rot90(2)": True, "Rot90(3)": False}
    error = equivariance_error(net, x, Rot90(1), output_action=regular("p4", fields=2))
    assert float(error) < 1e-12
    invariant = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten(), SumFields())
    assert check_invariance(invariant, x, transforms=ROTATIONS).passed
    assert not check_invariance(
        nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten()), x, transforms=ROTATIONS
    ).passed


class SumFields(nn.Module):
    """Sums each field's 4 orientation channels: invariant features from regular ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), -1, 4).sum(-1)


def test_shifts_move_regular_fields_like_any_map() -> None:
    net, x = p4_net().double(), images(size=13)
    report = check_equivariance(net, x, output_action=regular("p4"), boundary="circular", max_shift=2)
    assert not report.passed  # zero padding at the borders: the check sees it
    assert check_equivariance(net, x, output_action=regular("p4"), max_shift=2, margin=2).passed


def test_a_p4m_lifting_convolution_with_flips() -> None:
    torch.manual_seed(0)
    lift, x = Lifting(2, 2, flips=True).double(), images().expand(-1, 2, -1, -1).clone()
    elements = [*ROTATIONS, Flip(-1), Flip(-2)]
    assert check_equivariance(lift, x, transforms=elements, output_action=regular("p4m")).passed
    assert not check_equivariance(
        lift, x, transforms=[Flip(-1)], output_action=regular("p4m", reflection=-2)
    ).passed
    assert not check_equivariance(lift, x, transforms=[Flip(-1), Flip(-2)]).passed
    assert not check_equivariance(
        lift, x, transforms=[Rot90(1)], output_action=regular("p4m", direction=-1)
    ).passed


def test_every_element_of_p4m_is_checked_with_the_regular_action() -> None:
    """Issue 21, item 11: the diagonal reflections and products of rotations and flips are elements of p4m
    too, and regular("p4m") moves the orientation channels for each of them."""
    torch.manual_seed(0)
    lift, x = Lifting(2, 2, flips=True).double(), images().expand(-1, 2, -1, -1).clone()
    group = [Rot90(1), Rot90(2), Rot90(3), Flip(-1), Flip(-2), Transpose(), Transpose(anti=True)]
    products = [Rot90(1) * Flip(-1), Flip(-1) * Rot90(1), Rot90(3) * Flip(-2), Flip(-2) * Transpose()]
    report = check_equivariance(lift, x, transforms=[*group, *products], output_action=regular("p4m"))
    assert report.passed
    assert report.max_error < 1e-12
    wrong = check_equivariance(lift, x, transforms=group, output_action=regular("p4m", direction=-1))
    assert by_element(wrong) == {  # numbered the other way: the half turn and the flips still agree
        "Rot90(1)": False, "Rot90(2)": True, "Rot90(3)": False, "Flip(-1)": True, "Flip(-2)": True,
        "Transpose()": False, "Transpose(anti=True)": False,
    }  # fmt: skip
    plain = check_equivariance(lift, x, transforms=[Transpose(), Transpose(anti=True)])
    assert not any(by_element(plain).values())
    with pytest.raises(InvalidArgument, match=r"p4 has no reflections, but Transpose\(\) is one"):
        check_equivariance(lift, x, transforms=[Rot90(1) * Flip(-1)], output_action=regular("p4"))


def test_the_permutations_are_the_measured_action() -> None:
    """Orientation (f, i) moves to (f XOR s, k + (-1)^s i) under "flip s times, then rotate by k"."""
    group = regular("p4m")
    cases = [(0, k, Rot90(k)) for k in range(4)] + [(1, 0, Flip(-1)), (1, 2, Flip(-2))]
    cases += [(1, 1, Transpose()), (1, 3, Transpose(anti=True)), (1, 1, Rot90(1) * Flip(-1))]
    for s, k, element in cases:
        source = group.permutation(element)
        assert sorted(source.tolist()) == list(range(8))
        for o in range(8):
            f, i = divmod(o, 4)
            assert int(source[4 * (f ^ s) + (k + (-1) ** s * i) % 4]) == o
    assert regular("p4", direction=-1).permutation(Rot90(1)).tolist() == [1, 2, 3, 0]


# -- a regular action written as a user would --------------------------------------------------------------


class RegularRotation(Action):
    """A quarter turn of a p4 regular field, written against the public protocol: the map rotates and each
    field's 4 orientation channels move by ``k`` (``sign=-1``: the wrong way)."""

    def __init__(self, k: int, sign: int = 1) -> None:
        self.k, self.sign = k, sign

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        n, c = x.shape[:2]
        turned = torch.rot90(x, self.k, (-2, -1)).reshape(n, c // 4, 4, *x.shape[2:])
        return torch.roll(turned, self.sign * self.k, dims=2).reshape(x.shape)

    def inverse(self) -> RegularRotation:
        return RegularRotation(-self.k, self.sign)

    def __repr__(self) -> str:
        return f"RegularRotation({self.k})"


def test_a_user_defined_channel_permuting_action_on_a_group_convolution() -> None:
    """The engine hands the action only (N, C, *spatial) tensors (it once also gave it an (N, H, W) norm map)."""
    torch.manual_seed(0)
    gconv = GroupConv(2, 3).double()
    fields = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    report = check_equivariance(gconv, fields, transforms=[RegularRotation(k) for k in (1, 2, 3)])
    assert report.passed
    wrong = check_equivariance(gconv, fields, transforms=[RegularRotation(k, sign=-1) for k in (1, 2, 3)])
    assert [r.passed for r in wrong.results] == [False, True, False]
    library = [regular("p4").acting(Rot90(k)) for k in (1, 2, 3)]
    assert check_equivariance(gconv, fields, transforms=library, output_action=regular("p4")).passed


# -- hints ------------------------------------------------------------------------------------------------


def test_the_hint_at_a_group_convolution_layer_points_to_the_regular_action() -> None:
    report = check_equivariance(p4_net().double(), images(), transforms=ROTATIONS, layer="2")
    assert "output_action=regular('p4')" in report.hints[-1]
    odd = check_equivariance(nn.Conv2d(1, 3, 3, padding=1), images().float(), transforms=ROTATIONS)
    assert "regular" not in odd.hints[-1]
    assert "plain convolution has no such symmetry" in odd.hints[-1]
    given = check_equivariance(
        Lifting(1, 2).double(), images(), transforms=ROTATIONS, output_action=regular("p4", direction=-1)
    )
    assert "(direction=1 numbers them the other way)" in given.hints[-1]
    assert "reflection=-2" in given.hints[-1]


def test_a_strided_layer_misaligned_for_rotations_is_named_with_the_size_to_use() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 5, stride=2, padding=2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(rotated_bank(torch.randn(2, 1, 5, 5)))  # a p4 lifting convolution of stride 2
    model = nn.Sequential(nn.Identity(), conv)
    even = check_equivariance(model, images(size=16), transforms=[Rot90(1)], output_action=regular("p4"))
    assert not even.passed
    expected = (
        "layer '1' (kernel 5, stride 2, padding 2) gets a map of size 16, and 16 + 2*2 - 5 = 15 is not a "
        "multiple of 2"
    )
    assert expected in even.hints[0]
    assert "use an input of size 17 in that dim" in even.hints[0]
    assert check_equivariance(
        model, images(size=17), transforms=[Rot90(1)], output_action=regular("p4")
    ).passed
    assert not any(
        "stride" in h for h in check_equivariance(model, images(size=17), transforms=[Rot90(1)]).hints
    )


# -- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: regular("p6"), r"group must be 'p4' or 'p4m', found 'p6'"),
        (lambda: regular("p4", direction=2), r"direction must be 1 or -1, found 2"),
        (lambda: regular("p4", reflection=-3), r"reflection must be -1 or -2"),
        (lambda: regular("p4", fields=0), r"fields must be positive"),
        (
            lambda: check_equivariance(nn.Conv2d(1, 6, 3), torch.randn(1, 1, 8, 8), transforms=[Rot90(1)],
                                       output_action=regular("p4")),
            r"^regular\('p4'\) expects fields of 4 orientation channels each \(a multiple of 4\), but the "
            r"output of shape \(1, 6, 6, 6\) has 6 channels; pass regular\('p4m'\) if its fields hold 8 "
            r"orientations, or layer= naming the group-convolution layer to measure$",
        ),
        (
            lambda: check_equivariance(nn.Conv2d(1, 8, 3), torch.randn(1, 1, 8, 8), transforms=[Rot90(1)],
                                       output_action=regular("p4", fields=3)),
            r"^regular\('p4', fields=3\) expects 3 fields of 4 orientation channels \(12 channels\), but "
            r"the output of shape \(1, 8, 6, 6\) has 8 channels; pass fields=2, or layer= naming the "
            r"group-convolution layer to measure$",
        ),
        (
            lambda: check_equivariance(nn.Conv2d(1, 8, 3), torch.randn(1, 1, 8, 8), transforms=[Flip(-1)],
                                       output_action=regular("p4")),
            r"p4 has no reflections, but Flip\(-1\) is one; use regular\('p4m'\)",
        ),
        (  # issue 21, item 11: one "but", the layer= advice once, and no "as on the input"
            lambda: check_equivariance(nn.Conv2d(1, 16, 3, padding=1), torch.randn(2, 1, 9, 9),
                                       transforms=[Rot90(1)], output_action=regular("p4", fields=3)),
            r"^regular\('p4', fields=3\) expects 3 fields of 4 orientation channels \(12 channels\), but "
            r"the output of shape \(2, 16, 9, 9\) has 16 channels; pass fields=4, or layer= naming the "
            r"group-convolution layer to measure$",
        ),
        (
            lambda: check_equivariance(nn.Conv2d(1, 8, (3, 1)), torch.randn(2, 1, 9, 9),
                                       transforms=[Rot90(1)], output_action=regular("p4m")),
            r"^the transforms act on the output of shape \(2, 8, 7, 9\) through output_action=regular\('p4m'\)"
            r", and Rot90\(1\) needs dims \(-2, -1\) of equal size",
        ),
    ],
    ids=["group", "direction", "reflection", "fields", "channels", "fields-mismatch", "flip-in-p4",
         "sixteen-channels", "not-square"],
)  # fmt: skip
def test_bad_regular_arguments_are_refused_with_a_fix(call: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        call()  # type: ignore[operator]


def test_the_representation_prints_and_compares() -> None:
    assert regular("p4m", fields=2, direction=-1) == Regular("p4m", fields=2, direction=-1)
    assert regular("p4") != regular("p4", direction=-1)
    assert repr(regular("p4", direction=-1, reflection=-2)) == "regular('p4', direction=-1, reflection=-2)"
    assert regular("p4").acting(Shift(1, 0)) == Shift(1, 0)
