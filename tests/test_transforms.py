"""Rot90 and Flip: the p4 / p4m symmetries, checked with transforms= on the shifts' engine."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivariance import (
    EquivarianceError,
    InvalidArgument,
    Shift,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
    invariance_error,
)
from equivariance._engine import arguments as _arguments
from equivariance._engine import plan as _plan
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import Sums
from equivariance.actions import Action, Grid, Identity
from equivariance.transforms import Flip, Rot90, Transpose


def p4_average(conv: nn.Conv2d | nn.Conv3d, dims: tuple[int, int] = (-2, -1)) -> nn.Module:
    """The convolution with its kernel averaged over its four rotations: a p4-equivariant layer."""
    with torch.no_grad():
        conv.weight.copy_(sum(torch.rot90(conv.weight, k, dims) for k in range(4)) / 4)
    return conv


def test_rot90_and_flip_are_group_elements() -> None:
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(Rot90(4).apply(x, 2), x)
    assert torch.equal(Rot90(1).apply(Rot90(3).apply(x, 2), 2), x)
    assert torch.equal(Flip(-1).apply(Flip(-1).apply(x, 2), 2), x)
    # p4m: a flip conjugates a rotation into its inverse
    flipped = Flip(-1).apply(Rot90(1).apply(Flip(-1).apply(x, 2), 2), 2)
    assert torch.equal(flipped, Rot90(-1).apply(x, 2))


def test_a_p4_layer_passes_rot90_and_a_plain_convolution_fails() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, 12, 12)
    p4 = p4_average(nn.Conv2d(2, 3, 3, padding=1))
    report = check_equivariance(p4, x, transforms=[Rot90(1), Rot90(2), Rot90(3)])
    assert report.passed
    assert report.max_error < 1e-6
    plain = check_equivariance(nn.Conv2d(2, 3, 3, padding=1), x, transforms=[Rot90(1)])
    assert not plain.passed
    assert plain.max_error > 0.5
    assert "average its kernels over the group" in plain.hints[0]


def test_a_flip_symmetric_kernel_passes_flip_and_rot90_and_flip_work_together() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        w.copy_(sum(torch.rot90(w, k, (-2, -1)) for k in range(4)) / 4)
        w.copy_((w + w.flip(-1)) / 2)  # p4m: invariant under rotations and flips
    report = check_equivariance(conv, torch.randn(3, 1, 10, 10), transforms=[Rot90(1), Flip(-1), Flip(-2)])
    assert report.passed
    assert [str(s) for s in report.elements] == ["Rot90(1)", "Flip(-1)", "Flip(-2)"]


def test_one_dim_flip() -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 2, 5, padding=2)
    x = torch.randn(3, 1, 20)
    assert not check_equivariance(conv, x, transforms=[Flip(-1)]).passed
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)  # a palindromic kernel
    assert check_equivariance(conv, x, transforms=[Flip(-1)]).passed


def test_three_dim_rotation_of_a_plane() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 6, 8, 8)
    plain = nn.Conv3d(1, 2, 3, padding=1)
    assert not check_equivariance(plain, x, transforms=[Rot90(1)]).passed
    p4 = p4_average(nn.Conv3d(1, 2, 3, padding=1))
    assert check_equivariance(p4, x, transforms=[Rot90(1), Rot90(3), Flip(-3)]).passed is False  # depth flip
    assert check_equivariance(p4, x, transforms=[Rot90(1), Rot90(3)]).passed


def test_the_report_lists_transforms_like_shifts() -> None:
    x = torch.randn(2, 1, 8, 8)
    report = check_equivariance(nn.Conv2d(1, 2, 3), x, transforms=[Rot90(1), Flip(-1)])
    text = str(report)
    assert text.startswith("equivariance check FAILED: Conv2d, 2 transforms, 2 failed; max error ")
    assert "  transform      error  verdict" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["element"] for r in data["results"]] == ["Rot90(1)", "Flip(-1)"]
    with pytest.raises(EquivarianceError, match=r"2 transforms, 2 failed") as caught:
        assert_equivariant(nn.Conv2d(1, 2, 3), x, transforms=[Rot90(1), Flip(-1)])
    # profile_equivariance takes a transform in place of the shift: the failure says how to find the layer
    assert "equivariance.profile_equivariance(model, x, shift=Rot90(1)) gives the error" in str(caught.value)


class OwnTranspose(Action):
    """A transform of one's own: the transpose of the image plane (a reflection across the diagonal)."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x.transpose(-2, -1)

    def __repr__(self) -> str:
        return "OwnTranspose()"


