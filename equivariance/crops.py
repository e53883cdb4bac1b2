"""The crop protocol: shifts as crops of a larger image, as in Zhang (ICML 2019).

Passing ``boundary=Crop(size)`` makes ``x`` the larger image, the reference the crop at ``at`` (centred by
default) and a shift ``s`` the crop at ``at - s``; equivariance compares two crops' outputs on their overlap.
Why, and what it does not do, in docs/crops.md.

Examples:
    >>> import torch
    >>> from equivariance import check_equivariance
    >>> conv = torch.nn.Conv2d(1, 4, 3)          # no padding: equivariant on every overlap
    >>> x = torch.randn(2, 1, 20, 20)
    >>> report = check_equivariance(conv, x, boundary=Crop(16))
    >>> report.passed, report.input_shape, report.boundary
    (True, (2, 1, 16, 16), 'crop 16x16 of 20x20 at (2, 2)')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from equivariance._engine.validation import describe, per_dim
from equivariance.actions import Batched, Boundary, check_boundary
from equivariance.errors import InvalidArgument
from equivariance.shifts import Shift

__all__ = ["Crop", "CropOf", "as_boundary"]


@dataclass(frozen=True)
class Crop:
    """The crop boundary: the model sees crops of ``size`` of a larger ``x``; a shift moves the window.

    Args:
        size: the crop's spatial size: an int for every spatial dim, or one per dim.
        at: the first corner of the reference crop (an int or one per dim); default centred, ``(spatial -
            size) // 2``.

    Examples:
        >>> import torch
        >>> crop = Crop(4).of(torch.arange(36.0).reshape(1, 1, 6, 6))
        >>> crop.at, crop.reference()[0, 0, 0].tolist()
        ((1, 1), [7.0, 8.0, 9.0, 10.0])
        >>> crop.shifts_allowed()      # the windows at 0..2: shifts from at - 2 to at
        ((-1, -1), (1, 1))
    """

    size: int | tuple[int, ...]
    at: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        size, at = _tuple(self.size), _tuple(self.at) if self.at is not None else None
        per_dim(size, len(size) if isinstance(size, tuple) else 1, "the crop size", minimum=1)
        if at is not None:
            per_dim(at, len(at) if isinstance(at, tuple) else 1, "the reference corner at", minimum=0)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "at", at)

    def of(self, x: torch.Tensor) -> CropOf:
        """The crop bound to the batch ``x``, checked: InvalidArgument if it does not fit."""
        d = x.dim() - 2
        spatial = tuple(x.shape[2:])
        size = per_dim(_tuple(self.size), d, "the crop size", minimum=1)
        if any(c > n for c, n in zip(size, spatial)):
            raise InvalidArgument(
                f"the crop size {_shown(size)} is larger than x's spatial size {_shown(spatial)}; x is the "
                f"larger image the crops are taken from: pass a crop of at most {_shown(spatial)}"
            )
        room = tuple(n - c for n, c in zip(spatial, size))
        if self.at is None:
            at = tuple(r // 2 for r in room)
        else:
            at = per_dim(_tuple(self.at), d, "the reference corner at", minimum=0)
            if any(a > r for a, r in zip(at, room)):
                raise InvalidArgument(
                    f"the reference crop at {at} of size {_shown(size)} leaves the image of size "
                    f"{_shown(spatial)}; pass at= with each corner at most {room}, or leave it out "
                    "for the centred crop"
                )
        return CropOf(x, size, at, room)

    def __str__(self) -> str:
        at = "" if self.at is None else f" at {self.at}"
        return f"crop {_shown(_tuple(self.size))}{at}"


@dataclass(frozen=True)
class CropOf:
    """A [`Crop`][equivariance.crops.Crop] bound to its larger image ``x``.

    Attributes:
        x: the larger image ``(N, C, *spatial)``.
        size: the crop's spatial size.
        at: the first corner of the reference crop.
        room: the positions a crop can take past the first, per dim (``spatial - size``).
    """

    x: torch.Tensor
    size: tuple[int, ...]
    at: tuple[int, ...]
    room: tuple[int, ...]

    def reference(self) -> torch.Tensor:
        """The reference crop of every sample (a view of ``x``)."""
        window: tuple[Any, ...] = (slice(None), slice(None))
        window += tuple(slice(a, a + c) for a, c in zip(self.at, self.size))
        return self.x[window]

    def shifts_allowed(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The lowest and highest shift per dim whose crop (at ``at - s``) lies inside ``x``."""
        return tuple(a - r for a, r in zip(self.at, self.room)), self.at

    def check_shift(self, shift: Shift) -> None:
        """InvalidArgument for a shift whose crop would leave the image, naming the shifts that fit."""
        low, high = self.shifts_allowed()
        if shift.ndim != len(self.size):
            raise InvalidArgument(
                f"shift {shift} has {shift.ndim} dims but x of shape {tuple(self.x.shape)} has "
                f"{len(self.size)} spatial dims; pass a shift of length {len(self.size)}"
            )
        if any(not lo <= o <= hi for o, lo, hi in zip(shift, low, high)):
            ranges = ", ".join(f"{lo}..{hi}" for lo, hi in zip(low, high))
            raise InvalidArgument(
                f"shift {shift} moves the crop window to {self.corner(shift)}, outside the image "
                f"{_shown(tuple(self.x.shape[2:]))} for a crop of {_shown(self.size)} at {self.at}; "
                f"shifts must lie in ({ranges}): pass smaller shifts or a larger image"
            )

    def corner(self, shift: Shift | Sequence[int]) -> tuple[int, ...]:
        """The first corner of the crop a shift selects: ``at - shift``."""
        return tuple(a - o for a, o in zip(self.at, shift))

    def fitting_bound(self, wanted: Sequence[int]) -> tuple[int, ...]:
        """``wanted`` per dim, cut to the largest symmetric bound of shifts that fits the image."""
        low, high = self.shifts_allowed()
        return tuple(min(w, -lo, hi) for w, lo, hi in zip(wanted, low, high))

    def rows(self, offsets: torch.Tensor) -> Batched:
        """Rows of ``x`` cropped at ``at - offsets[k]`` for the shifts of a ``(K, d)`` tensor, vectorized."""
        return _CropRows(self, offsets.to(device="cpu", dtype=torch.long))

    def __str__(self) -> str:
        return (
            f"crop {_shown(self.size)} of {_shown(tuple(self.x.shape[2:]))} at "
            f"{self.at[0] if len(self.at) == 1 else self.at}"
        )


