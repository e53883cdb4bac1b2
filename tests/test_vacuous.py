"""Checks that cannot fail are flagged, and stride='auto' says when no stride fits (issue 11, items 1-3)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from equivariance import (
    EquivarianceError,
    EquivarianceWarning,
    VacuousCheckError,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
)


def _zero_weights_conv() -> nn.Conv2d:
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()  # the bias alone: a constant map
    return conv


def test_a_conv_with_zero_weights_is_vacuous_not_passed_and_says_so() -> None:
    """Issue 21, item 16: a check that cannot fail is not a pass; its reason is a hint too."""
    report = check_equivariance(_zero_weights_conv(), torch.rand(2, 1, 16, 16))
    assert not report.passed
    assert report.within_tolerance
    assert report.failures == ()
    assert report.vacuous is not None
    assert report.vacuous.startswith("the check cannot fail: the output does not change when it is moved")
    assert report.hints[0] == report.vacuous
    assert report.summary().startswith("equivariance check VACUOUS (cannot fail): Conv2d, 25 shifts; max")
    assert "  hint: the check cannot fail" in str(report)
    assert "  vacuous:" not in str(report)  # said once, as the hint
    data = report.to_dict()
    assert (data["vacuous"], data["passed"], data["within_tolerance"]) == (report.vacuous, False, True)


def test_assert_fails_on_a_vacuous_check_unless_allowed() -> None:
    dead, x = _zero_weights_conv(), torch.rand(2, 1, 16, 16)
    with pytest.raises(
        VacuousCheckError,
        match=r"(?s)^equivariance check VACUOUS \(cannot fail\).*the output does not change when it is moved"
        r".*a check that cannot fail asserts nothing; pass allow_vacuous=True to accept it",
    ) as caught:
        assert_equivariant(dead, x)
    assert isinstance(caught.value, EquivarianceError)  # pytest.raises(EquivarianceError) catches it too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # allowed: no warning either
        report = assert_equivariant(dead, x, allow_vacuous=True)
    assert report.vacuous is not None
    head = nn.Sequential(nn.Flatten(1), nn.Linear(256, 4))
    with torch.no_grad():
        head[1].weight.zero_()
    with pytest.raises(VacuousCheckError, match=r"^invariance check VACUOUS"):
        assert_invariant(head, x)
    assert assert_invariant(head, x, allow_vacuous=True).vacuous is not None


def test_an_output_that_varies_below_the_tolerance_is_vacuous() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1)

    def model(x: torch.Tensor) -> torch.Tensor:
        return 1.0 + 1e-8 * conv(x)

    assert check_equivariance(model, torch.rand(2, 1, 16, 16)).vacuous is not None


def test_a_dense_net_on_an_all_zero_input_is_vacuous() -> None:
    model = nn.Sequential(nn.Flatten(1), nn.Linear(144, 144, bias=False), nn.Unflatten(1, (1, 12, 12)))
    report = check_equivariance(model, torch.zeros(2, 1, 12, 12), max_shift=2)
    assert report.within_tolerance  # 0 everywhere
    assert not report.passed
    assert report.vacuous is not None


def test_negative_controls_are_not_vacuous() -> None:
    conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular")
    assert check_equivariance(conv, torch.rand(2, 1, 16, 16), boundary="circular").vacuous is None
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"), nn.AdaptiveAvgPool2d(1))
    assert check_invariance(pooled, torch.rand(2, 1, 16, 16), boundary="circular").vacuous is None
    # one sample: the perturbed pass shows that the output responds
    assert check_invariance(pooled, torch.rand(1, 1, 16, 16), boundary="circular").vacuous is None


def test_a_constant_classifier_passes_invariance_vacuously() -> None:
    head = nn.Sequential(nn.Flatten(1), nn.Linear(256, 4))
    with torch.no_grad():
        head[1].weight.zero_()
    for n in (1, 3):
        report = check_invariance(head, torch.rand(n, 1, 16, 16))
        assert report.within_tolerance
        assert not report.passed
        assert report.vacuous is not None
        assert report.vacuous.startswith("the check cannot fail: the output does not respond to the input")


def test_a_classifier_that_ignores_all_but_the_samples_identical_content_is_not_vacuous() -> None:
    """Identical samples give identical outputs: the perturbed pass, not the batch, decides."""
    pooled = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"), nn.AdaptiveAvgPool2d(1))
    x = torch.rand(1, 1, 16, 16).expand(3, -1, -1, -1).clone()
    assert check_invariance(pooled, x, boundary="circular").vacuous is None


def test_equivariance_error_warns_when_it_cannot_show_a_failure() -> None:
    with pytest.warns(EquivarianceWarning, match="^this error cannot show a failure"):
        assert equivariance_error(_zero_weights_conv(), torch.rand(2, 1, 16, 16), (1, 1)) == 0


def test_the_check_leaves_the_rng_alone_when_it_perturbs() -> None:
    head = nn.Sequential(nn.Flatten(1), nn.Linear(256, 4))
    with torch.no_grad():
        head[1].weight.zero_()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_invariance(head, torch.rand(1, 1, 16, 16))
    assert not torch.equal(torch.rand(3), expected)  # the input drew from it ...
    torch.manual_seed(5)
    x = torch.rand(1, 1, 16, 16)
    state = torch.get_rng_state()
    check_invariance(head, x)
    assert torch.equal(torch.get_rng_state(), state)  # ... the check did not


# -- stride="auto" (item 1) -------------------------------------------------------------------------


def test_stride_auto_on_a_full_resolution_output_takes_the_size_ratio_and_says_so() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))
    x = torch.zeros(2, 3, 48, 48)
    x[..., 12:36, 12:36] = torch.rand(2, 3, 24, 24)
    report = check_equivariance(net, x, stride="auto")
    assert report.output_action == "shift (inferred)"  # stride 1: the size ratio
    (note,) = report.inferred
    assert note.startswith("stride 1, the input's size over the output's: no input shift of 1 to 2 tried")
    assert "Expect the check to fail" in note
    assert not report.passed
    assert any(
        h.startswith("stride='auto' found no input shift that the output follows cleanly")
        for h in report.hints
    )
    assert not any("Dense layers" in h for h in report.hints)


def test_stride_auto_with_a_clear_winner_is_unchanged() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
    x = torch.zeros(2, 1, 40, 40)
    x[..., 10:30, 10:30] = torch.rand(2, 1, 20, 20)
    report = check_equivariance(net, x, stride="auto", margin="auto")
    assert report.passed
    assert report.inferred[0].startswith(
        "stride 2, the input shift that moves the output (20, 20) by one sample"
    )
    assert not any("Expect the check to fail" in n for n in report.inferred)


def test_stride_auto_on_a_constant_output_is_not_a_silent_tie() -> None:
    """Issue 21, item 16: a still output ties every candidate; the note says why, and does not tell the
    reader to expect a failure above a check that could not fail."""
    report = check_equivariance(_zero_weights_conv(), torch.rand(2, 1, 16, 16), stride="auto")
    (note,) = report.inferred
    assert note.startswith(
        "stride 1, the input's size over the output's: every input shift of 1 to 2 tried moves the output by "
        "one sample to within tolerance (errors of 0.0e+00 at most), as an output that does not move at all"
    )
    assert "Expect the check to fail" not in str(report)
    assert report.vacuous is not None


# -- borders or no symmetry (item 3) ----------------------------------------------------------------


def _deep_local_net() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_errors_everywhere_on_a_map_the_padding_reaches_are_borders_not_dense_layers() -> None:
    net, x = _deep_local_net(), torch.rand(2, 3, 40, 40)
    report = check_equivariance(net, x, stride=4)
    assert not report.passed
    (hint,) = report.hints
    # padding 1 and a step of 2 at stride 1 and 2, padding 1 six times at stride 4: 2 + 4 + 24 = 30
    # input samples, 8 samples of the 10 x 10 map at stride 4
    assert (
        "the padding of 8 layers, from '0' (Conv2d, padding 1, zero padding) on, reaches 8 samples in "
        "from each edge of this map at stride 4, whose compared region has 9 along dim 0" in hint
    )
    assert "Dense layers" not in hint
    # a callable whose layers cannot be read (no module of its own): the error's fall toward the
    # centre says it

    class Opaque:
        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = net(t)
            return out

    (hint,) = check_equivariance(Opaque(), x, stride=4).hints
    assert "but the error falls from the edges of the compared region toward its centre" in hint
    assert "a boundary effect" in hint
    assert "Dense layers" not in hint


def test_a_dense_layer_still_gets_the_dense_hint() -> None:
    linear = nn.Linear(144, 144)
    model = nn.Sequential(nn.Flatten(1), linear, nn.Unflatten(1, (1, 12, 12)))
    report = check_equivariance(model, torch.rand(2, 1, 12, 12), max_shift=2)
    assert not report.passed
    assert any("Dense layers (flatten, fully connected)" in h for h in report.hints)
    assert not any("the error falls from the edges" in h for h in report.hints)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_outputs_of_extreme_scale_that_move_are_not_vacuous(scale: float) -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular", bias=False)

    def model(x: torch.Tensor) -> torch.Tensor:
        return conv(x) * scale  # squares that underflow or overflow in float32

    report = check_equivariance(model, torch.rand(2, 1, 12, 12), boundary="circular")
    assert report.passed
    assert report.vacuous is None
