"""Where a tensor keeps its spatial dims: channels first, channels last, or tokens on a grid.

A layout views an output as the grid ``(N, *channels, *spatial)`` the engine compares: checks take
``layout=``, and the per-layer profile infers each layer's (docs/actions.md, "Layouts").

Examples:
    >>> import torch
    >>> y = torch.randn(2, 5, 4, 3)            # (N, H, W, C)
    >>> ChannelsLast().to_grid(y, 2).shape
    torch.Size([2, 3, 5, 4])
    >>> tokens = torch.randn(2, 1 + 4 * 4, 8)  # a class token and a 4x4 grid of tokens
    >>> Tokens((4, 4), prefix=1).to_grid(tokens, 2).shape
    torch.Size([2, 8, 4, 4])
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from equivariance._engine.grids import stride_of
from equivariance._engine.validation import as_int, describe
from equivariance.errors import InvalidArgument

__all__ = ["ChannelsFirst", "ChannelsLast", "Layout", "LayoutLike", "Tokens", "as_layout"]


class Layout(abc.ABC):
    """How a tensor's dims map to ``(N, *channels, *spatial)``.

    Attributes:
        name: the layout's name, as ``layout=`` accepts it.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def spatial_shape(self, shape: Sequence[int], spatial_dims: int) -> tuple[int, ...] | None:
        """The spatial sizes of a tensor of ``shape`` in this layout; None if it cannot be in it."""

    @abc.abstractmethod
    def to_grid(self, tensor: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """``tensor`` viewed as ``(N, *channels, *spatial)`` (a view where possible, never a copy
        of more than the compared part)."""

    def describe(self) -> str:
        """The layout in words, e.g. ``channels last (N, *spatial, C)``."""
        return self.name.replace("_", " ")

    def to_json(self) -> str:
        """The layout as ``layout=`` takes it."""
        return repr(self)

    def check(self, shape: Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
        """The spatial sizes of ``shape``, or InvalidArgument saying why it is not in this layout."""
        spatial = self.spatial_shape(shape, spatial_dims)
        if spatial is None:
            raise InvalidArgument(
                f"{what} of shape {tuple(shape)} is not {self.describe()} with {spatial_dims} spatial "
                f"dim{'s' if spatial_dims != 1 else ''}; {self._fix(spatial_dims)}"
            )
        return spatial

    def _fix(self, spatial_dims: int) -> str:
        return "pass the layout the tensor has (layout='channels_first', 'channels_last' or Tokens(...))"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class ChannelsFirst(Layout):
    """``(N, *channels, *spatial)``: at least one channel dim before the spatial dims (the default).

    Examples:
        >>> ChannelsFirst().spatial_shape((8, 3, 32, 32), 2), ChannelsFirst().spatial_shape((8, 10), 2)
        ((32, 32), None)
    """

    name = "channels_first"

    def spatial_shape(self, shape: Sequence[int], spatial_dims: int) -> tuple[int, ...] | None:
        if len(shape) < spatial_dims + 2:
            return None
        return tuple(shape[len(shape) - spatial_dims :])

    def to_grid(self, tensor: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        return tensor

    def describe(self) -> str:
        return "channels first (N, C, *spatial)"


class ChannelsLast(Layout):
    """``(N, *spatial, C)``: the spatial dims after the batch dim, one channel dim last.

    Examples:
        >>> ChannelsLast().spatial_shape((8, 32, 32, 3), 2)
        (32, 32)
    """

    name = "channels_last"

    def spatial_shape(self, shape: Sequence[int], spatial_dims: int) -> tuple[int, ...] | None:
        if len(shape) != spatial_dims + 2:
            return None
        return tuple(shape[1 : 1 + spatial_dims])

    def to_grid(self, tensor: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        return tensor.movedim(-1, 1)

    def describe(self) -> str:
        return "channels last (N, *spatial, C)"


class Tokens(Layout):
    """``(N, L, C)``: ``prefix`` tokens, then one token per position of ``grid``, row-major.

    This is how a Vision Transformer lays out its patches: a patch embedding (a convolution of stride ``p``)
    gives ``(N, C, H/p, W/p)``, flattened to ``(N, H/p * W/p, C)``, with a class token put in front. The
    prefix tokens have no place on the grid and are not compared.

    Examples:
        >>> Tokens((14, 14), prefix=1).spatial_shape((2, 197, 192), 2)
        (14, 14)
        >>> Tokens(prefix=1).resolved((2, 197, 192), (224, 224))
        Tokens((14, 14), prefix=1)

    Args:
        grid: the grid's size per spatial dim; None infers it from the number of tokens and the input's size
            (the input divided by one integer patch size), when that is unambiguous.
        prefix: the number of tokens before the grid's (a class token: 1). With neither the grid nor a prefix,
            the fewest prefix tokens (up to ``MAX_PREFIX``) that leave the tokens of a grid are taken.
    """

    name = "tokens"

    def __init__(self, grid: Sequence[int] | None = None, prefix: int = 0) -> None:
        self.prefix = as_int(prefix, "prefix")
        if self.prefix < 0:
            raise InvalidArgument(
                f"prefix must be >= 0, found {self.prefix}; pass the number of class tokens"
            )
        if grid is None:
            self.grid: tuple[int, ...] | None = None
        elif isinstance(grid, (tuple, list)) and grid and all(as_int(g, "grid") >= 1 for g in grid):
            self.grid = tuple(as_int(g, "grid") for g in grid)
        else:
            raise InvalidArgument(
                f"grid must be a tuple of positive sizes, one per spatial dim, found {describe(grid)}; "
                "pass e.g. Tokens((14, 14), prefix=1)"
            )

    def spatial_shape(self, shape: Sequence[int], spatial_dims: int) -> tuple[int, ...] | None:
        if self.grid is None or len(shape) != 3 or len(self.grid) != spatial_dims:
            return None
        return self.grid if shape[1] == self.prefix + math.prod(self.grid) else None

    def to_grid(self, tensor: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        assert self.grid is not None, "resolve the grid first"
        tokens = tensor[:, self.prefix :]
        return tokens.reshape(len(tokens), *self.grid, tokens.shape[-1]).movedim(-1, 1)

    def resolved(self, shape: Sequence[int], input_spatial: Sequence[int]) -> Tokens:
        """This layout with its grid: as given, or the input's size over the one patch size that fits.

        Examples:
            >>> Tokens().resolved((2, 17, 16), (64, 64))  # a class token before 4x4 patches of 16
            Tokens((4, 4), prefix=1)
        """
        if self.grid is not None:
            return self
        found = self._grids(shape, input_spatial, self.prefix)
        if not found and self.prefix == 0:  # no grid without prefix tokens: the fewest that leave one
            for prefix in range(1, MAX_PREFIX + 1):
                grids = self._grids(shape, input_spatial, prefix)
                if len(grids) == 1:
                    return Tokens(grids.pop(), prefix)
                if grids:
                    break
        count = shape[1] - self.prefix if len(shape) == 3 else -1
        if len(found) != 1:
            shown = "no" if not found else f"{len(found)}"
            raise InvalidArgument(
                f"{shown} grid{'s' if len(found) != 1 else ''} of the input's size {tuple(input_spatial)} "
                f"divided by one patch size hold{'s' if len(found) == 1 else ''} the {count} tokens of an "
                f"output of shape {tuple(shape)} after {self.prefix} prefix tokens; pass the grid, "
                "e.g. Tokens((14, 14), prefix=1)"
            )
        return Tokens(found.pop(), self.prefix)

    def check_grid(self, input_spatial: Sequence[int], stride: Sequence[int] | None, what: str) -> None:
        """Refuse a grid the input's cannot make: more than ``n // s + 1`` positions in a dim at the
        stride ``s`` given (what a kernel padded by at most half its width makes: an even one padded by half
        makes one more than ``ceil(n / s)``), or, with the stride to infer (None), no one integer stride from
        the input.

        A token sequence fits more than one grid of its length (16 tokens: 4x4, 2x8, 8x2); the wrong one reads
        the tokens in the wrong places, and the check would fail for that alone.

        Examples:
            >>> Tokens((2, 8), prefix=1).check_grid((8, 8), (2, 2), "layout=")
            Traceback (most recent call last):
            ...
            equivariance.errors.InvalidArgument: layout=Tokens((2, 8), prefix=1) puts the 16 tokens ...
        """
        grid = self.grid
        if grid is None or len(grid) != len(input_spatial):
            return
        if stride is not None:
            most = tuple(n // s + 1 for n, s in zip(input_spatial, stride))
            if all(g <= m for g, m in zip(grid, most)):
                return
            usual = tuple(-(-n // s) for n, s in zip(input_spatial, stride))
            why = (
                f"the input's {_sizes(input_spatial)} grid subsampled by the stride {tuple(stride)} has "
                f"{_sizes(usual)} positions (at most {_sizes(most)} with a kernel padded by half its width)"
            )
        elif plausible(grid, input_spatial):
            return
        else:
            needed = tuple(stride_of(n, g) for n, g in zip(input_spatial, grid))
            why = (
                f"no one patch size makes it from the input's {_sizes(input_spatial)} (it takes strides "
                f"{needed})"
            )
        fits = [
            g for g in dict.fromkeys(_grids_below(tuple(input_spatial)))
            if math.prod(g) == math.prod(grid) and g != grid
            and (stride is None or all(stride_of(n, k) == s for n, k, s in zip(input_spatial, g, stride)))
        ]  # fmt: skip
        fit = f", {Tokens(fits[0], self.prefix)!r}," if len(fits) == 1 else ""
        infer = Tokens(prefix=self.prefix)
        fix = f"pass the grid the patches make{fit} or {infer!r} to infer it from the input's size"
        if stride is None:
            fix += f", or stride={needed} if the patches have that shape"
        after = " after the prefix" if self.prefix else ""
        raise InvalidArgument(
            f"{what}{self!r} puts the {math.prod(grid)} tokens{after} on a {_sizes(grid)} grid, "
            f"but {why}; {fix}"
        )

    @staticmethod
    def _grids(shape: Sequence[int], input_spatial: Sequence[int], prefix: int) -> set[tuple[int, ...]]:
        """The grids of the input's size over one patch size that hold the tokens after ``prefix``."""
        count = shape[1] - prefix if len(shape) == 3 else -1
        if count <= 0:
            return set()
        return {g for g in _grids_below(tuple(input_spatial)) if math.prod(g) == count}

    def describe(self) -> str:
        where = "a grid" if self.grid is None else f"a {'x'.join(map(str, self.grid))} grid"
        after = f" after {self.prefix} prefix token{'s' if self.prefix != 1 else ''}" if self.prefix else ""
        return f"tokens (N, L, C) on {where}{after}"

    def __repr__(self) -> str:
        args = [] if self.grid is None else [repr(self.grid)]
        if self.prefix:
            args.append(f"prefix={self.prefix}")
        return f"Tokens({', '.join(args)})"


def _sizes(sizes: Sequence[int]) -> str:
    return "x".join(map(str, sizes))


def _grids_below(spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The input's grid divided by each patch size, rounded down and up."""
    grids = []
    for patch in range(1, max(spatial) + 1):
        grids.append(tuple(n // patch for n in spatial))
        grids.append(tuple(-(-n // patch) for n in spatial))
    return [g for g in grids if min(g) >= 1]


LayoutLike = Layout | str

MAX_PREFIX = 8
"""The most prefix tokens (class, distillation and register tokens) an inferred token layout allows."""
_NAMED: dict[str, type[Layout]] = {"channels_first": ChannelsFirst, "channels_last": ChannelsLast}


def as_layout(layout: object) -> Layout:
    """A [`Layout`][equivariance.layouts.Layout] from an instance or a name.

    Examples:
        >>> as_layout("channels_last"), as_layout("tokens")
        (ChannelsLast(), Tokens())
    """
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str) and layout in _NAMED:
        return _NAMED[layout]()
    if layout == "tokens":
        return Tokens()
    raise InvalidArgument(
        f"layout must be 'channels_first', 'channels_last', 'tokens' or a Layout such as "
        f"Tokens((14, 14), prefix=1), found {describe(layout)}"
    )


def other_readings(shape: Sequence[int], input_spatial: Sequence[int]) -> list[Layout]:
    """The layouts other than channels first that read ``shape`` on a grid the input's could make.

    A check never guesses a layout (channels first unless the caller says otherwise); when it fails, these are
    what its hint suggests.

    Examples:
        >>> other_readings((2, 12, 12, 6), (12, 12))
        [ChannelsLast()]
    """
    d = len(input_spatial)
    found: list[Layout] = []
    for candidate in (ChannelsLast(), Tokens()):
        try:
            layout = candidate.resolved(shape, input_spatial) if isinstance(candidate, Tokens) else candidate
        except InvalidArgument:
            continue
        spatial = layout.spatial_shape(shape, d)
        if spatial is not None and plausible(spatial, input_spatial):
            found.append(layout)
    return found


def plausible(spatial: Sequence[int], input_spatial: Sequence[int]) -> bool:
    """Whether a grid could come from the input's by one integer stride in every dim, by the rule
    ``stride_of`` reads sizes with (no larger than the input's, no stride that cannot make the size).

    Examples:
        >>> plausible((6, 6), (12, 12)), plausible((12, 6), (12, 12)), plausible((4, 4), (6, 6))
        (True, False, True)
    """
    if len(spatial) != len(input_spatial) or any(o > i or o < 1 for o, i in zip(spatial, input_spatial)):
        return False
    return len({stride_of(i, o) for i, o in zip(input_spatial, spatial)}) == 1
