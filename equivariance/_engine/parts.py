"""Several inputs and outputs, each with its field type: the model's call (`Arguments`, or torch_geometric
`Graphs`), its outputs laid side by side in one ``(B, total)`` tensor (`OutputParts`), and the noise floor's
round trip of an element that rounds (`RoundTrip`). docs/point_clouds.md shows them at work."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from equivariance._engine.isolation import snapshot
from equivariance._engine.validation import describe, kind_of
from equivariance.actions import Action, Identity, guarded_act
from equivariance.errors import InvalidArgument
from equivariance.fields import Field, transform

Path = tuple[str, int | str]
"""Where a part is: ``("args", 0)`` or ``("kwargs", "pos")``."""


@dataclass(frozen=True)
class Part:
    """One tensor of a call or of a model's outputs: its name in messages (``"'pos' (argument 0)"``,
    ``"output[1]"``), where it is, and its field type (None: left alone by every element)."""

    name: str
    path: Path
    field: Field | None


class _Call:
    """What the two kinds of call share: ``n`` samples, ``parts`` with their field types, and the
    tensors that stand for them in messages (``shown``)."""

    n: int
    parts: tuple[Part, ...]

    def shown(self) -> list[torch.Tensor]:
        raise NotImplementedError

    @property
    def first(self) -> torch.Tensor:
        """The first floating-point tensor (the first tensor where none is): its dtype and device
        stand for the call's."""
        return next((t for t in self.shown() if t.is_floating_point()), self.shown()[0])

    def shapes(self) -> str:
        """The parts in words: ``pos (8, 64, 3) Positions(), h (8, 64, 4) Scalars()``."""
        return ", ".join(
            f"{p.name} {tuple(t.shape)} {p.field!r}".replace(" None", " (left alone)")
            for p, t in zip(self.parts, self.shown())
        )

    def __len__(self) -> int:
        return self.n


class Arguments(_Call):
    """A model's arguments, ``model(*args, **kwargs)``, with the field type of each tensor (``parts``, in
    order); every tensor shares the leading batch axis of ``n`` samples, and other values (ints, flags)
    are passed to every call as they are."""

    def __init__(self, args: Sequence[Any], kwargs: Mapping[str, Any], parts: Sequence[Part]) -> None:
        self.args, self.kwargs, self.parts = tuple(args), dict(kwargs), tuple(parts)
        self.n = len(self.tensor(self.parts[0]))

    def tensor(self, part: Part) -> torch.Tensor:
        kind, key = part.path
        value: torch.Tensor = self.args[key] if kind == "args" else self.kwargs[key]  # type: ignore[index]
        return value

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The parts' tensors, in order."""
        return [self.tensor(p) for p in self.parts]

    def shown(self) -> list[torch.Tensor]:
        return self.tensors

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> Arguments:
        """The same call with the parts' tensors replaced, in order."""
        args, kwargs = list(self.args), dict(self.kwargs)
        for part, tensor in zip(self.parts, tensors):
            kind, key = part.path
            if kind == "args":
                args[key] = tensor  # type: ignore[index]
            else:
                kwargs[key] = tensor  # type: ignore[index]
        return Arguments(args, kwargs, self.parts)

    def select(self, rows: torch.Tensor | slice) -> Arguments:
        """The call for some samples only."""
        return self.with_tensors([t[rows] for t in self.tensors])

    def snapshot(self) -> Arguments:
        """A copy (on write) of every tensor: a model that writes to its inputs leaves these alone."""
        return self.with_tensors([snapshot(t) for t in self.tensors])

    def call(self, model: Callable[..., Any]) -> Any:
        return model(*self.args, **self.kwargs)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def describe(self) -> str:
        """The call's tensors for a message: ``pos of shape (8, 64, 3), h of shape (8, 64, 4)``."""
        return ", ".join(f"{p.name} of shape {tuple(self.tensor(p).shape)}" for p in self.parts)


