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
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from equivariance._engine import causes
from equivariance._engine.arguments import OUTPUT, LayerRequest
from equivariance._engine.diagnosis import JUNCTION
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
from equivariance.fields import Adjacency, Field, Scalars
from equivariance.tolerances import Tolerance

L = TypeVar("L")
UNBATCHED = "no batch axis first"
"""How the note of a row without the batch axis first begins (its shape is the whole tensor's)."""
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
        # a Batch of graphs: its nodes, whose per-node tensors are read as (graphs, nodes a graph, ...)
        self.nodes = sum(passes.x.nodes()) if isinstance(passes.x, Graphs) else None
        self.node_rows: set[str] = set()

    def on_output(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """A layer's output; a per-node tensor of graphs first read as ``(graphs, nodes a graph, ...)``
        (its input is then not read for a row of its own)."""
        viewed = self._by_graph(tensor, f"layer {name!r}")
        if viewed is not tensor:
            self.node_rows.add(name)
            inputs = ()
        super().on_output(name, inputs, viewed)
        self._see(tensor)
        self.by_id[id(tensor)] = name

    def _by_graph(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """A per-node tensor of a Batch of graphs ``(nodes, ...)`` as ``(graphs, nodes a graph, ...)``."""
        if self.nodes is None or len(tensor) != 2 * self.nodes or self.nodes == self.n:
            return tensor
        if self.points is None:
            raise InvalidArgument(
                f"{what} returned a per-node tensor of shape {tuple(tensor.shape)} for graphs of different "
                "sizes; a profile compares the graphs of one size at a time: pass graphs of one size"
            )
        return tensor.reshape(2 * self.n, self.points, *tensor.shape[1:])

    def other_sizes(self) -> Hook | None:
        return self._unbatched

    def _unbatched(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """A layer's output without the batch axis first (nodes of all samples flattened, ``(B * N,
        C)``, or a layout of its own): a row not compared, which says so (never a guess of its axes)."""
        shape = tuple(tensor.shape)
        note = (
            f"{UNBATCHED} (its shape is shown whole; the batch of x and its moved copy has {2 * self.n} "
            "samples): a layer whose tensors put the samples elsewhere (the nodes of all samples "
            "flattened, as in e3nn's and torch_geometric's layers) is not read"
        )
        spec = LayerSpec(name, self.types.get(name, type(self.model).__name__), shape, None, None, None)
        self.read[name] = (None, note)
        self.compared[name] = Compared(dataclasses.replace(spec, ambiguous=note), None, "output")

    # -- each row's field type ----------------------------------------------------------------------

    def _named(self, name: str) -> tuple[str, Field] | None:
        """The field type ``fields=`` gives a layer: its own name's, else its closest container's."""
        keys = [k for k in self.named if name == k or name.startswith(k + ".")]
        if not keys:
            return None
        key = max(keys, key=len)
        return key, self.named[key]

    def _field(self, name: str, kind: str, tensor: torch.Tensor) -> tuple[Field | None, str]:
        """A row's field type and how it was read (None: not compared, and why)."""
        named = None if kind == "input" else self._named(name)
        node_row = name in self.node_rows
        if named is not None:
            key, field = named
            shown = repr(field)
            if node_row and field.nodes == 0:  # a graph's per-node field type: nodes after the graphs
                field = _nodes_on(field, 1)
            problem = _misfit(self.element, field, tensor[: self.n])
            if problem is not None:
                raise InvalidArgument(
                    f"fields[{key!r}] gives layer {name!r} the field type {field!r}, but its output of shape "
                    f"{tuple(tensor[: self.n].shape)} does not fit it ({problem}); name the field type of "
                    "what the layer returns (its first tensor), or leave the layer out of fields="
                )
            return field, shown
        element = self.element
        if not element.only_reorders:
            return None, (
                f"field type not named: {element.noun} {element} moves a tensor by what it holds "
                "(positions, vectors and scalars move differently), which its shape does not say; name it "
                "in fields=, e.g. fields={'encoder': Scalars(), 'head': Vectors()} (a container's name "
                "covers its layers)"
            )
        if node_row:
            return Scalars(nodes=1), "per node"
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

    # -- the pass's rows ----------------------------------------------------------------------------

    def _add(self, record: Recorded, tensor: torch.Tensor, kind: str) -> LayerSpec:
        spec = LayerSpec(record.name, record.type, record.shape, None, None, None)
        field, how = self._field(record.name, kind, tensor)
        self._compare_as(spec, kind, field, how, tensor)
        return spec

    def _compare_as(
        self, spec: LayerSpec, kind: str, field: Field | None, how: str, tensor: torch.Tensor
    ) -> None:
        """A row's two halves compared as ``field`` (not compared where it is None)."""
        name, n = spec.name, self.n
        self.read[name] = (field, how)
        self.firsts[name] = tensor[:1].detach().clone()
        self.by_id[id(tensor)] = name
        if field is None:
            self.compared[name] = Compared(dataclasses.replace(spec, ambiguous=how), None, kind)
            return
        both = tensor.detach()
        if not both.is_floating_point():
            both = both.double()
        base = both[:n].reshape(n, -1)
        part = Part(name, ("whole", 0), field)
        parts = OutputParts(field, (part,), (base.shape[1],), ((n, *both.shape[1:]),), (False,))
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
                tensor = self._by_graph(tensor, f"the model's {what}")
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
                    self._compare_as(spec, "output", *self._field(name, "output", tensor), tensor)
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
                if self._named(row) is None:
                    self._compare_as(self.compared[row].spec, "output", field, how, tensor)
                continue
            name = OUTPUT if part.path[0] == "whole" else f"({what})"
            spec = LayerSpec(name, type(self.model).__name__, self.per_sample(tensor.shape), None, None, None)
            self._compare_as(spec, "output", field, how, tensor)
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
            rows.append(make(**common, output_element=self.element, error=error, passed=passed, cause=cause,
                             fix=fix, field=how))  # fmt: skip
        return tuple(rows)

    def _fix(self, name: str, field: Field | None, junction: bool, before: list[Any]) -> str:
        """What a failing row means, in the element's words (``Action.failure_hint``)."""
        element = self.element
        hint = element.failure_hint(
            f"the input of {name.removesuffix(' (input)')}" if junction else name, field
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
