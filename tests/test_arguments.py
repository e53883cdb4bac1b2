"""One argument validation: the rules every measurement shares, held at their edges and against each other.

The checks, the profile, the Lie derivative and the penalty validate with the same functions
(``equivariance._engine.arguments``); each rule is shown here where it turns, with the value just inside
and just outside, and for every measurement that uses it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import (
    InvalidArgument,
    check_equivariance,
    equivariance_loss,
    profile_equivariance,
    profile_lie_derivative,
)
from equivariance.lie import OTHER, lie_derivative, lie_derivative_error
from equivariance.transforms import Rot90


def circular_stack() -> nn.Sequential:
    circular = {"padding": 1, "padding_mode": "circular"}
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, **circular), nn.Tanh(), nn.Conv2d(4, 4, 3, **circular), nn.Tanh()
    ).double()


def images(n: int = 2, size: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, size, size, dtype=torch.float64)


# -- the layers measured: one rule for both profiles ----------------------------------------------------


PROFILES = {
    "profile": lambda model, x, **kw: profile_equivariance(model, x, (1, 0), boundary="circular", **kw),
    "lie": lambda model, x, **kw: profile_lie_derivative(model, x, **kw),
}


@pytest.mark.parametrize("which", sorted(PROFILES))
def test_both_profiles_take_the_leaves_by_default_and_a_leaf_model_as_its_own_layer(which: str) -> None:
    profile = PROFILES[which]
    names = [row.name for row in profile(circular_stack(), images()).layers]
    assert names[:4] == ["0", "1", "2", "3"]
    # a model without submodules is the one layer of its profile, under the name of its output
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular").double()
    rows = profile(conv, images()).layers
    assert [row.name for row in rows][:1] == ["(output)"]
    if which == "lie":  # the whole derivative is the layer's: nothing is left for the rest
        assert rows[0].share == pytest.approx(1.0, abs=1e-9)
        assert [row.name for row in rows] == ["(output)", OTHER]


@pytest.mark.parametrize("which", sorted(PROFILES))
@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("0", r"layers must be a non-empty list of layer names, found '0' \(str\); pass e\.g\. \['0'\]"),
        ([], r"layers must be a non-empty list of layer names, found \[\] \(list\); pass e\.g\. \['conv1'\]"),
        ([0], r"layers must name submodules \(str\), found 0 \(int\); pass names from model\.named_modules"),
        (["9"], r"Sequential has no layer named '9'"),
    ],
    ids=["str", "empty", "int", "unknown"],
)
def test_both_profiles_refuse_the_same_layers_with_the_same_message(
    which: str, layers: object, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        PROFILES[which](circular_stack(), images(), layers=layers)


@pytest.mark.parametrize("which", sorted(PROFILES))
def test_both_profiles_stop_after_up_to_and_refuse_a_layer_that_never_runs(which: str) -> None:
    profile = PROFILES[which]
    names = [row.name for row in profile(circular_stack(), images(), up_to="1").layers]
    assert names[:2] == ["0", "1"]
    assert "2" not in names
    # the last layer: the same rows as the whole model
    whole = [row.name for row in profile(circular_stack(), images()).layers]
    assert [row.name for row in profile(circular_stack(), images(), up_to="3").layers] == whole

    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.spare = circular_stack(), nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    with pytest.raises(InvalidArgument, match=r"'spare'.* never called during the forward pass"):
        profile(Spare(), images(), up_to="spare")
    with pytest.raises(InvalidArgument, match=r"^up_to must be a submodule name \(str\), found 1 \(int\)"):
        profile(circular_stack(), images(), up_to=1)


def test_the_lie_profile_up_to_a_layer_is_the_lie_derivative_of_that_layer() -> None:
    model, x = circular_stack(), images()
    profile = profile_lie_derivative(model, x, up_to="1")
    assert profile.error == pytest.approx(float(lie_derivative_error(model, x, layer="1")), rel=1e-9)
    assert sum(row.share for row in profile.layers) == pytest.approx(1.0, abs=1e-9)
    # up to the circular convolution alone: no derivative, where the whole model (a tanh after) has one
    assert profile_lie_derivative(model, x, up_to="0").error < 1e-12
    assert float(lie_derivative_error(model, x)) > 1e-2


@pytest.mark.parametrize("which", sorted(PROFILES))
def test_both_profiles_need_a_module(which: str) -> None:
    instead = "check_equivariance" if which == "profile" else "lie_derivative_error"
    with pytest.raises(InvalidArgument, match=rf"needs an nn\.Module to hook its layers, .*; use {instead}"):
        PROFILES[which](torch.tanh, images())


# -- the identity: a measurement that cannot fail is refused ------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, s: check_equivariance(m, x, s), r"the shifts to check are only the identity \(0, 0\)"),
        (
            lambda m, x, s: equivariance_loss(m, x, s),
            r"the shifts to penalize are only the identity \(0, 0\)",
        ),
        (lambda m, x, s: profile_equivariance(m, x, s[0]), r"shift \(0, 0\) is the identity, a profile"),
    ],
    ids=["check", "loss", "profile"],
)
def test_only_the_identity_is_refused_and_one_nonzero_element_is_enough(call: object, message: str) -> None:
    model, x = circular_stack(), images()
    with pytest.raises(InvalidArgument, match=message):
        call(model, x, [(0, 0), (0, 0)])  # type: ignore[operator]
    call(model, x, [(0, 1), (0, 0)])  # type: ignore[operator]  # the edge: one element that moves


def test_a_rotation_by_zero_is_the_identity_for_the_profile() -> None:
    with pytest.raises(
        InvalidArgument, match=r"transform Rot90\(0\) is the identity, a profile that cannot fail"
    ):
        profile_equivariance(circular_stack(), images(), Rot90(0))
    assert profile_equivariance(circular_stack(), images(), Rot90(1)).layers


# -- max_shift, batch_size and stride: the same bounds wherever they are taken ------------------------


def test_max_shift_must_be_below_the_signal_for_the_check_and_the_penalty() -> None:
    model, x = circular_stack(), images(size=6)
    for call in (
        lambda bound: check_equivariance(model, x, max_shift=bound, boundary="circular"),
        lambda bound: equivariance_loss(model, x, max_shift=bound, samples=1),
    ):
        call(5)  # the largest box that fits: one less than the size
        with pytest.raises(
            InvalidArgument,
            match=r"max_shift 6 is as large as the signal or larger \(spatial size \(6, 6\)\)",
        ):
            call(6)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, b: lie_derivative(m, x, batch_size=b),
        lambda m, x, b: equivariance_loss(m, x, [(0, 1)], batch_size=b),
        lambda m, x, b: check_equivariance(m, x, [(0, 1)], batch_size=b),
    ],
    ids=["lie", "loss", "check"],
)
def test_batch_size_one_is_the_smallest_and_zero_is_refused(call: object) -> None:
    model, x = circular_stack(), images(n=3)
    call(model, x, 1)  # type: ignore[operator]
    with pytest.raises(
        InvalidArgument, match=r"batch_size must be positive, found 0; pass e\.g\. batch_size=8"
    ):
        call(model, x, 0)  # type: ignore[operator]


def test_batch_size_auto_is_the_checks_only() -> None:
    model, x = circular_stack(), images()
    assert check_equivariance(model, x, [(0, 1)], batch_size="auto", boundary="circular").passed
    for call in (
        lambda: lie_derivative(model, x, batch_size="auto"),  # type: ignore[arg-type]
        lambda: equivariance_loss(model, x, [(0, 1)], batch_size="auto"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidArgument, match=r"batch_size must be an integer, found 'auto' \(str\)"):
            call()


def test_stride_auto_or_positive_ints_for_the_check_and_the_lie_derivative() -> None:
    model, x = circular_stack(), images()
    for call in (
        lambda stride: check_equivariance(model, x, stride=stride, boundary="circular"),
        lambda stride: lie_derivative(model, x, stride=stride),
    ):
        call("auto")
        call(1)
        with pytest.raises(InvalidArgument, match=r"stride must be positive, found 0"):
            call(0)
        with pytest.raises(
            InvalidArgument, match=r"stride must be an int, one int per spatial dim or 'auto'"
        ):
            call("twice")
