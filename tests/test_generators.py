"""The generators are the derivatives of the transformations they stand for, checked by finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from equivariance.errors import InvalidArgument
from equivariance.fractional import FractionalShift
from equivariance.generators import Rotation, Translation, spectral_derivative


@pytest.mark.parametrize("shape", [(2, 1, 15), (2, 3, 12, 9), (1, 2, 6, 7, 8)], ids=["1d-odd", "2d", "3d"])
def test_a_translation_is_the_derivative_of_the_fractional_shift(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)  # white noise: every frequency, Nyquist included
    d = len(shape) - 2
    direction = tuple(float(k + 1) * (-1) ** k for k in range(d))
    t = 1e-6
    plus = FractionalShift(tuple(t * v for v in direction)).apply(x)
    minus = FractionalShift(tuple(-t * v for v in direction)).apply(x)
    step = (plus - minus) / (2 * t)
    found = Translation(direction).apply(x, (1,) * d)
    assert torch.allclose(found, step, atol=1e-7 * float(step.abs().max()))
    assert float(found.abs().max()) > 0.1  # not trivially zero


def test_a_stride_slows_the_translation_down_on_the_coarse_grid() -> None:
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    fine = Translation(1, 2).apply(x, (1, 1))
    coarse = Translation(1, 2).apply(x, (2, 4))
    expected = spectral_derivative(x, -2) / 2 + 2 * spectral_derivative(x, -1) / 4
    assert torch.allclose(coarse, expected)
    assert not torch.allclose(coarse, fine)


def test_the_spectral_derivative_is_exact_on_a_sampled_wave_and_drops_the_nyquist_term() -> None:
    n = 8
    p = torch.arange(n, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * p / n)
    assert torch.allclose(
        spectral_derivative(wave, 0), 2 * math.pi * 3 / n * torch.sin(2 * math.pi * 3 * p / n)
    )
    nyquist = torch.cos(math.pi * p)  # (-1)^p: its shifted copies keep only cos(pi t) of it
    assert float(spectral_derivative(nyquist, 0).abs().max()) < 1e-12


def _bump(angle: float, size: int = 25) -> torch.Tensor:
    """A smooth anisotropic bump off the centre, turned by ``angle`` the way ``torch.rot90`` turns."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    rows, cols = torch.meshgrid(r, r, indexing="ij")
    # (R h)(p) = h(M p), M = [[cos, sin], [-sin, cos]] in (row, col): a quarter turn is rot90(k=1)
    source_r = math.cos(angle) * rows + math.sin(angle) * cols
    source_c = -math.sin(angle) * rows + math.cos(angle) * cols
    return torch.exp(-((source_r - 4) ** 2) / 8 - (source_c - 1) ** 2 / 4)


def test_the_rotation_turns_as_rot90_does_and_is_the_derivative_of_a_rotation() -> None:
    assert torch.allclose(_bump(math.pi / 2), torch.rot90(_bump(0.0), 1, dims=(-2, -1)), atol=1e-12)
    t = 1e-5
    step = (_bump(t) - _bump(-t)) / (2 * t)
    found = Rotation().apply(_bump(0.0)[None, None], (1, 1))[0, 0]
    assert float((found - step).abs().max()) < 1e-4 * float(step.abs().max())
    assert float(step.abs().max()) > 1.0


def test_a_rotation_on_a_grid_with_equal_strides_is_the_same_generator() -> None:
    h = _bump(0.0)[None, None]
    assert torch.allclose(Rotation().apply(h, (2, 2)), Rotation().apply(h, (1, 1)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Translation(), r"a translation.s direction needs one number per spatial dim, found none"),
        (lambda: Translation(0, 0), "zero direction, a generator that cannot fail"),
        (lambda: Translation(1, float("nan")), r"finite real numbers, found nan \(float\)"),
        (lambda: Translation("1"), r"finite real numbers, found '1' \(str\)"),
        (lambda: Translation.along(2, 2), r"dim 2 is not one of the 2 spatial dims; pass a dim in \[-2, 1\]"),
    ],
    ids=["empty", "zero", "nan", "str", "dim"],
)
def test_bad_generators_are_refused_with_a_fix(make: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make()  # type: ignore[operator]


def test_translations_compare_and_print_by_their_direction() -> None:
    assert Translation(0, 1) == Translation.along(-1, 2) == Translation([0.0, 1.0])
    assert Translation(0, 1) != Translation(1, 0)
    assert len({Translation(0, 1), Translation(0.0, 1.0), Rotation(), Rotation()}) == 2
    assert repr(Translation(0, 1)) == "Translation(0.0, 1.0)"
