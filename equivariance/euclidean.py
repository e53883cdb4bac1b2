"""Rotations, reflections and translations of space: the groups SO(2), O(2), SO(3), O(3), SE(3) and E(3).

A [`Rotation`][equivariance.euclidean.Rotation] (an orthogonal matrix, kept in float64) and a
[`Translation`][equivariance.euclidean.Translation] act on the tensors of point clouds and molecules by their
field type ([`equivariance.fields`][equivariance.fields]); ``SO3(64, seed=0)`` and its siblings sample the
continuous groups. How each field moves is in docs/point_clouds.md.

Examples:
    >>> import torch
    >>> from equivariance.fields import Pseudovectors, Vectors
    >>> inversion = Rotation.inversion()
    >>> v = torch.tensor([[1.0, 2.0, 3.0]])
    >>> inversion.act(v, Vectors()).tolist(), inversion.act(v, Pseudovectors()).tolist()
    ([[-1.0, -2.0, -3.0]], [[1.0, 2.0, 3.0]])
    >>> quarter = Rotation.about("z", 90, degrees=True)
    >>> quarter * quarter == Rotation.about("z", 180, degrees=True), quarter.det
    (True, 1)
    >>> sorted({g.det for g in O3(64, seed=1)}), all(g.det == 1 for g in SO3(64, seed=1))
    ([-1, 1], True)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch

from equivariance._engine.validation import describe
from equivariance.actions import Action, Batched, which_output
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
    field_of,
)
from equivariance.products import Composing, Product
from equivariance.sampling import GroupSample

__all__ = ["E3", "O2", "O3", "SE3", "SO2", "SO3", "Rotation", "Translation"]

ORTHOGONAL_TOLERANCE = 1e-4
"""How far ``R Rᵀ`` may be from the identity for ``Rotation(R)`` to take ``R`` (and make it exactly
orthogonal in float64); beyond it the matrix is refused."""

_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
_UNCHANGED = (Scalars, EdgeIndex, Adjacency)


class Rotation(Composing):
    """An orthogonal matrix of O(2) or O(3): a rotation (``det = +1``), or one and a reflection (``-1``).

    Built from any orthogonal 2x2 or 3x3 matrix, or by name: ``Rotation.about("z", 30, degrees=True)``,
    ``Rotation.planar(angle)``, ``Rotation.reflection(normal)``, ``Rotation.inversion()``. The matrix is kept
    in float64; one within ``ORTHOGONAL_TOLERANCE`` of orthogonal (a float32 matrix) is made orthogonal to
    float64's precision. How it acts on each field type is in docs/point_clouds.md.

    Examples:
        >>> import torch
        >>> from equivariance.fields import Positions
        >>> r = Rotation([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> r, r.inverse() == Rotation.about("z", -90, degrees=True)
        (Rotation(90.0° about [0.00, 0.00, 1.00]), True)
        >>> r.act(torch.tensor([[[1.0, 0.0, 0.0]]]), Positions()).tolist()
        [[[0.0, 1.0, 0.0]]]

    Args:
        matrix: an orthogonal matrix, as a tensor or nested lists.
    """

    __slots__ = ("_matrix",)
    noun: ClassVar[str] = "rotation"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, matrix: torch.Tensor | Sequence[Sequence[float]]) -> None:
        self._matrix = _orthogonal(matrix)

    @classmethod
    def _exact(cls, matrix: torch.Tensor) -> Rotation:
        """A rotation of a float64 matrix known to be orthogonal (a product, a draw): no check."""
        rotation = object.__new__(cls)
        rotation._matrix = matrix
        return rotation

    # -- by name -------------------------------------------------------------------------------

    @classmethod
    def identity(cls, dim: int = 3) -> Rotation:
        """The identity of O(``dim``).

        Examples:
            >>> Rotation.identity().is_identity, Rotation.identity(2)
            (True, Rotation(identity, 2-D))
        """
        return cls._exact(torch.eye(_as_dim(dim), dtype=torch.float64))

    @classmethod
    def inversion(cls, dim: int = 3) -> Rotation:
        """``-I``, the point reflection through the origin (in 2-D, a half turn).

        Examples:
            >>> Rotation.inversion().det, Rotation.inversion(2).det
            (-1, 1)
        """
        return cls._exact(-torch.eye(_as_dim(dim), dtype=torch.float64))

    @classmethod
    def about(cls, axis: str | Sequence[float], angle: float, *, degrees: bool = False) -> Rotation:
        """The rotation of 3-D space by ``angle`` about ``axis`` (right-handed: counter-clockwise
        looking down the axis).

        Multiples of 90 degrees are exact.

        Examples:
            >>> Rotation.about("x", 90, degrees=True).matrix.tolist()
            [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]

        Args:
            axis: ``"x"``, ``"y"``, ``"z"`` or a nonzero vector of 3 numbers.
            angle: the angle, in radians (degrees with ``degrees=True``).
            degrees: whether ``angle`` is in degrees.
        """
        n = _unit(axis, "axis")
        c, s = _cos_sin(angle, degrees)
        k = torch.tensor([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]], dtype=torch.float64)
        outer = torch.outer(n, n)
        return cls._exact(c * torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * outer)

    @classmethod
    def planar(cls, angle: float, *, degrees: bool = False) -> Rotation:
        """The rotation of the plane by ``angle``, counter-clockwise (x towards y): an element of SO(2).

        Examples:
            >>> Rotation.planar(90, degrees=True).matrix.tolist()
            [[0.0, -1.0], [1.0, 0.0]]
        """
        c, s = _cos_sin(angle, degrees)
        return cls._exact(torch.tensor([[c, -s], [s, c]], dtype=torch.float64))

    @classmethod
    def reflection(cls, normal: str | Sequence[float]) -> Rotation:
        """The mirror across the plane (2-D: line) through the origin normal to ``normal``: ``I - 2 n nᵀ``.

        Examples:
            >>> Rotation.reflection("z").matrix.diagonal().tolist(), Rotation.reflection([1.0, 0.0])
            ([1.0, 1.0, -1.0], Rotation(mirror across the line at 90.0°))
        """
        n = _unit(normal, "normal", dims=(2, 3))
        return cls._exact(torch.eye(len(n), dtype=torch.float64) - 2 * torch.outer(n, n))

    # -- what it is ----------------------------------------------------------------------------

    @property
    def matrix(self) -> torch.Tensor:
        """The orthogonal matrix, float64 (a copy)."""
        return self._matrix.clone()

    @property
    def dim(self) -> int:
        """2 or 3: the dimension of the space it acts on."""
        return int(self._matrix.shape[0])

    @property
    def det(self) -> int:
        """+1 for a rotation, -1 for a rotation and a reflection."""
        return 1 if float(torch.linalg.det(self._matrix)) > 0 else -1

    @property
    def is_identity(self) -> bool:
        return bool(torch.equal(self._matrix, torch.eye(self.dim, dtype=torch.float64)))

    @property
    def exact(self) -> bool:
        """Whether the matrix only permutes and negates components (quarter turns, mirrors across the
        axes, the inversion): then vectors move without rounding. Any other rotation rounds."""
        return bool(torch.isin(self._matrix, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)).all())

    # -- acting --------------------------------------------------------------------------------

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        """``x`` moved by the rotation, by its field type (docs/point_clouds.md).

        Args:
            x: the tensor.
            where: its field type, e.g. ``Vectors()``.
        """
        field = field_of(where, self)
        if isinstance(field, Irreps):
            self._check_3d(field)
            return _linear(field.check(x, field.dim), field.representation(self._matrix))
        if isinstance(field, (Vectors, Pseudovectors)):
            field.check(x, self.dim)
            return _linear(x, self._matrix * (self.det if isinstance(field, Pseudovectors) else 1))
        if isinstance(field, Pseudoscalars):
            field.check(x)
            return x if self.det > 0 else -x
        if isinstance(field, _UNCHANGED):
            field.check(x)
            return x
        return field.moved_by(self, x)

    def _check_3d(self, field: Field) -> None:
        if self.dim != 3:
            raise InvalidArgument(
                f"{field!r} are representations of O(3), and {self!r} acts in {self.dim}-D; check e3nn "
                "features with 3-D rotations (SO3, O3)"
            )

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Any) -> Batched | None:
        """Rows of ``x`` (its first axis) turned by many rotations at once: the matrices stacked and
        applied in one ``einsum``; None where ``x`` has no first axis of rows (an ``EdgeIndex``, a
        ``nodes=0`` tensor) or the rotations act in different dimensions."""
        rotations = [e for e in elements if isinstance(e, Rotation)]
        if len(rotations) != len(elements) or len({r.dim for r in rotations}) != 1:
            return None
        if not isinstance(grid, Field) or not _has_rows(x, grid):
            return None
        rotations[0].act(x[:1], grid)  # the shape and field checks, once
        return _RotatedRows(x, torch.stack([r._matrix for r in rotations]), grid)

    # -- the group -----------------------------------------------------------------------------

    def failure_hint(self, part: str, field: Any) -> str | None:
        """What an output that does not follow a rotation (or reflection) means, by its field type."""
        turning = isinstance(field, (Vectors, Pseudovectors, Irreps))
        if field is None or isinstance(field, (Scalars, Pseudoscalars)):
            kind = "pseudoscalar" if isinstance(field, Pseudoscalars) else "scalar"
            return (
                f"the {kind} output{which_output(part)} moves under rotation: an input coordinate is used as "
                "a feature (a layer that makes invariants must see distances, angles or other invariants of "
                "the positions, not the coordinates)"
            )
        if turning and self.det < 0 and not isinstance(field, Pseudovectors):
            return (
                f"the {field!r} output{which_output(part)} does not follow the reflections: if it is axial "
                "(a cross product, an angular momentum, e3nn's '1e') declare it Pseudovectors() or its "
                "irreps with their parity; otherwise coordinates are used as features"
            )
        if turning or isinstance(field, Positions):
            return (
                f"the {field!r} output{which_output(part)} does not turn with the rotation: it is computed "
                "from coordinates used as features, or an input it depends on was not rotated (give every "
                "input its field type: edge vectors, directions)"
            )
        return None

    def inverse(self) -> Rotation:
        """The transpose."""
        return Rotation._exact(self._matrix.T.contiguous())

    def _compose(self, other: Rotation) -> Action:
        """The matrix product."""
        if other.dim != self.dim:
            raise InvalidArgument(
                f"{self!r} * {other!r}: a {self.dim}-D and a {other.dim}-D rotation do not compose; "
                "use rotations of one dimension"
            )
        return Rotation._exact(self._matrix @ other._matrix)

    def _key(self) -> Hashable:
        return (tuple(self._matrix.shape), tuple(self._matrix.flatten().tolist()))

    def __repr__(self) -> str:
        return f"Rotation({_described(self._matrix)})"

    def to_json(self) -> Any:
        """``{"rotation": matrix}``: the matrix as nested lists."""
        return {"rotation": self._matrix.tolist()}


class Translation(Composing):
    """A translation of 2-D or 3-D space by a vector ``t``: positions move (``p + t``), nothing else does.

    Examples:
        >>> import torch
        >>> from equivariance.fields import Positions, Vectors
        >>> t = Translation([0.5, 0.0, -1.0])
        >>> p = torch.zeros(1, 3)
        >>> t.act(p, Positions()).tolist(), t.act(p, Vectors()).tolist(), (t * t.inverse()).is_identity
        ([[0.5, 0.0, -1.0]], [[0.0, 0.0, 0.0]], True)

    Args:
        vector: the translation, 2 or 3 numbers.
    """

    __slots__ = ("_vector",)
    noun: ClassVar[str] = "translation"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, vector: torch.Tensor | Sequence[float]) -> None:
        self._vector = _as_vector(vector)

    @classmethod
    def _exact(cls, vector: torch.Tensor) -> Translation:
        translation = object.__new__(cls)
        translation._vector = vector
        return translation

    @property
    def vector(self) -> torch.Tensor:
        """The translation, float64 (a copy)."""
        return self._vector.clone()

    @property
    def dim(self) -> int:
        """2 or 3."""
        return int(self._vector.shape[0])

    @property
    def is_identity(self) -> bool:
        return not bool(self._vector.any())

    @property
    def exact(self) -> bool:
        """False (unless it is the identity): an addition rounds the positions it moves."""
        return self.is_identity

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        """``x + t`` for [`Positions`][equivariance.fields.Positions]; any other field type as it is."""
        field = field_of(where, self)
        if isinstance(field, Positions):
            field.check(x, self.dim)
            work = _work_dtype(x)
            return (x.to(work) + self._vector.to(x.device, work)).to(x.dtype)
        if isinstance(field, Irreps):
            return field.check(x, field.dim)
        if isinstance(field, (Vectors, Pseudovectors)):
            return field.check(x, self.dim)
        if isinstance(field, (*_UNCHANGED, Pseudoscalars)):
            return field.check(x)
        return field.moved_by(self, x)

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Any) -> Batched | None:
        """Rows of ``x`` moved by many translations at once (one broadcast addition)."""
        translations = [e for e in elements if isinstance(e, Translation)]
        if len(translations) != len(elements) or len({t.dim for t in translations}) != 1:
            return None
        if not isinstance(grid, Field) or not _has_rows(x, grid):
            return None
        translations[0].act(x[:1], grid)
        return _TranslatedRows(x, torch.stack([t._vector for t in translations]), grid)

    def failure_hint(self, part: str, field: Any) -> str | None:
        """What an output that does not follow a translation means."""
        if isinstance(field, Positions):
            return (
                f"the positions output{which_output(part)} does not move with the translation: an update "
                "that is not a combination of differences of positions (x_i - x_j) with weights summing to "
                "one"
            )
        return (
            f"the output{which_output(part)} changes under translation: absolute coordinates are used as "
            "features, where differences of positions (or distances) would not change"
        )

    def inverse(self) -> Translation:
        """The translation by ``-t``."""
        return Translation._exact(-self._vector)

    def _compose(self, other: Translation) -> Action:
        """The translation by the sum."""
        if other.dim != self.dim:
            raise InvalidArgument(
                f"{self!r} * {other!r}: a {self.dim}-D and a {other.dim}-D translation do not compose"
            )
        return Translation._exact(self._vector + other._vector)

    def _key(self) -> Hashable:
        return tuple(self._vector.tolist())

    def __repr__(self) -> str:
        return f"Translation([{', '.join(f'{v:.3g}' for v in self._vector.tolist())}])"

    def to_json(self) -> Any:
        """``{"translation": vector}``."""
        return {"translation": self._vector.tolist()}


# -- batched paths ---------------------------------------------------------------------------------


def _has_rows(x: torch.Tensor, field: Field) -> bool:
    """Whether the first axis of ``x`` is one of rows (samples), apart from its points and components."""
    if isinstance(field, EdgeIndex) or x.dim() < (2 if field.components else 1):
        return False
    try:
        axes = field.node_axes(x) if isinstance(field, Adjacency) else (field.node_axis(x),)
    except InvalidArgument:
        return False
    return 0 not in axes


class _RotatedRows(Batched):
    def __init__(self, x: torch.Tensor, matrices: torch.Tensor, field: Field) -> None:
        self.x, self.field = x, field
        self.det = torch.linalg.det(matrices).sign().to(x.device)
        if isinstance(field, Irreps):
            matrices = field.representation(matrices)
        elif isinstance(field, Pseudovectors):
            matrices = matrices * self.det.cpu()[:, None, None]
        self.matrices = matrices.to(device=x.device, dtype=_work_dtype(x))

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        y = self.x.index_select(0, rows.to(self.x.device))
        which = which.to(self.x.device)
        if isinstance(self.field, (Vectors, Pseudovectors, Irreps)):
            m = self.matrices[which]
            return torch.einsum("b...j,bij->b...i", y.to(m.dtype), m).to(y.dtype)
        if isinstance(self.field, Pseudoscalars):
            sign = self.det[which].view(-1, *([1] * (y.dim() - 1)))
            return torch.where(sign < 0, -y, y)
        return y


class _TranslatedRows(Batched):
    def __init__(self, x: torch.Tensor, vectors: torch.Tensor, field: Field) -> None:
        self.x, self.field = x, field
        self.vectors = vectors.to(device=x.device, dtype=_work_dtype(x))

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        y = self.x.index_select(0, rows.to(self.x.device))
        if not isinstance(self.field, Positions):
            return y
        t = self.vectors[which.to(self.x.device)].view(len(y), *([1] * (y.dim() - 2)), -1)
        return (y.to(t.dtype) + t).to(y.dtype)


# -- samples ---------------------------------------------------------------------------------------


class _RotationSample(GroupSample[Rotation]):
    dim: ClassVar[int]
    reflections: ClassVar[bool]

    def _draw(self, samples: int, generator: torch.Generator) -> list[Rotation]:
        return [Rotation._exact(m) for m in haar(samples, self.dim, self.reflections, generator)]

    def _admit(self, element: object, what: str) -> Rotation:
        return _admitted_rotation(element, what, type(self).__name__, self.dim, self.reflections)


class SO2(_RotationSample):
    """Rotations of the plane, drawn uniformly (the angle uniform in [0, 2π)), after the included ones.

    Examples:
        >>> rotations = SO2(3, seed=0)
        >>> rotations, rotations[0].dim, rotations[0].det
        (SO2(3, seed=0), 2, 1)

    Args:
        samples: how many to draw.
        seed: the seed: the same seed, the same rotations.
        include: rotations checked first (2-D, ``det = +1``).
    """

    group: ClassVar[str] = "SO(2)"
    dim: ClassVar[int] = 2
    reflections: ClassVar[bool] = False


class O2(_RotationSample):
    """Rotations and reflections of the plane, drawn uniformly: a reflection half of the time.

    Args:
        samples: how many to draw.
        seed: the seed.
        include: elements checked first (2-D).
    """

    group: ClassVar[str] = "O(2)"
    dim: ClassVar[int] = 2
    reflections: ClassVar[bool] = True


class SO3(_RotationSample):
    """Rotations of 3-D space drawn uniformly (Haar), from normalised Gaussian quaternions.

    A quaternion of four independent standard normal numbers, normalised, is uniform on the unit sphere of
    quaternions, and its rotation is uniform on SO(3) (Shoemake, "Uniform random rotations", Graphics Gems
    III, 1992).

    Examples:
        >>> rotations = SO3(64, seed=0)
        >>> len(rotations), rotations == SO3(64, seed=0), rotations[0] == SO3(64, seed=1)[0]
        (64, True, False)

    Args:
        samples: how many to draw.
        seed: the seed: the same seed, the same rotations.
        include: rotations checked first (3-D, ``det = +1``).
    """

    group: ClassVar[str] = "SO(3)"
    dim: ClassVar[int] = 3
    reflections: ClassVar[bool] = False


class O3(_RotationSample):
    """Rotations and reflections of 3-D space drawn uniformly: an SO(3) draw times the inversion
    ``-I`` half of the time (a seeded coin).

    Args:
        samples: how many to draw.
        seed: the seed.
        include: elements checked first (3-D, any ``det``), e.g. ``[Rotation.inversion()]``.
    """

    group: ClassVar[str] = "O(3)"
    dim: ClassVar[int] = 3
    reflections: ClassVar[bool] = True


class _MotionSample(GroupSample[Action]):
    reflections: ClassVar[bool]

    def __init__(
        self, samples: int = 64, *, seed: int = 0, scale: float = 1.0, include: Sequence[Any] = ()
    ) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise InvalidArgument(
                f"scale must be a positive number (the standard deviation of the translations), found "
                f"{describe(scale)}; pass e.g. scale=1.0, about the size of the point cloud"
            )
        self.scale = float(scale)
        super().__init__(samples, seed=seed, include=include)

    def _draw(self, samples: int, generator: torch.Generator) -> list[Action]:
        rotations = haar(samples, 3, self.reflections, generator)
        shifts = torch.randn(samples, 3, generator=generator, dtype=torch.float64) * self.scale
        return [Translation._exact(t) * Rotation._exact(r) for r, t in zip(rotations, shifts)]

    def _admit(self, element: object, what: str) -> Action:
        parts = element.factors if isinstance(element, Product) else (element,)
        name = type(self).__name__
        for part in parts:
            if isinstance(part, Translation) and part.dim == 3:
                continue
            if not isinstance(part, Rotation):
                raise InvalidArgument(
                    f"{name} holds rotations{' and reflections' if self.reflections else ''} and "
                    f"translations of 3-D space; {what} is {describe(element)}"
                )
            _admitted_rotation(part, what, name, 3, self.reflections)
        assert isinstance(element, Action)
        return element

    def _options(self) -> list[str]:
        return [] if self.scale == 1.0 else [f"scale={self.scale:g}"]


class SE3(_MotionSample):
    """Rigid motions of 3-D space: a uniform rotation, then a translation with independent Gaussian
    components of standard deviation ``scale``: ``Translation(t) * Rotation(R)``, ``p -> R p + t``.

    SE(3) is not compact, so no draw is uniform over it: pick ``scale`` about the size of your point clouds
    (translations much larger than the cloud test the model far from where it was trained, and round more in
    float32).

    Args:
        samples: how many to draw.
        seed: the seed.
        scale: the standard deviation of each component of the translations.
        include: elements checked first: rotations, translations or their products.
    """

    group: ClassVar[str] = "SE(3)"
    reflections: ClassVar[bool] = False


class E3(_MotionSample):
    """Isometries of 3-D space: as [`SE3`][equivariance.euclidean.SE3], with the inversion half of the time.

    Examples:
        >>> g = E3(2, seed=0)[0]
        >>> type(g).__name__, [type(f).__name__ for f in g.factors]
        ('Product', ['Translation', 'Rotation'])

    Args:
        samples: how many to draw.
        seed: the seed.
        scale: the standard deviation of each component of the translations.
        include: elements checked first: rotations, reflections, translations or their products.
    """

    group: ClassVar[str] = "E(3)"
    reflections: ClassVar[bool] = True


def haar(samples: int, dim: int, reflections: bool, generator: torch.Generator) -> torch.Tensor:
    """``samples`` orthogonal matrices ``(samples, dim, dim)`` in float64, uniform on SO(dim), or on
    O(dim) with ``reflections`` (a reflection drawn after the rotations, half of the time)."""
    if dim == 2:
        angle = torch.rand(samples, generator=generator, dtype=torch.float64) * (2 * math.pi)
        c, s = torch.cos(angle), torch.sin(angle)
        matrices = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        flip = torch.tensor([1.0, -1.0], dtype=torch.float64)
    else:
        q = torch.randn(samples, 4, generator=generator, dtype=torch.float64)
        matrices = quaternion_matrices(q / q.norm(dim=-1, keepdim=True))
        flip = -torch.ones(3, dtype=torch.float64)
    if reflections:
        reflected = torch.randint(0, 2, (samples,), generator=generator).bool()
        matrices = torch.where(reflected[:, None, None], matrices * flip, matrices)
    return matrices


def quaternion_matrices(q: torch.Tensor) -> torch.Tensor:
    """The rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)``, ``(w, x, y, z)``."""
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


# -- checking and printing -------------------------------------------------------------------------


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64, where the device has it (MPS does not): the dtype a transformation is computed in."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _linear(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` applied to the last axis of ``x``, computed in float64 and cast back."""
    work = _work_dtype(x)
    return (x.to(work) @ matrix.to(device=x.device, dtype=work).T).to(x.dtype)


def _as_dim(dim: object) -> int:
    if dim not in (2, 3) or isinstance(dim, bool):
        raise InvalidArgument(f"dim must be 2 or 3, found {describe(dim)}")
    assert isinstance(dim, int)
    return dim


def _cos_sin(angle: object, degrees: object) -> tuple[float, float]:
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise InvalidArgument(f"angle must be a finite number, found {describe(angle)}")
    if not isinstance(degrees, bool):
        raise InvalidArgument(f"degrees must be True or False, found {describe(degrees)}")
    if degrees and float(angle) % 90 == 0:  # exact quarter turns
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(float(angle) // 90) % 4]
    radians = math.radians(angle) if degrees else float(angle)
    return math.cos(radians), math.sin(radians)


def _unit(axis: object, what: str, dims: tuple[int, ...] = (3,)) -> torch.Tensor:
    if isinstance(axis, str):
        if axis not in _AXES or dims == (2,):
            raise InvalidArgument(f"{what} must be 'x', 'y', 'z' or a vector, found {axis!r}")
        return torch.tensor(_AXES[axis], dtype=torch.float64)
    try:
        n = torch.as_tensor(axis, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        n = torch.empty(0)
    if n.dim() != 1 or len(n) not in dims or not bool(torch.isfinite(n).all()) or not bool(n.any()):
        raise InvalidArgument(
            f"{what} must be a nonzero vector of {' or '.join(map(str, dims))} finite numbers (or 'x', "
            f"'y', 'z'), found {describe(axis)}"
        )
    unit: torch.Tensor = n / n.norm()
    return unit


def _orthogonal(matrix: object) -> torch.Tensor:
    """``matrix`` as an orthogonal float64 2x2 or 3x3 tensor, else InvalidArgument."""
    try:
        m = torch.as_tensor(matrix, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError):
        m = torch.empty(0)
    if m.shape not in ((2, 2), (3, 3)) or not bool(torch.isfinite(m).all()):
        raise InvalidArgument(
            f"a Rotation takes an orthogonal 2x2 or 3x3 matrix of finite numbers, found {_found(matrix, m)}; "
            "pass e.g. Rotation.about('z', 30, degrees=True)"
        )
    deviation = float((m @ m.T - torch.eye(len(m), dtype=torch.float64)).abs().max())
    if deviation > ORTHOGONAL_TOLERANCE:
        raise InvalidArgument(
            f"a Rotation takes an orthogonal matrix, but R Rᵀ differs from the identity by {deviation:.1e} "
            f"(more than {ORTHOGONAL_TOLERANCE:g}); pass an orthogonal matrix, e.g. torch.linalg.qr(a).Q"
        )
    if deviation > 1e-14:  # a float32 matrix: the nearest orthogonal one, of the same determinant
        u, _, vh = torch.linalg.svd(m)
        m = u @ vh
    return m.contiguous()


def _as_vector(vector: object) -> torch.Tensor:
    try:
        t = torch.as_tensor(vector, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError):
        t = torch.empty(0, 0)
    if t.dim() != 1 or len(t) not in (2, 3) or not bool(torch.isfinite(t).all()):
        raise InvalidArgument(
            f"a Translation takes a vector of 2 or 3 finite numbers, found {_found(vector, t)}; pass e.g. "
            "Translation([0.0, 0.0, 1.5])"
        )
    return t


def _found(value: object, parsed: torch.Tensor) -> str:
    """What was given, for a message: a tensor by its shape, anything else by its repr."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return describe(value) + (f" of shape {tuple(parsed.shape)}" if parsed.numel() else "")


def _admitted_rotation(element: object, what: str, sample: str, dim: int, reflections: bool) -> Rotation:
    if not isinstance(element, Rotation) or element.dim != dim or (element.det < 0 and not reflections):
        kind = f"{dim}-D rotations" + (" and reflections" if reflections else " (det +1)")
        fix = f"; use O{dim} for reflections" if isinstance(element, Rotation) and element.det < 0 else ""
        raise InvalidArgument(f"{sample} holds {kind}; {what} is {describe(element)}{fix}")
    return element


def _described(m: torch.Tensor) -> str:
    """A rotation matrix in words: ``90.0° about [0.00, 0.00, 1.00]``, ``mirror across ...``."""
    if len(m) == 2:
        c, s = float(m[0, 0]), float(m[1, 0])
        if float(torch.linalg.det(m)) > 0:
            angle = math.degrees(math.atan2(s, c))
            return "identity, 2-D" if angle == 0 else f"{angle % 360:.1f}° in 2-D"
        return f"mirror across the line at {math.degrees(math.atan2(s, c)) / 2 % 180:.1f}°"
    proper = float(torch.linalg.det(m)) > 0
    q = m if proper else -m
    angle = math.acos(max(-1.0, min(1.0, (float(q.trace()) - 1) / 2)))
    if angle < 1e-12:
        return "identity" if proper else "inversion"
    axis = _axis(q, angle)
    shown = f"[{', '.join(f'{v:.2f}' for v in axis)}]"
    if not proper and abs(angle - math.pi) < 1e-9:
        return f"mirror normal to {shown}"
    return ("" if proper else "inversion · ") + f"{math.degrees(angle):.1f}° about {shown}"


def _axis(q: torch.Tensor, angle: float) -> list[float]:
    """The unit axis of a proper rotation ``q`` by ``angle`` (its sign made positive at π)."""
    if math.pi - angle > 1e-6:
        v = [float(q[2, 1] - q[1, 2]), float(q[0, 2] - q[2, 0]), float(q[1, 0] - q[0, 1])]
        norm = math.sqrt(sum(c * c for c in v))
        return [c / norm for c in v]
    outer = (q + torch.eye(3, dtype=q.dtype)) / 2  # n nᵀ
    column = outer[:, int(outer.diagonal().argmax())]
    n = (column / column.norm()).tolist()
    top = max(range(3), key=lambda i: abs(n[i]))
    return [c if n[top] > 0 else -c for c in n]
