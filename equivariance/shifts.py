"""Integer translations of the trailing spatial dims of a tensor.

A [`Shift`][equivariance.shifts.Shift] is an element of $Z^d$ (positive offsets move content towards
higher indices, as ``torch.roll``); the boundary (``"circular"``, ``"zeros"``) is a separate, explicit
choice (docs/concepts.md, "Boundaries"). [`apply_shifts`][equivariance.shifts.apply_shifts] makes many
shifted copies of a batch from one padded view.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from equivariance._engine.validation import as_int, describe, per_dim
from equivariance.actions import Action, Batched, Boundary, Grid, check_boundary
from equivariance.errors import InvalidArgument

__all__ = [
    "Boundary",
    "Shift",
    "ShiftLike",
    "apply_shifts",
    "as_shift",
    "circular_group",
    "multiples_of",
    "shifts_in_box",
]


class Shift(Action):
    """An integer translation of the last ``ndim`` dims of a tensor.

    Positive offsets move content towards higher indices, as in
    ``torch.roll``. Shifts form a group under composition (``+``), with
    inverse ``-s`` and identity ``Shift.identity(ndim)``; they are hashable
    and compare equal when their offsets are equal.

    Examples:
        >>> import torch
        >>> s = Shift(1, -2)
        >>> s
        Shift(1, -2)
        >>> s + Shift(2, 2), -s, s.ndim
        (Shift(3, 0), Shift(-1, 2), 2)
        >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
        >>> Shift(0, 1).apply(x, boundary="circular").flatten().tolist()
        [3.0, 0.0, 1.0, 2.0]
        >>> Shift(0, 1).apply(x, boundary="zeros").flatten().tolist()
        [0.0, 0.0, 1.0, 2.0]
        >>> Shift(4, -2) / 2
        Shift(2, -1)

    Args:
        *offsets: the offsets, one per spatial dim, given as separate ints or
            as one sequence: ``Shift(1, -2)`` or ``Shift((1, -2))``.
    """

    __slots__ = ("_offsets",)
    noun: ClassVar[str] = "shift"
    uses_boundary: ClassVar[bool] = True
    moves_positions_only: ClassVar[bool] = True
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, *offsets: int | Sequence[int]) -> None:
        values: Sequence[object]
        if len(offsets) == 1 and not _is_scalar(offsets[0]):
            values = list(offsets[0])  # type: ignore[arg-type]
        else:
            values = offsets
        if len(values) == 0:
            raise InvalidArgument(
                "a shift needs at least one offset, found none; pass one int per spatial dim, "
                "e.g. Shift(3, -2) for an image"
            )
        checked = []
        for value in values:
            if isinstance(value, bool) or not _is_integer(value):
                fix = (
                    "round them yourself if that is what you mean"
                    if isinstance(value, (float, torch.Tensor))
                    else "pass ints, e.g. Shift(3, -2)"
                )
                raise InvalidArgument(
                    f"shift offsets must be integers, found {describe(value)} in {tuple(values)!r}; {fix}"
                )
            checked.append(as_int(value, "shift offset"))
        self._offsets: tuple[int, ...] = tuple(checked)

    @classmethod
    def identity(cls, ndim: int) -> Shift:
        """The shift by zero in ``ndim`` dims.

        Examples:
            >>> Shift.identity(3)
            Shift(0, 0, 0)
        """
        ndim = as_int(ndim, "ndim")
        if ndim < 1:
            raise InvalidArgument(f"ndim must be positive, found {ndim}; pass 1, 2 or 3")
        return cls((0,) * ndim)

    # -- group structure ---------------------------------------------------------------------

    @property
    def offsets(self) -> tuple[int, ...]:
        """The offsets as a tuple of ints, one per spatial dim."""
        return self._offsets

    @property
    def ndim(self) -> int:
        """The number of spatial dims the shift acts on."""
        return len(self._offsets)

    @property
    def is_identity(self) -> bool:
        """Whether every offset is zero."""
        return not any(self._offsets)

    def compose(self, other: Shift) -> Shift:
        """The shift doing ``other`` and then ``self`` (for translations, the sum).

        Examples:
            >>> Shift(1, 2).compose(Shift(3, -4))
            Shift(4, -2)
        """
        other = self._same_ndim(other, "compose")
        return Shift(tuple(a + b for a, b in zip(self._offsets, other._offsets)))

    def inverse(self) -> Shift:
        """The shift undoing this one (under the circular boundary).

        Examples:
            >>> Shift(1, -2).inverse()
            Shift(-1, 2)
        """
        return Shift(tuple(-a for a in self._offsets))

    def __add__(self, other: Shift) -> Shift:
        if not isinstance(other, Shift):
            return NotImplemented
        return self.compose(other)

    def __sub__(self, other: Shift) -> Shift:
        if not isinstance(other, Shift):
            return NotImplemented
        return self.compose(other.inverse())

    def __neg__(self) -> Shift:
        return self.inverse()

    def __mul__(self, factor: int) -> Shift:
        if isinstance(factor, bool) or not _is_integer(factor):
            return NotImplemented
        return Shift(tuple(a * int(factor) for a in self._offsets))

    __rmul__ = __mul__

    def wrap(self, size: int | Sequence[int]) -> Shift:
        """The equivalent shift on a torus of ``size``, offsets in ``[-(size//2), size - size//2)``.

        Under the circular boundary a shift by the size is the identity, so
        shifts that differ by multiples of the size act identically.

        Examples:
            >>> Shift(5, -7).wrap(4)
            Shift(1, 1)
        """
        sizes = per_dim(size, self.ndim, "size", minimum=1)
        return Shift(tuple(_centred(o, n) for o, n in zip(self._offsets, sizes)))

    # -- strides -----------------------------------------------------------------------------

    def divisible_by(self, stride: int | Sequence[int]) -> bool:
        """Whether every offset is a multiple of the stride (of that dim).

        Examples:
            >>> Shift(4, 2).divisible_by(2), Shift(4, 3).divisible_by(2)
            (True, False)
        """
        strides = per_dim(stride, self.ndim, "stride", minimum=1)
        return all(o % s == 0 for o, s in zip(self._offsets, strides))

    def __truediv__(self, stride: int | Sequence[int]) -> Shift:
        """The shift of a map subsampled by ``stride``: a shift by 4 of the
        input moves a stride-2 feature map by 2.

        A shift the stride does not divide has no exact counterpart on the
        subsampled grid; that raises instead of being rounded away.
        """
        strides = per_dim(stride, self.ndim, "stride", minimum=1)
        if not self.divisible_by(strides):
            shown = strides[0] if len(set(strides)) == 1 else strides
            raise InvalidArgument(
                f"{self!r} is not a multiple of stride {shown}, so it has no exact counterpart on "
                f"a map subsampled by {shown}; test multiples of the stride instead, e.g. "
                f"multiples_of({shown}, max_shift=...)"
            )
        return Shift(tuple(o // s for o, s in zip(self._offsets, strides)))

    # -- action on tensors -------------------------------------------------------------------

    def apply(self, x: torch.Tensor, boundary: Boundary = "zeros") -> torch.Tensor:
        """Translate the last ``ndim`` dims of ``x``; returns a new tensor.

        Under ``boundary="circular"`` this is ``torch.roll``; under
        ``"zeros"`` vacated samples are zero and content leaving is dropped.

        Examples:
            >>> x = torch.tensor([1.0, 2.0, 3.0])
            >>> Shift(-1).apply(x).tolist(), Shift(-1).apply(x, "circular").tolist()
            ([2.0, 3.0, 0.0], [2.0, 3.0, 1.0])
        """
        boundary = check_boundary(boundary)
        if not isinstance(x, torch.Tensor):
            raise InvalidArgument(
                f"x must be a torch.Tensor, found {describe(x)}; convert it, e.g. torch.as_tensor(x)"
            )
        if x.dim() < self.ndim:
            raise InvalidArgument(
                f"{self!r} acts on {self.ndim} trailing dims but x of shape {tuple(x.shape)} "
                f"has only {x.dim()}; pass a shift with at most {x.dim()} offsets"
            )
        dims = tuple(range(x.dim() - self.ndim, x.dim()))
        if boundary == "circular":
            if x.numel() == 0:
                return x.clone()
            wrapped = tuple(_centred(o, x.shape[d]) for o, d in zip(self._offsets, dims))
            return torch.roll(x, wrapped, dims)
        out = torch.zeros_like(x)
        sizes = tuple(x.shape[d] for d in dims)
        region = self.valid_region(sizes)
        if any(r.start == r.stop for r in region):
            return out
        lead = (slice(None),) * (x.dim() - self.ndim)
        source = tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, self._offsets))
        out[lead + region] = x[lead + source]
        return out

    def valid_region(self, size: int | Sequence[int]) -> tuple[slice, ...]:
        """The box of a zero-boundary result that is determined by the input.

        Outside it the result is the zero fill. Under the circular boundary
        the whole grid is valid.

        Examples:
            >>> Shift(2, -1).valid_region((5, 5))
            (slice(2, 5, None), slice(0, 4, None))
        """
        return _valid(self._offsets, per_dim(size, self.ndim, "size", minimum=1))

    def valid_mask(self, size: int | Sequence[int], boundary: Boundary = "zeros") -> torch.Tensor:
        """A boolean tensor of ``size``: True where the shifted result is
        determined by the input (everywhere under the circular boundary).

        Examples:
            >>> Shift(1).valid_mask(4).tolist()
            [False, True, True, True]
        """
        boundary = check_boundary(boundary)
        sizes = per_dim(size, self.ndim, "size", minimum=1)
        mask = torch.zeros(sizes, dtype=torch.bool)
        if boundary == "circular":
            return mask.logical_not_()
        mask[self.valid_region(sizes)] = True
        return mask

    # -- the action protocol -----------------------------------------------------------------

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Move ``x``, a tensor on ``grid``: by the shift divided by the grid's stride.

        Examples:
            >>> from equivariance.actions import Grid
            >>> y = torch.arange(4.0).reshape(1, 1, 4)
            >>> Shift(2).act(y, Grid(1, (2,), "circular")).flatten().tolist()
            [3.0, 0.0, 1.0, 2.0]
        """
        return self._on(grid).apply(x, grid.boundary)

    def region(self, spatial: tuple[int, ...], grid: Grid) -> tuple[slice, ...]:
        """The valid region of the shift on ``grid`` (the whole grid under the circular boundary)."""
        if grid.boundary == "circular":
            return tuple(slice(0, n) for n in spatial)
        return self._on(grid).valid_region(spatial)

    def translation(self, grid: Grid) -> tuple[int, ...]:
        """The offsets on ``grid``: the shift divided by the grid's stride.

        Examples:
            >>> from equivariance.actions import Grid
            >>> Shift(4, -2).translation(Grid(2, (2, 2)))
            (2, -1)
        """
        return self._on(grid).offsets

    def to_json(self) -> list[int]:
        """The offsets as a list.

        Examples:
            >>> Shift(1, -2).to_json()
            [1, -2]
        """
        return list(self._offsets)

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Grid) -> Batched:
        """Every shift of ``elements`` read from ``x`` by slices or one gather a chunk."""
        offsets = torch.tensor(
            [s._on(grid).offsets for s in elements if isinstance(s, Shift)], dtype=torch.long
        )
        return _ShiftedRows(ShiftedWindows(x, offsets, grid.boundary), offsets)

    def _on(self, grid: Grid) -> Shift:
        """The shift as seen on ``grid``: divided by its stride (exactly, or InvalidArgument)."""
        if self.ndim != grid.spatial_dims:
            raise InvalidArgument(
                f"shift {self} has {self.ndim} dims but the grid it acts on has {grid.spatial_dims} "
                f"spatial dims; pass a shift of length {grid.spatial_dims}"
            )
        return self / grid.stride if grid.subsampled else self

    # -- protocol ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[int]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> int:
        return self._offsets[index]

    def _key(self) -> Hashable:
        return self._offsets

    def __repr__(self) -> str:
        return f"Shift({', '.join(map(str, self._offsets))})"

    def __str__(self) -> str:
        if self.ndim == 1:
            return f"({self._offsets[0]},)"
        return f"({', '.join(map(str, self._offsets))})"

    def __reduce__(self) -> tuple[type[Shift], tuple[tuple[int, ...]]]:
        return (Shift, (self._offsets,))

    def _same_ndim(self, other: object, verb: str) -> Shift:
        if not isinstance(other, Shift):
            raise InvalidArgument(
                f"can only {verb} a Shift with a Shift, found {describe(other)}; wrap the offsets, e.g. "
                "Shift(1, 0)"
            )
        if other.ndim != self.ndim:
            raise InvalidArgument(
                f"cannot {verb} {self!r} ({self.ndim} dims) with {other!r} ({other.ndim} dims); "
                "shifts must act on the same number of dims: give both one offset per spatial dim"
            )
        return other


ShiftLike = Shift | int | Sequence[int]


def as_shift(shift: object) -> Shift:
    """Coerce a [`Shift`][equivariance.shifts.Shift], an int (1-D) or a sequence of ints to a Shift.

    Examples:
        >>> as_shift((3, -2)), as_shift(4)
        (Shift(3, -2), Shift(4))
    """
    if isinstance(shift, Shift):
        return shift
    if isinstance(shift, (str, bytes)):
        raise InvalidArgument(
            f"shift must be a Shift or a tuple of ints, found {describe(shift)}; "
            "pass e.g. (3, -2) or Shift(3, -2)"
        )
    if _is_scalar(shift):
        return Shift(shift)  # type: ignore[arg-type]
    if not isinstance(shift, Iterable):
        raise InvalidArgument(
            f"shift must be a Shift or a tuple of ints, found {describe(shift)}; "
            "pass e.g. (3, -2) or Shift(3, -2)"
        )
    return Shift(tuple(shift))


def as_shift_list(shifts: object) -> list[Shift]:
    """A non-empty list of shifts of one ndim from a list of Shifts or tuples, else InvalidArgument.

    A tuple of two or more ints is one shift written where a list of shifts
    belongs (``(1, 0)`` for ``[(1, 0)]``), so it is refused, saying so; the
    shifts of a 1-D signal are a list of ints, ``[1, -1]``.

    Examples:
        >>> as_shift_list([(1, 0), Shift(0, 2)])
        [Shift(1, 0), Shift(0, 2)]
        >>> as_shift_list((1, 0))
        Traceback (most recent call last):
        ...
        equivariance.errors.InvalidArgument: shifts (1, 0) is a tuple of ints, which reads as one shift; ...
    """
    if isinstance(shifts, Shift):
        raise InvalidArgument(
            f"shifts must be a list of shifts, found the single shift {shifts!r}; wrap it in a list: "
            f"shifts=[{shifts!r}]"
        )
    if isinstance(shifts, (str, bytes)) or not isinstance(shifts, Iterable):
        raise InvalidArgument(
            f"shifts must be a list of shifts, found {describe(shifts)}; wrap a single shift in a "
            "list, e.g. shifts=[(3, -2)]"
        )
    if isinstance(shifts, tuple) and len(shifts) > 1 and all(_is_integer(s) for s in shifts):
        raise InvalidArgument(
            f"shifts {shifts!r} is a tuple of ints, which reads as one shift; pass a list of shifts: "
            f"[{shifts!r}] for that shift, or a list of ints, e.g. {list(shifts)!r}, for shifts of a 1-D "
            "signal"
        )
    coerced = [as_shift(s) for s in shifts]
    if not coerced:
        raise InvalidArgument("shifts is empty; pass at least one shift")
    ndims = {s.ndim for s in coerced}
    if len(ndims) > 1:
        raise InvalidArgument(
            f"all shifts must have the same number of dims, found {sorted(ndims)}; "
            "use one ndim for the whole set"
        )
    return coerced


# -- shift sets --------------------------------------------------------------------------------


def shifts_in_box(max_shift: int | Sequence[int], ndim: int = 2) -> list[Shift]:
    """Every shift in the box $[-k, k]^n$ ($n$ = ``ndim``), the identity included, in lexicographic order.

    ``max_shift`` is one ``k`` for all dims or one per dim.

    Examples:
        >>> len(shifts_in_box(5, ndim=2))
        121
        >>> shifts_in_box(1, ndim=1)
        [Shift(-1), Shift(0), Shift(1)]
    """
    ndim = _check_ndim(ndim)
    bounds = per_dim(max_shift, ndim, "max_shift", minimum=0)
    ranges = [range(-k, k + 1) for k in bounds]
    return [Shift(offsets) for offsets in itertools.product(*ranges)]


def circular_group(size: int | Sequence[int]) -> list[Shift]:
    """The whole group of circular shifts of a grid of ``size``: offsets ``0 .. size-1`` per dim.

    ``size`` is an int for a 1-D signal or a tuple, e.g. ``(H, W)``.

    Examples:
        >>> circular_group(3)
        [Shift(0), Shift(1), Shift(2)]
        >>> len(circular_group((4, 5)))
        20
    """
    ndim = len(size) if isinstance(size, (tuple, list)) else 1
    sizes = per_dim(size, ndim, "size", minimum=1)
    return [Shift(offsets) for offsets in itertools.product(*(range(n) for n in sizes))]


def multiples_of(stride: int | Sequence[int], max_shift: int | Sequence[int], ndim: int = 2) -> list[Shift]:
    """The shifts in $[-m, m]^n$ (``max_shift``, ``ndim``) whose offsets are multiples of ``stride``.

    These are the shifts that a map subsampled by ``stride`` can follow exactly.

    Examples:
        >>> multiples_of(2, max_shift=3, ndim=1)
        [Shift(-2), Shift(0), Shift(2)]
        >>> len(multiples_of(2, max_shift=4, ndim=2))
        25
    """
    ndim = _check_ndim(ndim)
    strides = per_dim(stride, ndim, "stride", minimum=1)
    bounds = per_dim(max_shift, ndim, "max_shift", minimum=0)
    ranges = [range(-(k // s) * s, k + 1, s) for k, s in zip(bounds, strides)]
    return [Shift(offsets) for offsets in itertools.product(*ranges)]


# -- the batched action ------------------------------------------------------------------------


def apply_shifts(
    x: torch.Tensor, shifts: Sequence[ShiftLike] | torch.Tensor, boundary: Boundary = "zeros"
) -> torch.Tensor:
    """Every shift applied to every sample, in one vectorized operation.

    Returns a tensor of shape ``(K, *x.shape)`` whose ``[k]`` is
    ``shifts[k].apply(x, boundary)``, for offsets of any size (Python ints
    beyond int64 included). The shifts act on the last ``d`` dims of ``x``,
    where ``d`` is the shifts' common ``ndim``; ``shifts`` may also be a
    ``(K, d)`` integer tensor of offsets.

    Args:
        x: the tensor to shift.
        shifts: [`Shift`][equivariance.shifts.Shift] objects, tuples of ints, or a ``(K, d)`` integer tensor.
        boundary: ``"zeros"`` or ``"circular"``.

    Returns:
        ``(K, *x.shape)``, a new tensor.

    Examples:
        >>> x = torch.arange(3.0).reshape(1, 1, 3)
        >>> apply_shifts(x, [Shift(0), Shift(1), Shift(-1)], "circular").flatten(1).tolist()
        [[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [1.0, 2.0, 0.0]]
        >>> apply_shifts(x, [Shift(2**70)], "circular").flatten(1).tolist()   # 2**70 = 1 mod 3
        [[2.0, 0.0, 1.0]]
    """
    boundary = check_boundary(boundary)
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(
            f"x must be a torch.Tensor, found {describe(x)}; convert it, e.g. torch.as_tensor(x)"
        )
    given = shifts if isinstance(shifts, torch.Tensor) else as_shift_list(shifts)
    d = offsets_tensor(given).shape[1] if isinstance(given, torch.Tensor) else given[0].ndim
    if x.dim() < d:
        raise InvalidArgument(
            f"the shifts act on {d} trailing dims but x of shape {tuple(x.shape)} "
            f"has only {x.dim()}; pass shifts with at most {x.dim()} offsets"
        )
    if x.numel() == 0:
        return x.new_empty((len(given), *x.shape))
    # exact for every int: offsets reduced against the sizes they act on, not clamped
    offsets = offsets_tensor(given, tuple(x.shape[x.dim() - d :]), boundary)
    windows = ShiftedWindows(x.unsqueeze(0), offsets, boundary)
    index = torch.zeros(offsets.shape[0], dtype=torch.long)
    return windows.take(index, offsets)


def offsets_tensor(
    shifts: Sequence[ShiftLike] | torch.Tensor,
    sizes: Sequence[int] | None = None,
    boundary: Boundary = "zeros",
) -> torch.Tensor:
    """The offsets of a list of shifts as a ``(K, d)`` int64 tensor (on the CPU).

    Python ints may be larger than int64 holds. Given the ``sizes`` of the
    dims they act on, each offset becomes one that acts alike under
    ``boundary``, exactly: its centred remainder (circular) or itself
    clamped to ``[-size, size]`` (zeros, where any shift past the size
    empties the result). Without ``sizes`` offsets are clamped to
    ``+-2**62``, which keeps their action only on grids smaller than that.

    Examples:
        >>> offsets_tensor([Shift(2**70, -1)], sizes=(5, 5), boundary="circular").tolist()
        [[-1, -1]]
        >>> offsets_tensor([Shift(2**70, -1)], sizes=(5, 5), boundary="zeros").tolist()
        [[5, -1]]
    """
    if isinstance(shifts, torch.Tensor):
        if (
            shifts.dim() != 2
            or shifts.shape[1] == 0
            or shifts.dtype.is_floating_point
            or shifts.dtype.is_complex
            or shifts.dtype == torch.bool
        ):
            raise InvalidArgument(
                f"a tensor of shifts must be a (K, d) integer tensor, found shape {tuple(shifts.shape)} of "
                f"{shifts.dtype}; pass e.g. torch.tensor([[1, 0], [0, 1]])"
            )
        return shifts.to(device="cpu", dtype=torch.long)
    coerced = as_shift_list(shifts)
    if sizes is None:
        limit = 2**62
        return torch.tensor(
            [[max(-limit, min(limit, o)) for o in s.offsets] for s in coerced], dtype=torch.long
        )
    if boundary == "circular":
        return torch.tensor(
            [[_centred(o, n) for o, n in zip(s.offsets, sizes)] for s in coerced], dtype=torch.long
        )
    clamped = [[max(-n, min(n, o)) for o, n in zip(s.offsets, sizes)] for s in coerced]
    return torch.tensor(clamped, dtype=torch.long)


# Elements per run above which ShiftedWindows reads runs of slices (a Python step each,
# ~5 us) rather than gathering element by element (~2 GB/s on a CPU core).
_RUN_ELEMENTS = 4096


class ShiftedWindows:
    """Shifted copies of a batch, gathered from one padded, strided view.

    The batch ``x`` (leading batch dim; the shifts act on its last ``d``
    dims) is padded once, by the largest of ``offsets``, and unfolded into a
    view holding every window of the original size. ``take`` then reads
    any number of (sample, shift) pairs with one advanced-indexing gather: no
    Python loop over shifts, and no work proportional to the whole batch per
    call. On the CPU, long runs of items that share a shift are copied as
    slices instead: of ``x`` itself under the zeros boundary (the padded view
    is then never made), of the padded view under the circular one.
    """

    def __init__(self, x: torch.Tensor, offsets: torch.Tensor, boundary: Boundary) -> None:
        d = offsets.shape[1]
        self.boundary = boundary
        self.sizes = torch.tensor(x.shape[x.dim() - d :], dtype=torch.long)
        canonical = self._canonical(offsets.cpu())
        self.pads = canonical.abs().amax(dim=0) if len(canonical) else torch.zeros(d, dtype=torch.long)
        self.x = x
        self._windows: torch.Tensor | None = None
        self.lead = (slice(None),) * (x.dim() - d - 1)
        self.per_sample = math.prod(x.shape[1 : x.dim() - d])
        # where the window of each offset given starts in the padded view, for take_given
        self.starts = self.pads - canonical
        self._starts = self.starts.tolist()
        self._canonical_given = canonical.tolist()

    @property
    def windows(self) -> torch.Tensor:
        """The padded view holding every window, made the first time it is needed."""
        if self._windows is None:
            d = len(self.sizes)
            spatial = range(self.x.dim() - d, self.x.dim())
            windows = _pad(self.x, self.pads.tolist(), spatial, self.boundary)
            for dim, n in zip(spatial, self.sizes.tolist()):
                windows = windows.unfold(dim, n, 1)
            # unfold moved each spatial dim's window start to `dim` and appended its content dims
            self._windows = windows
        return self._windows

    def _canonical(self, offsets: torch.Tensor) -> torch.Tensor:
        if self.boundary == "circular":
            # the centred representative keeps the padding at most half the size; the remainder
            # comes first, so that an offset near the int64 limit cannot overflow
            half = self.sizes // 2
            return torch.remainder(torch.remainder(offsets, self.sizes) + half, self.sizes) - half
        # a shift past the whole size empties the result; clamp so the pad stays finite
        return torch.maximum(torch.minimum(offsets, self.sizes), -self.sizes)

    def take(self, index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``out[b] = Shift(offsets[b]).apply(x[index[b]])``; ``offsets`` must be within those given.

        A copy, read by one element-wise gather, or, where ``_runs`` finds
        long runs of items, by concatenating them: a plain copy several times
        faster on a CPU.
        """
        starts = self.pads - self._canonical(offsets.cpu())
        return self._take(index, starts, self._runs(index.tolist(), starts.tolist()))

    def take_given(self, index: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """``take`` with ``offsets[which]`` of the offsets this was made with
        (no recomputation)."""
        picked = which.tolist()
        copy = self._sliced if self.boundary == "zeros" else self._rolled
        direct = copy(index.tolist(), [self._canonical_given[w] for w in picked])
        if direct is not None:
            return direct
        runs = self._runs(index.tolist(), [self._starts[w] for w in picked])
        return self._take(index, self.starts[which.cpu()], runs)

    def _take(
        self, index: torch.Tensor, starts: torch.Tensor, runs: list[tuple[slice, torch.Tensor]] | None
    ) -> torch.Tensor:
        if runs is not None:
            return torch.cat([view for _, view in runs])  # a copy even of one run: a model may write to it
        device = self.windows.device
        key = (index.to(device), *self.lead, *starts.to(device).unbind(1))
        return self.windows[key]  # type: ignore[index]

    def _bounds(self, samples: list[int], keys: list[list[int]]) -> list[int] | None:
        """Where runs of consecutive samples at one offset start (and the end); None off the CPU or
        where runs are too short to beat one gather."""
        # a chunk's items as plain lists: faster than small tensor ops
        if self.x.device.type != "cpu":
            return None
        bounds = [0]
        for b in range(1, len(samples)):
            if keys[b] != keys[b - 1] or samples[b] != samples[b - 1] + 1:
                bounds.append(b)
        bounds.append(len(samples))
        window = math.prod(self.sizes.tolist())
        if len(samples) * window * self.per_sample < _RUN_ELEMENTS * (len(bounds) - 1):
            return None
        return bounds

    def _sliced(self, samples: list[int], offsets: list[list[int]]) -> torch.Tensor | None:
        """Zero-boundary copies made run by run from slices of ``x``: the valid region copied, the
        rest zeroed, no padded view (None where ``_bounds`` says so)."""
        return self._by_runs(samples, offsets, self._slice_into)

    def _rolled(self, samples: list[int], offsets: list[list[int]]) -> torch.Tensor | None:
        """Circular copies made run by run from slices of ``x``: in each dim the part before the wrap
        and the part after it, ``2**d`` tiles at most, no padded view (None where ``_bounds`` says so)."""
        return self._by_runs(samples, offsets, self._roll_into)

    def _by_runs(
        self,
        samples: list[int],
        offsets: list[list[int]],
        write: Callable[[torch.Tensor, slice, slice, list[int], list[int]], None],
    ) -> torch.Tensor | None:
        """A new tensor of the copies, each run of items (consecutive samples, one offset) written by
        ``write(out, items, samples of x, offset, sizes)``; None where ``_bounds`` says so."""
        bounds = self._bounds(samples, offsets)
        if bounds is None:
            return None
        out = self.x.new_empty((len(samples), *self.x.shape[1:]))
        sizes = self.sizes.tolist()
        for first, stop in itertools.pairwise(bounds):
            i = samples[first]
            write(out, slice(first, stop), slice(i, i + stop - first), offsets[first], sizes)
        return out

    def _slice_into(
        self, out: torch.Tensor, items: slice, rows: slice, offset: list[int], sizes: list[int]
    ) -> None:
        region = _valid(offset, sizes)
        source = tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, offset))
        target: tuple[Any, ...] = (items, *self.lead, *region)
        origin: tuple[Any, ...] = (rows, *self.lead, *source)
        out[target] = self.x[origin]
        for dim, (r, n) in enumerate(zip(region, sizes)):  # the fill: slabs before and after the region
            before: tuple[Any, ...] = (items, *self.lead, *[slice(None)] * dim, slice(0, r.start))
            after: tuple[Any, ...] = (items, *self.lead, *[slice(None)] * dim, slice(r.stop, n))
            out[before] = 0
            out[after] = 0

    def _roll_into(
        self, out: torch.Tensor, items: slice, rows: slice, offset: list[int], sizes: list[int]
    ) -> None:
        per_dim = []
        for o, n in zip(offset, sizes):
            m = o % n  # out[p] = x[(p - o) mod n]: out[m:] comes from x[:n - m], out[:m] from x[n - m:]
            parts = [(slice(m, n), slice(0, n - m)), (slice(0, m), slice(n - m, n))]
            per_dim.append(parts if m else parts[:1])
        for tile in itertools.product(*per_dim):
            target: tuple[Any, ...] = (items, *self.lead, *(place for place, _ in tile))
            origin: tuple[Any, ...] = (rows, *self.lead, *(src for _, src in tile))
            out[target] = self.x[origin]

    def _runs(self, samples: list[int], starts: list[list[int]]) -> list[tuple[slice, torch.Tensor]] | None:
        bounds = self._bounds(samples, starts)
        if bounds is None:
            return None
        runs = []
        for first, stop in itertools.pairwise(bounds):
            i = samples[first]
            key: tuple[Any, ...] = (slice(i, i + stop - first), *self.lead, *starts[first])
            runs.append((slice(first, stop), self.windows[key]))
        return runs


def shifted_rows(x: torch.Tensor, offsets: torch.Tensor, boundary: Boundary) -> Batched:
    """Rows of ``x`` moved by the shifts of a ``(K, d)`` tensor of offsets, vectorized: the batched
    path of [`Shift`][equivariance.Shift] for offsets drawn by the thousand, with no Shift made."""
    offsets = offsets.to(device="cpu", dtype=torch.long)
    return _ShiftedRows(ShiftedWindows(x, offsets, boundary), offsets)


class _ShiftedRows(Batched):
    """Shifted copies of rows, for [`Shift.batched`][equivariance.Shift.batched]."""

    def __init__(self, windows: ShiftedWindows, offsets: torch.Tensor) -> None:
        self.windows, self.offsets = windows, offsets

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return self.windows.take_given(rows.cpu(), which.cpu())


def _pad(x: torch.Tensor, pads: list[int], dims: Iterable[int], boundary: Boundary) -> torch.Tensor:
    for dim, p in zip(dims, pads):
        if p == 0:
            continue
        if boundary == "circular":
            n = x.shape[dim]
            x = torch.cat([x.narrow(dim, n - p, p), x, x.narrow(dim, 0, p)], dim=dim)
        else:
            widths = [0, 0] * (x.dim() - 1 - dim) + [p, p]
            x = F.pad(x, widths)
    return x


def _valid(offsets: Sequence[int], sizes: Sequence[int]) -> tuple[slice, ...]:
    """The valid region of a zero-boundary shift by ``offsets`` of a grid of ``sizes``."""
    return tuple(slice(min(max(o, 0), n), max(min(n + o, n), 0)) for o, n in zip(offsets, sizes))


def _centred(offset: int, size: int) -> int:
    return (offset + size // 2) % size - size // 2


def _is_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (
            value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool
        )
    return hasattr(type(value), "__index__")


def _is_scalar(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return not isinstance(value, (Sequence, Iterable)) or isinstance(value, (str, bytes))


def _check_ndim(ndim: object) -> int:
    n = as_int(ndim, "ndim")
    if n < 1:
        raise InvalidArgument(f"ndim must be positive, found {n}; pass 1, 2 or 3")
    return n
