"""Group elements and how they act: the one protocol every symmetry of the library implements.

An [`Action`][equivariance.actions.Action] is one element ``g`` of a symmetry group together with the way it
moves a tensor: on a grid, or, given its field type, a tensor of a point cloud, a set or a graph. A subclass
that defines ``act`` plugs into every check with no change to the library; what each member means, and a
worked example, are in docs/actions.md ("The action protocol").
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from equivariance._engine.isolation import private_copy
from equivariance._engine.validation import describe
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst, Layout

__all__ = ["Action", "Batched", "Boundary", "Grid", "Identity", "Where", "guarded_act"]

Boundary = Literal["zeros", "circular"]
BOUNDARIES: tuple[str, ...] = ("zeros", "circular")
Where = Any
"""Where an element acts: a [`Grid`][equivariance.actions.Grid] (images, sequences, volumes) or a
field type of [`equivariance.fields`][equivariance.fields] (a tensor of points: positions, vectors,
features, a graph's edges)."""


def check_boundary(boundary: object) -> Boundary:
    """``boundary`` if it is one of the supported names, else InvalidArgument."""
    if not isinstance(boundary, str) or boundary not in BOUNDARIES:
        raise InvalidArgument(
            f"boundary must be one of {', '.join(map(repr, BOUNDARIES))}, found {describe(boundary)}; "
            "pass boundary='zeros' (content moves on a finite canvas) or 'circular' (a torus)"
        )
    return boundary  # type: ignore[return-value]


@dataclass(frozen=True)
class Grid:
    """The tensor an action acts on: ``(N, *channels, *spatial)``, spatial dims last.

    An action always receives its tensor in this form. The engine views every output in it first (see
    [`equivariance.layouts`][equivariance.layouts]), so an action never has to know where a model keeps its
    channels.

    Attributes:
        spatial_dims: the number of trailing spatial dims, ``d``.
        stride: how many input samples one sample of this grid spans, per dim: 1 for the input, 2 for a map
            subsampled by 2.
        boundary: how shifts treat the edges, ``"zeros"`` or ``"circular"``.
        layout: how the tensor was laid out before it was viewed as a grid.
    """

    spatial_dims: int
    stride: tuple[int, ...]
    boundary: Boundary = "zeros"
    layout: Layout = field(default_factory=ChannelsFirst)

    @classmethod
    def of_input(cls, spatial_dims: int, boundary: Boundary = "zeros") -> Grid:
        """The grid of a model's input: stride 1 in every dim.

        Examples:
            >>> Grid.of_input(2)
            Grid(spatial_dims=2, stride=(1, 1), boundary='zeros', layout=ChannelsFirst())
        """
        return cls(spatial_dims, (1,) * spatial_dims, boundary)

    @property
    def subsampled(self) -> bool:
        """Whether the grid is coarser than the input's in some dim."""
        return any(s != 1 for s in self.stride)


class Action(abc.ABC):
    """A group element acting on the spatial grid of tensors.

    Subclass it and define [`act`][equivariance.actions.Action.act]; the other methods have defaults that fit
    an element which maps the whole grid onto itself (a rotation, a flip, a transpose). docs/actions.md has a
    worked example.

    Attributes:
        noun: what reports call the element (``"transform"``; ``"shift"`` for shifts).
        uses_boundary: whether ``act`` reads ``grid.boundary`` (shifts do; elements that map the grid onto
            itself do not, and reports then show no boundary).
        moves_positions_only: whether the element only moves (or drops) positions of the grid, every channel
            alike, as shifts, rotations and flips do. The engine then moves a map of per-position norms
            instead of whole tensors. Leave it False for anything that mixes or permutes channels, or
            interpolates.
    """

    __slots__ = ()
    noun: ClassVar[str] = "transform"
    uses_boundary: ClassVar[bool] = False
    moves_positions_only: ClassVar[bool] = False
    # set True beside an ``act`` of the library's own, which never writes to the tensor it is given
    _act_writes_nothing: ClassVar[bool] = False

    @abc.abstractmethod
    def act(self, x: torch.Tensor, grid: Where) -> torch.Tensor:
        """The tensor moved by this element.

        Args:
            x: a tensor ``(N, *channels, *spatial)`` with ``grid.spatial_dims`` trailing spatial dims; or a
                tensor of points of a field type.
            grid: where ``x`` lives: its stride relative to the input (an output subsampled by 2 moves half as
                far), its boundary and its original layout; or, for elements of points (rotations,
                permutations), the field type of ``x`` (``Positions()``, ``Vectors()``, ...).

        Returns:
            A tensor of the same shape. It may share memory with ``x``, and may even write to ``x``: the
            engine gives an ``act`` of your own a private copy (see
            [`guarded_act`][equivariance.actions.guarded_act]).
        """

    def region(self, spatial: tuple[int, ...], grid: Grid) -> tuple[slice, ...]:
        """The box of the result that is determined by the tensor acted on.

        Default: the whole grid. A zero-boundary shift returns the part its fill did not reach.
        """
        return tuple(slice(0, n) for n in spatial)

    @property
    def is_identity(self) -> bool:
        """Whether the element leaves every tensor as it is."""
        return False

    @property
    def exact(self) -> bool:
        """Whether ``act`` is exact in floating point (it only moves, drops or negates values): True by
        default, as for shifts, flips, quarter turns and permutations. An element that rounds (a
        rotation by any angle, a translation) says False, and a check's noise floor then includes the
        rounding of the moved input."""
        return True

    @property
    def only_reorders(self) -> bool:
        """Whether the element only reorders points (a permutation), moving every field type alike by
        its axis of points: a profile then reads how a layer's output moves from its shape alone
        (the axis as long as the inputs' points). False by default: a rotation turns vectors and
        leaves scalars, so a layer's field type must be named."""
        return False

    def failure_hint(self, part: str, field: Any) -> str | None:
        """What it means that the output ``part`` (of field type ``field``, None for an output that
        should not change) does not follow this element: one sentence for a check's hint, or None
        (the default) for nothing to say."""
        return None

    def sized(self, nodes: int) -> Action:
        """This element on one graph of ``nodes`` nodes: itself (the default), or, for an element whose
        action depends on the graph's size (a [`NodePermutation`][equivariance.permutations.NodePermutation]),
        the element it is there. A graph's tensors are moved by ``element.sized(graph.num_nodes)``, so
        the graphs of a ``Batch`` are each moved on their own nodes."""
        return self

    def translation(self, grid: Grid) -> tuple[int, ...] | None:
        """The integer offsets by which the element moves every position of ``grid``, if it is a
        translation there (a shift); None otherwise (the default).

        The profile then compares the part of a layer's output it is defined on with a slice of the reference
        instead of with a moved copy of it.
        """
        return None

    def inverse(self) -> Action:
        """The element undoing this one (exactly, where the group action is exact)."""
        raise InvalidArgument(
            f"{self!r} does not define inverse(); define it in {type(self).__name__} to use it"
        )

    def to_json(self) -> Any:
        """A JSON-serializable form of the element, for reports: by default ``repr(self)``."""
        return repr(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return repr(self)

    def _key(self) -> Hashable:
        """What tells two elements of one class apart; a class with state returns it, hashable."""
        return None

    def __eq__(self, other: object) -> bool:
        """Elements of one class are equal where their keys are (by default, their attributes)."""
        if type(other) is not type(self):
            return NotImplemented
        if self._key() is None:
            return getattr(self, "__dict__", None) == getattr(other, "__dict__", None)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), self._key()))

    @classmethod
    def batched(cls, x: torch.Tensor, elements: Sequence[Action], grid: Where) -> Batched | None:
        """A vectorized way to move rows of ``x`` by many elements of this class at once.

        The engine calls it once per measurement with every element of the plan that is an instance of
        ``cls``. The default, None, makes the engine call ``act`` once per run of items that share an element:
        right for the few elements of a rotation group, too slow for the hundreds of shifts of a sweep, which
        answer with one gather.
        """
        return None