class Graphs(_Call):
    """torch_geometric graphs (``Data``) with the field type of each attribute (None: left alone): the
    samples are the graphs, and the model is called with one ``Batch`` (``batch``, the class that joins
    them) of the moved graphs of a chunk. Per-node tensors keep their nodes on axis 0."""

    def __init__(self, graphs: Sequence[Any], fields: Mapping[str, Any], batch: Any) -> None:
        self.graphs, self.fields, self.batch = list(graphs), dict(fields), batch
        self.n = len(self.graphs)
        self.parts = tuple(
            Part(repr(key), ("graph", key), field)
            for key, field in self.fields.items()
            if isinstance(getattr(self.graphs[0], key, None), torch.Tensor)
        )

    def joined(self) -> Any:
        """One ``Batch`` of the graphs."""
        return self.batch.from_data_list(self.graphs)

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The parts' tensors, of all graphs joined."""
        joined = self.joined()
        return [getattr(joined, str(p.path[1])) for p in self.parts]

    def shown(self) -> list[torch.Tensor]:
        """The first graph's tensors."""
        return [getattr(self.graphs[0], str(p.path[1])) for p in self.parts]

    def nodes(self) -> list[int]:
        """The number of nodes of each graph."""
        return [int(g.num_nodes) for g in self.graphs]

    def of_each_size(self) -> list[int]:
        """One graph of each number of nodes (the first), by index: where an element is tried."""
        first: dict[int, int] = {}
        for index, n in enumerate(self.nodes()):
            first.setdefault(n, index)
        return sorted(first.values())

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> Graphs:
        """One graph with the parts' tensors replaced (a perturbed input)."""
        assert self.n == 1
        graph = copy.copy(self.graphs[0])
        for part, tensor in zip(self.parts, tensors):
            setattr(graph, str(part.path[1]), tensor)
        return Graphs([graph], self.fields, self.batch)

    def select(self, rows: torch.Tensor | slice) -> Graphs:
        indices = range(self.n)[rows] if isinstance(rows, slice) else rows.tolist()
        return Graphs([self.graphs[i] for i in indices], self.fields, self.batch)

    def snapshot(self) -> Graphs:
        graphs = []
        for graph in self.graphs:
            graph = copy.copy(graph)
            for key in graph.keys():  # noqa: SIM118 (a Data iterates over pairs)
                value = getattr(graph, key)
                if isinstance(value, torch.Tensor):
                    setattr(graph, key, snapshot(value))
            graphs.append(graph)
        return Graphs(graphs, self.fields, self.batch)

    def moved(self, element: Action, sample: int) -> Any:
        """Graph ``sample`` moved by ``element``, each attribute by its field type."""
        return transform(element, self.graphs[sample], self.fields, name="x")

    def call(self, model: Callable[..., Any]) -> Any:
        return model(self.joined())

    @property
    def nbytes(self) -> int:
        return sum(
            v.numel() * v.element_size()
            for g in self.graphs
            for v in (getattr(g, k) for k in g.keys())  # noqa: SIM118
            if isinstance(v, torch.Tensor)
        )

    def shapes(self) -> str:
        sizes = sorted(set(self.nodes()))
        of = "" if len(sizes) == 1 else f" of {sizes[0]} to {sizes[-1]} nodes"
        count = "1 graph" if self.n == 1 else f"{self.n} graphs{of} (the first shown)"
        return f"{super().shapes()} of {count}"

    def describe(self) -> str:
        return f"a Batch of {self.n} graph{'s' if self.n != 1 else ''} ({self.shapes()})"


Call = Arguments | Graphs
"""A model's inputs where they are not one tensor on a grid."""


def nbytes(inputs: torch.Tensor | Call) -> int:
    """The bytes of a batch of inputs, of one tensor or of a call."""
    if isinstance(inputs, (Arguments, Graphs)):
        return inputs.nbytes
    return inputs.numel() * inputs.element_size()


# -- validation ----------------------------------------------------------------------------------------


def as_arguments(x: object, inputs: object, model: object) -> Call:
    """The call ``x`` (a tensor, a tuple or list of positional arguments, a dict of keyword ones) with
    the field types ``inputs`` (a field type, or one per argument in the same structure), checked."""
    if is_graph(x):
        return as_graphs(x, inputs)
    one = isinstance(x, (tuple, list)) and len(x) == 1 and isinstance(inputs, (tuple, list))
    if one and len(inputs) == 1 and is_graph(x[0]):  # type: ignore[arg-type, index]
        return as_graphs(x[0], inputs[0])  # type: ignore[index]
    names = _parameter_names(model)
    if isinstance(x, torch.Tensor):
        args: tuple[Any, ...] = (x,)
        kwargs: dict[str, Any] = {}
        fields: dict[Path, Any] = {("args", 0): _single(inputs, x, names)}
    elif isinstance(x, (tuple, list)):
        args, kwargs = tuple(x), {}
        fields = _positional(args, inputs, names)
    elif isinstance(x, Mapping):
        args, kwargs = (), dict(x)
        fields = _keywords(kwargs, inputs)
    else:
        raise InvalidArgument(
            f"x must be a tensor, a tuple of the model's positional arguments or a dict of its keyword "
            f"arguments, found {describe(x)}; pass e.g. check_equivariance(model, (pos, h), "
            "inputs=(Positions(), Scalars()), ...)"
        )
    parts = []
    for path, field in fields.items():
        kind, key = path
        value = args[key] if kind == "args" else kwargs[key]  # type: ignore[index]
        name = _name(path, names)
        if not isinstance(value, torch.Tensor):
            if field is not None:
                raise InvalidArgument(
                    f"inputs gives {name} the field type {field!r}, but it is {describe(value)}; give "
                    "field types to tensors only (None for anything else)"
                )
            continue
        parts.append(Part(name, path, _checked_field(field, value, name)))
    if not parts:
        raise InvalidArgument(f"x holds no tensor to check, found {describe(x)}; pass the model's tensors")
    _same_batch(parts, args, kwargs)
    return Arguments(args, kwargs, parts)


