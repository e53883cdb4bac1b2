"""equivariance_error and invariance_error: the numbers, the options, the output actions."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import (
    EquivarianceWarning,
    InvalidArgument,
    Shift,
    check_equivariance,
    equivariance_error,
    invariance_error,
)
from equivariance.models import MLP, LeNet


def naive_error(model: nn.Module, x: torch.Tensor, shift: Shift, out_shift: Shift) -> torch.Tensor:
    """A reference written without the library's batching: one forward per input, slicing."""
    with torch.no_grad():
        y, y_shifted = model(x), model(shift.apply(x, "zeros"))
    expected = out_shift.apply(y, "zeros")
    region = (..., *out_shift.valid_region(tuple(y.shape[2:])))
    diff = (y_shifted - expected)[region].flatten(1).norm(dim=1)
    return diff / expected[region].flatten(1).norm(dim=1)


def test_convolution_is_equivariant_and_dense_is_not() -> None:
    x = canvas()
    assert equivariance_error(LeNet(), x, (3, -2), layer="conv4") < 1e-6
    assert equivariance_error(MLP(input_size=38), x, (3, -2)) > 0.5


def test_matches_a_naive_per_shift_reference() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 3, stride=2))
    # perturb so the model is *not* exactly equivariant under odd shifts: compare numbers, not verdicts
    x = torch.randn(3, 2, 20, 20)
    for shift, out_shift in [(Shift(2, -4), Shift(1, -2)), (Shift(0, 6), Shift(0, 3))]:
        ours = equivariance_error(model, x, shift, stride=2, reduction="none")
        assert torch.allclose(ours, naive_error(model, x, shift, out_shift).double(), rtol=1e-4, atol=1e-7)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(2 * 400, 2 * 400), nn.Unflatten(1, (2, 20, 20)))
    ours = equivariance_error(dense, x, (1, 2), reduction="none")
    assert torch.allclose(ours, naive_error(dense, x, Shift(1, 2), Shift(1, 2)).double(), rtol=1e-5)
    assert (ours > 0.5).all()


def test_wide_outputs_compared_run_by_run_match_the_naive_reference() -> None:
    # 70 channels of 16x16 per sample: the engine compares runs of samples that share a shift with
    # slices of the reference (GridSums' box runs) instead of moved copies of it
    conv = nn.Conv2d(2, 70, 3, padding=1)
    where = torch.randn(70, 16, 16) * 0.1  # a position-dependent term: errors that differ by shift
    x = torch.randn(3, 2, 16, 16)
    shifts = [Shift(1, 0), Shift(-2, 3), Shift(0, -1)]
    report = check_equivariance(lambda t: conv(t) + where, x, shifts, batch_size=4)  # runs cut by chunks
    for result, shift in zip(report.results, shifts):
        naive = naive_error(lambda t: conv(t) + where, x, shift, shift)  # type: ignore[arg-type]
        assert result.error == pytest.approx(float(naive.max()), rel=1e-5)
        assert result.error > 1e-3


def test_reductions() -> None:
    x = canvas(batch=5)
    model = MLP(input_size=38)
    per_sample = equivariance_error(model, x, (1, 1), reduction="none")
    assert per_sample.shape == (5,)
    assert torch.allclose(equivariance_error(model, x, (1, 1)), per_sample.mean())
    assert torch.allclose(equivariance_error(model, x, (1, 1), reduction="max"), per_sample.max())
    assert equivariance_error(model, x, (1, 1)).dim() == 0
    with pytest.raises(InvalidArgument, match=r"reduction must be 'mean', 'max' or 'none', found 'sum'"):
        equivariance_error(model, x, (1, 1), reduction="sum")  # type: ignore[arg-type]


def test_errors_are_float64_on_the_device_of_x() -> None:
    err = equivariance_error(nn.Conv1d(1, 1, 3), torch.randn(2, 1, 20), 2, reduction="none")
    assert err.dtype == torch.float64  # summed in float64 whatever the model's dtype
    assert err.device == torch.device("cpu")


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
def test_the_verdict_does_not_depend_on_the_output_scale(scale: float) -> None:
    conv = nn.Conv2d(1, 2, 3)
    dense = MLP(input_size=20, hidden=16)
    x = canvas(batch=2, size=20, content=12)
    assert equivariance_error(lambda t: conv(t) * scale, x, (1, 2)) < 1e-6
    assert equivariance_error(lambda t: dense(t) * scale, x, (1, 2)) > 0.1


