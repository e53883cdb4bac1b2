"""Permutations of the points of a set, a point cloud or the nodes of a graph.

A [`Permutation`][equivariance.permutations.Permutation] reorders the axis of points of every tensor that has
one, as ``x[perm]`` does, relabels an [`EdgeIndex`][equivariance.fields.EdgeIndex] and leaves pooled outputs
alone; [`Permutations`][equivariance.permutations.Permutations] draws them from a seed.

Graphs of different sizes (a ``Batch`` of molecules of 5, 9 and 12 atoms) need a permutation of each graph's
own nodes: a [`NodePermutation`][equivariance.permutations.NodePermutation] is one of every size, drawn from
its seed, and [`NodePermutations(16, seed=0)`][equivariance.permutations.NodePermutations] draws them. On a
graph of ``n`` nodes it acts as the permutation of ``n`` points its seed draws (``g.sized(n)``), so it never
mixes the nodes of two graphs.

Examples:
    >>> import torch
    >>> from equivariance.fields import Adjacency, EdgeIndex, Scalars
    >>> g = Permutation([2, 0, 1])               # point 2 comes first
    >>> h = torch.tensor([[10.0], [11.0], [12.0]])
    >>> g.act(h, Scalars()).flatten().tolist()
    [12.0, 10.0, 11.0]
    >>> edges = torch.tensor([[0, 1], [1, 2]])   # 0 -> 1 and 1 -> 2
    >>> g.act(edges, EdgeIndex()).tolist()        # the same edges, where the points are now
    [[1, 2], [2, 0]]
    >>> g * g, g * g.inverse()
    (Permutation([1, 2, 0]), Permutation([0, 1, 2]))
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch

from equivariance._engine.validation import as_int, describe
from equivariance.actions import Action, Batched, which_output
from equivariance.errors import InvalidArgument
from equivariance.fields import Adjacency, EdgeIndex, Field, field_of
from equivariance.products import Composing
from equivariance.sampling import GroupSample

__all__ = ["NodePermutation", "NodePermutations", "Permutation", "Permutations"]

_SHOWN = 12  # the most indices a permutation prints in full


class Permutation(Composing):
    """A permutation of ``n`` points: ``x[indices]`` along the axis of points of every tensor that has one.

    Examples:
        >>> Permutation([1, 0, 2]).n, Permutation.cycle(4), Permutation.identity(3).is_identity
        (3, Permutation([3, 0, 1, 2]), True)

    Args:
        indices: each of ``0, ..., n - 1`` once: index ``i`` of the result is point ``indices[i]``.
    """

    __slots__ = ("_indices", "_inverse")
    noun: ClassVar[str] = "permutation"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, indices: Sequence[int] | torch.Tensor) -> None:
        self._indices = _as_permutation(indices)
        self._inverse = torch.argsort(self._indices)

    @classmethod
    def _exact(cls, indices: torch.Tensor) -> Permutation:
        permutation = object.__new__(cls)
        permutation._indices = indices
        permutation._inverse = torch.argsort(indices)
        return permutation

    @classmethod
    def identity(cls, n: int) -> Permutation:
        """The identity of ``n`` points."""
        return cls._exact(torch.arange(_as_size(n)))

    @classmethod
    def cycle(cls, n: int, k: int = 1) -> Permutation:
        """Every point moved ``k`` places on, the last ones coming round to the front (``torch.roll``).

        Examples:
            >>> import torch
            >>> from equivariance.fields import Scalars
            >>> x = torch.arange(4.0)[:, None]
            >>> torch.equal(Permutation.cycle(4, 1).act(x, Scalars()), torch.roll(x, 1, 0))
            True
        """
        return cls._exact(torch.roll(torch.arange(_as_size(n)), as_int(k, "k")))

    @classmethod
    def swap(cls, n: int, i: int, j: int) -> Permutation:
        """The transposition of points ``i`` and ``j`` among ``n``."""
        indices = torch.arange(_as_size(n))
        i, j = as_int(i, "i"), as_int(j, "j")
        if not (0 <= i < n and 0 <= j < n):
            raise InvalidArgument(f"swap({n}, {i}, {j}): points are 0..{n - 1}; pass indices in that range")
        indices[[i, j]] = indices[[j, i]]
        return cls._exact(indices)

    @property
    def indices(self) -> tuple[int, ...]:
        """``indices[i]``: the point that comes to index ``i``."""
        return tuple(self._indices.tolist())

    @property
    def n(self) -> int:
        """The number of points."""
        return len(self._indices)

    @property
    def is_identity(self) -> bool:
        return bool(torch.equal(self._indices, torch.arange(self.n)))

    @property
    def only_reorders(self) -> bool:
        return True

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        """``x`` with its points reordered, by its field type (docs/point_clouds.md).

        Args:
            x: the tensor.
            where: its field type, e.g. ``Scalars()``.
        """
        field = field_of(where, self)
        if isinstance(field, EdgeIndex):
            field.check(x)
            self._check_labels(x)
            return self._inverse.to(x.device)[x]
        field.check(x)
        axes = field.node_axes(x) if isinstance(field, Adjacency) else (field.node_axis(x),)
        for axis in axes:
            if axis is None:
                continue
            if x.shape[axis] != self.n:
                raise InvalidArgument(
                    f"{self!r} permutes {self.n} points, but {field!r} of shape {tuple(x.shape)} has "
                    f"{x.shape[axis]} on its axis of points ({axis - x.dim()}); draw permutations of "
                    f"{x.shape[axis]} points, or pass nodes= the axis of the points"
                )
            x = x.index_select(axis, self._indices.to(x.device))
        return x

    def _check_labels(self, edge_index: torch.Tensor) -> None:
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= self.n):
            raise InvalidArgument(
                f"EdgeIndex() holds node {int(edge_index.max())} (and {int(edge_index.min())}), but "
                f"{self!r} permutes the nodes 0..{self.n - 1}; draw permutations of all the graph's nodes"
            )

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Any) -> Batched | None:
        """Rows of ``x`` (its first axis) reordered by many permutations at once: one gather per axis
        of points; None where ``x`` has no first axis of rows (an ``EdgeIndex``, ``nodes=0``)."""
        perms = [e for e in elements if isinstance(e, Permutation)]
        if len(perms) != len(elements) or len({p.n for p in perms}) != 1 or not isinstance(grid, Field):
            return None
        if isinstance(grid, EdgeIndex) or x.dim() < 2:
            return None
        axes = grid.node_axes(x) if isinstance(grid, Adjacency) else (grid.node_axis(x),)
        if 0 in axes:
            return None
        perms[0].act(x[:1], grid)  # the shape checks, once
        return _PermutedRows(x, torch.stack([p._indices for p in perms]), [a for a in axes if a is not None])

    def failure_hint(self, part: str, field: Any) -> str | None:
        """What an output that does not follow a reordering of the points means."""
        return _failure_hint(part, field)

    def inverse(self) -> Permutation:
        """The permutation that puts every point back."""
        return Permutation._exact(self._inverse)

    def _compose(self, other: Permutation) -> Action:
        if other.n != self.n:
            raise InvalidArgument(
                f"{self!r} * {other!r}: permutations of {self.n} and {other.n} points do not compose"
            )
        return Permutation._exact(other._indices[self._indices])

    def _key(self) -> Hashable:
        return self.indices

    def __repr__(self) -> str:
        shown = self.indices
        if len(shown) <= _SHOWN:
            return f"Permutation({list(shown)})"
        head = ", ".join(map(str, shown[: _SHOWN - 2]))
        return f"Permutation([{head}, ..., {shown[-1]}]; {self.n} points)"

    def to_json(self) -> Any:
        """``{"permutation": indices}``."""
        return {"permutation": list(self.indices)}


def _failure_hint(part: str, field: Any) -> str:
    """What an output that does not follow a reordering of the points means (of either class)."""
    if field is None or getattr(field, "nodes", None) is None:
        return (
            f"the pooled output{which_output(part)} changes when the points are reordered: it reads "
            "their order (a flatten, an embedding by index, a readout of a fixed point) where a sum, "
            "mean or max over the points would not"
        )
    return (
        f"the per-node output{which_output(part)} does not permute with the points: an operation "
        "mixes nodes by position (a positional encoding, a flatten, an embedding by index, the node's "
        "index in the batch)"
    )


Step = tuple[int, bool]
"""One drawn permutation of a ``NodePermutation``: its seed, and whether it is inverted."""


class NodePermutation(Composing):
    """A permutation of the nodes of a graph of any size, drawn from a seed: for graphs of different sizes.

    On a graph (or a tensor) of ``n`` nodes it acts as ``sized(n)``, the permutation of ``n`` points that
    ``torch.randperm(n)`` draws from its seed; so the graphs of a ``Batch`` of molecules of 5, 9 and 12 atoms
    are each permuted on their own nodes, never mixed, and the same seed always gives the same permutation of
    a size. A graph's ``edge_index`` is relabelled with it when the whole graph is moved
    ([`transform`][equivariance.fields.transform], or a check of a graph); alone, it does not say how many
    nodes the graph has.

    Examples:
        >>> import torch
        >>> from equivariance.fields import Scalars
        >>> g = NodePermutation(seed=3)
        >>> g.sized(4), g.sized(4) == g.sized(4), g.sized(5).n
        (Permutation([2, 3, 1, 0]), True, 5)
        >>> h = torch.arange(6.0)[:, None]
        >>> torch.equal(g.act(h, Scalars()), g.sized(6).act(h, Scalars()))
        True
        >>> (g * g.inverse()).is_identity, g * g
        (True, NodePermutation(seed=3) * NodePermutation(seed=3))

    Args:
        seed: the seed of its permutations, one for each number of nodes.
    """

    __slots__ = ("steps",)
    noun: ClassVar[str] = "permutation"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, seed: int) -> None:
        value = as_int(seed, "seed")
        if not 0 <= value < 2**63:
            raise InvalidArgument(f"seed must be in 0..2**63 - 1, found {value}")
        self.steps: tuple[Step, ...] = ((value, False),)

    @classmethod
    def _of(cls, steps: Sequence[Step]) -> NodePermutation:
        """The composition of ``steps``, outermost first, with neighbours that undo each other dropped."""
        kept: list[Step] = []
        for step in steps:
            if kept and kept[-1] == (step[0], not step[1]):
                kept.pop()
            else:
                kept.append(step)
        element = object.__new__(cls)
        element.steps = tuple(kept)
        return element

    def sized(self, nodes: int) -> Permutation:
        """The permutation of ``nodes`` points this element is on a graph of that size."""
        n = _as_size(nodes)
        result = Permutation.identity(n)
        for seed, inverted in reversed(self.steps):  # the innermost first
            drawn = Permutation._exact(_drawn(seed, n))
            result = (drawn.inverse() if inverted else drawn) * result  # type: ignore[assignment]
        return result

    @property
    def is_identity(self) -> bool:
        return not self.steps

    @property
    def only_reorders(self) -> bool:
        return True

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        """``x`` reordered by ``sized(n)``, ``n`` the length of its axis of points (see the class)."""
        field = field_of(where, self)
        if isinstance(field, EdgeIndex):
            field.check(x)
            raise InvalidArgument(
                f"{self!r} permutes the nodes of a graph by its number of nodes, which an edge_index alone "
                "does not give; move the whole graph (transform(g, data, fields)), or act with "
                "g.sized(num_nodes)"
            )
        field.check(x)
        axis = field.node_axes(x)[0] if isinstance(field, Adjacency) else field.node_axis(x)
        return x if axis is None else self.sized(x.shape[axis]).act(x, field)

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Any) -> Batched | None:
        """Rows of ``x`` reordered by many at once, as ``Permutation.batched`` does with their
        permutations of the length of its axis of points."""
        if not isinstance(grid, Field) or isinstance(grid, EdgeIndex) or x.dim() < 2:
            return None
        if not all(isinstance(e, NodePermutation) for e in elements):
            return None
        axis = grid.node_axes(x)[0] if isinstance(grid, Adjacency) else grid.node_axis(x)
        if axis is None:
            return None
        n = x.shape[axis]
        return Permutation.batched(x, [e.sized(n) for e in elements if isinstance(e, NodePermutation)], grid)

    def failure_hint(self, part: str, field: Any) -> str | None:
        """What an output that does not follow a reordering of the points means."""
        return _failure_hint(part, field)

    def inverse(self) -> NodePermutation:
        """The element that puts every node of every graph back."""
        return NodePermutation._of([(seed, not inverted) for seed, inverted in reversed(self.steps)])

    def _compose(self, other: NodePermutation) -> Action:
        return NodePermutation._of([*self.steps, *other.steps])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodePermutation):
            return NotImplemented
        return self.steps == other.steps

    def __hash__(self) -> int:
        return hash(("NodePermutation", self.steps))

    def __repr__(self) -> str:
        if not self.steps:
            return "NodePermutation(identity)"
        shown = [
            f"NodePermutation(seed={s})" + (".inverse()" if inverted else "") for s, inverted in self.steps
        ]
        return " * ".join(shown)

    def to_json(self) -> Any:
        """``{"node_permutation": [{"seed": s, "inverse": False}, ...]}``, outermost first."""
        return {"node_permutation": [{"seed": s, "inverse": inverted} for s, inverted in self.steps]}


@functools.lru_cache(maxsize=4096)
def _drawn(seed: int, n: int) -> torch.Tensor:
    """The permutation of ``n`` points that ``seed`` draws (cached: a check moves each graph many times)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class _PermutedRows(Batched):
    def __init__(self, x: torch.Tensor, indices: torch.Tensor, axes: list[int]) -> None:
        self.x, self.axes = x, axes
        self.indices = indices.to(x.device)

    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        y = self.x.index_select(0, rows.to(self.x.device))
        perms = self.indices[which.to(self.x.device)]  # (b, n)
        for axis in self.axes:
            shape = [len(y)] + [1] * (y.dim() - 1)
            shape[axis] = perms.shape[1]
            y = torch.gather(y, axis, perms.view(shape).expand(*y.shape[:axis], -1, *y.shape[axis + 1 :]))
        return y


