"""90-degree rotations and flips of spatial dims: the p4 and p4m symmetries, on the same machinery.

Group-equivariant CNNs (Cohen and Welling 2016) are built for the group p4
(translations and rotations by multiples of 90 degrees) or p4m (with flips).
A :class:`Rot90` rotates a plane of two spatial dims, a :class:`Flip`
reverses one spatial dim. Both act the same way on the input and on a
spatial output (a field of scalars: each channel is rotated or flipped),
are exact on the whole grid (no boundary), and can be passed to
:func:`~equivariance.check_equivariance` and :func:`~equivariance.check_invariance`
as ``transforms=[Rot90(1), Flip(-1)]``, or to
:func:`~equivariance.equivariance_error` in place of a shift. They run on the
shifts' engine (:func:`equivariance.metric.measure`): the same chunked batches,
noise floor, margin and tolerances; the report lists them like shifts.

Flips act on 1-D signals, images and volumes; rotations need two spatial
dims of equal size (an image, or a plane of a volume).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from equivariance._validation import as_int, describe
from equivariance.errors import InvalidArgument
from equivariance.shifts import Boundary, Shift, ShiftedWindows

__all__ = ["Flip", "Rot90", "Transform"]


@runtime_checkable
class Transform(Protocol):
    """A transformation of the trailing spatial dims of a tensor, acting alike on input and output."""

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Transform ``x`` whose last ``spatial_dims`` dims are spatial."""
        ...


class Rot90:
    """Rotation by ``k`` quarter turns in the plane of two spatial dims (``torch.rot90``).

    ``dims`` are negative indices among the spatial dims, default the last
    two (the image plane).

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
        if not (isinstance(dims, tuple) and len(dims) == 2) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d < 0 for d in dims
        ):
            raise InvalidArgument(
                f"dims must be two negative ints naming spatial dims, found {describe(dims)}; "
                "pass e.g. dims=(-2, -1) for the image plane"
            )
        if dims[0] == dims[1]:
            raise InvalidArgument(f"dims must be two different dims, found {dims}")
        self.dims = dims

    def apply(self, x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """Rotate ``x``; the two dims must be spatial and of equal size."""
        if min(self.dims) < -spatial_dims:
            raise InvalidArgument(
                f"{self!r} rotates dims {self.dims} but the tensor of shape {tuple(x.shape)} has "
                f"{spatial_dims} spatial dim{'s' if spatial_dims != 1 else ''}; a rotation needs two "
                "spatial dims (use Flip for 1-D signals)"
            )
        a, b = (x.shape[d] for d in self.dims)
        if a != b:
            raise InvalidArgument(
                f"{self!r} needs dims {self.dims} of equal size to map the grid onto itself, found "
                f"sizes {a} and {b} in shape {tuple(x.shape)}; crop or pad to a square"
            )
        return torch.rot90(x, self.k, self.dims)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rot90):
            return NotImplemented
        return (self.k, self.dims) == (other.k, other.dims)

    def __hash__(self) -> int:
        return hash(("Rot90", self.k, self.dims))

    def __repr__(self) -> str:
        suffix = "" if self.dims == (-2, -1) else f", dims={self.dims}"
        return f"Rot90({self.k}{suffix})"

    __str__ = __repr__


class Flip:
    """Reversal of one spatial dim (``torch.flip``), default the last.

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flip):
            return NotImplemented
        return self.dim == other.dim

    def __hash__(self) -> int:
        return hash(("Flip", self.dim))

    def __repr__(self) -> str:
        return f"Flip({self.dim})"

    __str__ = __repr__


def as_transform_list(transforms: object) -> list[Transform]:
    """A non-empty list of transforms (never shifts), else InvalidArgument saying why.

    A :class:`~equivariance.Shift` has an ``apply`` too, so it would pass for
    a transform by its shape alone; it is refused by name.

    >>> as_transform_list((Rot90(1), Flip(-1)))
    [Rot90(1), Flip(-1)]
    """
    if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Sequence) or not transforms:
        raise InvalidArgument(
            f"transforms must be a non-empty list of transforms, found {describe(transforms)}; pass e.g. "
            "transforms=[Rot90(1), Flip(-1)]"
        )
    for t in transforms:
        if isinstance(t, Shift) or not isinstance(t, Transform):
            raise InvalidArgument(
                f"transforms must hold Rot90, Flip or other objects with apply(x, spatial_dims), found "
                f"{describe(t)}; shifts go in shifts="
            )
    return list(transforms)