class BorderRow(nn.Module):
    """A p4-symmetric convolution plus a constant on the first output row: symmetric in the interior only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = p4_average(nn.Conv2d(1, 2, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return torch.cat([out[..., :1, :] + 1, out[..., 1:, :]], dim=-2)


P4M: list[Action] = [Rot90(1), Rot90(2), Rot90(3), Flip(-1), Flip(-2)]


def measure(
    model: nn.Module, x: torch.Tensor, elements: list[Action], batch_size: int | None = None
) -> tuple[Sums, int]:
    """The engine's sums (the noise floor's row first) and the chunk size."""
    request = _arguments.validate(model, x, "equivariance", elements, batch_size=batch_size)
    with Runner(model) as runner:
        return _plan.measure(runner, _plan.make_plan(runner, request))


def test_chunks_smaller_than_the_sweep_give_the_numbers_of_one_chunk() -> None:
    x = torch.randn(4, 2, 10, 10, dtype=torch.float64)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3)).double()
    whole, size = measure(model, x, P4M, batch_size=1000)
    assert size == 1000
    for size in (1, 3, 7):  # chunks that split the samples of one transform, and mix transforms
        chunked, _ = measure(model, x, P4M, batch_size=size)
        for field in ("diff_sq", "ref_sq", "border_diff", "border_ref"):  # the noise floor's row included
            torch.testing.assert_close(getattr(chunked, field), getattr(whole, field), rtol=1e-12, atol=0)
    one = check_equivariance(model, x, transforms=P4M)
    three = check_equivariance(model, x, transforms=P4M, batch_size=3)
    assert three.batch_size == 3
    assert three.errors == pytest.approx(one.errors, rel=1e-12)
    assert min(one.errors) > 0.1  # a plain convolution: the numbers compared are not all zero


def test_shifts_and_transforms_in_one_plan_are_measured_alike() -> None:
    x = torch.randn(3, 1, 9, 9)
    model = nn.Conv2d(1, 2, 3, padding=1)
    mixed, _ = measure(model, x, [Shift(1, 0), Rot90(1), Shift(0, -2), Flip(-1)], batch_size=4)
    shifts, _ = measure(model, x, [Shift(1, 0), Shift(0, -2)])
    transforms, _ = measure(model, x, [Rot90(1), Flip(-1)])
    # row 0 of each is the noise floor's identity
    torch.testing.assert_close(mixed.diff_sq[[1, 3]], shifts.diff_sq[1:])
    torch.testing.assert_close(mixed.diff_sq[[2, 4]], transforms.diff_sq[1:])
    torch.testing.assert_close(
        mixed.count[1:], torch.tensor([8 * 9 * 2, 9 * 9 * 2, 9 * 7 * 2, 9 * 9 * 2.0]).double()
    )


class TwoHeads(nn.Module):
    """A p4-symmetric layer, then a plain one; returns both maps as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.symmetric = p4_average(nn.Conv2d(1, 2, 3, padding=1))
        self.plain = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first = self.symmetric(x)
        return {"first": first, "second": self.plain(first)}


def test_layer_output_and_auto_batch_size_with_transforms() -> None:
    x = torch.randn(3, 1, 8, 8)
    model = TwoHeads()
    assert check_equivariance(model, x, transforms=P4M[:3], output="first").passed
    assert not check_equivariance(model, x, transforms=P4M[:3], output="second").passed
    by_layer = check_equivariance(model, x, transforms=P4M[:3], layer="symmetric")
    assert by_layer.passed
    assert by_layer.subject == "TwoHeads.symmetric"
    auto = check_equivariance(model, x, transforms=P4M, output="second", batch_size="auto")
    default = check_equivariance(model, x, transforms=P4M, output="second")
    assert 1 <= auto.batch_size <= 6 * 3  # sized from memory, at most the sweep
    assert auto.errors == pytest.approx(default.errors, rel=1e-6)


def test_margin_drops_a_border_that_breaks_the_symmetry() -> None:
    x = torch.randn(3, 1, 10, 10)
    failed = check_equivariance(BorderRow(), x, transforms=[Rot90(1), Flip(-2)])
    assert not failed.passed
    assert failed.max_error > 0.1
    # the error split by distance to the edge says where it is, as for shifts
    assert any(
        "errors only within 1 sample of the borders" in hint and "margin=1" in hint for hint in failed.hints
    )
    report = check_equivariance(BorderRow(), x, transforms=[Rot90(1), Flip(-2)], margin=1)
    assert report.passed
    assert report.max_error < 1e-6
    assert report.margin == (1, 1)
    assert "margin (1, 1)" in str(report)
    assert equivariance_error(BorderRow(), x, Rot90(1), margin=1) < 1e-6
    assert equivariance_error(BorderRow(), x, Rot90(1)) > 0.1
    with pytest.raises(
        InvalidArgument,
        match=r"the output's spatial dims \(10, 10\) cannot carry transform Rot90\(1\) and margin \(5, 5\): nothing of the output is left to compare; use a smaller margin",
    ):
        check_equivariance(BorderRow(), x, transforms=[Rot90(1)], margin=5)


