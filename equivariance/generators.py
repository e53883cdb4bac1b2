"""Infinitesimal generators: the derivative, at the identity, of a continuous group acting on a grid.

[`Translation`][equivariance.generators.Translation] is exactly the derivative of
[`FractionalShift`][equivariance.fractional.FractionalShift] at 0 (a spectral derivative), and
[`Rotation`][equivariance.generators.Rotation] that of a rotation about the grid's centre; the Lie
derivative ([`equivariance.lie`][equivariance.lie], docs/lie.md) applies them to the input and output.
Point clouds, sets and graphs have generators of their own
([`PointGenerator`][equivariance.generators.PointGenerator]: `Rotation3D`, `Rotation2D`,
`Translation3D`, `Translation2D`), each the derivative at 0 of the elements of
[`equivariance.euclidean`][equivariance.euclidean], acting on tensors by their field type.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from equivariance._engine.isolation import private_copy
from equivariance._engine.validation import describe, real_numbers
from equivariance.errors import InvalidArgument
from equivariance.fields import (
    Adjacency,
    EdgeIndex,
    Field,
    Irreps,
    Positions,
    Pseudoscalars,
    Pseudovectors,
    Scalars,
    Vectors,
)

__all__ = [
    "Generator",
    "PointGenerator",
    "Rotation",
    "Rotation2D",
    "Rotation3D",
    "Translation",
    "Translation2D",
    "Translation3D",
    "spectral_derivative",
]


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
    apply: Callable[[Any, torch.Tensor, Any], torch.Tensor],
) -> Callable[[Any, torch.Tensor, Any], torch.Tensor]:
    @functools.wraps(apply)
    def guarded(self: Any, h: torch.Tensor, where: Any) -> torch.Tensor:
        return apply(self, private_copy(h), where)

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


# -- point clouds, sets and graphs -----------------------------------------------------------------


class PointGenerator(abc.ABC):
    """The generator of a one-parameter group of motions of space, acting on tensors by their field type.

    ``apply(h, field)`` is ``d/dt g_t.act(h, field)`` at ``t = 0``. The
    library's are [`Rotation3D`][equivariance.generators.Rotation3D],
    [`Rotation2D`][equivariance.generators.Rotation2D],
    [`Translation3D`][equivariance.generators.Translation3D] and
    [`Translation2D`][equivariance.generators.Translation2D]; subclass it
    (``apply``, ``moves``) for a group of your own.

    Attributes:
        unit: what one unit of the group parameter is (``"radian"``, ``"unit of length"``).
    """

    unit: ClassVar[str] = "unit"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``apply`` is given a private copy of ``h``, as a grid ``Generator``'s is: the
        Lie derivative applies it to the tensors it then passes to the model."""
        super().__init_subclass__(**kwargs)
        own = vars(cls).get("apply")
        if own is None or cls.__module__ == __name__ or getattr(own, "guarded", False):
            return
        cls.apply = _guarded(own)  # type: ignore[method-assign, assignment]

    @abc.abstractmethod
    def moves(self, field: Field) -> bool:
        """Whether it moves tensors of ``field`` at all (False: their derivative is zero, and an input of
        that type carries no tangent)."""

    @abc.abstractmethod
    def apply(self, h: torch.Tensor, field: Field) -> torch.Tensor:
        """``d/dt g_t h`` at ``t = 0`` for ``h`` of field type ``field``, in ``h``'s dtype; InvalidArgument
        for a field type or a shape it does not act on."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Motion(PointGenerator):
    """A rotation generator ``A`` (antisymmetric, d x d) and a velocity ``v``: positions move by
    ``p Aᵀ + v``, vectors and pseudovectors by ``v Aᵀ``, e3nn irreps by e3nn's ``so(3)`` generators."""

    _matrix: torch.Tensor
    _velocity: torch.Tensor

    @property
    def dim(self) -> int:
        """2 or 3: the dimension of the space it acts on."""
        return int(self._matrix.shape[0])

    @property
    def matrix(self) -> torch.Tensor:
        """The antisymmetric generator of the rotation, float64 (zero for a translation; a copy)."""
        return self._matrix.clone()

    @property
    def velocity(self) -> torch.Tensor:
        """The velocity of the translation, float64 (zero for a rotation; a copy)."""
        return self._velocity.clone()

    def moves(self, field: Field) -> bool:
        if isinstance(field, Positions):
            return True
        turns = bool(self._matrix.any())
        if isinstance(field, (Vectors, Pseudovectors, Irreps)):
            return turns
        if isinstance(field, (Scalars, Pseudoscalars, EdgeIndex, Adjacency)):
            return False
        raise InvalidArgument(
            f"{self!r} does not act on {field!r}: it knows Scalars, Pseudoscalars, Vectors, Pseudovectors, "
            f"Positions, Irreps, EdgeIndex and Adjacency; subclass PointGenerator to say how {field!r} moves"
        )

    def apply(self, h: torch.Tensor, field: Field) -> torch.Tensor:
        if not self.moves(field):
            field.check(h)
            return torch.zeros_like(h)
        if isinstance(field, Irreps):
            if self.dim != 3:
                raise InvalidArgument(
                    f"{field!r} are representations of O(3), and {self!r} acts in {self.dim}-D; measure e3nn "
                    "features with a 3-D generator (Rotation3D)"
                )
            return _linear(field.check(h, field.dim), field.algebra(self._matrix))
        field.check(h, self.dim)
        moved = _linear(h, self._matrix)
        if isinstance(field, Positions):
            moved = moved + self._velocity.to(device=h.device, dtype=h.dtype)
        return moved

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Motion):
            return NotImplemented
        return type(self) is type(other) and bool(
            torch.equal(self._matrix, other._matrix) and torch.equal(self._velocity, other._velocity)
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._matrix.flatten().tolist(), *self._velocity.tolist()))


