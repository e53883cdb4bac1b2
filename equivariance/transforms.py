"""90-degree rotations and flips of spatial dims: the p4 and p4m symmetries, on the same machinery.

[`Rot90`][equivariance.transforms.Rot90] rotates a plane of two spatial dims and
[`Flip`][equivariance.transforms.Flip] reverses one; they are exact on the whole grid and go to the checks as
``transforms=[Rot90(1), Flip(-1)]`` (docs/diagnosing.md, "Rotations and flips"). The eight elements of a
plane's p4m group are closed under ``*``, in one canonical form; a product across planes or with a shift is
refused:

    >>> Rot90(1) * Flip(-1), Rot90(2) * Flip(-1), Flip(-1) * Flip(-2), Rot90(1) * Rot90(3)
    (Transpose(), Flip(-2), Rot90(2), Identity())
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence
from typing import ClassVar

import torch

from equivariance._engine.validation import as_int, describe
from equivariance.actions import Action, Grid, Identity
from equivariance.errors import InvalidArgument
from equivariance.shifts import Shift

__all__ = ["Flip", "Rot90", "Transpose", "planar"]


class _GridMap(Action):
    """A transform of the grid onto itself (a rotation, a flip, a reflection), which acts on every
    tensor by its ``apply`` (the stride does not matter) and composes with any other element."""

    moves_positions_only: ClassVar[bool] = True

    @abc.abstractmethod
    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Transform ``x`` whose last ``spatial_dims`` dims are spatial."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Transform a tensor on ``grid``: the grid maps onto itself, whatever its stride."""
        return self.apply(x, grid.spatial_dims)

    def __mul__(self, other: Action) -> Action:
        """The element that acts as ``other``, then this one."""
        return compose(self, other)

    def __rmul__(self, other: Action) -> Action:
        """``other * self``, where ``other`` leaves the product to this element (the identity)."""
        return compose(other, self)


class Rot90(_GridMap):
    """Rotation by ``k`` quarter turns in the plane of two spatial dims (``torch.rot90``).

    ``dims`` are negative indices among the spatial dims, default the last two (the image plane).

    Examples:
        >>> import torch
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> Rot90(1).apply(x, 2).flatten().tolist()
        [1.0, 3.0, 0.0, 2.0]
        >>> Rot90(5) == Rot90(1), Rot90(-1)
        (True, Rot90(3))

    Args:
        k: the number of quarter turns (taken modulo 4).
        dims: the two spatial dims of the plane, as negative indices.
    """

    __slots__ = ("dims", "k")

    def __init__(self, k: int = 1, dims: tuple[int, int] = (-2, -1)) -> None:
        self.k = as_int(k, "k") % 4
        self.dims = _plane(dims)

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Rotate ``x``; the two dims must be spatial and of equal size."""
        _check_square(self, x, spatial_dims)
        return torch.rot90(x, self.k, self.dims)

    @property
    def is_identity(self) -> bool:
        return self.k == 0

    def inverse(self) -> Rot90:
        """The rotation the other way.

        Examples:
            >>> Rot90(1).inverse()
            Rot90(3)
        """
        return Rot90(-self.k, self.dims)

    def _key(self) -> Hashable:
        return (self.k, self.dims)

    def __repr__(self) -> str:
        suffix = "" if self.dims == (-2, -1) else f", dims={self.dims}"
        return f"Rot90({self.k}{suffix})"


class Flip(_GridMap):
    """Reversal of one spatial dim (``torch.flip``), default the last.

    Examples:
        >>> import torch
        >>> Flip(-1).apply(torch.tensor([[[1.0, 2.0, 3.0]]]), 1).flatten().tolist()
        [3.0, 2.0, 1.0]

    Args:
        dim: the spatial dim, as a negative index.
    """

    __slots__ = ("dim",)

    def __init__(self, dim: int = -1) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim >= 0:
            raise InvalidArgument(
                f"dim must be a negative int naming a spatial dim, found {describe(dim)}; pass e.g. Flip(-1)"
            )
        self.dim = dim

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Flip ``x`` along the dim; it must be spatial."""
        if self.dim < -spatial_dims:
            raise InvalidArgument(
                f"{self!r} flips dim {self.dim} but the tensor of shape {tuple(x.shape)} has only "
                f"{spatial_dims} spatial dim{'s' if spatial_dims != 1 else ''}; pass a dim in "
                f"-1..{-spatial_dims}"
            )
        return torch.flip(x, (self.dim,))

    def inverse(self) -> Flip:
        """A flip is its own inverse."""
        return self

    def _key(self) -> Hashable:
        return self.dim

    def __repr__(self) -> str:
        return f"Flip({self.dim})"