def test_auto_margin_with_transforms() -> None:
    x = torch.randn(2, 1, 10, 10)
    report = check_equivariance(BorderRow(), x, transforms=[Rot90(1)], margin="auto")
    assert report.margin == (1, 1)
    assert report.passed
    assert report.inferred[0].startswith("margin 1: ")


def test_check_invariance_with_transforms_passes_a_rotation_invariant_model_and_fails_a_plain_one() -> None:
    x = torch.randn(4, 1, 12, 12)
    invariant = nn.Sequential(
        p4_average(nn.Conv2d(1, 4, 3, padding=1)), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    report = check_invariance(invariant, x, transforms=P4M[:3])
    assert report.passed
    assert report.max_error < 1e-6
    assert report.kind == "invariance"
    assert report.output_action == "none (invariance)"
    assert report.summary().startswith("invariance check PASSED: Sequential, 3 transforms; max error ")
    assert check_invariance(lambda t: t.mean(dim=(2, 3)), x, transforms=P4M).passed
    # negative control: the same network with a kernel of no symmetry
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    failed = check_invariance(plain, x, transforms=[Rot90(1), Flip(-1)])
    assert not failed.passed
    assert failed.max_error > 0.01
    assert "the output changes when the input is rotated or flipped" in failed.hints[0]
    with pytest.raises(
        EquivarianceError, match=r"invariance check FAILED: Sequential, 2 transforms, 2 failed"
    ):
        assert_invariant(plain, x, transforms=[Rot90(1), Flip(-1)])
    assert invariance_error(invariant, x, Rot90(1)) < 1e-6
    assert invariance_error(plain, x, Rot90(1)) > 0.01


def test_a_transform_of_ones_own_runs_on_the_engine() -> None:
    x = torch.randn(2, 1, 8, 8)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.transpose(-2, -1)) / 2)  # a symmetric kernel
    report = check_equivariance(conv, x, transforms=[OwnTranspose()])
    assert report.passed
    assert [str(s) for s in report.elements] == ["OwnTranspose()"]
    assert not check_equivariance(nn.Conv2d(1, 2, 3, padding=1), x, transforms=[OwnTranspose()]).passed


class ApplyOnly:
    """The protocol removed in 0.2: ``apply(x, spatial_dims)`` without being an Action."""

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        return x.transpose(-2, -1)


def test_an_object_of_the_removed_apply_protocol_is_refused_with_the_fix() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"found .*\(ApplyOnly\) \(the earlier protocol, apply\(x, spatial_dims\) alone, was removed in 0\.2: "
        r"define act\(x, grid\) in a subclass of Action\)$",
    ):
        check_equivariance(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8), transforms=[ApplyOnly()])  # type: ignore[list-item]


class Cropped(Action):
    """Not a transform of the grid: it drops a column."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x[..., :-1]

    def __repr__(self) -> str:
        return "Cropped()"


class Reciprocal(nn.Module):
    """``1 / x`` at the top-left corner: infinite where a rotation brings a zero corner there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 / x[:, :, 0, 0]


