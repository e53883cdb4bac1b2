"""The one engine: a plan that runs f(x) once, one runner for every measurement, and what that fixes."""

from __future__ import annotations

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import (
    InvalidArgument,
    Shift,
    audit,
    check_equivariance,
    equivariance_error,
    profile_equivariance,
)
from equivariance.fractional import FractionalShift, fractional_equivariance_error
from equivariance.invariance import consistency, logit_change, prediction_change


class Counted(nn.Module):
    """A zero-padded CNN that records every forward pass: its batch size and whether autograd was on."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, padding=1)
        )
        self.calls: list[tuple[int, bool]] = []
        self.backward = 0
        self.net.register_full_backward_hook(lambda *_: self._backward())

    def _backward(self) -> None:
        self.backward += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), torch.is_grad_enabled()))
        out: torch.Tensor = self.net(x)
        return out


def test_auto_stride_and_margin_cost_one_unshifted_pass_and_one_backward() -> None:
    model, x = Counted(), canvas(2, size=24, content=12)
    report = check_equivariance(model, x, stride="auto", margin="auto", batch_size=1000)
    assert report.passed
    assert len(report.inferred) == 2
    (first, *rest) = model.calls
    assert first == (2, True)  # the unshifted pass, differentiated once for the receptive field
    assert model.backward == 1
    candidates = sum(len(range(1, min(max(2, -(-3 * 24 // (2 * 12))), 23) + 1)) for _ in range(2))
    rows = 1 + len(report.results)  # the noise floor's identity and the shifts
    assert all(not grad for _, grad in rest)
    assert [size for size, _ in rest] == [candidates * 2, rows * 2]  # one chunk of each


def test_a_plain_check_runs_the_unshifted_input_once() -> None:
    model, x = Counted(), canvas(2, size=24, content=12)
    check_equivariance(model, x, stride=2, max_shift=2, batch_size=1000)
    assert [size for size, _ in model.calls] == [2, 10 * 2]  # f(x), then the identity and 9 shifts


def test_bad_strings_for_auto_are_refused_clearly_everywhere() -> None:
    conv, x = nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8)
    for call in (
        lambda: equivariance_error(conv, x, (1, 0), stride="AUTO"),  # type: ignore[arg-type]
        lambda: equivariance_error(conv, x, (1, 0), margin="Auto"),  # type: ignore[arg-type]
        lambda: check_equivariance(conv, x, stride="2"),  # type: ignore[arg-type]
    ):
        with pytest.raises(
            InvalidArgument, match=r"must be an int, one int per spatial dim or 'auto', found"
        ):
            call()


class InPlaceInput(nn.Module):
    """Writes to its own input, as ``nn.ReLU(inplace=True)`` as a first layer does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(min=0)
        out: torch.Tensor = self.conv(x)
        return out


def test_margin_auto_on_a_model_that_writes_to_its_input() -> None:
    x = canvas(2, size=16, content=8) - 0.5
    before = x.clone()
    report = check_equivariance(InPlaceInput(), x, margin="auto")
    assert report.passed
    assert report.margin == (1, 1)
    assert torch.equal(x, before)


