"""Copies of a batch, each moved by one element of a plan: the input side of every measurement.

``Copies(x, elements, grid).take(sample, element)[b]`` is
``elements[element[b]].act(x[sample[b]], grid)``. Elements whose class offers a
vectorized path ([`Action.batched`][equivariance.actions.Action.batched]:
shifts, read by one gather from one padded view) take it; the others are
applied once per run of consecutive items that share an element, never once
per sample. The same class moves the reference outputs of a comparison: the
plan's elements acting on the output grid (a stride, another layout).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from equivariance._engine.isolation import private_copy
from equivariance._engine.parts import Arguments, Graphs
from equivariance.actions import Action, Batched, Grid, Where, _writes_nothing, batched_path, guarded_act

__all__ = ["ArgumentCopies", "Copies", "GraphCopies"]


class Copies:
    """Copies of the rows of ``x`` moved by the elements of a plan.

    Args:
        x: the tensor, ``(N, *channels, *spatial)`` on ``grid``, or ``(N, ...)`` of a field type.
        elements: the plan's elements, indexed by ``take``'s ``element``.
        grid: where ``x`` lives (its stride and boundary), or its field type
            (`equivariance.fields`) for a tensor of points.
    """

    def __init__(self, x: torch.Tensor, elements: Sequence[Action], grid: Where) -> None:
        self.x, self.elements, self.grid = x, list(elements), grid
        # each element's key: the index of its vectorized group, or -1 - k to be applied alone
        self.groups: list[Batched] = []
        self.keys = [-1 - k for k in range(len(self.elements))]
        self.local = list(range(len(self.elements)))
        by_class: dict[type[Action], list[int]] = {}
        for k, element in enumerate(self.elements):
            by_class.setdefault(type(element), []).append(k)
        for cls, members in by_class.items():
            # a vectorized path of the caller's own gets a private copy, as its act does
            given = x if _writes_nothing(cls) else private_copy(x)
            batched = batched_path(cls, given, [self.elements[k] for k in members], grid)
            if batched is None:
                continue
            for j, k in enumerate(members):
                self.keys[k], self.local[k] = len(self.groups), j
            self.groups.append(batched)
        self._local = torch.tensor(self.local, dtype=torch.long)

    @classmethod
    def of(cls, x: torch.Tensor, batched: Batched, count: int, grid: Grid) -> Copies:
        """Copies made by one vectorized group of ``count`` elements (say, thousands of random shifts
        from a tensor of offsets), with no element objects."""
        copies = cls(x, [], grid)
        copies.groups = [batched]
        copies.keys, copies.local = [0] * count, list(range(count))
        copies._local = torch.arange(count)
        return copies

    @property
    def n(self) -> int:
        """The number of samples."""
        return len(self.x)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def take(self, sample: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """The copies ``elements[element[b]]`` of ``x[sample[b]]``, for every ``b``: a new tensor."""
        sample, element = sample.cpu(), element.cpu()
        runs = self._runs(element)
        if len(runs) == 1:
            return self._piece(sample, element).contiguous()
        pieces = [self._piece(sample[items], element[items]) for items in runs]
        # contiguous like a gather's copies (a rotation is a strided view of a flipped copy)
        return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces)

    def _runs(self, element: torch.Tensor) -> list[slice]:
        """Consecutive items that share a vectorized group, or an element applied alone."""
        keys = [self.keys[k] for k in element.tolist()]  # a chunk's items: lists beat small tensor ops
        bounds = [0, *(b for b in range(1, len(keys)) if keys[b] != keys[b - 1]), len(keys)]
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def _piece(self, rows: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        key = self.keys[int(element[0])]
        if key >= 0:
            return self.groups[key].take(rows, self._local[element])
        first, count = int(rows[0]), len(rows)
        if bool((rows == torch.arange(first, first + count)).all()):
            chosen = self.x[first : first + count]  # consecutive samples: a view, no copy yet
        else:
            chosen = self.x[rows.to(self.x.device)]
        moved = guarded_act(self.elements[int(element[0])], chosen, self.grid)
        if moved.untyped_storage().data_ptr() == self.x.untyped_storage().data_ptr():
            moved = moved.clone()  # an action that returns (a view of) its input: a model may write to it
        return moved


class ArgumentCopies:
    """Copies of a model's several arguments, each moved by its field type: ``take`` gives the call
    for a chunk, every tensor moved by the same elements as the others (see ``Copies``; a tensor no
    element moves is only gathered by sample).

    Args:
        arguments: the call, with the field type of each tensor.
        elements: the plan's elements, indexed by ``take``'s ``element``.
    """

    def __init__(self, arguments: Arguments, elements: Sequence[Action]) -> None:
        self.arguments = arguments
        self.copies = [
            None if part.field is None else Copies(tensor, elements, part.field)
            for part, tensor in zip(arguments.parts, arguments.tensors)
        ]

    @property
    def n(self) -> int:
        return self.arguments.n

    @property
    def device(self) -> torch.device:
        return self.arguments.first.device

    def take(self, sample: torch.Tensor, element: torch.Tensor) -> Arguments:
        """The call for ``elements[element[b]]`` acting on sample ``sample[b]``, for every ``b``."""
        tensors = []
        for copies, tensor in zip(self.copies, self.arguments.tensors):
            if copies is None:
                tensors.append(tensor.index_select(0, sample.to(tensor.device)))
            else:
                tensors.append(copies.take(sample, element))
        return self.arguments.with_tensors(tensors)


class GraphCopies:
    """Copies of torch_geometric graphs, each moved by its element attribute by attribute: ``take``
    gives the graphs of a chunk, which the model receives as one ``Batch``.

    Graphs differ in size, so each copy is moved on its own (a few small tensor operations a graph,
    by `equivariance.fields.transform`); the model still runs once a chunk.
    """

    def __init__(self, graphs: Graphs, elements: Sequence[Action]) -> None:
        self.graphs, self.elements = graphs, list(elements)

    @property
    def n(self) -> int:
        return self.graphs.n

    @property
    def device(self) -> torch.device:
        return self.graphs.first.device

    def take(self, sample: torch.Tensor, element: torch.Tensor) -> Graphs:
        moved = [self.graphs.moved(self.elements[e], s) for s, e in zip(sample.tolist(), element.tolist())]
        return Graphs(moved, self.graphs.fields, self.graphs.batch)
