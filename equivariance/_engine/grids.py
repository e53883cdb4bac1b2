"""The stride of a map relative to the model's input: the one rule every part of the package reads it by.

``step`` and ``stride_of`` here, followed layer by layer in ``equivariance._engine.layers``; the rule
and why, in docs/diagnosing.md ("How strides are read").
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

from torch import nn

Stride = tuple[float, ...]
"""A stride per spatial dim: an int where whole, a fraction where a map is finer than the input's."""

_LARGEST_DENOMINATOR = 1 << 16  # far above any upsampling factor: a float stride reads back exactly


def stride_of(size_in: int, size_out: int) -> int:
    """The stride that makes ``size_out`` samples of ``size_in``, read off the sizes alone.

    The ratio ``size_in / size_out`` rounded to the nearest integer (halves
    down), lowered to the largest stride ``s`` that can make the size:
    ``ceil(size_in / s) >= size_out``. One sample left is global pooling, a
    stride of ``size_in``; a map that grows has stride 1 (read it the other
    way round for the upsampling factor).

    Examples:
        >>> stride_of(6, 4), stride_of(12, 8), stride_of(7, 4), stride_of(16, 8), stride_of(10, 4)
        (1, 1, 2, 2, 2)
        >>> stride_of(28, 12), stride_of(9, 1), stride_of(4, 8)
        (2, 9, 1)
    """
    if size_out <= 1:
        return max(size_in, 1)
    nearest = -((size_out - 2 * size_in) // (2 * size_out))  # ceil(size_in / size_out - 1/2)
    largest = (size_in - 1) // (size_out - 1)  # the largest s with ceil(size_in / s) >= size_out
    return max(1, min(nearest, largest))


@functools.lru_cache(maxsize=1024)
def step(size_in: int, size_out: int, stated: int | None = None) -> Fraction:
    """What a layer does to its input's stride along one dim: the factor it multiplies it by.

    ``stated``, the stride the module states, multiplies it where the map does
    not grow and divides it where it grows (a transposed convolution, an
    unpooling); without one, ``stride_of`` reads the sizes, the other way
    round where the map grows (upsampling divides).

    Examples:
        >>> step(6, 4), step(6, 3, stated=2), step(8, 16), step(8, 16, stated=2), step(8, 24)
        (Fraction(1, 1), Fraction(2, 1), Fraction(1, 2), Fraction(1, 2), Fraction(1, 3))
    """
    if size_out > size_in:
        return Fraction(1, stated or stride_of(size_out, size_in))
    return Fraction(stated or stride_of(size_in, size_out))


@functools.lru_cache(maxsize=1024)  # each layer of a profile asks it
def times(stride: Stride, steps: tuple[Fraction, ...]) -> Stride:
    """``stride`` multiplied by a step per dim, exactly (an int where whole).

    Examples:
        >>> times((2, 2), (Fraction(1, 4), Fraction(3)))
        (0.5, 6)
    """
    return tuple(_number(as_fraction(s) * k) for s, k in zip(stride, steps))


@functools.lru_cache(maxsize=1024)  # a profile asks it of every layer
def divides(stride: Stride, offsets: tuple[int, ...]) -> bool:
    """Whether every offset (in input samples) is a whole number of samples at ``stride``.

    Examples:
        >>> divides((2, 2), (4, -2)), divides((2, 2), (1, 0)), divides((1 / 3,), (1,)), divides((1.5,), (1,))
        (True, False, True, False)
    """
    return all((o / as_fraction(s)).denominator == 1 for o, s in zip(offsets, stride))


def whole_samples(stride: Stride) -> tuple[int, ...]:
    """``stride`` in whole input samples, at least one (the grid of an action, the reach of a border).

    Examples:
        >>> whole_samples((4, 0.5)), whole_samples((1.5,))
        ((4, 1), (2,))
    """
    return tuple(max(1, math.ceil(as_fraction(s))) for s in stride)


def shown(value: float) -> str:
    """One dim's stride as a report shows it: ``2``, or ``1/3`` for a map three times finer.

    Examples:
        >>> shown(2), shown(0.5), shown(1 / 3)
        ('2', '1/2', '1/3')
    """
    return str(as_fraction(value))


@functools.lru_cache(maxsize=1024)
def as_fraction(value: float) -> Fraction:
    """A stride as the exact fraction it stands for (``1 / 3`` for ``0.333...``); worked out once for
    each value (``Fraction`` is slow, and every layer of a profile asks for a few)."""
    return Fraction(value).limit_denominator(_LARGEST_DENOMINATOR)


def stated_stride(module: nn.Module, d: int) -> tuple[int, ...] | None:
    """The stride ``module`` states per dim: its integer ``stride`` attribute (a convolution, a pooling,
    a blur pool; an ``LPPool`` without one: its kernel size), else None.

    Examples:
        >>> stated_stride(nn.Conv2d(1, 1, 3, stride=(2, 1)), 2), stated_stride(nn.MaxPool2d(3), 2)
        ((2, 1), (3, 3))
        >>> stated_stride(nn.ReLU(), 2), stated_stride(nn.AdaptiveAvgPool2d(1), 2)
        (None, None)
    """
    stride = getattr(module, "stride", None)
    if stride is None and isinstance(module, nn.modules.pooling._LPPoolNd):
        stride = module.kernel_size
    if isinstance(stride, int) and not isinstance(stride, bool):
        stride = (stride,) * d
    if not isinstance(stride, (tuple, list)) or len(stride) != d:
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stride):
        return None
    return tuple(stride)


def each_dim(value: Any, d: int) -> tuple[int, ...]:
    """A module's int or per-dim attribute (``kernel_size``, ``padding``) as one int per dim."""
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d


def _number(value: Fraction) -> float:
    return int(value) if value.denominator == 1 else float(value)