def is_graph(x: object) -> bool:
    """Whether ``x`` is a torch_geometric ``Data`` or ``Batch`` (read by its attributes)."""
    return (
        not isinstance(x, (torch.Tensor, Mapping))
        and all(callable(getattr(x, name, None)) for name in ("keys", "to_dict"))
        and hasattr(x, "num_nodes")
    )


def as_graphs(x: Any, inputs: object) -> Graphs:
    """A torch_geometric ``Data`` or ``Batch`` with a field type per attribute, checked."""
    if not isinstance(inputs, Mapping):
        raise InvalidArgument(
            f"x is a torch_geometric {type(x).__name__}, so inputs must be a dict of field types by "
            f"attribute, found {describe(inputs)}; pass e.g. inputs={{'x': Scalars(nodes=0), "
            "'edge_index': EdgeIndex()}"
        )
    from torch_geometric.data import Batch

    graphs = x.to_data_list() if callable(getattr(x, "to_data_list", None)) else [x]
    if not graphs:
        raise InvalidArgument("x is a Batch of no graphs; pass at least one graph")
    transform(Identity(), graphs[0], inputs, name="x")  # every tensor named, each a tensor its field takes
    declared = dict(inputs)
    for key, value in declared.items():
        if value is None:
            continue
        field = as_field(value, "inputs", f"x.{key}")
        try:
            field.check(getattr(graphs[0], key))
        except InvalidArgument as exc:
            raise InvalidArgument(f"x.{key}: {exc}") from None
    return Graphs(graphs, declared, Batch)


def _single(inputs: object, x: torch.Tensor, names: list[str]) -> Any:
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1:
        return inputs[0]
    if isinstance(inputs, (tuple, list, Mapping)):
        raise InvalidArgument(
            f"x is one tensor of shape {tuple(x.shape)}, but inputs= gives {_count(inputs)}; pass one "
            "field type, e.g. inputs=Positions(), or x as a tuple of the model's arguments"
        )
    return inputs


def _positional(args: tuple[Any, ...], inputs: object, names: list[str]) -> dict[Path, Any]:
    if inputs is None or isinstance(inputs, Field):
        shown = ", ".join(_name(("args", i), names) for i in range(len(args)))
        raise InvalidArgument(
            f"x holds {len(args)} positional arguments ({shown}); pass inputs= a tuple of as many "
            "field types, one per argument (None to leave one alone), e.g. inputs=(Positions(), Scalars())"
        )
    if not isinstance(inputs, (tuple, list)):
        raise InvalidArgument(
            f"x holds positional arguments, so inputs must be a tuple of field types, one per argument, "
            f"found {describe(inputs)}; pass e.g. inputs=(Positions(), Scalars())"
        )
    if len(inputs) != len(args):
        fix = (
            "an action for an argument that is not there"
            if len(inputs) > len(args)
            else "an argument with no field type"
        )
        raise InvalidArgument(
            f"x holds {len(args)} positional arguments but inputs= gives {_count(inputs)} ({fix}); pass "
            "one field type per argument, None for one that no element moves"
        )
    return {("args", i): f for i, f in enumerate(inputs)}


