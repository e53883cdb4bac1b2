"""Infinitesimal generators: the derivative, at the identity, of a continuous group acting on a grid.

[`Translation`][equivariance.generators.Translation] is exactly the derivative of
[`FractionalShift`][equivariance.fractional.FractionalShift] at 0 (a spectral derivative), and
[`Rotation`][equivariance.generators.Rotation] that of a rotation about the grid's centre; the Lie
derivative ([`equivariance.lie`][equivariance.lie], docs/lie.md) applies them to the input and output.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from equivariance._engine.isolation import private_copy
from equivariance._engine.validation import real_numbers
from equivariance.errors import InvalidArgument

__all__ = ["Generator", "Rotation", "Translation", "spectral_derivative"]


def spectral_derivative(h: torch.Tensor, dim: int) -> torch.Tensor:
    """``d/dt FractionalShift(t).apply(h)`` at ``t = 0`` along ``dim``: minus the spectral derivative.

    In samples of ``dim`` (a unit shift moves by one sample); real in, real out.

    Examples:
        >>> import math, torch
        >>> n = 16
        >>> wave = torch.sin(2 * math.pi * torch.arange(n, dtype=torch.float64) / n)
        >>> slope = -2 * math.pi / n * torch.cos(2 * math.pi * torch.arange(n, dtype=torch.float64) / n)
        >>> torch.allclose(spectral_derivative(wave, -1), slope)
        True
    """
    n = h.shape[dim]
    work = torch.float64 if h.dtype == torch.float64 else torch.float32
    view = [1] * h.dim()
    view[dim] = n
    freq = torch.fft.fftfreq(n, dtype=work, device=h.device).view(view)
    spectrum = torch.fft.fft(h.to(work), dim=dim)
    moved = torch.fft.ifft(spectrum * torch.complex(torch.zeros_like(freq), -2 * math.pi * freq), dim=dim)
    result: torch.Tensor = moved.real.to(h.dtype)
    return result


class Generator(abc.ABC):
    """The generator of a one-parameter group acting on the trailing spatial dims of tensors.

    Subclass it and define [`apply`][equivariance.generators.Generator.apply]
    (a linear map; it must be differentiable for the Lie derivative's
    per-layer profile) to measure a Lie derivative under a group of your own.

    Attributes:
        unit: what one unit of the group parameter is (``"sample"``,
            ``"radian"``), for reports.
    """

    unit: ClassVar[str] = "unit"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``apply`` is given a private copy of ``h`` (keeping its gradients): the Lie
        derivative applies it to the caller's input and to the model's outputs, which an ``apply`` that
        writes in place must leave as they were. The library's generators never write and are called
        as they are."""
        super().__init_subclass__(**kwargs)
        own = vars(cls).get("apply")
        if own is None or cls.__module__ == __name__ or getattr(own, "guarded", False):
            return
        cls.apply = _guarded(own)  # type: ignore[method-assign, assignment]

    @property
    def ndim(self) -> int | None:
        """The number of spatial dims it acts on; None for any."""
        return None

    @abc.abstractmethod
    def apply(self, h: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
        """``d/dt T_t h`` at ``t = 0`` for ``h`` of shape ``(N, *channels, *spatial)``.

        Args:
            h: the tensor, its ``len(stride)`` trailing dims spatial.
            stride: how many input samples one sample of ``h`` spans, per spatial dim.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _guarded(
    apply: Callable[[Any, torch.Tensor, Sequence[float]], torch.Tensor],
) -> Callable[[Any, torch.Tensor, Sequence[float]], torch.Tensor]:
    @functools.wraps(apply)
    def guarded(self: Any, h: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
        return apply(self, private_copy(h), stride)

    guarded.guarded = True  # type: ignore[attr-defined]
    return guarded


class Translation(Generator):
    """The generator of a translation along ``direction``: the derivative of a sub-pixel shift.

    ``Translation(0, 1)`` moves along the last of two spatial dims (the
    width of an image) at one input sample per unit of ``t``; it is the
    derivative of ``FractionalShift(0, t)`` at ``t = 0``.

    Examples:
        >>> import torch
        >>> from equivariance.fractional import FractionalShift
        >>> x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
        >>> t = 1e-6
        >>> step = (FractionalShift(0, t).apply(x) - FractionalShift(0, -t).apply(x)) / (2 * t)
        >>> bool((Translation(0, 1).apply(x, (1, 1)) - step).abs().max() < 1e-6)
        True

    Args:
        *direction: one real number per spatial dim, as separate numbers or one sequence.
    """

    unit: ClassVar[str] = "input sample"

    def __init__(self, *direction: float | Sequence[float]) -> None:
        checked = real_numbers(direction, "a translation's direction", "Translation(0, 1)")
        if not any(checked):
            raise InvalidArgument(
                f"Translation{tuple(checked)} has a zero direction, a generator that cannot fail; "
                "pass a nonzero direction, e.g. Translation(0, 1)"
            )
        self.direction: tuple[float, ...] = tuple(checked)

    @classmethod
    def along(cls, dim: int, ndim: int) -> Translation:
        """The unit translation along spatial dim ``dim`` of ``ndim`` (negative counts from the last).

        Examples:
            >>> Translation.along(-1, 2)
            Translation(0.0, 1.0)
        """
        if not -ndim <= dim < ndim:
            raise InvalidArgument(
                f"dim {dim} is not one of the {ndim} spatial dims; pass a dim in [{-ndim}, {ndim - 1}]"
            )
        direction = [0.0] * ndim
        direction[dim] = 1.0
        return cls(direction)

    @property
    def ndim(self) -> int:
        return len(self.direction)

    def apply(self, h: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
        d = len(self.direction)
        result = torch.zeros_like(h)
        for j, (speed, s) in enumerate(zip(self.direction, stride)):
            if speed:
                result = result + (speed / s) * spectral_derivative(h, h.dim() - d + j)
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Translation) and other.direction == self.direction

    def __hash__(self) -> int:
        return hash(("Translation", self.direction))

    def __repr__(self) -> str:
        return f"Translation({', '.join(map(repr, self.direction))})"


class Rotation(Generator):
    """The generator of a rotation of the last two dims about the grid's centre (radians).

    Positive angles turn the way ``torch.rot90(x, 1, dims=(-2, -1))`` does.
    It is the rotation of content that stays clear of the edges (a digit on a zero canvas): the
    coordinates break the periodicity its spectral derivatives assume.

    Examples:
        >>> import torch
        >>> r = torch.arange(9.0) - 4
        >>> bump = torch.exp(-((r[:, None] - 2) ** 2 + r[None, :] ** 2) / 2)  # at row 6, column 4
        >>> torch.rot90(bump, 1, dims=(-2, -1)).argmax().item() == 4 * 9 + 6  # a quarter turn: row 4, col 6
        True
        >>> turned = Rotation().apply(bump[None, None].double(), (1, 1))[0, 0]
        >>> bool(turned[6, 5] > 0.5), bool(turned[6, 3] < -0.5)  # it starts moving towards column 6
        (True, True)
    """

    unit: ClassVar[str] = "radian"

    @property
    def ndim(self) -> int:
        return 2

    def apply(self, h: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
        rows, cols = h.shape[-2], h.shape[-1]
        sr, sc = float(stride[0]), float(stride[1])
        r = (torch.arange(rows, dtype=h.dtype, device=h.device) - (rows - 1) / 2) * sr
        c = (torch.arange(cols, dtype=h.dtype, device=h.device) - (cols - 1) / 2) * sc
        # D = -d/dp: L h = c dh/dr - r dh/dc = r D_c h - c D_r h, in input units
        along_r = spectral_derivative(h, h.dim() - 2) / sr
        along_c = spectral_derivative(h, h.dim() - 1) / sc
        return r[:, None] * along_c - c[None, :] * along_r

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rotation)

    def __hash__(self) -> int:
        return hash("Rotation")