class SameBuffer(nn.Module):
    """Hands back one output buffer, overwritten on every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.model(x)
        if self.out is None or self.out.shape != result.shape:
            self.out = torch.empty_like(result)
        self.out.copy_(result)
        return self.out


def test_a_model_that_reuses_its_output_buffer_is_measured_like_a_copy() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(30, 1, 8, 8)
    reusing = SameBuffer(dense)
    assert consistency(reusing, x, pairs=2, batch_size=8) == consistency(dense, x, pairs=2, batch_size=8)
    assert consistency(dense, x, pairs=2).value < 0.9  # not a trivial 1.0
    assert prediction_change(reusing, x, batch_size=8) == prediction_change(dense, x, batch_size=8)
    assert logit_change(reusing, x, batch_size=8) == logit_change(dense, x, batch_size=8)
    report = check_equivariance(SameBuffer(nn.Conv2d(1, 2, 3)), canvas(2, size=16, content=8), batch_size=4)
    assert report.passed


def test_nan_logits_are_refused_by_the_invariance_metrics() -> None:
    def nan_logits(t: torch.Tensor) -> torch.Tensor:
        out = t.flatten(1)[:, :10].clone()
        out[0, 0] = float("nan")
        return out

    x = torch.randn(6, 1, 8, 8)
    for metric in (consistency, prediction_change, logit_change):
        with pytest.raises(InvalidArgument, match=r"not finite \(nan or inf\)"):
            metric(nan_logits, x)


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e200, 1e300])
def test_float64_outputs_at_any_finite_scale_get_the_right_verdict(scale: float) -> None:
    x = canvas(2, size=12, content=6).double()
    ramp = 1 + 0.01 * torch.arange(12, dtype=torch.float64) / 12  # a gain that depends on the position

    def exact(t: torch.Tensor) -> torch.Tensor:
        return t * scale

    def off_by_a_percent(t: torch.Tensor) -> torch.Tensor:
        return t * ramp * scale

    def off_by_1e13(t: torch.Tensor) -> torch.Tensor:
        return t * (1 + 1e-13 * (ramp - 1)) * scale

    assert check_equivariance(exact, x, max_shift=1).max_error == 0.0
    expected = float(equivariance_error(lambda t: t * ramp, x, (0, 1)))
    assert 1e-4 < expected < 1e-2
    assert float(equivariance_error(off_by_a_percent, x, (0, 1))) == pytest.approx(expected, rel=1e-9)
    assert not check_equivariance(off_by_a_percent, x, max_shift=1).passed
    tiny = float(equivariance_error(off_by_1e13, x, (0, 1)))
    assert tiny == pytest.approx(expected * 1e-11, rel=1e-2)  # measured, and far below float64's rtol
    assert check_equivariance(off_by_1e13, x, max_shift=1).passed


def test_float64_errors_do_not_depend_on_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 10, 10, dtype=torch.float64)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(100, 100), nn.Unflatten(1, (1, 10, 10))).double()
    reference = float(equivariance_error(dense, x, (1, 0)))
    for scale in (1e-300, 1e-160, 1e160, 1e300):
        measured = float(equivariance_error(lambda t, s=scale: dense(t) * s, x, (1, 0)))
        assert measured == pytest.approx(reference, rel=1e-12)
    # subnormal outputs: the power of two that scales them stays within float64's range
    measured = float(equivariance_error(lambda t: dense(t) * 1e-310, x, (1, 0)))
    assert measured == pytest.approx(reference, rel=1e-9)


def test_fractional_shifts_run_on_the_engine() -> None:
    x = torch.randn(3, 1, 16, dtype=torch.float64)
    low = torch.fft.rfft(x).abs() > 0

    def low_pass(t: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft(t)
        spectrum[..., 4:-3] = 0
        return torch.fft.ifft(spectrum).real

    assert bool(low.any())
    assert float(fractional_equivariance_error(low_pass, x, 0.5)) < 1e-12
    assert float(equivariance_error(low_pass, x, FractionalShift(0.25), boundary="circular")) < 1e-12
    assert float(fractional_equivariance_error(lambda t: t[..., ::2], x, 0.5, stride=2)) > 0.1


def test_the_old_names_are_gone() -> None:
    """The aliases of 0.x that named elements as shifts were removed (CHANGELOG, Unreleased: Removed);
    the names they pointed at hold the same values."""
    conv, x = nn.Conv2d(1, 2, 3), canvas(2, size=12, content=6)
    report = check_equivariance(conv, x, max_shift=1)
    profile = profile_equivariance(conv, x, (1, 0))
    old = [
        (report, "shifts"), (report, "worst_shift"), (report.results[0], "shift"), (profile, "shift"),
        (profile.layers[0], "output_shift"), (profile.layers[0], "exact"),
    ]  # fmt: skip
    assert [name for owner, name in old if hasattr(owner, name)] == []
    assert profile.element == Shift(1, 0)
    assert profile.layers[0].divisible
    data, profiled = report.to_dict(), profile.to_dict()
    assert "worst_shift" not in data
    assert "shift" not in data["results"][0]
    assert data["worst_element"] == list(report.worst_element)
    assert "shift" not in profiled
    assert "output_shift" not in profiled["layers"][0]
    assert profiled["element"] == [1, 0]
    assert profiled["layers"][0]["output_element"] == [1, 0]


def test_audit_measures_on_the_engine_and_leaves_the_callers_batches_alone() -> None:
    classifier = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(100, 3))
    batches = [torch.randn(4, 1, 10, 10) for _ in range(2)]
    copies = [b.clone() for b in batches]
    result = audit(nn.Conv2d(1, 2, 3), batches, [(1, 0), (0, -1)], classifier=classifier, progress=False)
    assert result.samples == 8
    assert result.passed_fraction == 1.0  # a valid convolution, compared where both sides are defined
    assert all(torch.equal(a, b) for a, b in zip(batches, copies))
    assert result.consistency is not None


def test_a_model_that_returns_meta_tensors_is_refused() -> None:
    def meta(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, device="meta")

    with pytest.raises(
        InvalidArgument, match=r"the model returned a tensor on the meta device.*load the model's"
    ):
        check_equivariance(meta, torch.randn(2, 1, 8, 8))
    with pytest.raises(InvalidArgument, match=r"the model returned a tensor on the meta device"):
        consistency(lambda t: torch.empty(len(t), 3, device="meta"), torch.randn(2, 1, 8, 8))