class _CropRows(Batched):
    """Crops of rows of ``x``, read by one gather from the view of all its windows of the crop size."""

    def __init__(self, crop: CropOf, offsets: torch.Tensor) -> None:
        windows = crop.x
        for dim, c in enumerate(crop.size, start=2):
            windows = windows.unfold(dim, c, 1)  # the window corners in dim, the window's content appended
        self.windows = windows
        self.corners = torch.tensor(crop.at, dtype=torch.long) - offsets

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        device = self.windows.device
        corners = self.corners[which.cpu()].to(device)
        key: tuple[Any, ...] = (rows.to(device), slice(None), *corners.unbind(1))
        return self.windows[key]  # advanced indices around a slice: (B, C, *size), a new tensor


def as_boundary(boundary: object) -> Boundary | Crop:
    """A boundary name or a [`Crop`][equivariance.crops.Crop], else InvalidArgument saying what to pass."""
    if isinstance(boundary, Crop):
        return boundary
    if isinstance(boundary, str) and boundary == "crop":
        raise InvalidArgument(
            "boundary='crop' needs the crop's size; pass boundary=Crop(size), e.g. Crop(224) for "
            "224x224 crops of x (from equivariance import Crop)"
        )
    try:
        return check_boundary(boundary)
    except InvalidArgument:
        raise InvalidArgument(
            f"boundary must be 'zeros', 'circular' or Crop(size), found {describe(boundary)}; pass "
            "boundary='zeros' (content moves on a finite canvas), 'circular' (a torus) or Crop(size) "
            "(crops of a larger x, the protocol of Zhang 2019)"
        ) from None


def _tuple(value: object) -> Any:
    """A list given for a size as a tuple (hashable, printed alike); anything else as it is, checked later."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _shown(size: int | tuple[int, ...]) -> str:
    return str(size) if isinstance(size, int) else "x".join(map(str, size))
