"""Products of group elements of different kinds: a rotation and a permutation at once, a rigid motion.

``g * h`` acts as ``h``, then ``g``. Elements of one kind compose into one of that kind; elements of different
kinds make a [`Product`][equivariance.products.Product], which keeps its factors (outermost first) and equals
another product with equal factors in the same order.

Examples:
    >>> import torch
    >>> from equivariance.euclidean import Rotation, Translation
    >>> from equivariance.fields import Positions
    >>> from equivariance.permutations import Permutation
    >>> g = Translation([1.0, 0.0, 0.0]) * Rotation.about("z", 90, degrees=True)   # rotate, then move
    >>> g
    Translation([1, 0, 0]) * Rotation(90.0° about [0.00, 0.00, 1.00])
    >>> g.act(torch.tensor([[1.0, 0.0, 0.0]]), Positions()).tolist()
    [[1.0, 1.0, 0.0]]
    >>> (g * Permutation([1, 0])).factors[-1], g * g.inverse()
    (Permutation([1, 0]), Identity())
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch

from equivariance._engine.validation import describe
from equivariance.actions import Action, Batched, Identity, batched_path, guarded_act
from equivariance.errors import InvalidArgument

__all__ = ["Product", "product"]


class Composing(Action):
    """An element of the library's own: ``g * h`` composes two elements of one kind (``_compose``)
    and makes a ``Product`` of two kinds."""

    __slots__ = ()

    def _compose(self, other: Any) -> Action:
        """``self * other`` for ``other`` of this kind (by default, their product)."""
        return product(self, other)

    def __mul__(self, other: object) -> Action:
        """The element acting as ``other``, then this one."""
        return self._compose(other) if isinstance(other, type(self)) else product(self, other)

    def __rmul__(self, other: object) -> Action:
        return product(other, self)


class Product(Composing):
    """Elements of different kinds acting one after the other: ``Product(g, h)`` acts as ``h``, then ``g``.

    Made by ``g * h``; see the module docstring.

    Args:
        *factors: two or more elements, outermost first.

    Attributes:
        factors: the elements, outermost (applied last) first.
    """

    __slots__ = ("factors",)
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, *factors: Action) -> None:
        for factor in factors:
            if not isinstance(factor, Action):
                raise InvalidArgument(
                    f"a Product's factors must be group elements (Action), found {describe(factor)}"
                )
        if len(factors) < 2:
            raise InvalidArgument(
                f"a Product needs two or more factors, found {len(factors)}; use the element itself"
            )
        self.factors: tuple[Action, ...] = tuple(factors)

    @classmethod
    def of(cls, *factors: Action) -> Action:
        """The product of ``factors`` in its simplest form: nested products flattened, neighbours of
        one kind composed, identities dropped; one factor is returned as it is, none as ``Identity()``.

        Examples:
            >>> from equivariance.permutations import Permutation
            >>> Product.of(Permutation([1, 0]), Identity(), Permutation([1, 0]))
            Identity()
        """
        kept: list[Action] = []
        for factor in factors:
            for part in factor.factors if isinstance(factor, Product) else (factor,):
                if not isinstance(part, Action):
                    raise InvalidArgument(f"cannot multiply by {describe(part)}: it is not a group element")
                if kept and type(kept[-1]) is type(part) and _composes(part):
                    part = kept.pop() * part  # type: ignore[operator]
                if not part.is_identity:
                    kept.append(part)
        if not kept:
            return Identity()
        return kept[0] if len(kept) == 1 else cls(*kept)

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        """``x`` moved by each factor in turn, the last first (a factor of your own that writes to its
        tensor is given a private copy, as the engine gives it one)."""
        for factor in reversed(self.factors):
            x = guarded_act(factor, x, where)
        return x

    @property
    def is_identity(self) -> bool:
        return all(f.is_identity for f in self.factors)

    @property
    def exact(self) -> bool:
        """Whether every factor is exact."""
        return all(f.exact for f in self.factors)

    @property
    def only_reorders(self) -> bool:
        """Whether every factor only reorders points."""
        return all(f.only_reorders for f in self.factors)

    def failure_hint(self, part: str, field: Any) -> str | None:
        """The factors' hints, each once: any of them may be the one the output does not follow."""
        hints: list[str] = []
        for factor in self.factors:
            hint = factor.failure_hint(part, field)
            if hint is not None and hint not in hints:
                hints.append(hint)
        return "; or ".join(hints) if hints else None

    def sized(self, nodes: int) -> Action:
        """Each factor on a graph of ``nodes`` nodes."""
        return Product.of(*(f.sized(nodes) for f in self.factors))

    def inverse(self) -> Action:
        """The factors' inverses in the reverse order."""
        return Product.of(*(f.inverse() for f in reversed(self.factors)))

    def _key(self) -> Hashable:
        return self.factors

    def __repr__(self) -> str:
        return " * ".join(map(repr, self.factors))

    def to_json(self) -> Any:
        """``{"product": [...]}``: the factors' JSON forms, outermost first."""
        return {"product": [f.to_json() for f in self.factors]}

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Any) -> Batched | None:
        """Products whose factors are of the same kinds in the same order, moved by each kind's own
        batched path in turn; None where the kinds differ or a kind has no batched path."""
        kinds = [type(f) for f in elements[0].factors] if isinstance(elements[0], Product) else []
        if not kinds or not all(
            isinstance(e, Product) and [type(f) for f in e.factors] == kinds for e in elements
        ):
            return None
        products = [e for e in elements if isinstance(e, Product)]
        return _ProductRows(x, products, grid)


def _composes(element: Action) -> bool:
    """Whether two neighbouring elements of this one's class compose into one (their class defines ``*``)."""
    return any("__mul__" in vars(klass) for klass in type(element).__mro__[:-1] if klass is not Action)


def product(outer: object, inner: object) -> Action:
    """``outer * inner`` for elements of different kinds (or NotImplemented where one is not an element).

    Each kind's ``__mul__`` composes elements of its own kind and hands the others here.
    """
    if not isinstance(outer, Action) or not isinstance(inner, Action):
        return NotImplemented  # type: ignore[no-any-return]
    if isinstance(outer, Identity) or isinstance(inner, Identity):  # the other, as it is
        return inner if isinstance(outer, Identity) else outer
    return Product.of(outer, inner)


class _ProductRows(Batched):
    """Rows moved by products of one structure: each factor's batched path, innermost first."""

    def __init__(self, x: torch.Tensor, products: Sequence[Product], where: Any) -> None:
        self.x, self.products, self.where = x, products, where

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        y, taken = self.x, rows
        for i in reversed(range(len(self.products[0].factors))):
            factors = [p.factors[i] for p in self.products]
            batched = batched_path(type(factors[0]), y, factors, self.where)
            if batched is not None:
                y = batched.take(taken, which)
            else:  # the factor's own act, row by row
                y = torch.stack(
                    [
                        guarded_act(factors[int(w)], y[int(r)][None], self.where)[0]
                        for r, w in zip(taken, which)
                    ]
                )
            taken = torch.arange(len(rows), device=rows.device)
        return y