def test_output_and_transform_errors() -> None:
    x = torch.rand(2, 1, 8, 8) + 0.5
    with pytest.raises(
        InvalidArgument,
        match=r"the transforms act on the output of shape \(2, 1, 6, 8\) as on the input, and Rot90\(1\) needs dims \(-2, -1\) of equal size .*; pass layer= to measure a layer whose output they map onto itself",
    ):
        check_equivariance(nn.Conv2d(1, 1, (3, 1)), x, transforms=[Rot90(1)])
    with pytest.raises(
        InvalidArgument,
        match=r"Cropped\(\) must map the grid of x onto itself, returning a tensor of shape \(1, 1, 8, 8\)",
    ):
        check_equivariance(nn.Conv2d(1, 1, 3), x, transforms=[Cropped()])
    with pytest.raises(InvalidArgument, match=r"has no channel dim and 2 spatial dims to carry a transform"):
        check_equivariance(nn.Flatten(), x, transforms=[Rot90(1)])
    x[:, :, 0, -1] = 0  # Rot90(1) brings the top-right corner to the top left
    with pytest.raises(
        InvalidArgument,
        match=r"not finite .* for 2 of 2 samples of transformed inputs \(transform Rot90\(1\)\)",
    ):
        check_invariance(Reciprocal(), x, transforms=[Rot90(1)], batch_size=2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m, x: equivariance_error(m, x, Rot90(1), stride="auto"),
            r"stride='auto' infers how shifts move the output, but Rot90\(1\) is a transform",
        ),
        (
            lambda m, x: equivariance_error(m, x, Flip(-1), output_action=lambda y, s: y),
            r"pass neither with transforms",
        ),
        (
            lambda m, x: check_invariance(m, x, [(1, 0)], transforms=[Rot90(1)]),
            r"transforms= replaces the shifts, so shifts cannot be passed with it",
        ),
        (
            lambda m, x: check_invariance(m, x, transforms=[Shift(1, 0)]),
            r"transforms must hold Rot90, Flip .* shifts go in shifts=",
        ),
        (
            lambda m, x: check_equivariance(m, x, transforms=[Rot90(1)], stride="auto"),
            r"stride cannot be passed with it",
        ),
    ],
    ids=[
        "error-auto-stride",
        "error-output-action",
        "invariance-with-shifts",
        "invariance-a-shift",
        "auto-stride",
    ],
)
def test_transforms_refuse_what_only_shifts_mean(call: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        call(nn.Conv2d(1, 1, 3, padding=1), torch.randn(1, 1, 8, 8))  # type: ignore[operator]


def test_a_rotation_acts_on_a_subsampled_output_as_on_any_other() -> None:
    # the action is given the output's grid: a stride changes how far a shift moves it, not a rotation
    x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    symmetric = nn.Conv2d(
        1, 2, 3, stride=2, bias=False
    ).double()  # (9 - 3) % 2 == 0: the grid maps onto itself
    with torch.no_grad():
        symmetric.weight.copy_(sum(torch.rot90(symmetric.weight, k, (-2, -1)) for k in range(4)))
    assert float(equivariance_error(symmetric, x, Rot90(1), stride=2)) < 1e-12
    assert float(equivariance_error(symmetric, x, Rot90(1), stride=2)) == float(
        equivariance_error(symmetric, x, Rot90(1))
    )
    assert float(equivariance_error(nn.Conv2d(1, 2, 3, stride=2).double(), x, Rot90(1), stride=2)) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "x_shape", "match"),
    [
        ({"transforms": [Rot90(1)]}, (1, 1, 6, 8), r"Rot90\(1\) needs dims \(-2, -1\) of equal size"),
        (
            {"transforms": [Rot90(1)]},
            (1, 1, 8),
            r"Rot90\(1\) acts on dims \(-2, -1\) .* it needs two spatial dims \(use Flip for 1-D",
        ),
        ({"transforms": [Flip(-2)]}, (1, 1, 8), r"Flip\(-2\) flips dim -2 but .* has only 1 spatial dim"),
        ({"transforms": [Rot90(1)], "max_shift": 2}, (1, 1, 8, 8), r"max_shift cannot be passed with it"),
        ({"transforms": [(1, 0)]}, (1, 1, 8, 8), r"transforms must hold Rot90, Flip .* shifts go in shifts="),
        ({"transforms": []}, (1, 1, 8, 8), r"transforms must be a non-empty list"),
    ],
    ids=["not-square", "1d-rotation", "1d-flip-dim", "with-max-shift", "a-shift", "empty"],
)
def test_invalid_arguments(kwargs: dict[str, object], x_shape: tuple[int, ...], match: str) -> None:
    conv = nn.Conv1d(1, 1, 3) if len(x_shape) == 3 else nn.Conv2d(1, 1, 3)
    with pytest.raises(InvalidArgument, match=match):
        check_equivariance(conv, torch.randn(*x_shape), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Rot90(1, dims=(0, 1)), r"dims must be two negative ints naming spatial dims"),
        (lambda: Rot90(1, dims=(-1, -1)), r"dims must be two different dims"),
        (lambda: Flip(2), r"dim must be a negative int naming a spatial dim, found 2"),
    ],
    ids=["rot-positive-dims", "rot-same-dims", "flip-positive"],
)
def test_invalid_constructors(call: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        call()  # type: ignore[operator]


# -- products: the p4m group of a plane ----------------------------------------------------------------------

PLANES = [(-2, -1), (-3, -1), (-3, -2)]


@st.composite
def plane_elements(draw: st.DrawFn, plane: tuple[int, int] | None = None) -> Action:
    """An element of a plane's p4m group, in any of the forms a user may write it."""
    a, b = plane if plane is not None else draw(st.sampled_from(PLANES))
    return draw(
        st.sampled_from(
            [
                Identity(), Rot90(0, (a, b)), Rot90(1, (a, b)), Rot90(2, (a, b)), Rot90(3, (a, b)),
                Rot90(1, (b, a)), Rot90(3, (b, a)), Flip(a), Flip(b), Transpose((a, b)),
                Transpose((b, a), anti=True),
            ]
        )
    )  # fmt: skip


@st.composite
def triples(draw: st.DrawFn) -> tuple[Action, Action, Action]:
    plane = draw(st.sampled_from(PLANES))
    return draw(plane_elements(plane)), draw(plane_elements(plane)), draw(plane_elements(plane))


def volume() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, 5, generator=torch.Generator().manual_seed(0))


