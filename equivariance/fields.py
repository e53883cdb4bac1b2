"""Field types: what a tensor of a point cloud, a set or a graph holds, and so how an element moves it.

Positions turn and move, forces turn, energies stay put, and a permutation reorders every tensor
with an axis of points (``nodes``). The table of field types and how each moves is in
docs/point_clouds.md ("Elements and how they act"); a field type of your own subclasses
[`Field`][equivariance.fields.Field] and says how it moves in
[`moved_by`][equivariance.fields.Field.moved_by].

Examples:
    >>> import torch
    >>> from equivariance.euclidean import Rotation, Translation
    >>> quarter = Rotation.about("z", 90, degrees=True)
    >>> force = torch.tensor([[1.0, 0.0, 0.0]])
    >>> quarter.act(force, Vectors()).tolist(), quarter.act(torch.tensor([[-1.5]]), Scalars()).tolist()
    ([[0.0, 1.0, 0.0]], [[-1.5]])
    >>> Translation([0.0, 0.0, 2.0]).act(force, Positions()).tolist()
    [[1.0, 0.0, 2.0]]
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from equivariance._engine.validation import describe
from equivariance.actions import Grid
from equivariance.errors import InvalidArgument

if TYPE_CHECKING:
    from equivariance.actions import Action

__all__ = [
    "Adjacency",
    "EdgeIndex",
    "Field",
    "FieldSpec",
    "ModelInput",
    "Irreps",
    "Positions",
    "Pseudoscalars",
    "Pseudovectors",
    "Scalars",
    "Vectors",
    "transform",
]

FieldSpec = Any
"""A field type for each part of a value: a ``Field``, None (left alone), or a tuple, list or dict of them."""
ModelInput = Any
"""What a check of several inputs takes as ``x``: a tensor, a tuple of a model's positional arguments,
a dict of its keyword arguments, or a torch_geometric ``Data``/``Batch``."""


class Field:
    """A field type: how the tensors of one argument or output move under a group element.

    The base of [`Scalars`][equivariance.fields.Scalars],
    [`Vectors`][equivariance.fields.Vectors] and the others. Elements ask a
    field type where a tensor's points are (``nodes``) and check its shape
    with [`check`][equivariance.fields.Field.check] before acting.

    Args:
        nodes: the axis that indexes the points or nodes (negative counts from
            the end), or None for a tensor with no such axis.
    """

    __slots__ = ("nodes",)
    components: ClassVar[str | None] = None  # what the last axis holds, for vector-like fields
    default_nodes: ClassVar[int | None] = -2

    def __init__(self, *, nodes: int | None = -2) -> None:
        self.nodes = _as_axis(nodes, f"{type(self).__name__}'s nodes")
        if self.components is not None and self.nodes == -1:
            raise InvalidArgument(
                f"{type(self).__name__} keeps its {self.components} on the last axis, so nodes=-1 cannot "
                f"be the axis of points; pass nodes=-2 for (..., N, 3) or nodes=-3 for (..., N, C, 3)"
            )

    # -- shapes ---------------------------------------------------------------------------------

    def expects(self, size: int | None = None) -> str:
        """The shape this field type expects, in words (for error messages)."""
        last = "C" if self.components is None else str(size or "d")
        if self.nodes == -2:
            return f"(..., N, {last})"
        if self.nodes == -3 and self.components is not None:
            return f"(..., N, C, {last})"
        shape = "(...)" if self.components is None else f"(..., {last})"
        where = "no axis of points" if self.nodes is None else f"the points on axis {self.nodes}"
        return f"{shape} with {where}"

    def node_axis(self, x: torch.Tensor, components: int | None = None) -> int | None:
        """The axis of points of ``x`` as a non-negative index; None where the field has none.

        Raises InvalidArgument where ``x`` has no such axis (or where it would be the components' axis).
        """
        if self.nodes is None:
            return None
        axis = self.nodes + x.dim() if self.nodes < 0 else self.nodes
        last = x.dim() - 1 if self.components is not None else x.dim()
        if not 0 <= axis < last:
            raise InvalidArgument(
                f"{self!r} expects a tensor {self.expects(components)} but found shape {tuple(x.shape)}, "
                f"which has no axis {self.nodes} of points; pass nodes= the axis of the points, or "
                "nodes=None for a tensor without one"
            )
        return axis

    def check(self, x: object, components: int | None = None) -> torch.Tensor:
        """``x`` if it is a tensor this field type can hold, else InvalidArgument saying why.

        Args:
            x: the tensor.
            components: the size the last axis must have (a vector field under a 3-D rotation: 3).
        """
        if not isinstance(x, torch.Tensor):
            raise InvalidArgument(
                f"{self!r} holds a tensor {self.expects(components)}, found {describe(x)}; pass a tensor"
            )
        self.node_axis(x, components)
        if self.components is None:
            return x
        if x.dim() == 0 or (components is not None and x.shape[-1] != components):
            found = "a 0-dim tensor" if x.dim() == 0 else f"shape {tuple(x.shape)}"
            raise InvalidArgument(
                f"{self!r} expects a tensor {self.expects(components)} with its {components} "
                f"{self.components} last, found {found}; {self._fix(components)}"
            )
        if not x.is_floating_point():
            raise InvalidArgument(
                f"{self!r} holds real numbers that turn, found a tensor of {x.dtype}; pass a floating-point "
                "tensor (x.float()), or Scalars() for labels such as atom types"
            )
        return x

    def _fix(self, components: int | None) -> str:
        return (
            f"pass the {components} {self.components} on the last axis, or Scalars() for features that "
            "do not turn"
        )

    # -- what elements do not know ---------------------------------------------------------------

    def moved_by(self, element: Action, x: torch.Tensor) -> torch.Tensor:
        """``x`` moved by an element that does not know this field type: a field type of your own
        defines it; the default refuses.

        Examples:
            A rank-2 Cartesian tensor (a stress tensor, a polarizability) turns as ``R X Rᵀ``:

            >>> import torch
            >>> from equivariance.euclidean import Rotation
            >>> class Matrices(Field):
            ...     def moved_by(self, element, x):
            ...         if isinstance(element, Rotation):
            ...             r = element.matrix.to(x.dtype)
            ...             return r @ x @ r.T
            ...         return super().moved_by(element, x)
            >>> Rotation.about("z", 90, degrees=True).act(torch.diag(torch.tensor([1.0, 2.0, 3.0])),
            ...                                           Matrices(nodes=None)).diagonal().tolist()
            [2.0, 1.0, 3.0]
        """
        raise InvalidArgument(
            f"{element!r} does not act on {self!r}: it knows Scalars, Pseudoscalars, Vectors, "
            f"Pseudovectors, Positions, Irreps, EdgeIndex and Adjacency; define moved_by in "
            f"{type(self).__name__} to say how it moves"
        )

    # -- identity and printing -------------------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (self.nodes,)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Field)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._key()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._options()})"

    def _options(self) -> str:
        return "" if self.nodes == self.default_nodes else f"nodes={self.nodes}"


class Scalars(Field):
    """Features that no rotation, reflection or translation changes: energies, charges, atom types.

    A permutation reorders their ``nodes`` axis; with ``nodes=None`` (a pooled
    output, an energy per molecule ``(B,)``) nothing changes them at all.

    Examples:
        >>> import torch
        >>> from equivariance.permutations import Permutation
        >>> Permutation([2, 0, 1]).act(torch.tensor([[10.0], [11.0], [12.0]]), Scalars()).flatten().tolist()
        [12.0, 10.0, 11.0]

    Args:
        nodes: the axis of points (default ``-2``, ``(..., N, C)``), or None.
    """

    __slots__ = ()


class Pseudoscalars(Field):
    """Scalars that change sign under a reflection: a signed volume, a chirality, a triple product.

    Rotations leave them alone; an element with ``det R = -1`` (a mirror, the
    inversion) negates them. e3nn calls them ``"0o"``.

    Args:
        nodes: the axis of points (default ``-2``, ``(..., N, C)``), or None.
    """

    __slots__ = ()


class Vectors(Field):
    """Vectors that turn with the points but do not move with them: forces, velocities, dipoles.

    The components are the last axis, ``(..., N, 3)`` (2 under a planar
    rotation), in the order x, y, z. A rotation or reflection ``R`` maps ``v``
    to ``R v``; a translation leaves them alone (use
    [`Positions`][equivariance.fields.Positions] for coordinates). They are
    e3nn's ``"1o"`` (which e3nn orders x, y, z as well).

    Args:
        nodes: the axis of points (default ``-2``, ``(..., N, 3)``; ``-3`` for
            ``(..., N, C, 3)``), or None.
    """

    __slots__ = ()
    components: ClassVar[str | None] = "components"


class Pseudovectors(Field):
    """Axial vectors: they turn with a rotation and do not flip under a reflection (``det(R) R v``).

    Angular momenta, magnetic moments and cross products of two vectors are
    pseudovectors: under the inversion ``-I`` they stay as they are. e3nn's ``"1e"``.

    Args:
        nodes: the axis of points (default ``-2``, ``(..., N, 3)``), or None.
    """

    __slots__ = ()
    components: ClassVar[str | None] = "components"


class Positions(Vectors):
    """Coordinates of points: vectors that also move under a translation (``R p + t``).

    Args:
        nodes: the axis of points (default ``-2``, ``(..., N, 3)``), or None.
    """

    __slots__ = ()


class Irreps(Field):
    """Features of e3nn's irreducible representations of O(3), e.g. ``Irreps("2x0e + 1x1o + 1x2e")``.

    The last axis holds the irreps' components, in e3nn's order and basis; a
    rotation or reflection ``R`` maps them by e3nn's own
    ``Irreps(...).D_from_matrix(R)``, parity included, so an e3nn user passes
    the irreps a layer already declares. Needs e3nn (``pip install
    equivariance[e3nn]``), imported when an ``Irreps`` is made.

    In e3nn (0.2 and later) the ``l = 1`` components are x, y, z:
    ``Irreps("1o")`` acts as [`Vectors`][equivariance.fields.Vectors] and
    ``Irreps("1e")`` as [`Pseudovectors`][equivariance.fields.Pseudovectors].
    From ``l = 2`` e3nn's real basis takes y as its polar axis (where
    tables of real spherical harmonics take z): features made by
    ``e3nn.o3.spherical_harmonics`` are in it; features made elsewhere may
    need a change of basis first.

    Args:
        irreps: an e3nn irreps string or ``e3nn.o3.Irreps``.
        nodes: the axis of points (default ``-2``, ``(..., N, dim)``), or None.

    Attributes:
        irreps: the irreps, as e3nn writes them (``"2x0e+1x1o"``).
        dim: the number of components.
    """

    __slots__ = ("_parsed", "dim", "irreps")
    components: ClassVar[str | None] = "components"

    def __init__(self, irreps: Any, *, nodes: int | None = -2) -> None:
        super().__init__(nodes=nodes)
        o3 = _e3nn_o3()
        try:
            parsed = o3.Irreps(irreps)
        except (ValueError, AssertionError, TypeError, KeyError):
            raise InvalidArgument(
                f"Irreps takes an e3nn irreps string such as '2x0e + 1x1o', found {describe(irreps)}"
            ) from None
        self._parsed = parsed
        self.irreps: str = str(parsed)
        self.dim: int = int(parsed.dim)

    def representation(self, matrices: torch.Tensor) -> torch.Tensor:
        """e3nn's Wigner matrices of orthogonal ``matrices`` ``(..., 3, 3)``, in float64: ``(..., dim, dim)``.

        e3nn's ``D_from_angles`` of the matrices' Euler angles, with the
        parity of each irrep where ``det = -1``: what e3nn's
        ``D_from_matrix`` computes, exact to float64's rounding where three of
        its steps are not:

        - e3nn makes the generators of its Wigner matrices in torch's default
          dtype, so under the usual float32 default its ``D_from_matrix`` is
          exact to about 1e-7 only, even of a float64 matrix (and so is the
          error its ``equivariance_error`` reports for an exactly equivariant
          float64 function): the default is float64 while they are made here,
          then put back;
        - it finds the angle ``beta`` as ``acos`` of a cosine, which loses
          half the digits near its poles (a rotation by 1e-5 about x was off
          by 1e-12, one by 1e-9 by 2e-9): here it is an ``atan2``;
        - torch's ``matrix_exp``, which its Wigner matrices come from, is less
          exact for one matrix than for a batch (its degree-8 approximation,
          taken for one matrix of some norms, was off by 1e-12 in float64,
          pytorch issue 196592): one matrix is given as a batch of two.
        """
        o3 = _e3nn_o3()
        single = matrices.dim() == 2
        r = matrices.to(torch.float64).expand(2, 3, 3) if single else matrices.to(torch.float64)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            det = torch.linalg.det(r).sign()
            q = r * det[..., None, None]
            y = q[..., :, 1]  # where the rotation takes the y axis, e3nn's pole
            alpha = torch.atan2(y[..., 0], y[..., 2])
            beta = torch.atan2(torch.hypot(y[..., 0], y[..., 2]), y[..., 1])
            rest = o3.angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2) @ q
            gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
            d: torch.Tensor = self._parsed.D_from_angles(alpha, beta, gamma, (1 - det) / 2)
        finally:
            torch.set_default_dtype(previous)
        return d[0] if single else d

    def algebra(self, generator: torch.Tensor) -> torch.Tensor:
        """The derivative at the identity of ``representation`` along an antisymmetric ``generator`` 3x3:
        ``(dim, dim)``, float64.

        ``A = a_x L_x + a_y L_y + a_z L_z`` (``L_k`` the rotation about axis
        ``k``) maps to ``a_x X_x + a_y X_y + a_z X_z``, with e3nn's own
        ``o3.so3_generators(l)`` for each irrep (made under a float64 default
        dtype, as ``representation`` does); parity plays no part near the
        identity.

        Examples:
            >>> import torch
            >>> about_z = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
            >>> torch.equal(Irreps("1o").algebra(about_z), about_z.double())
            True
        """
        o3 = _e3nn_o3()
        a = generator.to(torch.float64)
        coefficients = (a[2, 1], a[0, 2], a[1, 0])
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            blocks = []
            for mul, irrep in self._parsed:
                x = o3.so3_generators(irrep.l).to(torch.float64)
                block = sum((c * x[k] for k, c in enumerate(coefficients)), torch.zeros_like(x[0]))
                blocks += [block] * mul
        finally:
            torch.set_default_dtype(previous)
        result: torch.Tensor = torch.block_diag(*blocks)  # type: ignore[no-untyped-call]
        return result

    def expects(self, size: int | None = None) -> str:
        return super().expects(self.dim)

    def _fix(self, components: int | None) -> str:
        return f"pass features whose last axis holds the {self.dim} components of {self.irreps}"

    def _key(self) -> tuple[Any, ...]:
        return (self.irreps, self.nodes)

    def _options(self) -> str:
        nodes = super()._options()
        return repr(self.irreps) + (f", {nodes}" if nodes else "")


class EdgeIndex(Field):
    """The edges of a graph as a ``(2, E)`` tensor of node indices (torch_geometric's ``edge_index``).

    A permutation of the nodes relabels it so that each edge joins the same
    two (moved) points: node ``j`` becomes the index it was moved to. The
    order of the edges is kept, so edge attributes ``(E, C)`` are not
    reordered: give them ``Scalars(nodes=None)`` or ``Vectors(nodes=None)``.
    Rotations and translations leave it alone.
    """

    __slots__ = ()
    default_nodes: ClassVar[int | None] = None

    def __init__(self) -> None:
        super().__init__(nodes=None)

    def expects(self, size: int | None = None) -> str:
        return "(2, E) of integer node indices"

    def check(self, x: object, components: int | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != 2 or x.is_floating_point():
            found = f"shape {tuple(x.shape)} of {x.dtype}" if isinstance(x, torch.Tensor) else describe(x)
            raise InvalidArgument(
                f"EdgeIndex() holds a tensor (2, E) of integer node indices, found {found}; pass "
                "edge_index as torch_geometric keeps it (a long tensor, sources in row 0, targets in row 1)"
            )
        return x

    def _options(self) -> str:
        return ""


class Adjacency(Field):
    """An adjacency matrix ``(..., N, N)``: a permutation reorders both node axes.

    Weighted adjacencies and dense edge features ``(..., N, N, C)`` (pass
    ``nodes=(-3, -2)``) alike; rotations and translations leave them alone.

    Args:
        nodes: the two node axes (default ``(-2, -1)``).
    """

    __slots__ = ("axes",)

    def __init__(self, *, nodes: tuple[int, int] = (-2, -1)) -> None:
        if not (isinstance(nodes, tuple) and len(nodes) == 2) or not all(
            isinstance(a, int) and not isinstance(a, bool) for a in nodes
        ):
            raise InvalidArgument(
                f"Adjacency's nodes must be a pair of axes, found {describe(nodes)}; pass e.g. nodes=(-2, -1)"
            )
        super().__init__(nodes=nodes[0])
        self.axes = nodes

    def expects(self, size: int | None = None) -> str:
        return "(..., N, N)" if self.axes == (-2, -1) else f"(...) with the nodes on axes {self.axes}"

    def node_axes(self, x: torch.Tensor) -> tuple[int, int]:
        """The two node axes of ``x``, non-negative; InvalidArgument unless they are two axes of one size."""
        axes = [a + x.dim() if a < 0 else a for a in self.axes]
        if not all(0 <= a < x.dim() for a in axes) or axes[0] == axes[1]:
            raise InvalidArgument(
                f"{self!r} expects a tensor {self.expects()} but found shape {tuple(x.shape)}; pass nodes= "
                "the two axes of the nodes"
            )
        if x.shape[axes[0]] != x.shape[axes[1]]:
            raise InvalidArgument(
                f"{self!r} expects the node axes {self.axes} of one size, found shape {tuple(x.shape)}; "
                "pass a square adjacency"
            )
        return axes[0], axes[1]

    def node_axis(self, x: torch.Tensor, components: int | None = None) -> int | None:
        return self.node_axes(x)[0]

    def check(self, x: object, components: int | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InvalidArgument(f"{self!r} holds a tensor {self.expects()}, found {describe(x)}")
        self.node_axes(x)
        return x

    def _key(self) -> tuple[Any, ...]:
        return self.axes

    def _options(self) -> str:
        return "" if self.axes == (-2, -1) else f"nodes={self.axes}"


def _as_axis(value: object, what: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise InvalidArgument(
        f"{what} must be an int (the axis of points) or None, found {describe(value)}; pass e.g. nodes=-2"
    )


def _e3nn_o3() -> Any:
    """``e3nn.o3``, or InvalidArgument saying how to install it."""
    try:
        return importlib.import_module("e3nn.o3")
    except ImportError:
        raise InvalidArgument(
            "Irreps needs e3nn, which is not installed; pip install equivariance[e3nn] (or use Scalars, "
            "Vectors and Pseudovectors, which need nothing more)"
        ) from None


# -- several parts at once ---------------------------------------------------------------------------

# a torch_geometric Batch's bookkeeping, when its fields do not name them: the graph of each node
# (a per-node label) and where each graph starts (no axis of nodes)
_BATCH_KEYS: dict[str, Field | None] = {"batch": Scalars(nodes=0), "ptr": None}


def transform(element: Action, value: Any, fields: FieldSpec, *, name: str = "value") -> Any:
    """``value`` moved by ``element``, each part by its field type.

    ``value`` is a tensor, a tuple or list of values (a model's arguments or
    outputs), a dict, or a torch_geometric ``Data``/``Batch`` (anything with
    ``keys()`` and attributes); ``fields`` has the same structure, with a
    field type for each tensor, None for a part left alone. A graph is moved
    by ``element.sized(num_nodes)``, and the graphs of a ``Batch`` each on
    their own (a permutation never mixes the nodes of two graphs). Every tensor of a
    dict or graph needs an entry (None to leave it alone), so a per-node tensor
    left out by mistake is an error rather than a silently unmoved input; a
    ``Batch``'s ``batch`` and ``ptr`` are understood. The value itself is
    left as it was: a graph is copied (its tensors are not).

    Examples:
        >>> import torch
        >>> from equivariance.permutations import Permutation
        >>> pos, h = torch.randn(2, 3, 3), torch.randn(2, 3, 4)
        >>> moved_pos, moved_h = transform(Permutation([1, 2, 0]), (pos, h), (Positions(), Scalars()))
        >>> torch.equal(moved_pos, pos[:, [1, 2, 0]]), torch.equal(moved_h, h[:, [1, 2, 0]])
        (True, True)

    Args:
        element: the group element.
        value: what it moves.
        fields: the field type of each part.
        name: how error messages call ``value``.
    """
    if fields is None:
        return value
    if isinstance(fields, Field):
        return _part(element, value, fields, name)
    if isinstance(fields, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(fields):
            raise InvalidArgument(
                f"{name} should have {len(fields)} parts, one per field type in {fields!r}, found "
                f"{_shape_of(value)}; pass one field type (or None) per part"
            )
        moved = [transform(element, v, f, name=f"{name}[{i}]") for i, (v, f) in enumerate(zip(value, fields))]
        if isinstance(value, list):
            return moved
        return type(value)(*moved) if hasattr(value, "_fields") else tuple(moved)  # a named tuple, or not
    if isinstance(fields, Mapping):
        return _mapping(element, value, fields, name)
    raise InvalidArgument(
        f"the field types of {name} must be a Field, None, or a tuple, list or dict of them, found "
        f"{describe(fields)}; pass e.g. (Positions(), Scalars())"
    )


def _part(element: Action, value: object, field: Field, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(f"{name} has the field type {field!r} but is {describe(value)}; pass a tensor")
    try:
        return element.act(value, field)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc}") from None


def _mapping(element: Action, value: Any, fields: Mapping[str, Any], name: str) -> Any:
    graph = not isinstance(value, Mapping) and callable(getattr(value, "keys", None))
    if not isinstance(value, Mapping) and not graph:
        raise InvalidArgument(
            f"{name} has field types by name ({', '.join(map(repr, fields))}) but is {describe(value)}; "
            "pass a dict or a torch_geometric Data, or field types as a tuple"
        )
    if graph and int(getattr(value, "num_graphs", 1)) > 1 and callable(getattr(value, "to_data_list", None)):
        graphs = value.to_data_list()  # a Batch: each graph moved on its own nodes, then joined again
        own = {key: field for key, field in fields.items() if key not in _BATCH_KEYS}  # a graph has no batch
        moved_graphs = [_mapping(element, g, own, f"{name} (graph {k})") for k, g in enumerate(graphs)]
        return type(value).from_data_list(moved_graphs)
    if graph:
        element = element.sized(int(value.num_nodes))
    keys = list(value.keys())
    get = (lambda key: getattr(value, key)) if graph else value.__getitem__
    declared = {**(_BATCH_KEYS if graph else {}), **fields}
    missing = [key for key in fields if key not in keys]
    if missing:
        raise InvalidArgument(
            f"{name} has no {', '.join(map(repr, missing))} (it has {', '.join(map(repr, keys))}); "
            "give field types only to the parts it has"
        )
    undeclared = [k for k in keys if k not in declared and isinstance(get(k), torch.Tensor)]
    if undeclared:
        raise InvalidArgument(
            f"{name}'s tensors {', '.join(map(repr, undeclared))} have no field type; give each one "
            "(None to leave it alone), e.g. {" + ", ".join(f"{k!r}: None" for k in undeclared) + "}"
        )
    moved = {k: transform(element, get(k), declared[k], name=f"{name}.{k}" if graph else f"{name}[{k!r}]")
             for k in keys if k in declared}  # fmt: skip
    if not graph:
        return {**value, **moved}
    out = copy.copy(value)
    for key, part in moved.items():
        setattr(out, key, part)
    return out


def _shape_of(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return describe(value)


def field_of(where: object, element: Action) -> Field:
    """``where`` if it is a field type; InvalidArgument naming the element where it is a grid."""
    if isinstance(where, Field):
        return where
    if isinstance(where, type) and issubclass(where, Field):
        raise InvalidArgument(f"{element!r} was given the class {where.__name__}; pass {where.__name__}()")
    if isinstance(where, Grid):
        raise InvalidArgument(
            f"{element!r} acts on tensors of points by their field type, not on a grid; pass inputs= the "
            "field type of x (or of each argument, x a tuple) and outputs= that of each output, e.g. "
            "check_equivariance(model, (pos, h), transforms=SO3(64), inputs=(Positions(), Scalars()), "
            "outputs=Vectors())"
        )
    raise InvalidArgument(
        f"{element!r} acts on tensors of points by their field type, found {describe(where)}; pass one, "
        "e.g. element.act(pos, Positions()) or element.act(forces, Vectors()) (equivariance.fields)"
    )