def check_transform_fits(transform: Transform, x: torch.Tensor, spatial_dims: int, what: str = "x") -> None:
    """A transform must map the grid of ``x`` (its last ``spatial_dims`` dims) onto itself.

    ``what`` names ``x`` in the message; for anything but the input, the
    message says so and how to measure another layer.
    """
    try:
        moved: object = transform.apply(x[:1], spatial_dims)
    except InvalidArgument as exc:
        if what == "x":
            raise
        raise InvalidArgument(
            f"the transforms act on {what} as on the input, but {exc}; pass layer= to measure a layer "
            "whose output they map onto itself"
        ) from None
    except Exception as exc:
        raise InvalidArgument(f"{transform!r}.apply raised {type(exc).__name__} on {what}: {exc}") from exc
    if not isinstance(moved, torch.Tensor) or moved.shape != x[:1].shape:
        raise InvalidArgument(
            f"{transform!r} must map the grid of {what} onto itself, returning a tensor of shape "
            f"{tuple(x[:1].shape)} for one sample, found {describe(moved)}; a transform may only move "
            "the samples of the spatial dims"
        )


class Copies:
    """Copies of a batch, each moved by one element of a plan of shifts and transforms.

    ``take(sample, element)[b]`` is ``plan[element[b]]`` applied to
    ``x[sample[b]]``. The shifts of a whole chunk are read with one
    vectorized gather (:class:`~equivariance.shifts.ShiftedWindows`); a
    transform is applied once to each run of consecutive items that share it:
    a loop over the few distinct transforms of a chunk, never one call per
    sample. A plan of shifts only takes the gather's path unchanged.

    >>> import torch
    >>> x = torch.arange(8.0).reshape(2, 1, 2, 2)
    >>> plan = [Shift(0, 0), Rot90(1), Flip(-1)]
    >>> copies = Copies(x, plan, torch.zeros(3, 2, dtype=torch.long), "zeros")
    >>> moved = copies.take(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 2]))
    >>> torch.equal(moved[2], Rot90(1).apply(x[0], 2)), torch.equal(moved[3], Flip(-1).apply(x[1], 2))
    (True, True)

    Args:
        x: the batch; the plan acts on its last ``offsets.shape[1]`` dims.
        plan: the shifts and transforms, indexed by ``element``.
        offsets: ``(len(plan), d)`` offsets for the shifts of the plan (the
            rows of transforms are ignored).
        boundary: the shifts' boundary.
    """

    def __init__(
        self, x: torch.Tensor, plan: Sequence[Shift | Transform], offsets: torch.Tensor, boundary: Boundary
    ) -> None:
        self.x = x
        self.d = offsets.shape[1]
        self.transforms = {k: t for k, t in enumerate(plan) if not isinstance(t, Shift)}
        is_shift = torch.tensor([isinstance(t, Shift) for t in plan], dtype=torch.bool)
        self.offsets = torch.where(is_shift[:, None], offsets.cpu(), 0)  # transforms need no padding
        self.windows = ShiftedWindows(x, self.offsets, boundary)
        # one key per plan element: -1 for every shift (they share a gather), k for transform k
        self.keys = torch.where(is_shift, -1, torch.arange(len(plan)))

    def runs(self, sample: torch.Tensor, element: torch.Tensor) -> list[tuple[slice, torch.Tensor]] | None:
        """The items of :meth:`take` as runs ``(items, view)`` of views, not copies, where
        :meth:`ShiftedWindows.runs <equivariance.shifts.ShiftedWindows.runs>` finds them; None for a
        plan with transforms."""
        if self.transforms:
            return None
        return self.windows.runs(sample.cpu(), self.offsets[element.cpu()])

    def take(self, sample: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """The copies ``plan[element[b]]`` of ``x[sample[b]]``, for every ``b``."""
        sample, element = sample.cpu(), element.cpu()
        if not self.transforms:
            return self.windows.take(sample, self.offsets[element])
        keys = self.keys[element]
        new_run = torch.ones(len(keys), dtype=torch.bool)
        new_run[1:] = keys[1:] != keys[:-1]
        bounds = [*new_run.nonzero().flatten().tolist(), len(keys)]
        pieces = []
        for first, stop in itertools.pairwise(bounds):
            rows, key = sample[first:stop], int(keys[first])
            if key < 0:
                pieces.append(self.windows.take(rows, self.offsets[element[first:stop]]))
            else:  # indexing copies: a model may write to its input
                pieces.append(self.transforms[key].apply(self.x[rows.to(self.x.device)], self.d))
        # contiguous like the gather's copies (a rotation is a strided view of a flipped copy)
        return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces)