def test_float32_sums_that_overflow_fall_back_to_float64() -> None:
    # outputs of +-3e38 are finite float32 numbers, but their sums and differences overflow
    conv = nn.Conv2d(1, 3, 3)
    dense = MLP(input_size=20, hidden=16)
    x = canvas(batch=2, size=20, content=12)
    assert equivariance_error(lambda t: torch.sign(conv(t)) * 3e38, x, (1, 2)) == 0
    err = equivariance_error(lambda t: torch.sign(dense(t)) * 3e38, x, (1, 2), reduction="none")
    assert bool(torch.isfinite(err).all())
    assert bool((err > 0.1).all())
    assert invariance_error(lambda t: torch.sign(dense(t)).flatten(1) * 3e38, x, (1, 2)) > 0.1


def test_a_nan_outside_the_compared_region_is_still_an_error() -> None:
    def corner(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        if bool((x[:, :, -1] == 0).all()):  # only for inputs moved right: the fill reached the edge
            y[:, :, 0] = float("nan")  # the left edge, which the zero boundary never compares
        return y

    x = torch.rand(2, 1, 8) + 0.5
    with pytest.raises(InvalidArgument, match=r"not finite .* of shifted inputs \(shift \(-1,\)\)"):
        equivariance_error(corner, x, -1)


def test_stride_divides_the_output_shift() -> None:
    conv = nn.Conv2d(1, 4, 4, stride=2)
    x = torch.randn(2, 1, 24, 24)
    assert equivariance_error(conv, x, (4, -2), stride=2) < 1e-6
    assert equivariance_error(conv, x, (4, -2)) > 0.1  # the same shift expected on the output is wrong
    with pytest.raises(InvalidArgument, match=r"Shift\(3, 0\) is not a multiple of stride 2"):
        equivariance_error(conv, x, (3, 0), stride=2)
    assert equivariance_error(conv, x, (4, 3), stride=(2, 1)) > 0.05  # dim 1 is subsampled too


def test_custom_output_action() -> None:
    # A model whose output moves the *opposite* way: f(x) = flip(x); its action is the inverse shift.
    def flip(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    def mirrored(y: torch.Tensor, shift: Shift) -> torch.Tensor:
        return shift.inverse().apply(y, "circular")

    x = torch.randn(3, 1, 9)
    assert equivariance_error(flip, x, 2, boundary="circular", output_action=mirrored) == 0
    assert equivariance_error(flip, x, 2, boundary="circular") > 0.5


def test_circular_boundary_for_circular_convolutions() -> None:
    conv = nn.Conv2d(2, 3, 5, padding=2, padding_mode="circular")
    x = torch.randn(2, 2, 16, 16)  # content touching the edges: only a torus makes this exact
    assert equivariance_error(conv, x, (7, -9), boundary="circular") < 1e-6
    assert equivariance_error(conv, x, (7, -9), boundary="zeros") > 1e-2


def test_margin_removes_the_border_of_zero_padded_convolutions() -> None:
    same = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    x = torch.randn(2, 1, 20, 20)  # content up to the edges
    assert equivariance_error(same, x, (2, 1)) > 1e-2
    assert equivariance_error(same, x, (2, 1), margin=2) < 1e-6
    assert equivariance_error(same, x, (2, 1), margin=(2, 2)) < 1e-6


def test_layer_stops_the_forward_pass_there() -> None:
    model = LeNet()
    calls: list[str] = []
    model.fc1.register_forward_hook(lambda *_: calls.append("fc1"))
    model.conv4.register_forward_hook(lambda *_: calls.append("conv4"))
    equivariance_error(model, canvas(), (1, 1), layer="conv4")  # the head would refuse 38x38
    assert "conv4" in calls
    assert "fc1" not in calls
    assert len(model.conv4._forward_hooks) == 1  # the library's own hook is gone


def test_output_selector_for_tuples_and_dicts() -> None:
    conv = nn.Conv1d(1, 2, 3)

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return conv(x), x.flatten(1).sum(1, keepdim=True).expand(-1, 10)

    class Named(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"features": conv(x), "logits": x.flatten(1)[:, :3]}

    x = torch.randn(2, 1, 16)
    assert equivariance_error(Pair(), x, 3, output=0) < 1e-6
    assert equivariance_error(Named(), x, 3, output="features") < 1e-6
    assert equivariance_error(Named(), x, 3, output=lambda out: out["features"] * 2) < 1e-6
    with pytest.raises(InvalidArgument, match=r"returned a tuple of 2 items, not a tensor; pass output=0"):
        equivariance_error(Pair(), x, 3)
    with pytest.raises(InvalidArgument, match=r"dict with keys \['features', 'logits'\].*output='features'"):
        equivariance_error(Named(), x, 3)
    with pytest.raises(InvalidArgument, match=r"output='feature' does not select anything"):
        equivariance_error(Named(), x, 3, output="feature")


def test_dead_features_use_the_absolute_error_and_say_so() -> None:
    dead = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)  # every output is exactly zero
    x = torch.rand(2, 1, 12, 12)
    with pytest.warns(EquivarianceWarning) as caught:
        err = equivariance_error(dead, x, (1, 1))
    messages = [str(w.message) for w in caught]
    assert any("2 of 2 samples have an all-zero reference" in m for m in messages)
    # and an error of 0 says nothing: the output does not move
    assert any(m.startswith("this error cannot show a failure: the output does not change") for m in messages)
    assert err == 0
    assert torch.isfinite(err)


def test_zero_reference_with_a_moving_output_is_a_finite_absolute_error() -> None:
    def only_left_half(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[..., : x.shape[-1] // 2] = 0
        return y

    x = torch.zeros(1, 1, 10)
    x[..., 2] = 1.0  # f(x) = 0, but the input moved by 4 lands on the right half and survives
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EquivarianceWarning)
        err = equivariance_error(only_left_half, x, 4)
    assert torch.isfinite(err)
    assert err == pytest.approx((1 / 6) ** 0.5)  # RMS of a single 1 over the 6 compared samples


def test_non_finite_outputs_are_an_error() -> None:
    def log(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    x = torch.rand(3, 1, 8) + 0.5
    x[1, 0, 0] = 0.0
    with pytest.raises(
        InvalidArgument, match=r"not finite \(nan or inf\) for 1 of 3 samples of the unshifted"
    ):
        equivariance_error(log, x, 1)
    with pytest.raises(InvalidArgument, match=r"not finite .* of shifted inputs \(shift \(1,\)\)"):
        equivariance_error(log, torch.rand(3, 1, 8) + 0.5, 1)  # the zero fill makes log(0) = -inf


def test_invariance_error() -> None:
    gap = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    x = torch.randn(3, 1, 16, 16)
    assert invariance_error(gap, x, (5, -3), boundary="circular") < 1e-6
    flat = nn.Flatten()
    assert invariance_error(flat, x, (1, 0), boundary="circular") > 1.0
    assert invariance_error(LeNet(), canvas(size=28, content=20), (2, 2)) > 1e-3  # logits do move


def test_callables_and_functions_work_as_models() -> None:
    x = torch.randn(2, 1, 12)
    assert equivariance_error(torch.nn.functional.relu, x, 2) == 0
    # a cumulative sum only sees content leaving at the start, i.e. under negative shifts
    assert equivariance_error(lambda t: t.cumsum(-1), x, 2) < 1e-6
    assert equivariance_error(lambda t: t.cumsum(-1), x, -2) > 0.1


def test_one_score_per_sample_for_invariance() -> None:
    def score(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).sum(1)  # shape (N,)

    x = torch.randn(3, 1, 10)
    assert invariance_error(score, x, 2, boundary="circular") < 1e-6
    assert invariance_error(lambda t: t.flatten(1)[:, 0], x, 2, boundary="circular") > 1e-3


def test_a_model_that_reuses_its_output_buffer() -> None:
    class Reusing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 3)
            self.buffer: torch.Tensor | None = None

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            y = self.conv(t)
            if self.buffer is None or self.buffer.shape != y.shape:
                self.buffer = torch.empty_like(y)
            return self.buffer.copy_(y)  # like CUDA graphs: the same storage every call

    assert equivariance_error(Reusing(), torch.randn(2, 1, 16), 3, batch_size=2) < 1e-6


def test_a_model_that_catches_every_exception_cannot_hide_the_layer() -> None:
    class Guarded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 1, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            try:
                return self.conv(t).flatten(1)[:, :2]  # the head destroys equivariance
            except Exception:
                return t

    assert equivariance_error(Guarded(), torch.randn(2, 1, 16), 3, layer="conv") < 1e-6


def test_output_action_with_a_mask_for_upsampling() -> None:
    up = nn.ConvTranspose2d(1, 2, 2, stride=2)  # the output moves twice as far as the input

    def twice(y: torch.Tensor, shift: Shift) -> tuple[torch.Tensor, torch.Tensor]:
        moved = shift * 2
        return moved.apply(y), moved.valid_mask(tuple(y.shape[2:]))

    x = torch.randn(2, 1, 8, 8)
    assert equivariance_error(up, x, (3, -1), output_action=twice) < 1e-6
    unmasked = equivariance_error(up, x, (3, -1), output_action=lambda y, s: (s * 2).apply(y))
    assert unmasked > 1e-2  # the zero fill is compared against the bias without the mask
    with pytest.raises(InvalidArgument, match=r"the mask returned by output_action must be a bool tensor"):
        equivariance_error(up, x, (1, 1), output_action=lambda y, s: (y, torch.ones(3)))