def acts(element: Action, x: torch.Tensor) -> torch.Tensor:
    return element.act(x, Grid.of_input(3))


@given(triples())
def test_products_are_associative_and_act_as_acting_twice(elements: tuple[Action, Action, Action]) -> None:
    """Issue 21, item 11: elements of a plane compose, and acting by a product is acting twice."""
    a, b, c = elements
    assert (a * b) * c == a * (b * c)  # type: ignore[operator]
    x = volume()
    assert torch.equal(acts(a * b, x), acts(a, acts(b, x)))  # type: ignore[operator]
    assert torch.equal(acts((a * b) * c, x), acts(a, acts(b, acts(c, x))))  # type: ignore[operator]


@given(plane_elements())
def test_the_identity_and_inverses_of_products(element: Action) -> None:
    canonical = Identity() * element
    assert canonical == element * Identity()  # type: ignore[operator]
    assert torch.equal(acts(canonical, volume()), acts(element, volume()))
    assert element * element.inverse() == Identity()  # type: ignore[operator]
    assert element.inverse() * element == Identity()  # type: ignore[operator]
    assert canonical * canonical.inverse() == Identity()  # type: ignore[operator]


def test_the_products_of_a_plane_are_its_eight_elements_in_one_canonical_form_each() -> None:
    group = [Identity(), Rot90(1), Rot90(2), Rot90(3), Flip(-1), Flip(-2), Transpose(), Transpose(anti=True)]
    table = {(str(g), str(h)): g * h for g in group for h in group}  # type: ignore[operator]
    assert set(table.values()) == set(group)  # closed, and every element is a product
    x = torch.randn(1, 1, 4, 4)
    images = {element: acts(element, x) for element in group}
    assert len({tuple(image.flatten().tolist()) for image in images.values()}) == 8  # all distinct
    assert Rot90(1) * Flip(-1) == Transpose()  # the diagonal reflections
    assert Rot90(3) * Flip(-1) == Transpose(anti=True)
    assert torch.equal(acts(Transpose(), x), x.transpose(-1, -2))
    assert Flip(-1) * Rot90(1) == Transpose(anti=True)  # not commutative
    assert Rot90(1, dims=(-1, -2)) * Rot90(1) == Identity()  # a rotation written the other way round


@pytest.mark.parametrize(
    ("product", "message"),
    [
        (lambda: Rot90(1, (-3, -2)) * Flip(-1), r"Rot90\(1, dims=\(-3, -2\)\) \* Flip\(-1\) is not an element of one plane's p4m group"),
        (lambda: Rot90(1) * Shift(1, 0), r"Rot90\(1\) \* Shift\(1, 0\) is not an element of one plane's"),
        (lambda: Transpose((-1, -1)), r"dims must be two different dims"),
        (lambda: Transpose(anti=1), r"anti must be True or False, found 1"),  # type: ignore[arg-type]
        (lambda: Transpose().apply(torch.zeros(1, 1, 3, 4), 2), r"Transpose\(\) needs dims \(-2, -1\) of equal size"),
    ],
    ids=["planes", "shift", "dims", "anti", "not-square"],
)  # fmt: skip
def test_products_outside_one_plane_are_refused(product: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        product()  # type: ignore[operator]


def test_a_diagonal_reflection_is_checked_like_any_transform() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():  # a kernel symmetric across the diagonal commutes with the transpose
        conv.weight.copy_(conv.weight + conv.weight.transpose(-1, -2))
    x = torch.randn(2, 2, 9, 9)
    assert check_equivariance(conv, x, transforms=[Transpose(), Rot90(1) * Flip(-1)]).passed
    report = check_equivariance(conv, x, transforms=[Transpose(anti=True)])
    assert not report.passed  # the anti-diagonal is another reflection: a negative control
    assert "Transpose(anti=True)" in str(report)