class Transpose(_GridMap):
    """Reflection of a plane of two spatial dims across its main diagonal (``anti=True``: across the
    other diagonal): the two diagonal reflections of p4m.

    ``Transpose()`` is ``Rot90(1) * Flip(-1)`` (a flip of the last dim, then a quarter turn) and
    ``Transpose(anti=True)`` is ``Rot90(3) * Flip(-1)``; products of rotations and flips return them where
    they are these elements.

    Examples:
        >>> import torch
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)   # [[0, 1], [2, 3]]
        >>> Transpose().apply(x, 2).flatten().tolist(), Transpose(anti=True).apply(x, 2).flatten().tolist()
        ([0.0, 2.0, 1.0, 3.0], [3.0, 1.0, 2.0, 0.0])
        >>> Transpose() == Rot90(1) * Flip(-1), Transpose() * Transpose()
        (True, Identity())

    Args:
        dims: the two spatial dims of the plane, as negative indices (their order does not matter).
        anti: reflect across the anti-diagonal instead of the main diagonal.
    """

    __slots__ = ("anti", "dims")

    def __init__(self, dims: tuple[int, int] = (-2, -1), *, anti: bool = False) -> None:
        a, b = sorted(_plane(dims))
        self.dims = (a, b)
        if not isinstance(anti, bool):
            raise InvalidArgument(f"anti must be True or False, found {describe(anti)}")
        self.anti = anti

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Reflect ``x``; the two dims must be spatial and of equal size."""
        _check_square(self, x, spatial_dims)
        a, b = self.dims
        return (torch.flip(x, self.dims) if self.anti else x).transpose(a, b)

    def inverse(self) -> Transpose:
        """A reflection is its own inverse."""
        return self

    def _key(self) -> Hashable:
        return (self.dims, self.anti)

    def __repr__(self) -> str:
        options = [] if self.dims == (-2, -1) else [f"dims={self.dims}"]
        options += ["anti=True"] if self.anti else []
        return f"Transpose({', '.join(options)})"


def _plane(dims: object) -> tuple[int, int]:
    """Two different negative spatial dims."""
    if not (isinstance(dims, tuple) and len(dims) == 2) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d < 0 for d in dims
    ):
        raise InvalidArgument(
            f"dims must be two negative ints naming spatial dims, found {describe(dims)}; "
            "pass e.g. dims=(-2, -1) for the image plane"
        )
    if dims[0] == dims[1]:
        raise InvalidArgument(f"dims must be two different dims, found {dims}; pass e.g. dims=(-2, -1)")
    return dims


def _check_square(element: Rot90 | Transpose, x: torch.Tensor, spatial_dims: int) -> None:
    dims = element.dims
    if min(dims) < -spatial_dims:
        raise InvalidArgument(
            f"{element!r} acts on dims {dims} but the tensor of shape {tuple(x.shape)} has "
            f"{spatial_dims} spatial dim{'s' if spatial_dims != 1 else ''}; it needs two "
            "spatial dims (use Flip for 1-D signals)"
        )
    a, b = (x.shape[d] for d in dims)
    if a != b:
        raise InvalidArgument(
            f"{element!r} needs dims {dims} of equal size to map the grid onto itself, found "
            f"sizes {a} and {b} in shape {tuple(x.shape)}; crop or pad to a square"
        )


Planar = tuple[tuple[int, int], int, int]
"""An element of a plane's p4m group as ``(plane, s, k)``: reflect ``s`` times (flip the plane's
second dim), then rotate by ``k`` quarter turns from its first dim towards its second."""


def planar(element: Action, plane: tuple[int, int] | None = None) -> Planar | None:
    """``element`` as ``(plane, s, k)`` (see ``Planar``): in ``plane`` where given (or the element's
    own); None for an element that is not a rotation, flip or diagonal reflection of a plane, or not of
    ``plane``.

    Examples:
        >>> planar(Flip(-2)), planar(Transpose(anti=True)), planar(Rot90(1, dims=(-1, -2)))
        (((-2, -1), 1, 2), ((-2, -1), 1, 3), ((-2, -1), 0, 3))
    """
    if isinstance(element, Identity) or (element.is_identity and isinstance(element, Rot90)):
        return ((-2, -1) if plane is None else plane), 0, 0
    if isinstance(element, Flip):
        dim = element.dim
        found = plane or ((dim, -1) if dim < -1 else (-2, -1))
        if dim not in found:
            return None
        return found, 1, 0 if dim == found[1] else 2
    if isinstance(element, Rot90):
        low, high = sorted(element.dims)
        own = (low, high)
        if plane is not None and own != plane:
            return None
        return own, 0, element.k if element.dims == own else -element.k % 4
    if isinstance(element, Transpose):
        if plane is not None and element.dims != plane:
            return None
        return element.dims, 1, 3 if element.anti else 1
    return None


def from_planar(plane: tuple[int, int], s: int, k: int) -> Action:
    """The canonical element ``(plane, s, k)``: Identity, a Rot90, a Flip or a Transpose."""
    a, b = plane
    k %= 4
    if not s:
        return Identity() if k == 0 else Rot90(k, plane)
    return {0: Flip(b), 1: Transpose(plane), 2: Flip(a), 3: Transpose(plane, anti=True)}[k]


def compose(outer: Action, inner: Action) -> Action:
    """``outer * inner``: the element that acts as ``inner``, then ``outer``, for elements of one
    plane's p4m group (rotations, flips and diagonal reflections, and the identity)."""
    dims = set(_dims_of(outer)) | set(_dims_of(inner))
    if len(dims) > 2 or planar(outer) is None or planar(inner) is None:
        raise InvalidArgument(
            f"{outer!r} * {inner!r} is not an element of one plane's p4m group: products are defined "
            "for rotations, flips and diagonal reflections (Transpose) of the same two spatial dims; "
            "check the elements one by one, e.g. transforms=[a, b]"
        )
    if len(dims) == 2:
        low, high = sorted(dims)
        plane = (low, high)
    else:  # one flipped dim or none: a plane around it, whose other dim the product never names
        (dim,) = dims or {-1}
        plane = (dim - 1, dim)
    found_outer, found_inner = planar(outer, plane), planar(inner, plane)
    assert found_outer is not None
    assert found_inner is not None
    _, s1, k1 = found_outer
    _, s2, k2 = found_inner
    # R^k1 F^s1 R^k2 F^s2 = R^(k1 + (-1)^s1 k2) F^(s1 + s2): a reflection turns a rotation around
    return from_planar(plane, s1 ^ s2, k1 + (-k2 if s1 else k2))