def which_output(part: str) -> str:
    """How a hint names an output part after a noun: ``""`` for a model's one output,
    ``" (output[1])"`` for one of several (``failure_hint``'s helper)."""
    return "" if part == "the output" else f" ({part})"


def guarded_act(element: Action, tensor: torch.Tensor, grid: Where) -> torch.Tensor:
    """``element.act(tensor, grid)``, leaving ``tensor`` as it was even where ``act`` writes to it.

    The engine moves the caller's input and the model's reference outputs with it. The library's own elements
    never write to what they are given; an ``act`` of the caller's own (a subclass that defines or redefines
    it) is given a private copy (keeping the autograd graph), so ``x.mul_(-1)`` in it changes that copy only.

    Examples:
        >>> class Negate(Action):
        ...     def act(self, x, grid):
        ...         return x.mul_(-1)
        >>> x = torch.ones(1, 1, 2)
        >>> guarded_act(Negate(), x, Grid.of_input(1)).tolist(), x.tolist()
        ([[[-1.0, -1.0]]], [[[1.0, 1.0]]])
    """
    if _writes_nothing(type(element)):
        return element.act(tensor, grid)
    return element.act(private_copy(tensor), grid)


@functools.lru_cache(maxsize=256)
def _writes_nothing(cls: type[Action]) -> bool:
    """Whether the class that defines ``cls.act`` is one of the library's, which never write."""
    for klass in cls.__mro__:
        if "act" in vars(klass):
            return bool(vars(klass).get("_act_writes_nothing", False))
    return False


@functools.lru_cache(maxsize=256)
def _defining(cls: type[Action], name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def batched_path(
    cls: type[Action], x: torch.Tensor, elements: Sequence[Action], grid: Where
) -> Batched | None:
    """``cls.batched``, unless ``cls`` redefines ``act`` below the class that gives it that path (a
    subclass of ``Shift`` with an ``act`` of its own): then its own ``act`` moves each row."""
    if not issubclass(_defining(cls, "batched"), _defining(cls, "act")):
        return None
    return cls.batched(x, elements, grid)


class Batched(abc.ABC):
    """Many elements of one class applied to rows of one tensor, vectorized (see ``Action.batched``)."""

    @abc.abstractmethod
    def take(self, rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """``out[b] = elements[which[b]].act(x[rows[b]])``: a new tensor, never a view of ``x``."""


class Identity(Action):
    """The identity element of every group: it leaves the tensor as it is.

    Examples:
        >>> import torch
        >>> x = torch.randn(1, 2, 3, 3)
        >>> torch.equal(Identity().act(x, Grid.of_input(2)), x), Identity().is_identity
        (True, True)
    """

    moves_positions_only: ClassVar[bool] = True
    _act_writes_nothing: ClassVar[bool] = True

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x

    @property
    def is_identity(self) -> bool:
        return True

    @property
    def only_reorders(self) -> bool:
        return True

    def inverse(self) -> Identity:
        return self

    def __mul__(self, other: Action) -> Action:
        """The identity; for another element, that element's own ``__rmul__`` (its canonical form)."""
        return self if isinstance(other, Identity) else NotImplemented
