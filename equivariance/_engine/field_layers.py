"""The profile of several inputs: each layer's output read by its field type, in the profile's one pass.

`FieldPass` is the profile's pass (`equivariance._engine.passes`: the same
hooks, the same batch of ``x`` and its moved copy, the same two passes where
samples interact) reading each output as a tensor of points instead of a
grid. A layer's field type is the one ``fields=`` names for it or for a
container that holds it (the longest such name); else, under an element that
only reorders points (a permutation), it is read from the shape: the axis
after the batch axis as long as the inputs' points holds the points (the
output must be reordered along it), no such axis means pooled (it must not
change), and several are ambiguous (refused, with the fix). Under any other
element (a rotation, a translation) a layer whose field type is not named is
not compared, and its row says so. The model's outputs take ``outputs=``.
Each compared output is judged as a check judges an output part
(`equivariance._engine.part_sums`), and a failure is worded by the element
(``Action.failure_hint``).

A layer that returns several tensors (a tuple, as EGNN layers return
``(pos, h)``) has a row for each, ``name[i]``, each read as above; ``fields=``
may name a tuple for it, one field type (or None) an item. A torch_geometric
``Batch`` of graphs is read one row a graph: a per-node tensor of all the
graphs' nodes becomes ``(graphs, nodes a graph, ...)``, padded with zeros to
the largest graph where their sizes differ, and is moved graph by graph, each
by the element's ``sized(nodes)`` (``part_sums.GraphReferences``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from equivariance._engine import causes
from equivariance._engine.arguments import OUTPUT, LayerFields, LayerRequest
from equivariance._engine.diagnosis import JUNCTION, junction_name
from equivariance._engine.judge import sample_errors, within
from equivariance._engine.layer_sums import LayerSums
from equivariance._engine.layers import LayerSpec, Recorded
from equivariance._engine.part_sums import PartSums
from equivariance._engine.parts import Graphs, OutputParts, Part, output_parts
from equivariance._engine.passes import (
    Compared,
    Hook,
    Inputs,
    LayerPass,
    Measured,
    Passes,
    _verdicts,
    first_tensor,
)
from equivariance.actions import guarded_act
from equivariance.errors import InvalidArgument
from equivariance.fields import Adjacency, EdgeIndex, Field, Scalars
from equivariance.tolerances import Tolerance

L = TypeVar("L")
UNBATCHED = "no batch axis first"
"""How the note of a row without the batch axis first begins (its shape is the whole tensor's)."""
TWO_PASSES = (
    "x and its moved copy ran in two separate passes, which join a layer's first tensor only, so its "
    "other tensors are not compared"
)
_LISTED = 4  # the most ambiguous layers an error lists


class FieldPass(LayerPass):
    """The profile's pass over a model of points: every layer's output compared by its field type
    as the layer returns it (see the module docstring). A named field type that does not fit its
    layer is refused there; outputs whose axis of points is ambiguous, all at once after the pass
    (``done``)."""

    def _start(self, passes: Passes, batch: Inputs) -> None:
        request = passes.request
        self.first, self.keeps, self.stated = set(), set(), {}
        self.named, self.points, self.outputs = request.fields, request.points, request.outputs
        self.read: dict[str, tuple[Field | None, str]] = {}  # by row: its field type, and how it was read
        self.ambiguous: list[tuple[str, tuple[int, ...], list[int]]] = []
        self.by_id: dict[int, str] = {}  # by id of a row's tensor (alive while self.seen says so): its row
        # by row of a layer that returned several tensors: the layer, and the tensor's place in its tuple
        self.sources: dict[str, tuple[str, int]] = {}
        self.returns: dict[str, int] = {}  # by such a layer: the length of its tuple
        self.separate = passes.separate
        # a Batch of graphs: each graph's nodes (x's, then its moved copy's), whose per-node tensors are
        # read as (graphs, nodes a graph, ...), padded to the largest graph where the sizes differ
        self.counts = passes.x.nodes() if isinstance(passes.x, Graphs) else None
        self.nodes = None if self.counts is None else sum(self.counts)
        self.mixed = self.counts is not None and len(set(self.counts)) > 1
        self.node_rows: set[str] = set()
        # and each graph's edges: a per-edge tensor (edges, ...) is read as (graphs, edges a graph, ...)
        self.edge_counts: list[int] | None = None
        if isinstance(passes.x, Graphs):
            keys = [str(p.path[1]) for p in passes.x.parts if isinstance(p.field, EdgeIndex)]
            if keys:
                self.edge_counts = [int(getattr(g, keys[0]).shape[1]) for g in passes.x.graphs]
        self.edge_rows: set[str] = set()

    def on_output(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """A layer's output: one row a tensor it returns (``name[i]`` where it returns several); a
        per-node tensor of graphs read as ``(graphs, nodes a graph, ...)`` (its input is then not read
        for a row of its own)."""
        kind = self.types.get(name, type(self.model).__name__)
        returned = self.taps.returned
        several = (
            isinstance(returned, (tuple, list)) and sum(isinstance(v, torch.Tensor) for v in returned) > 1
        )
        items = [(i, v) for i, v in enumerate(returned) if isinstance(v, torch.Tensor)] if several else []
        named = self._named(name)
        if named is not None and isinstance(named[1], tuple):
            self._check_arity(name, named[0], named[1], returned)
        source = first_tensor(inputs)
        per_graph = self._per_graph(tensor) is not None
        if not per_graph and self.junctions and source is not None and self._is_junction(source):
            # computed in forward from earlier tensors (a sum, a parameter added): a row of its own
            shape = self.per_sample(source.shape)
            junction = Recorded(junction_name(name), JUNCTION, shape, id(source), None, shape, None)
            self._add(junction, source, "input")
            self._see(source)  # the same computed tensor may feed several layers: one row
        self.last = tensor
        if not several:
            self._row(name, kind, tensor)
            return
        self.returns[name] = len(returned)
        for i, value in items:
            row = f"{name}[{i}]"
            self.sources[row], self.types[row] = (name, i), kind
            if i == 0:
                self._row(row, kind, tensor)
            elif self.separate:  # two passes join a layer's first tensor only
                self._not_compared(row, kind, value, TWO_PASSES)
            elif self._per_graph(value) is None and (
                value.dim() == 0 or value.shape[0] not in self.taps.sizes
            ):
                self._not_read(row, value)
                self._see(value)
            else:
                self._row(row, kind, value)

    def _row(self, row: str, kind: str, tensor: torch.Tensor) -> None:
        """A row of a tensor a layer returned; a per-node or per-edge tensor of graphs one row a graph."""
        counts, viewed, first = self._per_graph(tensor), tensor, None
        if counts is not None:
            viewed, first = self._padded(tensor, counts), tensor[: counts[0]]  # x[:1] alone: its first graph
            (self.node_rows if counts is self.counts else self.edge_rows).add(row)
        record = Recorded(row, kind, self.per_sample(viewed.shape), id(tensor), None, None, None)
        self._add(record, viewed, "output", first)
        self._see(tensor)
        self.by_id[id(tensor)] = row

    def _check_arity(self, name: str, key: str, named: tuple[Field | None, ...], returned: Any) -> None:
        """A tuple of field types must give one to each item the layer returns."""
        if isinstance(returned, (tuple, list)) and len(returned) == len(named):
            return
        if isinstance(returned, (tuple, list)):
            shapes = ", ".join(_shape(v[: self.n] if isinstance(v, torch.Tensor) else v) for v in returned)
            what = f"a {type(returned).__name__} of {len(returned)} ({shapes})"
        else:
            what = f"one tensor of {_shape(returned[: self.n])}"  # not a tuple: the tensor itself
        where = f"layer {name!r}" if key == name else f"layer {name!r}, which {key!r} holds,"
        count = f"{len(named)} field type{'s' if len(named) != 1 else ''}"
        apart = (
            ""
            if key == name
            else f", or give {name!r} (or a container of it) its own name (the longest wins)"
        )
        raise InvalidArgument(
            f"fields[{key!r}] gives a tuple of {count} (one a tensor a layer returns), but {where} returns "
            f"{what}; name one field type (or None) for each item it returns{apart}"
        )

    def _first_graph(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of x's first graph in a per-node tensor of graphs: what x[:1] alone gives."""
        assert self.counts is not None
        return tensor[: self.counts[0]]

    def _per_graph(self, tensor: torch.Tensor) -> list[int] | None:
        """Each graph's rows in a tensor of a Batch of graphs with one row a node (``self.counts``), or
        one row an edge (``self.edge_counts``; nodes first where they are as many); None for others."""
        for counts in (self.counts, self.edge_counts):
            if counts is not None and tensor.dim() > 0 and len(tensor) == 2 * sum(counts) != 2 * self.n:
                return counts
        return None

    def _by_graph(self, tensor: torch.Tensor) -> torch.Tensor:
        """A per-node tensor of a Batch of graphs as ``(graphs, nodes a graph, ...)`` (else itself)."""
        counts = self._per_graph(tensor)
        return tensor if counts is None or counts is not self.counts else self._padded(tensor, counts)

    def _padded(self, tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """A tensor of graphs' rows (``counts`` a graph, for x then its moved copy) as ``(graphs, rows a
        graph, ...)``: a view where the graphs have one size, else padded with zeros to the largest."""
        width = max(counts)
        if len(set(counts)) == 1:
            return tensor.reshape(2 * self.n, width, *tensor.shape[1:])
        both = torch.tensor(counts * 2)
        graph = torch.repeat_interleave(torch.arange(len(both)), both).to(tensor.device)
        position = (
            torch.arange(int(both.sum()), device=tensor.device)
            - (torch.cumsum(both, 0) - both).to(tensor.device)[graph]
        )
        padded = tensor.detach().new_zeros(2 * self.n, width, *tensor.shape[1:])
        padded[graph, position] = tensor.detach()
        return padded

    def other_sizes(self) -> Hook | None:
        return self._unbatched

    def source(self, row: str) -> tuple[str, Callable[[Any, torch.Tensor], torch.Tensor | None]]:
        layer, index = self.sources.get(row, (row, 0))

        def pick(returned: Any, tensor: torch.Tensor) -> torch.Tensor | None:
            if index == 0:
                return tensor
            value = returned[index] if isinstance(returned, (tuple, list)) and len(returned) > index else None
            return value if isinstance(value, torch.Tensor) else None

        return layer, pick

    def _unbatched(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """A layer's first tensor without the batch axis first: one row an edge of a Batch of graphs
        (read one row a graph), else not read (``_not_read``)."""
        if self._per_graph(tensor) is not None:
            self.on_output(name, inputs, tensor)
        else:
            self._not_read(name, tensor)

    def _not_read(self, name: str, tensor: torch.Tensor) -> None:
        """A tensor without the batch axis first (nodes of all samples flattened, ``(B * N, C)``, or a
        layout of its own): a row not compared, which says so (never a guess of its axes)."""
        shape = tuple(tensor.shape)
        note = (
            f"{UNBATCHED} (its shape is shown whole; the batch of x and its moved copy has {2 * self.n} "
            "samples): a layer whose tensors put the samples elsewhere (the nodes of all samples "
            "flattened, as in e3nn's and torch_geometric's layers) is not read"
        )
        self._not_compared(name, self.types.get(name, type(self.model).__name__), tensor, note, shape)

    def _not_compared(
        self, name: str, kind: str, tensor: torch.Tensor, note: str, shape: tuple[int, ...] | None = None
    ) -> None:
        """A row not compared, which says why."""
        if shape is None:
            shape = self.per_sample(tensor.shape) if tensor.dim() else ()
        spec = LayerSpec(name, kind, shape, None, None, None, ambiguous=note)
        self.read[name] = (None, note)
        self.compared[name] = Compared(spec, None, "output")

    # -- each row's field type ----------------------------------------------------------------------

    def _named(self, name: str) -> tuple[str, LayerFields] | None:
        """What ``fields=`` names for a layer: its own name's, else its closest container's."""
        keys = [k for k in self.named if name == k or name.startswith(k + ".")]
        if not keys:
            return None
        key = max(keys, key=len)
        return key, self.named[key]

    def _named_row(self, row: str) -> tuple[str, Field] | None:
        """Where ``fields=`` gives a row a field type (``fields['layer'][1]``), and that field type: its
        layer's (a tuple's item for one of several tensors; a single field type is the first tensor's)."""
        layer, index = self.sources.get(row, (row, None))
        named = self._named(layer)
        if named is None:
            return None
        key, value = named
        if isinstance(value, tuple):
            field = value[index or 0]
            return None if field is None else (f"fields[{key!r}][{index or 0}]", field)
        if isinstance(value, Field) and not index:
            return f"fields[{key!r}]", value
        return None

    def _field(self, name: str, kind: str, tensor: torch.Tensor) -> tuple[Field | None, str]:
        """A row's field type and how it was read (None: not compared, and why)."""
        named = None if kind == "input" else self._named_row(name)
        node_row = name in self.node_rows
        if named is not None:
            key, field = named
            shown = repr(field)
            if name in self.edge_rows and field.nodes is not None:
                raise InvalidArgument(
                    f"{key} gives {self._what(name)}, one row an edge, the field type {field!r}, whose "
                    "points are on an axis; a permutation of the nodes relabels edge_index but keeps the "
                    "edges in their order, so a per-edge tensor has no axis of points: pass nodes=None, e.g. "
                    f"{type(field).__name__}(nodes=None)"
                )
            if node_row and field.nodes == 0:  # a graph's per-node field type: nodes after the graphs
                field = _nodes_on(field, 1)
            problem = _misfit(self.element, field, tensor[: self.n])
            if problem is not None:
                which = (
                    "what the layer returns" if name not in self.sources else "each tensor the layer returns"
                )
                raise InvalidArgument(
                    f"{key} gives {self._what(name)} the field type {field!r}, but its output of shape "
                    f"{tuple(tensor[: self.n].shape)} does not fit it ({problem}); name the field type of "
                    f"{which}, or leave the layer out of fields="
                )
            return field, shown
        element = self.element
        if not element.only_reorders:
            return None, self._unnamed(name)
        if node_row:
            return Scalars(nodes=1), "per node"
        if name in self.edge_rows:  # the edges keep their order (edge_index is relabelled)
            return Scalars(nodes=None), "per edge"
        if self.mixed and self.counts is not None:  # one row a graph: pooled, unless an axis may hold nodes
            width = max(self.counts)
            if all(tensor.shape[a] != width for a in range(1, tensor.dim())):
                return Scalars(nodes=None), "pooled"
            return None, (
                f"an axis as long as the largest graph ({width} nodes) may hold the nodes of graphs of "
                "different sizes, padded, which the profile does not read (it does for graphs of one size)"
            )
        if self.points is None:
            return None, (
                "the inputs' field types show no single number of points, so the axis of points of this "
                "output is not known; name its field type in fields="
            )
        axes = [a for a in range(1, tensor.dim()) if tensor.shape[a] == self.points]
        if not axes:
            return Scalars(nodes=None), "pooled"
        if len(axes) == 1:
            return Scalars(nodes=axes[0]), f"points on axis {axes[0]}"
        if kind != "input":  # a tensor computed in forward cannot be named: the layer after it is compared
            self.ambiguous.append((name, tuple(tensor[: self.n].shape), axes))
        return None, f"axes {axes} all have {self.points} entries, the number of points"

    def _what(self, row: str) -> str:
        layer, index = self.sources.get(row, (row, None))
        return f"layer {row!r}" if index is None else f"tensor {index} of layer {layer!r} ({row})"

    def _unnamed(self, row: str) -> str:
        """Why a row is not compared under an element that moves tensors by what they hold."""
        element, layer = self.element, self.sources.get(row, (row, None))[0]
        named = self._named(layer)
        if row in self.sources and named is not None and isinstance(named[1], Field):
            count = self.returns[layer]  # a single field type: the layer's first tensor's
            return (
                f"fields[{named[0]!r}] names one field type, {named[1]!r}, which is the first tensor's of "
                f"the {count} that {layer!r} returns; name one for each, e.g. fields={{{layer!r}: "
                f"({named[1]!r}, {', '.join(['Scalars()'] * (count - 1))})}}"
            )
        example = "{'encoder': Scalars(), 'head': Vectors()}"
        if row in self.sources:
            example = f"{{{layer!r}: (Vectors(), Scalars())}} (one field type a tensor it returns)"
        return (
            f"field type not named: {element.noun} {element} moves a tensor by what it holds (positions, "
            "vectors and scalars move differently), which its shape does not say; name it in fields=, e.g. "
            f"fields={example} (a container's name covers its layers)"
        )

    # -- the pass's rows ----------------------------------------------------------------------------

    def _add(
        self, record: Recorded, tensor: torch.Tensor, kind: str, first: torch.Tensor | None = None
    ) -> LayerSpec:
        spec = LayerSpec(record.name, record.type, record.shape, None, None, None)
        field, how = self._field(record.name, kind, tensor)
        self._compare_as(spec, kind, field, how, tensor, first)
        return spec

    def _compare_as(
        self, spec: LayerSpec, kind: str, field: Field | None, how: str, tensor: torch.Tensor,
        first: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """A row's two halves compared as ``field`` (not compared where it is None); ``first``: what
        x[:1] alone gives for it, where that is not the row's first sample (a graph's nodes)."""
        name, n = spec.name, self.n
        self.read[name] = (field, how)
        self.firsts[name] = (tensor[:1] if first is None else first).detach().clone()
        self.by_id[id(tensor)] = name
        if field is None:
            self.compared[name] = Compared(dataclasses.replace(spec, ambiguous=how), None, kind)
            return
        both = tensor.detach()
        if not both.is_floating_point():
            both = both.double()
        base = both[:n].reshape(n, -1)
        shape = (n, *both.shape[1:])
        if self.mixed and name in self.node_rows and field.nodes is not None:
            # moved graph by graph, each by element.sized(its nodes), on its own rows (nodes first)
            assert self.counts is not None
            part = Part(name, ("whole", 0), _nodes_on(field, _one_graph(field.nodes)))
            parts = OutputParts(field, (part,), (base.shape[1],), (shape,), (True,), tuple(self.counts))
        else:
            part = Part(name, ("whole", 0), field)
            parts = OutputParts(field, (part,), (base.shape[1],), (shape,), (False,))
        sink = PartSums(base, parts, [self.element])

        def describe() -> str:
            return f"layer {name!r} for the input moved by {self.element}"

        sink.add(both[n:].reshape(n, -1), slice(0, n), self.samples, self.zero, describe)
        (sums,) = sink.sums()  # the sums only: no layer's output is kept
        self.compared[name] = Compared(spec, Measured(sums), kind)

    def output(self, result: Any) -> None:
        """The model's outputs, by ``outputs=`` (a layer that returned one is compared by it instead,
        unless ``fields=`` names it), or, without it, the first read as a layer's output is."""
        given = self.outputs is not None and self.up_to is None
        found: list[tuple[Part | None, Any]]
        if given:
            parts = output_parts(result, self.outputs, "the model")
            found = [(p, result if p.path[0] == "whole" else result[p.path[1]]) for p in parts]
        else:
            found = [(None, first_tensor(result))]
        for i, (part, returned) in enumerate(found):
            what = "the output" if part is None else part.name
            tensor = returned if isinstance(returned, torch.Tensor) else None
            if tensor is not None and tensor.dim() > 0:
                tensor = self._by_graph(tensor)
            first = None
            if tensor is not None and tensor is not returned:
                assert isinstance(returned, torch.Tensor)
                first = self._first_graph(returned)
            if tensor is None or tensor.dim() == 0 or len(tensor) != 2 * self.n:
                if not given:
                    return
                raise InvalidArgument(
                    f"the model returned {what} of {_shape(returned)} for a batch of {2 * self.n} samples "
                    "(x and its moved copy); outputs= gives field types to tensors with the batch axis first"
                )
            assert returned is not None
            row = self.by_id.get(id(returned)) if self._known(returned) else None
            if not given:
                if row is None:
                    name = OUTPUT if self.up_to is None else self.up_to
                    if tensor is not returned:
                        self.node_rows.add(name)
                    spec = LayerSpec(
                        name, type(self.model).__name__, self.per_sample(tensor.shape), None, None, None
                    )
                    self._compare_as(spec, "output", *self._field(name, "output", tensor), tensor, first)
                    self.output_name = name
                return
            assert part is not None
            field = Scalars(nodes=None) if part.field is None else part.field
            how = f"{field!r} (outputs=)" if part.field is not None else "unchanged (outputs=)"
            if tensor is not returned and field.nodes == 0:  # per node of graphs
                field = _nodes_on(field, 1)
            problem = _misfit(self.element, field, tensor[: self.n])
            if problem is not None:
                raise InvalidArgument(
                    f"outputs gives {what} of shape {tuple(tensor[: self.n].shape)} the field type "
                    f"{field!r}, which does not fit it ({problem}); pass the field type of each output"
                )
            if row is not None:  # a layer returned it: compared by the outputs' field type, unless named
                if self._named_row(row) is None:
                    self._compare_as(self.compared[row].spec, "output", field, how, tensor, first)
                continue
            name = OUTPUT if part.path[0] == "whole" else f"({what})"
            if tensor is not returned:
                self.node_rows.add(name)
            spec = LayerSpec(name, type(self.model).__name__, self.per_sample(tensor.shape), None, None, None)
            self._compare_as(spec, "output", field, how, tensor, first)
            if i > 0:  # only the first output is run again alone (``passes._interaction``)
                self.firsts.pop(name)
            else:
                self.output_name = name

    def done(self) -> None:
        """Refuse outputs whose axis of points is ambiguous, all at once, with the field types to name;
        and a profile that compared nothing (it could not fail)."""
        if not self.ambiguous and not any(c.sink is not None for c in self.compared.values()):
            why = next((how for _, how in self.read.values()), "no layer ran")
            raise InvalidArgument(
                f"no layer's output was compared, so the profile could not fail; the first says: {why}"
            )
        if not self.ambiguous:
            return
        shown = "; ".join(f"{name!r} {shape}, axes {axes}" for name, shape, axes in self.ambiguous[:_LISTED])
        more = len(self.ambiguous) - _LISTED
        if more > 0:
            shown += f"; and {more} more"
        raise InvalidArgument(
            f"the profile reads the axis of points of a layer's output as the axis with {self.points} "
            f"entries (the inputs' number of points), but {len(self.ambiguous)} output"
            f"{'s have' if len(self.ambiguous) > 1 else ' has'} several: {shown}. Name their field types "
            f"in fields= (a container's name covers the layers in it): if they hold pairs of points (both "
            f"axes reorder), fields={self._suggested()}; if one of the axes holds features, Scalars(nodes=) "
            "the other; or profile with a number of points that no other axis has"
        )

    def _suggested(self) -> str:
        """``fields=`` for the ambiguous layers read as pairs of points: each by the largest container
        whose layers are all ambiguous alike (the first two such axes of each)."""
        pairs = {name: (axes[0], axes[1]) for name, _, axes in self.ambiguous}
        layers = [name for name, c in self.compared.items() if c.spec.type != JUNCTION]
        chosen: dict[str, tuple[int, int]] = {}
        for name, axes in pairs.items():
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                inside = [n for n in layers if n == prefix or n.startswith(prefix + ".")]
                if all(pairs.get(n) == axes for n in inside):
                    if not any(prefix == c or prefix.startswith(c + ".") for c in chosen):
                        chosen[prefix] = axes
                    break
        return "{" + ", ".join(f"{k!r}: Adjacency(nodes={a})" for k, a in chosen.items()) + "}"

    # -- the rows -----------------------------------------------------------------------------------

    def judged(
        self, pool: LayerSums, request: LayerRequest, tolerance: Tolerance, make: Callable[..., L]
    ) -> tuple[L, ...]:
        """Every row judged; a failing one given the element's words for it. A tensor computed in
        ``forward`` between layers has a row only where it is the first failure (as on grids)."""
        verdicts = _verdicts({name: c.sink for name, c in self.compared.items()}, tolerance)
        rows: list[Any] = []
        failed = False
        for name, compared in self.compared.items():
            field, how = self.read[name]
            junction = compared.spec.type == JUNCTION
            common: dict[str, Any] = dict(
                name=name, type=compared.spec.type, output_shape=compared.spec.shape, stride=None,
                divisible=True,
            )  # fmt: skip
            if compared.sink is None:
                if not junction:
                    rows.append(make(**common, output_element=None, error=math.nan, passed=True, note=how,
                                     compared=False))  # fmt: skip
                continue
            error, passed, _ = verdicts[name]
            if junction and (passed or failed):
                continue
            cause = fix = None
            if not passed:
                cause, fix, failed = causes.NO_SYMMETRY, self._fix(name, field, junction, rows), True
                fix += self._graphs(compared.sink, tolerance)
            rows.append(make(**common, output_element=self.element, error=error, passed=passed, cause=cause,
                             fix=fix, field=how))  # fmt: skip
        return tuple(rows)

    def _graphs(self, sink: Any, tolerance: Tolerance) -> str:
        """For a Batch of graphs: which graph of x fails worst, and how many fail."""
        if self.counts is None or not isinstance(sink, Measured) or self.n < 2:
            return ""
        sums = sink.sums()
        errors, absolute = sample_errors(sums.diff_sq, sums.ref_sq, sums.count, sums.scale)
        failing = int((~within(errors, absolute, tolerance)).sum())
        worst = int(errors[0].argmax())
        return f" (worst: graph {worst} of x, {self.counts[worst]} nodes; {failing} of {self.n} graphs fail)"

    def _fix(self, name: str, field: Field | None, junction: bool, before: list[Any]) -> str:
        """What a failing row means, in the element's words (``Action.failure_hint``)."""
        element = self.element
        hint = element.failure_hint(
            f"the input of {name.removesuffix(' (input)')}" if junction else name, field
        )
        if name in self.edge_rows and element.only_reorders:  # not pooled: one row an edge, in order
            hint = (
                f"the per-edge output ({name}) changes when the nodes are reordered: the edges keep their "
                "order (edge_index is relabelled), so it reads the nodes' labels (their index in the Batch) "
                "where it should read what each edge joins"
            )
        if hint is None:
            hint = f"{name} does not follow {element!r}, while the rows before it do"
        if junction:
            layer = name.removesuffix(" (input)")
            previous = next((row.name for row in reversed(before) if row.type != JUNCTION), None)
            where = f"between {previous} and {layer}" if previous is not None else f"before {layer}"
            return f"{hint}. {causes.in_forward_code(where)}"
        return hint


def _misfit(element: Any, field: Field, sample: torch.Tensor) -> str | None:
    """Why ``element`` cannot move ``sample`` (one half of a row) as ``field``, or None."""
    try:
        field.check(sample)
        if isinstance(field, Adjacency):
            field.node_axes(sample)
        moved = guarded_act(element, sample[:1], field)
    except InvalidArgument as exc:
        return str(exc)
    if not isinstance(moved, torch.Tensor) or moved.shape != sample[:1].shape:
        return f"{element!r} does not keep its shape"
    return None


def _nodes_on(field: Field, axis: int) -> Field:
    """``field`` with its points on ``axis``."""
    moved = copy.copy(field)
    moved.nodes = axis
    return moved


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _one_graph(nodes: Any) -> Any:
    """The axis of points of one graph's tensor ``(nodes, ...)``, given theirs in ``(graphs, nodes, ...)``."""
    if isinstance(nodes, tuple):
        return tuple(_one_graph(a) for a in nodes)
    return nodes - 1 if nodes > 0 else nodes
