"""Group-convolution outputs: the regular representation of p4 and p4m on orientation channels.

A hidden layer of a p4 or p4m group CNN is a stack of fields of 4 or 8 orientation channels, which a rotation
of the input permutes as it rotates the map; [`regular`][equivariance.regular.regular] gives that action (its
channel layout and conventions are in docs/group_convolutions.md).

Examples:
    A p4 lifting convolution: four rotated copies of one filter bank.

    >>> import torch
    >>> from equivariance import Rot90, check_equivariance
    >>> w = torch.randn(2, 1, 3, 3)
    >>> bank = torch.stack([torch.rot90(w, i, (-2, -1)) for i in range(4)], 1).flatten(0, 1)
    >>> lift = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
    >>> _ = lift.weight.data.copy_(bank)          # channel 4 j + i: field j, orientation i
    >>> x = torch.randn(2, 1, 9, 9)
    >>> check_equivariance(lift, x, transforms=[Rot90(1)], output_action=regular("p4")).passed
    True
    >>> check_equivariance(lift, x, transforms=[Rot90(1)]).passed      # the map alone: not the action
    False
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar, Literal

import torch

from equivariance._engine.validation import as_int, describe
from equivariance.actions import Action, Grid, Identity, guarded_act
from equivariance.errors import InvalidArgument
from equivariance.shifts import Shift
from equivariance.transforms import planar

__all__ = ["OnFields", "Regular", "regular"]

Group = Literal["p4", "p4m"]
_ORDERS = {"p4": 4, "p4m": 8}
_IMAGE_PLANE = (-2, -1)


class Regular:
    """The regular representation of p4 or p4m on the channels of an output (docs/group_convolutions.md).

    Args:
        group: ``"p4"`` (rotations by quarter turns) or ``"p4m"`` (with reflections).
        fields: the number of fields ``K`` (``C = K * |G|``); default inferred from ``C``.
        direction: ``1`` if a quarter turn of the input moves orientation ``i`` to ``i + 1``, ``-1`` if to
            ``i - 1``.
        reflection: the spatial dim the group's reflection reverses (p4m), ``-1`` or ``-2``.
    """

    def __init__(
        self, group: Group = "p4", *, fields: int | None = None, direction: int = 1, reflection: int = -1
    ):
        if group not in _ORDERS:
            raise InvalidArgument(
                f"group must be 'p4' or 'p4m', found {describe(group)}; pass regular('p4') for rotations "
                "by quarter turns or regular('p4m') with reflections"
            )
        if direction not in (1, -1) or isinstance(direction, bool):
            raise InvalidArgument(
                f"direction must be 1 or -1, found {describe(direction)}; pass direction=-1 if a quarter "
                "turn of the input moves orientation i to i - 1"
            )
        if reflection not in (-1, -2) or isinstance(reflection, bool):
            raise InvalidArgument(
                f"reflection must be -1 or -2 (the spatial dim the group's reflection reverses), found "
                f"{describe(reflection)}"
            )
        if fields is not None and as_int(fields, "fields") < 1:
            raise InvalidArgument(f"fields must be positive, found {fields}; pass the number of fields K")
        self.group: Group = group
        self.order = _ORDERS[group]
        self.fields = None if fields is None else as_int(fields, "fields")
        self.direction, self.reflection = direction, reflection

    def acting(self, element: Action) -> Action:
        """The action of an input element on such an output: the element on the grid, then the
        permutation of each field's orientation channels (shifts and the identity as they are).

        Examples:
            >>> from equivariance.transforms import Rot90
            >>> regular("p4").acting(Rot90(1)), regular("p4").acting(Shift(1, 0))
            (OnFields(Rot90(1), p4), Shift(1, 0))
        """
        if isinstance(element, OnFields):
            element = element.element
        if isinstance(element, (Shift, Identity)) or element.is_identity:
            return element
        return OnFields(element, self)

    def decompose(self, element: Action) -> tuple[int, int]:
        """The element as ``(s, k)``: reflect ``s`` times, then rotate by ``k`` quarter turns.

        Every element of p4m in the image plane: rotations, flips, the diagonal reflections
        ([`Transpose`][equivariance.transforms.Transpose]) and their products (``Rot90(1) * Flip(-1)``).

        Examples:
            >>> from equivariance.transforms import Flip, Rot90, Transpose
            >>> regular("p4m").decompose(Flip(-2))      # the reflection of dim -1, then a half turn
            (1, 2)
            >>> regular("p4m").decompose(Rot90(1) * Flip(-1)), regular("p4m").decompose(Transpose(anti=True))
            ((1, 1), (1, 3))
        """
        found = planar(element, _IMAGE_PLANE)
        if found is None:
            if planar(element) is not None:
                raise InvalidArgument(
                    f"{element!r} acts on other dims than the image plane (-2, -1), the plane the regular "
                    f"action of {self.group} knows"
                )
            raise InvalidArgument(
                f"the regular action of {self.group} knows rotations, flips and diagonal reflections of "
                f"the image plane and shifts, found {element!r}; write an Action of your own for other "
                "elements"
            )
        _, s, k = found
        if s and self.group == "p4":
            raise InvalidArgument(
                f"p4 has no reflections, but {element!r} is one; use regular('p4m') for a group CNN "
                "with reflections"
            )
        if s and self.reflection == -2:  # the group's reflection is the flip of dim -2: F(-1) = R^2 F(-2)
            k += 2
        return s, k % 4

    def permutation(self, element: Action) -> torch.Tensor:
        """``source``: orientation ``o`` of every field of the moved output comes from ``source[o]``.

        Examples:
            >>> from equivariance.transforms import Rot90
            >>> regular("p4").permutation(Rot90(1)).tolist()      # orientation i moves to i + 1
            [3, 0, 1, 2]
        """
        s, k = self.decompose(element)
        source = torch.empty(self.order, dtype=torch.long)
        for o in range(self.order):
            f, i = divmod(o, 4)
            target = 4 * (f ^ s) + (self.direction * k + (-1) ** s * i) % 4
            source[target] = o
        return source

    def fields_of(self, channels: int, what: str = "the output") -> int:
        """The number of fields in ``channels`` channels (of ``what``), else InvalidArgument saying why.

        Examples:
            >>> regular("p4", fields=3).fields_of(16, "the output of shape (2, 16, 9, 9)")
            Traceback (most recent call last):
            ...
            equivariance.errors.InvalidArgument: regular('p4', fields=3) expects 3 fields of 4 orientation ...
        """
        order = self.order
        if channels % order == 0 and (self.fields is None or channels == self.fields * order):
            return channels // order
        if self.fields is not None:
            expected = (
                f"{self.fields} fields of {order} orientation channels ({self.fields * order} channels)"
            )
            fix = f"pass fields={channels // order}" if channels % order == 0 else "pass the fields it has"
        else:
            expected = f"fields of {order} orientation channels each (a multiple of {order})"
            fix = (
                "pass the group whose orientations it has"
                if self.group == "p4m"
                else ("pass regular('p4m') if its fields hold 8 orientations")
            )
        raise InvalidArgument(
            f"{self!r} expects {expected}, but {what} has {channels} channels; {fix}, or layer= naming "
            "the group-convolution layer to measure"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Regular):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (self.group, self.fields, self.direction, self.reflection)

    def __repr__(self) -> str:
        options = [f"fields={self.fields}"] if self.fields is not None else []
        options += [f"direction={self.direction}"] if self.direction != 1 else []
        options += [f"reflection={self.reflection}"] if self.reflection != -1 else []
        return f"regular({', '.join([repr(self.group), *options])})"

    def __str__(self) -> str:
        turn = "" if self.direction == 1 else ", numbered the other way"
        return f"regular representation of {self.group} ({self.order} orientation channels a field{turn})"


def regular(
    group: Group = "p4", *, fields: int | None = None, direction: int = 1, reflection: int = -1
) -> Regular:
    """The output action of a p4 / p4m group-convolution layer, for ``output_action=``.

    Args:
        group: ``"p4"`` or ``"p4m"``.
        fields: the number of fields ``K`` of the output (default: its channels over ``|G|``).
        direction: ``1`` if a quarter turn of the input moves orientation ``i`` to ``i + 1`` (the numbering
            measured on escnn's fields, and that of a filter bank rotated with ``torch.rot90``), ``-1``
            otherwise.
        reflection: the spatial dim the group's reflection reverses (p4m): ``-1`` (default) or ``-2``.

    Returns:
        A [`Regular`][equivariance.regular.Regular] representation.

    Examples:
        >>> regular("p4m", fields=3)
        regular('p4m', fields=3)
    """
    return Regular(group, fields=fields, direction=direction, reflection=reflection)


class OnFields(Action):
    """An element acting on regular fields: on the grid as on the input, then permuting orientations.

    Args:
        element: the element (a [`Rot90`][equivariance.Rot90] or a [`Flip`][equivariance.Flip]).
        representation: the [`Regular`][equivariance.regular.Regular] representation of the channels.
    """

    moves_positions_only: ClassVar[bool] = False  # it permutes channels
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, element: Action, representation: Regular) -> None:
        self.element, self.representation = element, representation
        self.source = representation.permutation(element)

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Move the grid of ``x`` ``(N, C, *spatial)`` by the element, and each field's orientations."""
        if x.dim() != grid.spatial_dims + 2:
            raise InvalidArgument(
                f"the regular action needs one channel dim, (N, C, *spatial), found shape {tuple(x.shape)}"
            )
        moved = guarded_act(self.element, x, grid)
        order = self.representation.order
        fields = self.representation.fields_of(x.shape[1])
        split = moved.reshape(len(x), fields, order, *x.shape[2:])
        return split.index_select(2, self.source.to(x.device)).reshape(x.shape)

    @property
    def is_identity(self) -> bool:
        return self.element.is_identity

    def inverse(self) -> OnFields:
        return OnFields(self.element.inverse(), self.representation)

    def to_json(self) -> object:
        return self.element.to_json()

    def _key(self) -> Hashable:
        return (self.element, self.representation)

    def __repr__(self) -> str:
        return f"OnFields({self.element!r}, {self.representation.group})"

    def __str__(self) -> str:
        return str(self.element)