def _dims_of(element: Action) -> tuple[int, ...]:
    if element.is_identity:
        return ()
    if isinstance(element, Flip):
        return (element.dim,)
    if isinstance(element, (Rot90, Transpose)):
        return tuple(element.dims)
    return ()


def as_transform_list(transforms: object) -> list[Action]:
    """A non-empty list of actions to check in place of shifts, else InvalidArgument saying why.

    Shifts are refused by name (they go in ``shifts=``).

    Examples:
        >>> as_transform_list((Rot90(1), Flip(-1)))
        [Rot90(1), Flip(-1)]
    """
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence) or not transforms:
        raise InvalidArgument(
            f"transforms must be a non-empty list of transforms, found {describe(transforms)}; pass e.g. "
            "transforms=[Rot90(1), Flip(-1)]"
        )
    return [as_transform(t) for t in transforms]


def as_transform(transform: object) -> Action:
    """``transform`` as an action that is not a shift, else InvalidArgument saying why."""
    if isinstance(transform, Shift):
        raise InvalidArgument(
            f"transforms must hold Rot90, Flip or other actions, found the shift {transform!r}; shifts "
            "go in shifts="
        )
    if isinstance(transform, Action):
        return transform
    earlier = (
        " (the earlier protocol, apply(x, spatial_dims) alone, was removed in 0.2: define act(x, grid) "
        "in a subclass of Action)"
        if callable(getattr(transform, "apply", None))
        else "; shifts go in shifts="
    )
    raise InvalidArgument(
        f"transforms must hold Rot90, Flip or other actions (subclasses of equivariance.actions.Action), "
        f"found {describe(transform)}{earlier}"
    )
