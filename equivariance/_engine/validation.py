"""The coercions every public function shares: an int, one int per spatial dim, a float, and a value
described for a message. Each raises ``InvalidArgument`` naming the argument (``argument``), what was
expected, what was found and how to fix it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from equivariance._engine.grids import shown
from equivariance.errors import InvalidArgument

IntOrInts = int | Sequence[int]


def describe(value: object) -> str:
    """A short description of a value for an error message: its repr and type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def kind_of(result: Any) -> str:
    """What a model returned, for an error message: a tensor's shape, a dict's keys, a sequence's length."""
    if isinstance(result, torch.Tensor):
        return f"a tensor of shape {tuple(result.shape)}"
    if isinstance(result, Mapping):
        return f"a dict with keys {list(result)[:8]}"
    if isinstance(result, (tuple, list)):
        return f"a {type(result).__name__} of {len(result)} items"
    return describe(result)


def as_int(value: object, argument: str) -> int:
    """``value`` as a Python int; bools and floats are refused, not truncated."""
    fix = "round it yourself if that is what you mean" if isinstance(value, float) else "pass an int"
    if isinstance(value, (bool, float)):
        raise InvalidArgument(f"{argument} must be an integer, found {describe(value)}; {fix}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(
            f"{argument} must be an integer, found {describe(value)}; pass an int"
        ) from None


def shown_per_dim(values: Sequence[float]) -> str:
    """One value where every dim has it, else all of them, a fraction as one: ``2``, ``(2, 4)``, ``3/2``.

    Examples:
        >>> shown_per_dim((2, 2)), shown_per_dim((2, 4)), shown_per_dim((1.5, 1 / 3))
        ('2', '(2, 4)', '(3/2, 1/3)')
    """
    values = tuple(values)
    return shown(values[0]) if len(set(values)) == 1 else "(" + ", ".join(map(shown, values)) + ")"


def per_dim(value: object, ndim: int, argument: str, *, minimum: int) -> tuple[int, ...]:
    """An int, or one int per spatial dim, as a tuple of ``ndim`` ints >= ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise InvalidArgument(
                f"{argument} {tuple(value)!r} has {len(value)} entries but there are {ndim} spatial "
                f"dims; pass one int for all dims or a tuple of {ndim}"
            )
        values = tuple([as_int(v, argument) for v in value])
    else:
        values = (as_int(value, argument),) * ndim
    if values and min(values) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        found = next(v for v in values if v < minimum)
        raise InvalidArgument(f"{argument} must be {bound}, found {found}; pass {minimum} or more")
    return values


def real_numbers(values: Sequence[object], noun: str, example: str) -> tuple[float, ...]:
    """Numbers given one per spatial dim, as separate arguments or one sequence (``f(0.5, -1)`` or
    ``f((0.5, -1))``), as a non-empty tuple of finite floats; ``noun`` names them in a message.

    Examples:
        >>> real_numbers((0.5, 1), "offsets", "f(0.5)"), real_numbers(([2, -1.5],), "offsets", "f(0.5)")
        ((0.5, 1.0), (2.0, -1.5))
    """
    if len(values) == 1 and isinstance(values[0], (tuple, list)):
        values = values[0]
    if not values:
        raise InvalidArgument(f"{noun} needs one number per spatial dim, found none; pass e.g. {example}")
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(
                f"{noun} must be finite real numbers, found {describe(value)}; pass e.g. {example}"
            )
        numbers.append(float(value))
    return tuple(numbers)


def as_float(value: object, argument: str, *, allow_none: bool = False) -> float | None:
    """A finite, non-negative float (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, str, bytes)) or not hasattr(type(value), "__float__"):
        raise InvalidArgument(
            f"{argument} must be a non-negative number, found {describe(value)}; pass a float, e.g. "
            f"{argument}=1e-4"
        )
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise InvalidArgument(
            f"{argument} must be a single number, found {describe(value)}; pass a float, e.g. {argument}=1e-4"
        ) from None
    if not (number >= 0.0 and number != float("inf")):
        raise InvalidArgument(
            f"{argument} must be a finite non-negative number, found {number}; pass e.g. {argument}=1e-4"
        )
    return number
