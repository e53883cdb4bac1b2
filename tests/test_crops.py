"""The crop protocol (Zhang 2019): shifts as crop windows of a larger image, for the checks and the metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equivariance import (
    Crop,
    EquivarianceWarning,
    InvalidArgument,
    Rot90,
    Shift,
    check_equivariance,
    check_invariance,
    equivariance_error,
    invariance_error,
)
from equivariance.invariance import consistency, logit_change, prediction_change


class Recorder(nn.Module):
    """Runs ``inner`` and keeps a copy of every input it is given, in order."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def window(x: torch.Tensor, corner: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """The crop of ``x`` (a batch) with its first corner at ``corner``, written out by hand."""
    return x[..., corner[0] : corner[0] + size[0], corner[1] : corner[1] + size[1]]


def corner_of(image: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """Where ``crop`` (C, h, w) sits in ``image`` (C, H, W): the one window equal to it."""
    h, w = crop.shape[-2:]
    found = [
        (i, j)
        for i in range(image.shape[-2] - h + 1)
        for j in range(image.shape[-1] - w + 1)
        if torch.equal(image[:, i : i + h, j : j + w], crop)
    ]
    assert len(found) == 1, found
    return found[0]


def classifier() -> nn.Sequential:
    """A small CNN with a strided layer and a dense head: shift consistency well inside (0, 1)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


# -- the copies are the crops of the protocol ---------------------------------------------------------


def test_each_shift_sends_the_crop_at_the_reference_corner_minus_the_shift() -> None:
    x = torch.randn(3, 1, 17, 18)
    model = Recorder(nn.Conv2d(1, 2, 3))
    shifts = [Shift(2, -1), Shift(-3, 0), Shift(0, -3)]
    check_equivariance(model, x, shifts, boundary=Crop((12, 13)), batch_size=64)
    at = (2, 2)  # centred: (17 - 12) // 2, (18 - 13) // 2
    sent = torch.cat(model.seen[1:])  # after the unshifted pass: the identity row, then the shifts
    expected = torch.cat(
        [window(x, at, (12, 13))] + [window(x, (at[0] - s[0], at[1] - s[1]), (12, 13)) for s in shifts]
    )
    assert torch.equal(model.seen[0], window(x, at, (12, 13)))
    assert torch.equal(sent, expected)


def test_the_reference_corner_can_be_given() -> None:
    x = torch.randn(2, 1, 16, 16)
    model = Recorder(nn.Identity())
    check_equivariance(model, x, [Shift(-1, -2)], boundary=Crop(10, at=(0, 1)))
    assert torch.equal(model.seen[0], x[..., 0:10, 1:11])
    assert torch.equal(model.seen[1][1:], x[..., 1:11, 3:13])  # after the identity of the last sample


def test_the_error_is_measured_on_the_overlap_of_two_crops_by_hand() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 2, 20, 20)
    size, at = (14, 14), (3, 3)
    gain = torch.linspace(0.5, 1.5, 14)  # position-dependent gain: not equivariant, error known by hand
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1))
    model.append(Gain(gain))
    for s in [(2, -1), (-3, 3), (0, 1)]:
        measured = equivariance_error(model, x, s, boundary=Crop(size), reduction="none")
        with torch.no_grad():
            reference = model(window(x, at, size)).double()
            shifted = model(window(x, (at[0] - s[0], at[1] - s[1]), size)).double()
        # the overlap, in the shifted crop's coordinates: positions p with p - s inside the reference crop
        rows, cols = slice(max(s[0], 0), 14 + min(s[0], 0)), slice(max(s[1], 0), 14 + min(s[1], 0))
        back_rows = slice(rows.start - s[0], rows.stop - s[0])
        back_cols = slice(cols.start - s[1], cols.stop - s[1])
        diff = shifted[..., rows, cols] - reference[..., back_rows, back_cols]
        by_hand = diff.flatten(1).norm(dim=1) / reference[..., back_rows, back_cols].flatten(1).norm(dim=1)
        assert by_hand.min() > 1e-3  # the negative control: the gain is not equivariant
        torch.testing.assert_close(measured, by_hand, rtol=1e-5, atol=0)


class Gain(nn.Module):
    """Multiplies every row of the map by a gain that depends on the row."""

    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain[:, None]  # type: ignore[index]