def _linear(h: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` applied to the last axis of ``h``, in float64 (float32 on MPS), cast back."""
    work = torch.float32 if h.device.type == "mps" else torch.float64
    return (h.to(work) @ matrix.to(device=h.device, dtype=work).T).to(h.dtype)


def _direction(value: object, what: str, dim: int, example: str) -> torch.Tensor:
    """A nonzero vector of ``dim`` finite numbers (or ``"x"``, ``"y"``, ``"z"`` in 3-D), float64."""
    names = {"x": 0, "y": 1, "z": 2} if dim == 3 else {"x": 0, "y": 1}
    if isinstance(value, str) and value in names:
        unit = torch.zeros(dim, dtype=torch.float64)
        unit[names[value]] = 1.0
        return unit
    try:
        v = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError):
        v = torch.empty(0)
    if isinstance(value, str) or v.shape != (dim,) or not bool(torch.isfinite(v).all()) or not bool(v.any()):
        raise InvalidArgument(
            f"{what} must be {' '.join(map(repr, names))} or a nonzero vector of {dim} finite numbers, found "
            f"{describe(value)}; pass e.g. {example}"
        )
    return v


class Rotation3D(_Motion):
    """The generator of the rotations of 3-D space about ``axis``: ``d/dt Rotation.about(axis, t)`` at 0.

    Positions, vectors and pseudovectors move by ``p Aᵀ`` (``A p`` the cross
    product of the unit axis ``n`` with ``p``), e3nn irreps by
    e3nn's generators of ``so(3)``, scalars not at all. One unit is a radian.

    Examples:
        >>> import torch
        >>> from equivariance.fields import Positions, Scalars
        >>> p = torch.tensor([[1.0, 0.0, 0.0]])
        >>> Rotation3D("z").apply(p, Positions()).tolist(), Rotation3D("z").apply(p, Scalars()).tolist()
        ([[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]])

    Args:
        axis: ``"x"``, ``"y"``, ``"z"`` or a nonzero vector (normalised).
    """

    unit: ClassVar[str] = "radian"

    def __init__(self, axis: str | Sequence[float] = "z") -> None:
        n = _direction(axis, "Rotation3D's axis", 3, "Rotation3D('z')")
        n = n / n.norm()
        self._axis = n
        self._matrix = torch.tensor(
            [[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]], dtype=torch.float64
        )
        self._velocity = torch.zeros(3, dtype=torch.float64)

    def __repr__(self) -> str:
        named = {(1.0, 0.0, 0.0): "x", (0.0, 1.0, 0.0): "y", (0.0, 0.0, 1.0): "z"}
        key = tuple(self._axis.tolist())
        return f"Rotation3D({named[key]!r})" if key in named else f"Rotation3D({[round(v, 4) for v in key]})"


class Rotation2D(_Motion):
    """The generator of the rotations of the plane: ``d/dt Rotation.planar(t)`` at 0 (x towards y).

    Examples:
        >>> import torch
        >>> from equivariance.fields import Vectors
        >>> Rotation2D().apply(torch.tensor([[1.0, 0.0]]), Vectors()).tolist()
        [[0.0, 1.0]]
    """

    unit: ClassVar[str] = "radian"

    def __init__(self) -> None:
        self._matrix = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        self._velocity = torch.zeros(2, dtype=torch.float64)


class _Translation(_Motion):
    _dim: ClassVar[int]
    unit: ClassVar[str] = "unit of length"

    def __init__(self, direction: str | Sequence[float] = "x") -> None:
        example = f"{type(self).__name__}('x')"
        self._velocity = _direction(direction, f"{type(self).__name__}'s direction", self._dim, example)
        self._matrix = torch.zeros(self._dim, self._dim, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._velocity.tolist()})"


class Translation3D(_Translation):
    """The generator of the translations of 3-D space along ``direction``: positions move, nothing else.

    ``d/dt Translation(t * direction)`` at 0, the direction as given (not
    normalised): one unit is one unit of length along it.

    Examples:
        >>> import torch
        >>> from equivariance.fields import Positions, Vectors
        >>> p = torch.zeros(1, 3)
        >>> Translation3D("x").apply(p, Positions()).tolist(), Translation3D("x").apply(p, Vectors()).tolist()
        ([[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]])

    Args:
        direction: ``"x"``, ``"y"``, ``"z"`` or a nonzero vector of 3 numbers.
    """

    _dim: ClassVar[int] = 3


class Translation2D(_Translation):
    """The generator of the translations of the plane along ``direction``: positions move, nothing else.

    Args:
        direction: ``"x"``, ``"y"`` or a nonzero vector of 2 numbers.
    """

    _dim: ClassVar[int] = 2
