"""FractionalShift and fractional_equivariance_error: sub-pixel shifts by a Fourier phase."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import InvalidArgument, Shift
from equivariance.fractional import FractionalShift, fractional_equivariance_error


def low_pass(cutoff: int) -> nn.Module:
    """The ideal low-pass filter keeping frequencies |k| <= cutoff (a real, symmetric mask)."""

    class LowPass(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spectrum = torch.fft.fft(x)
            spectrum[..., cutoff + 1 : x.shape[-1] - cutoff] = 0
            return torch.fft.ifft(spectrum).real

    return LowPass()


def subsample(x: torch.Tensor) -> torch.Tensor:
    return x[..., ::2]


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn(4, 2, 32, dtype=torch.float64)


def test_an_integer_fractional_shift_is_the_circular_shift() -> None:
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    moved = FractionalShift(3, -2).apply(x)
    torch.testing.assert_close(moved, Shift(3, -2).apply(x, "circular"))


def test_fractional_shifts_compose_and_invert_without_a_nyquist_component(noise: torch.Tensor) -> None:
    noise = low_pass(15)(noise)  # length 32: drop k = 16, the Nyquist frequency
    twice = FractionalShift(0.3).apply(FractionalShift(0.45).apply(noise))
    torch.testing.assert_close(twice, FractionalShift(0.75).apply(noise))
    torch.testing.assert_close(FractionalShift(-0.4).apply(FractionalShift(0.4).apply(noise)), noise)


def test_the_nyquist_component_breaks_composition(noise: torch.Tensor) -> None:
    twice = FractionalShift(0.5).apply(FractionalShift(0.5).apply(noise))
    assert not torch.allclose(twice, FractionalShift(1.0).apply(noise))


def test_a_fractional_shift_moves_a_sampled_sinusoid_exactly() -> None:
    t = torch.arange(16, dtype=torch.float64)
    wave = torch.sin(2 * torch.pi * 3 * t / 16)
    torch.testing.assert_close(
        FractionalShift(0.25).apply(wave), torch.sin(2 * torch.pi * 3 * (t - 0.25) / 16)
    )


def test_an_ideal_low_pass_filter_passes(noise: torch.Tensor) -> None:
    assert float(fractional_equivariance_error(low_pass(6), noise, 0.5, reduction="max")) < 1e-12


def test_stride_2_subsampling_fails_on_white_noise(noise: torch.Tensor) -> None:
    error = float(fractional_equivariance_error(subsample, noise, 0.5, stride=2))
    assert error > 0.3


def test_stride_2_subsampling_passes_below_half_the_nyquist_frequency(noise: torch.Tensor) -> None:
    band_limited = low_pass(7)(noise)  # |k| <= 7 < 32 / 4: no aliasing at stride 2
    error = float(fractional_equivariance_error(subsample, band_limited, 0.5, stride=2, reduction="max"))
    assert error < 1e-12
    # and an integer shift by 2 is exact on anything
    assert float(fractional_equivariance_error(subsample, noise, 2.0, stride=2, reduction="max")) < 1e-12


def test_a_circular_convolution_commutes_with_fourier_shifts_but_relu_does_not(noise: torch.Tensor) -> None:
    conv = nn.Conv1d(2, 3, 5, padding=2, padding_mode="circular").double()
    assert float(fractional_equivariance_error(conv, noise, 0.3, reduction="max")) < 1e-12
    assert float(fractional_equivariance_error(nn.ReLU(), noise, 1.0, reduction="max")) < 1e-12
    assert float(fractional_equivariance_error(nn.ReLU(), noise, 0.5)) > 0.1


def test_two_dims(noise: torch.Tensor) -> None:
    image = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular").double()
    errors = fractional_equivariance_error(conv, image, (0.5, -0.25), reduction="none")
    assert errors.shape == (2,)
    assert float(errors.max()) < 1e-12


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: FractionalShift(),
            r"a fractional shift.s offsets needs one number per spatial dim, found none",
        ),
        (lambda: FractionalShift(float("nan")), r"offsets must be finite real numbers, found nan"),
        (lambda: FractionalShift("1"), r"offsets must be finite real numbers, found '1'"),
        (
            lambda: fractional_equivariance_error(nn.ReLU(), torch.randn(1, 1, 8), (0.5, 0.5)),
            r"has 2 dims but x of shape \(1, 1, 8\) has 1 spatial dims",
        ),
        (
            lambda: fractional_equivariance_error(nn.ReLU(), torch.randn(1, 1, 8), 0.5, reduction="sum"),
            r"reduction must be 'mean', 'max' or 'none'",
        ),
    ],
    ids=["empty", "nan", "str", "ndim", "reduction"],
)
def test_invalid_arguments(call: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        call()  # type: ignore[operator]