def test_a_valid_convolution_is_exactly_equivariant_on_crops_and_padding_shows_at_the_border() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 24, 24)
    valid, padded = nn.Conv2d(1, 3, 5), nn.Conv2d(1, 3, 5, padding=2)
    report = check_equivariance(valid, x, boundary=Crop(16), max_shift=4)
    assert report.passed
    assert report.max_error == 0.0
    assert len(report.elements) == 81
    assert report.boundary == "crop 16x16 of 24x24 at (4, 4)"
    failing = check_equivariance(padded, x, boundary=Crop(16), max_shift=4)
    assert not failing.passed  # the crop's padding is not the image's content
    assert "margin=2" in failing.hints[0]
    assert check_equivariance(padded, x, boundary=Crop(16), max_shift=4, margin=2).passed


def test_a_strided_model_on_crops_with_its_stride() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 25, 25)
    strided = nn.Conv2d(1, 2, 3, stride=2)
    report = check_equivariance(strided, x, boundary=Crop(17), stride=2)
    assert report.passed
    assert {abs(o) for s in report.elements for o in s} == {0, 2, 4}
    assert not check_equivariance(strided, x, [Shift(1, 0)], boundary=Crop(17), stride=1).passed


def test_invariance_on_crops_and_the_input_is_left_as_found() -> None:
    x = torch.zeros(3, 1, 20, 20)
    x[:, :, 9:11, 9:11] = torch.rand(3, 1, 2, 2) + 1  # a spot inside every crop of 12 that moves at most 4
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    kept = x.clone()
    assert check_invariance(pooled, x, boundary=Crop(12), max_shift=4).passed
    assert float(invariance_error(pooled, x, (4, -4), boundary=Crop(12))) == 0.0
    dense = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    assert not check_invariance(dense, x, boundary=Crop(12), max_shift=1).passed
    assert torch.equal(x, kept)


def test_a_model_that_writes_to_its_input_does_not_touch_x() -> None:
    class InPlace(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(2)

    x = torch.randn(2, 1, 12, 12)
    kept = x.clone()
    assert check_equivariance(InPlace(), x, boundary=Crop(8)).passed
    assert torch.equal(x, kept)


# -- the invariance metrics: Zhang's consistency, by hand ------------------------------------------------


def test_consistency_on_crops_is_the_agreement_of_two_random_crops_computed_by_hand() -> None:
    torch.manual_seed(0)
    x = torch.randn(24, 1, 15, 15)
    net = Recorder(classifier())
    pairs = 4
    result = consistency(net, x, boundary=Crop(12), pairs=pairs, seed=3)
    sent = torch.cat(net.seen)
    n = len(x)
    assert len(sent) == 2 * pairs * n
    corners = []
    agree = 0
    for item, crop in enumerate(sent):
        sample = item % n  # item j * n + i is sample i: both crops of a pair come from one image
        corners.append(corner_of(x[sample], crop))
    with torch.no_grad():
        for item in range(pairs * n):
            sample, first, second = item % n, corners[item], corners[item + pairs * n]
            one = net.inner(window(x[sample : sample + 1], first, (12, 12))).argmax()
            two = net.inner(window(x[sample : sample + 1], second, (12, 12))).argmax()
            agree += int(one == two)
    assert result.value == agree / (pairs * n)
    assert 0.2 < result.value < 0.95  # a classifier neither invariant nor constant
    assert set(corners) == {(i, j) for i in range(4) for j in range(4)}  # every window is drawn
    assert result.n == pairs * n
    assert result.samples == n
    assert result.boundary == "crop 12x12 of 15x15 at (1, 1)"
    assert "crops with corners in [0..3, 0..3]" in result.shifts


class CornerRow(nn.Module):
    """Predicts the value of the crop's first pixel (class k for value k): on a ramp, the crop's row."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, 0, 0, 0:1]
        return -((torch.arange(self.classes, dtype=x.dtype) - first) ** 2)


def ramp(n: int, size: int) -> torch.Tensor:
    """Images whose pixel (i, j) is i: a crop's first pixel names its row."""
    return torch.arange(size, dtype=torch.float32).view(1, 1, size, 1).expand(n, 1, size, size).clone()


def test_a_model_whose_answers_are_known_in_closed_form() -> None:
    x = ramp(2000, 12)
    model = CornerRow(classes=5)  # crops of 8 in 12: rows 0..4, 5 windows a dim
    change = prediction_change(model, x, boundary=Crop(8))
    assert change.value == 0.5  # the vertical one-pixel moves change the row, the horizontal ones do not
    agreeing = consistency(model, x, boundary=Crop(8), pairs=2)
    expected = 1 / 5  # two independent uniform rows out of 5 agree with probability 1/5
    assert agreeing.low <= expected <= agreeing.high
    assert abs(agreeing.value - expected) < 0.02
    with pytest.warns(EquivarianceWarning, match="trivial"):  # every crop in the reference's row: one class
        near = consistency(model, x, boundary=Crop(8), pairs=2, max_shift=(0, 2))
    assert near.value == 1.0  # only horizontal moves: the row never changes
    spot = torch.zeros(40, 1, 12, 12)
    spot[:, :, 5:7, 5:7] = torch.linspace(-1, 1, 40).view(40, 1, 1, 1)  # inside every crop of 8
    sign = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        sign.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # class 0 for a positive mean, 1 for a negative one
    invariant = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), sign)
    agreeing_spot = consistency(invariant, spot, boundary=Crop(8), pairs=3)
    assert agreeing_spot.value == 1.0
    assert agreeing_spot.distinct == 2
    assert logit_change(invariant, spot, boundary=Crop(8), repeats=3).value < 1e-6