class Permutations(GroupSample[Permutation]):
    """Permutations of ``n`` points drawn uniformly (``torch.randperm``) from a seed, after the included ones.

    Examples:
        >>> sample = Permutations(8, n=5, include=[Permutation.cycle(5)])
        >>> len(sample), sample[0], sample[1].n, sample == Permutations(8, n=5, include=[sample[0]])
        (9, Permutation([4, 0, 1, 2, 3]), 5, True)

    Args:
        samples: how many to draw.
        n: the number of points.
        seed: the seed: the same seed, the same permutations.
        include: permutations of ``n`` points checked first.
    """

    group: ClassVar[str] = "S(n)"

    def __init__(self, samples: int = 64, *, n: int, seed: int = 0, include: Sequence[Any] = ()) -> None:
        self.n = _as_size(n)
        super().__init__(samples, seed=seed, include=include)

    def _draw(self, samples: int, generator: torch.Generator) -> list[Permutation]:
        return [Permutation._exact(torch.randperm(self.n, generator=generator)) for _ in range(samples)]

    def _admit(self, element: object, what: str) -> Permutation:
        if not isinstance(element, Permutation) or element.n != self.n:
            raise InvalidArgument(f"Permutations(n={self.n}) holds permutations of {self.n} points; {what} "
                                  f"is {describe(element)}")  # fmt: skip
        return element

    def _options(self) -> list[str]:
        return [f"n={self.n}"]