def _keywords(kwargs: dict[str, Any], inputs: object) -> dict[Path, Any]:
    if not isinstance(inputs, Mapping):
        raise InvalidArgument(
            f"x holds keyword arguments {list(kwargs)}, so inputs must be a dict of field types by "
            f"name, found {describe(inputs)}; pass e.g. inputs={{'pos': Positions(), 'h': Scalars()}}"
        )
    extra = [k for k in inputs if k not in kwargs]
    if extra:
        raise InvalidArgument(
            f"inputs= gives a field type to {', '.join(map(repr, extra))}, which x does not have (it has "
            f"{', '.join(map(repr, kwargs))}); give field types only to the model's arguments"
        )
    missing = [k for k, v in kwargs.items() if k not in inputs and isinstance(v, torch.Tensor)]
    if missing:
        raise InvalidArgument(
            f"{_listed('tensor', missing)} of x {'has' if len(missing) == 1 else 'have'} no field type in "
            "inputs=; give each one, None to leave it alone, e.g. {"
            + ", ".join(f"{k!r}: None" for k in missing)
            + "}"
        )
    return {("kwargs", k): inputs.get(k) for k in kwargs}


def as_field(value: object, argument: str, name: str, *, none: bool = True) -> Field:
    """``value``, which ``argument`` gives ``name``, as a field type (the message offers None: ``none``)."""
    if isinstance(value, Field):
        return value
    if isinstance(value, type) and issubclass(value, Field):
        raise InvalidArgument(f"{argument} gives {name} the class {value.__name__}; pass {value.__name__}()")
    raise InvalidArgument(
        f"{argument} gives {name} {describe(value)}, which is not a field type; pass one of "
        f"equivariance.fields (Positions(), Scalars(), Vectors(), ...){' or None' if none else ''}"
    )


def _checked_field(value: object, tensor: torch.Tensor, name: str) -> Field | None:
    if value is None:
        return None
    field = as_field(value, "inputs", name)
    try:
        field.check(tensor)
        axis = field.node_axis(tensor)
    except InvalidArgument as exc:
        raise InvalidArgument(f"input {name}: {exc}") from None
    if axis == 0:
        raise InvalidArgument(
            f"input {name} has its points on axis 0 ({field!r}), but axis 0 of every argument is the "
            f"batch of samples; add a batch axis (x[None]) and pass nodes=-2 (or 1), or pass a "
            "torch_geometric Data/Batch"
        )
    return field


def _same_batch(parts: list[Part], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sizes = {}
    for part in parts:
        kind, key = part.path
        tensor = args[key] if kind == "args" else kwargs[key]  # type: ignore[index]
        if tensor.dim() == 0 or len(tensor) == 0:
            raise InvalidArgument(
                f"input {part.name} of shape {tuple(tensor.shape)} has no samples; every tensor needs a "
                "leading batch axis with at least one sample"
            )
        sizes[part.name] = len(tensor)
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise InvalidArgument(
            f"the tensors of x must share their first axis, the batch of samples, found {shown}; pass "
            "every argument with the same number of samples (None in inputs= does not exempt a tensor)"
        )


def _parameter_names(model: object) -> list[str]:
    """The names of the model's positional parameters, for messages (empty where unknown)."""
    target = getattr(model, "forward", model)
    try:
        parameters = inspect.signature(target).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds]


def _name(path: Path, names: list[str]) -> str:
    kind, key = path
    if kind == "kwargs":
        return repr(key)
    assert isinstance(key, int)
    return f"{names[key]!r} (argument {key})" if key < len(names) else f"argument {key}"


def _count(spec: object) -> str:
    if isinstance(spec, Mapping):
        return f"a dict of {len(spec)} field types"
    count = len(spec)  # type: ignore[arg-type]
    return "1 field type" if count == 1 else f"{count} field types"


def _listed(noun: str, keys: Sequence[object]) -> str:
    shown = ", ".join(map(repr, keys))
    return f"the {noun} {shown}" if len(keys) == 1 else f"the {noun}s {shown}"