# -- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: check_equivariance(m, x, boundary="crop"), r"needs the crop's size; pass boundary=Crop"),
        (lambda m, x: check_equivariance(m, x, boundary="valid"), r"'zeros', 'circular' or Crop\(size\)"),
        (lambda m, x: check_equivariance(m, x, boundary=Crop(20)), r"crop size 20x20 is larger than x's spatial size 12x12"),
        (lambda m, x: check_equivariance(m, x, boundary=Crop(8, at=9)), r"reference crop at \(9, 9\)"),
        (lambda m, x: check_equivariance(m, x, [(5, 0)], boundary=Crop(8)), r"outside the image 12x12 .* shifts must lie in \(-2..2, -2..2\)"),
        (lambda m, x: check_equivariance(m, x, boundary=Crop(8), max_shift=5), r"shift \(5, 5\) moves"),
        (
            lambda m, x: check_equivariance(m, x, boundary=Crop(8), transforms=[Rot90(1)]),
            r"only shifts do, but Rot90\(1\) is a transform",
        ),
        (lambda m, x: check_equivariance(m, x, boundary=Crop(8), stride="auto"), r"stride='auto' is not"),
        (lambda m, x: check_equivariance(m, x, boundary=Crop(12)), r"leaves no room to move a crop"),
        (lambda m, x: prediction_change(m, x, boundary=Crop(12, at=0)), r"one pixel each way, but shift"),
        (lambda m, x: consistency(m, x, boundary=Crop(8), max_shift=6), r"shift \(6, 6\) moves"),
        (lambda m, x: logit_change(m, x, boundary=Crop(12)), r"holds a single window of \(12, 12\)"),
        (lambda m, x: Crop(0), r"the crop size must be positive, found 0"),
        (lambda m, x: Crop((8, 8), at=(-1, 0)), r"the reference corner at must be >= 0"),
    ],
    ids=[
        "crop-without-size", "unknown-name", "crop-too-large", "reference-outside", "shift-outside",
        "max-shift-outside", "transforms", "auto-stride", "no-room", "no-room-for-one-pixel",
        "metric-box-outside", "single-window", "zero-size", "negative-corner",
    ],
)  # fmt: skip
def test_bad_crop_arguments_are_refused_with_a_fix(call: object, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InvalidArgument, match=message):
        call(model, torch.randn(2, 1, 12, 12))  # type: ignore[operator]


def test_crops_of_volumes_and_signals() -> None:
    signal = torch.randn(2, 1, 30)
    assert check_equivariance(nn.Conv1d(1, 2, 3), signal, boundary=Crop(20), max_shift=5).passed
    volume = torch.randn(1, 1, 10, 10, 10)
    model = Recorder(nn.Conv3d(1, 1, 3))
    assert check_equivariance(model, volume, [Shift(1, -1, 2)], boundary=Crop(6)).passed
    assert torch.equal(model.seen[-1][1:], volume[:, :, 1:7, 3:9, 0:6])
    assert F.mse_loss(model.seen[0], volume[:, :, 2:8, 2:8, 2:8]) == 0