class NodePermutations(GroupSample[NodePermutation]):
    """[`NodePermutation`][equivariance.permutations.NodePermutation]s drawn from a seed: a uniform
    permutation of every graph's own nodes, for a ``Batch`` of graphs of different sizes.

    Examples:
        >>> sample = NodePermutations(4, seed=1)
        >>> len(sample), sample[0].sized(4).n, sample == NodePermutations(4, seed=1)
        (4, 4, True)

    Args:
        samples: how many to draw.
        seed: the seed: the same seed, the same elements (and so the same permutation of each size).
        include: ``NodePermutation``s checked first.
    """

    group: ClassVar[str] = "S(n) of each graph"

    def _draw(self, samples: int, generator: torch.Generator) -> list[NodePermutation]:
        return [
            NodePermutation(seed)
            for seed in torch.randint(0, 2**62, (samples,), generator=generator).tolist()
        ]

    def _admit(self, element: object, what: str) -> NodePermutation:
        if not isinstance(element, NodePermutation):
            raise InvalidArgument(
                f"NodePermutations holds NodePermutations (of graphs of any size); {what} is "
                f"{describe(element)}: use Permutations(n=...) for permutations of n points"
            )
        return element


def _as_size(n: object) -> int:
    size = as_int(n, "n")
    if size < 1:
        raise InvalidArgument(f"n must be at least 1 (the number of points), found {size}")
    return size


def _as_permutation(indices: object) -> torch.Tensor:
    try:
        t = torch.as_tensor(indices).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        t = torch.empty(0, 0)
    if t.dim() != 1 or not len(t) or t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise InvalidArgument(
            f"a Permutation takes the indices 0..n-1 once each, as a list or 1-D integer tensor, found "
            f"{describe(indices)}; pass e.g. Permutation([2, 0, 1])"
        )
    t = t.to(torch.long).clone()
    counts = torch.bincount(t.clamp(0, len(t)), minlength=len(t) + 1)[: len(t)]
    if int(t.min()) < 0 or int(t.max()) >= len(t) or bool((counts != 1).any()):
        twice = [i for i, c in enumerate(counts.tolist()) if c > 1]
        never = [i for i, c in enumerate(counts.tolist()) if c == 0]
        found = f"{twice[0]} appears more than once" if twice else f"{never[0]} is missing"
        out = [v for v in t.tolist() if not 0 <= v < len(t)]
        if out:
            found = f"{out[0]} is not in 0..{len(t) - 1}"
        raise InvalidArgument(
            f"{t.tolist()} is not a permutation of 0..{len(t) - 1}: {found}; pass each index once"
        )
    return t
