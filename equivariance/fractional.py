"""Sub-pixel translations by a Fourier phase shift, for sub-pixel equivariance tests.

A [`FractionalShift`][equivariance.fractional.FractionalShift] is the translation of a band-limited periodic
signal; on anything else it also rings, so a sub-pixel failure may speak of a model's band limit rather than a
bug (docs/diagnosing.md, "Sub-pixel shifts").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar, Literal

import torch

from equivariance._engine.forward import OutputSelector
from equivariance._engine.validation import describe, per_dim, real_numbers
from equivariance.actions import Action, Grid
from equivariance.errors import InvalidArgument
from equivariance.metric import equivariance_error

IntOrTuple = int | Sequence[int]

__all__ = ["FractionalShift", "fractional_equivariance_error"]


class FractionalShift(Action):
    """A circular translation of the last ``ndim`` dims by real offsets, by a Fourier phase shift.

    Exact for band-limited periodic signals; see the module docstring.

    Examples:
        >>> import torch
        >>> x = torch.tensor([0.0, 1.0, 0.0, 0.0])
        >>> FractionalShift(1).apply(x).round(decimals=6).tolist() == [0.0, 0.0, 1.0, 0.0]
        True
        >>> wave = torch.cos(2 * torch.pi * torch.arange(8.0) / 8)
        >>> moved = FractionalShift(0.5).apply(wave)
        >>> torch.allclose(moved, torch.cos(2 * torch.pi * (torch.arange(8.0) - 0.5) / 8), atol=1e-6)
        True

    Args:
        *offsets: one real offset per spatial dim, as separate numbers or one sequence.
    """

    __slots__ = ("_offsets",)
    noun: ClassVar[str] = "sub-pixel shift"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, *offsets: float | Sequence[float]) -> None:
        self._offsets = real_numbers(offsets, "a fractional shift's offsets", "FractionalShift(0.5, -0.25)")

    @property
    def offsets(self) -> tuple[float, ...]:
        """The offsets, one per spatial dim."""
        return self._offsets

    @property
    def ndim(self) -> int:
        """The number of spatial dims the shift acts on."""
        return len(self._offsets)

    def __truediv__(self, stride: int | Sequence[int]) -> FractionalShift:
        """The shift of a map subsampled by ``stride``; a fractional shift can always be divided."""
        strides = per_dim(stride, self.ndim, "stride", minimum=1)
        return FractionalShift(tuple(o / s for o, s in zip(self._offsets, strides)))

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Move a tensor on ``grid`` by the offsets divided by its stride (always circularly)."""
        if self.ndim != grid.spatial_dims:
            raise InvalidArgument(
                f"{self!r} has {self.ndim} dims but the grid it acts on has {grid.spatial_dims} spatial "
                f"dims; pass one offset per spatial dim"
            )
        return (self / grid.stride if grid.subsampled else self).apply(x)

    @property
    def is_identity(self) -> bool:
        return not any(self._offsets)

    def inverse(self) -> FractionalShift:
        """The shift by the negated offsets."""
        return FractionalShift(tuple(-o for o in self._offsets))

    def _key(self) -> Hashable:
        return self._offsets

    def __repr__(self) -> str:
        return f"FractionalShift({', '.join(map(repr, self._offsets))})"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Translate the last ``ndim`` dims of a real tensor ``x`` circularly; returns a new tensor."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise InvalidArgument(
                f"x must be a floating-point torch.Tensor, found {describe(x)}; convert it, e.g. x.float()"
            )
        if x.dim() < self.ndim:
            raise InvalidArgument(
                f"{self!r} acts on {self.ndim} trailing dims but x of shape {tuple(x.shape)} has "
                f"only {x.dim()}; pass a shift with at most {x.dim()} offsets"
            )
        dims = tuple(range(x.dim() - self.ndim, x.dim()))
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        spectrum = torch.fft.fftn(x.to(work), dim=dims)
        phase = torch.zeros((), dtype=work, device=x.device)
        for dim, offset in zip(dims, self._offsets):
            view = [1] * x.dim()
            view[dim] = x.shape[dim]
            freq = torch.fft.fftfreq(x.shape[dim], dtype=work, device=x.device).view(view)
            phase = phase + freq * offset
        moved = torch.fft.ifftn(
            spectrum * torch.polar(torch.ones_like(phase), -2 * math.pi * phase), dim=dims
        )
        result: torch.Tensor = moved.real.to(x.dtype)
        return result


def fractional_equivariance_error(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shift: FractionalShift | float | Sequence[float],
    *,
    stride: IntOrTuple = 1,
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Literal["mean", "max", "none"] = "mean",
) -> torch.Tensor:
    """The relative error $||f(gx) - g'f(x)|| / ||g'f(x)||$ for a sub-pixel (Fourier) shift ``g``.

    It is [`equivariance_error`][equivariance.equivariance_error] with a
    [`FractionalShift`][equivariance.fractional.FractionalShift] and ``boundary="circular"``; the output moves
    by the shift divided by ``stride``.

    Examples:
        >>> import torch
        >>> def low_pass(x):
        ...     spectrum = torch.fft.fft(x)
        ...     spectrum[..., 5:-4] = 0
        ...     return torch.fft.ifft(spectrum).real
        >>> x = torch.randn(4, 1, 32, dtype=torch.float64)
        >>> float(fractional_equivariance_error(low_pass, x, 0.5)) < 1e-12
        True
        >>> float(fractional_equivariance_error(lambda x: x[..., ::2], x, 0.5, stride=2)) > 0.1
        True

    Args:
        model: the function under test.
        x: a batch ``(N, C, *spatial)``.
        shift: a [`FractionalShift`][equivariance.fractional.FractionalShift] or one real offset per spatial
            dim.
        stride: the output's subsampling factor; the output moves by ``shift / stride``.
        layer: measure this named submodule's output instead.
        output: picks the tensor from a tuple or dict output.
        reduction: ``"mean"``, ``"max"`` or ``"none"`` (one error per sample).
    """
    if isinstance(shift, FractionalShift):
        fractional = shift
    elif isinstance(shift, (int, float)) and not isinstance(shift, bool):
        fractional = FractionalShift(shift)
    else:
        fractional = FractionalShift(tuple(shift))  # type: ignore[arg-type]
    return equivariance_error(
        model, x, fractional, stride=stride, boundary="circular", layer=layer, output=output,
        reduction=reduction,
    )  # fmt: skip