# -- outputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputParts:
    """How a model's outputs are laid side by side: each part's place in the output and its field type.

    ``fields`` is a field type (one tensor), a tuple or list of them (one per
    output), a dict (by key), or None for invariance (every part compared as
    it is). ``sizes`` are fixed by ``f(x)`` (``measured``). For a ``Batch`` of
    graphs, ``per_node`` says which parts have one row a node, and ``nodes``
    holds each graph's number of nodes: such a part is laid out one row a
    graph, padded with zeros to the largest graph where the sizes differ.
    """

    fields: Any
    parts: tuple[Part, ...] = ()
    sizes: tuple[int, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()
    per_node: tuple[bool, ...] = ()
    nodes: tuple[int, ...] = ()

    def flatten(
        self,
        result: Any,
        batch: int,
        subject: str,
        nodes: Sequence[int] | None = None,
        *,
        detach: bool = True,
    ) -> torch.Tensor:
        """The output's parts, each ``(batch, size)``, side by side in one tensor; ``nodes``: the nodes of
        each graph of a Batch, whose per-node outputs (nodes on axis 0) are split into one row a graph;
        ``detach=False`` keeps what autograd carries (the Lie derivative's tangents)."""
        tensors = self._by_graph(self.split(result, subject, detach=detach), nodes, subject)
        flat = []
        for part, tensor in zip(self.parts, tensors):
            if tensor.dim() == 0 or tensor.shape[0] != batch:
                raise InvalidArgument(
                    f"{subject} returned {part.name} of shape {tuple(tensor.shape)} for a batch of {batch} "
                    "samples; every output part must keep the batch axis first: pass output= to pick or "
                    "reshape the outputs"
                )
            if not tensor.is_floating_point():
                raise InvalidArgument(
                    f"{subject} returned {part.name} of {tensor.dtype}; equivariance errors need "
                    "floating-point outputs: pass output= to leave it out or convert it"
                )
            flat.append(tensor.reshape(batch, -1))
        dtype = flat[0].dtype
        for t in flat[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        return flat[0] if len(flat) == 1 else torch.cat([t.to(dtype) for t in flat], 1)

    def split(self, result: Any, subject: str, *, detach: bool = True) -> list[torch.Tensor]:
        """The output's tensors, one per part, in order (detached, unless ``detach=False``)."""
        out = []
        for part in self.parts:
            kind, key = part.path
            value = result
            if kind != "whole":
                try:
                    value = result[key]
                except (KeyError, IndexError, TypeError):
                    raise InvalidArgument(
                        f"{subject} returned {kind_of(result)}, which has no {part.name}; pass outputs= one "
                        "field type per output the model returns"
                    ) from None
            if not isinstance(value, torch.Tensor):
                raise InvalidArgument(
                    f"{subject} returned {describe(value)} as {part.name}; outputs= gives field types to "
                    "tensors, so pass output= to pick the tensors or leave that output out"
                )
            out.append(value.detach() if detach else value)
        return out

    def measured(self, result: Any, subject: str, nodes: Sequence[int] | None = None) -> OutputParts:
        """The parts of ``result`` (``f(x)``): their names, field types and sizes, checked; ``nodes`` as
        in ``flatten``."""
        parts = output_parts(result, self.fields, subject)
        resolved = dataclasses.replace(self, parts=tuple(parts))
        tensors = resolved.split(result, subject, detach=False)  # only read: checked and sized
        for part, tensor in zip(parts, tensors):
            if part.field is not None:
                try:
                    part.field.check(tensor)
                except InvalidArgument as exc:
                    raise InvalidArgument(
                        f"output {part.name} of shape {tuple(tensor.shape)}: {exc}"
                    ) from None
        total = None if nodes is None else sum(nodes)
        per_node = tuple(
            total is not None and t.dim() > 0 and len(t) == total and (p.field is None or p.field.nodes == 0)
            for p, t in zip(parts, tensors)
        )
        resolved = dataclasses.replace(resolved, per_node=per_node, nodes=tuple(nodes or ()))
        tensors = resolved._by_graph(tensors, nodes, subject)
        return dataclasses.replace(
            resolved,
            sizes=tuple(t[0].numel() if t.dim() else 1 for t in tensors),
            shapes=tuple(tuple(t.shape) for t in tensors),
        )

    @property
    def mixed(self) -> bool:
        """Whether the graphs differ in size (their per-node parts are padded)."""
        return len(set(self.nodes)) > 1

    def _by_graph(
        self, tensors: list[torch.Tensor], nodes: Sequence[int] | None, subject: str
    ) -> list[torch.Tensor]:
        """Per-node outputs of a Batch of graphs ``(nodes, ...)`` as ``(graphs, nodes a graph, ...)``, each
        graph's rows first and zeros after them up to the largest graph of ``f(x)``."""
        if nodes is None or not any(self.per_node):
            return tensors
        width = max(self.nodes)
        counts = torch.tensor(list(nodes))
        graph = torch.repeat_interleave(torch.arange(len(counts)), counts)
        position = torch.arange(int(counts.sum())) - (torch.cumsum(counts, 0) - counts)[graph]
        out = []
        for part, t, per_node in zip(self.parts, tensors, self.per_node):
            if per_node and len(t) != len(graph):
                raise InvalidArgument(
                    f"{subject} returned {part.name} of shape {tuple(t.shape)} for graphs of {len(graph)} "
                    "nodes in all, but one row a node for f(x); a per-node output must keep one row a node"
                )
            if per_node and len(set(nodes)) == 1 and nodes[0] == width:
                t = t.reshape(len(nodes), width, *t.shape[1:])  # graphs of one size: a view
            elif per_node:
                padded = t.new_zeros(len(nodes), width, *t.shape[1:])
                padded[graph.to(t.device), position.to(t.device)] = t
                t = padded
            out.append(t)
        return out

    @property
    def acting(self) -> tuple[Field | None, ...]:
        """The field types elements act with on the parts as ``flatten`` lays them out: a per-node
        output of graphs has its nodes on axis 1 there (its graphs on axis 0)."""
        return tuple(
            _nodes_on(p.field, 1) if per_node and p.field is not None else p.field
            for p, per_node in zip(self.parts, self.per_node or (False,) * len(self.parts))
        )

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The parts of a ``(B, total)`` tensor, each in its own shape ``(B, ...)``."""
        pieces, start = [], 0
        for size, shape in zip(self.sizes, self.shapes):
            pieces.append(flat[:, start : start + size].reshape(len(flat), *shape[1:]))
            start += size
        return pieces

    def shown(self) -> str:
        return ", ".join(f"{p.name} {s} {p.field!r}" for p, s in zip(self.parts, self.shapes)).replace(
            " None", " (unchanged)"
        )


def _nodes_on(field: Field, axis: int) -> Field:
    """``field`` with its points on ``axis``."""
    moved = copy.copy(field)
    moved.nodes = axis
    return moved


def output_parts(result: Any, fields: Any, subject: str) -> list[Part]:
    """The parts of a model's ``result`` that ``fields`` (``outputs=``) gives field types to, checked."""
    if isinstance(fields, Field) or (fields is None and isinstance(result, torch.Tensor)):
        return [Part("the output", ("whole", 0), fields)]
    if fields is None:  # invariance: every tensor of a tuple or dict, unchanged
        if not isinstance(result, (tuple, list, Mapping)):
            raise InvalidArgument(
                f"{subject} returned {kind_of(result)}; pass output= to pick the tensor to check"
            )
        given = dict.fromkeys(result if isinstance(result, Mapping) else range(len(result)))
    elif isinstance(fields, (tuple, list)):
        if not isinstance(result, (tuple, list)) or len(result) != len(fields):
            raise InvalidArgument(
                f"outputs= gives {_count(fields)} but {subject} returned {kind_of(result)}; pass one field "
                "type per output"
            )
        given = dict(enumerate(fields))
    elif isinstance(fields, Mapping):
        if not isinstance(result, Mapping):
            raise InvalidArgument(
                f"outputs= gives field types by name but {subject} returned {kind_of(result)}; pass a tuple"
            )
        missing = [k for k in fields if k not in result]
        if missing:
            raise InvalidArgument(
                f"outputs= gives a field type to {', '.join(map(repr, missing))}, which {subject} does not "
                f"return (it returns {', '.join(map(repr, result))})"
            )
        given = dict(fields)
    else:
        raise InvalidArgument(
            f"outputs must be a field type, or a tuple or dict of them (one per output), found "
            f"{describe(fields)}; pass e.g. outputs=(Scalars(nodes=None), Vectors())"
        )
    return [
        Part(f"output[{k!r}]", ("item", k), None if f is None else as_field(f, "outputs", f"output {k!r}"))
        for k, f in given.items()
    ]


# -- the noise floor of an element that rounds ---------------------------------------------------------


class RoundTrip(Action):
    """``g⁻¹(g x)``, with ``g x`` rounded to the tensor's dtype: a row of the noise floor whose output
    is compared with ``f(x)``, so its error is what the rounding of a moved input alone does."""

    __slots__ = ("element",)
    noun: ClassVar[str] = "round trip"
    _act_writes_nothing: ClassVar[bool] = True

    def __init__(self, element: Action) -> None:
        self.element = element

    def act(self, x: torch.Tensor, where: Any) -> torch.Tensor:
        return guarded_act(self.element.inverse(), guarded_act(self.element, x, where), where)

    def sized(self, nodes: int) -> Action:
        return RoundTrip(self.element.sized(nodes))

    def __repr__(self) -> str:
        return f"RoundTrip({self.element!r})"
