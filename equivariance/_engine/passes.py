"""The profile's pass: ``x`` and its moved copy through the model, each profiled layer's two outputs
compared as the layer returns them.

One batch of ``2N`` by default. Where the first failure is not one its geometry explains, ``x[:1]``
runs alone up to it; where that sample's tensor there is not the batch's, the samples of a batch
influence each other, and ``x`` and its moved copy run in two passes of ``N``, joined layer by layer
into the same rows. It runs inside a ``Runner``'s isolation; docs/diagnosing.md describes it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from equivariance._engine import causes
from equivariance._engine.anatomy import KEEP_ANY
from equivariance._engine.arguments import NONE_RAN, OUTPUT, LayerRequest
from equivariance._engine.copies import ArgumentCopies, GraphCopies
from equivariance._engine.diagnosis import JUNCTION, Context, blurring, explained, first_cause, junction_name
from equivariance._engine.forward import call_until
from equivariance._engine.grids import Stride, divides, stated_stride, whole_samples
from equivariance._engine.isolation import snapshot
from equivariance._engine.judge import Sums, margins_that_pass, sample_errors, sample_scale, within
from equivariance._engine.layer_sums import LayerSums, PooledLayer
from equivariance._engine.layers import (
    CHANNELS_FIRST_OPS,
    LAYOUT_KEEPING_OPS,
    LayerInference,
    LayerSpec,
    Recorded,
    view_permutation,
)
from equivariance._engine.parts import Arguments, Call, Graphs
from equivariance._engine.sinks import FlatSums, GridSums
from equivariance.actions import Action, Boundary, Grid, guarded_act
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst
from equivariance.shifts import Shift
from equivariance.tolerances import Tolerance

Inputs = torch.Tensor | Call
"""What the model is given: one tensor on a grid, or several inputs (a call)."""
Hook = Callable[[str, Any, torch.Tensor], None]
"""What a tapped layer's output is handed to: its name, its inputs and its output."""
L = TypeVar("L")


def profile_layers(
    request: LayerRequest,
    tolerance: Tolerance,
    make: Callable[..., L],
    reading: type[LayerPass] | None = None,
) -> tuple[tuple[L, ...], str | None]:
    """Every profiled layer's row (made by ``make`` from its fields), judged and given its cause; and
    why ``x`` and its moved copy ran in two passes, or None for the one batch. ``reading``: how each
    layer's output is read and judged, on its grid (``LayerPass``, the default) or by its field type
    (for several inputs, ``points.FieldPass``)."""
    reading = reading or LayerPass
    element = request.element
    blurs = frozenset(
        name
        for name, module in request.layers.modules.items()
        if isinstance(element, Shift) and blurring(module)
    )
    with Taps(request.layers.modules) as taps:
        passes = Passes(request, taps)
        layer_pass, pool = _measured(passes, blurs, not request.layers.named, reading)
        rows = layer_pass.judged(pool, request, tolerance, make)
        reason = _interaction(passes, layer_pass, _first_failure(rows), tolerance)
        if reason is not None:  # the halves of the one batch influence each other: two passes
            passes.separate = True
            layer_pass, pool = _measured(passes, blurs, not request.layers.named, reading)
            rows = layer_pass.judged(pool, request, tolerance, make)
    return rows, reason


def _first_failure(rows: Sequence[Any]) -> Any:
    return next((row for row in rows if not row.passed), None)


class Taps:
    """Forward hooks on the profiled layers, active within ``with`` (registered once for both
    passes): in a pass begun with ``start``, each layer's first output with the batch dim of the
    pass goes to ``on_output(name, inputs, output)``."""

    def __init__(self, targets: dict[str, nn.Module]) -> None:
        self.targets = targets
        self.on_output: Hook = lambda *_: None
        self.batch, self.seen = 0, set[str]()
        self.sizes: frozenset[int] = frozenset()
        self.other: Hook | None = None
        self.handles: list[Any] = []
        self.returned: Any = None  # what the layer handed to on_output returned whole (a tuple of tensors)

    def start(self, batch: int, on_output: Hook, nodes: int | None = None, other: Hook | None = None) -> None:
        """A new pass of ``batch`` samples; ``nodes``: the nodes of a Batch of graphs, whose per-node
        outputs have them first; ``other``: where a layer's output of another first size goes."""
        self.batch, self.seen, self.on_output, self.other = batch, set(), on_output, other
        self.elsewhere: set[str] = set()
        self.sizes = frozenset({batch} if nodes is None else {batch, nodes})

    def hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(_module: nn.Module, inputs: Any, out: Any) -> None:
            tensor = first_tensor(out)
            if (
                name not in self.seen
                and tensor is not None
                and tensor.dim() >= 1
                and tensor.shape[0] in self.sizes
            ):
                self.seen.add(name)
                self.returned = out
                self.on_output(name, inputs, tensor)
            elif self.other is not None and name not in self.seen | self.elsewhere and tensor is not None:
                self.elsewhere.add(name)  # once; an output with the batch axis first is still read after it
                self.returned = out
                self.other(name, inputs, tensor)

        return record

    def __enter__(self) -> Taps:
        self.handles = [m.register_forward_hook(self.hook(name)) for name, m in self.targets.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


class Passes:
    """How ``x`` and its moved copy go through the model: one batch of ``2N`` (the default), or, for a
    model whose samples interact (``separate``), two passes of ``N`` whose outputs are joined layer
    by layer into what the one batch would have given, had the halves not influenced each other.

    In two passes, each profiled layer's input and output for ``x`` are kept (copy-on-write) from
    the first pass, and its hook in the second joins them to those for the moved copy before the
    profile's pass (``LayerPass``) sees them: the same tensor joins to the same joined tensor (a layer's
    input is the tensor an earlier layer returned), a tensor written to in place since is joined
    again in place, and a permuted view of a layer's input is the same view of the joined input, so
    layouts are inferred and rows shared as in one batch.
    """

    def __init__(self, request: LayerRequest, taps: Taps) -> None:
        self.request = request
        self.model, self.x, self.element, self.boundary = (
            request.model,
            request.inputs,
            request.element,
            request.boundary,
        )
        self.stop, self.up_to, self.taps = request.layers.stop, request.layers.up_to, taps
        self.layouts = request.layers.layouts
        self.separate = False

    def batch(self) -> Inputs:
        """``x`` and its moved copy, ``(2N, ...)``: what the one pass gives the model (for several
        inputs, the call of ``2N`` samples, each tensor moved by its field type)."""
        if isinstance(self.x, Arguments):
            moved = ArgumentCopies(self.x, [self.element]).take(self.samples, self.samples * 0)
            return self.x.with_tensors([torch.cat(pair) for pair in zip(self.x.tensors, moved.tensors)])
        if isinstance(self.x, Graphs):
            moved_graphs = GraphCopies(self.x, [self.element]).take(self.samples, self.samples * 0)
            return Graphs(self.x.graphs + moved_graphs.graphs, self.x.fields, self.x.batch)
        return torch.cat(
            [self.x, guarded_act(self.element, self.x, Grid.of_input(self.x.dim() - 2, self.boundary))]
        )

    @property
    def samples(self) -> torch.Tensor:
        return torch.arange(len(self.x))

    def run(self, batch: Inputs, on_output: Hook, other: Hook | None = None) -> Any:
        """The model's output for ``batch`` (its layers' outputs handed to ``on_output``, those without
        the batch axis first to ``other``, in one batch)."""
        if not self.separate:
            self.taps.start(len(batch), on_output, _nodes(batch), other)
            return _call(self.model, batch, self.stop, self.up_to)
        n = len(self.x)
        first: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}

        def keep(name: str, inputs: Any, tensor: torch.Tensor) -> None:
            source = first_tensor(inputs)
            first[name] = (None if source is None else snapshot(source), snapshot(tensor))

        alone = rows_of(batch, slice(0, n))
        self.taps.start(n, keep, _nodes(alone))
        result_x = _call(self.model, alone, self.stop, self.up_to, "x alone")
        for_x = first_tensor(result_x)
        moved = rows_of(batch, slice(n, None))
        joiner = Joiner(first, list(zip(tensors_of(moved), tensors_of(batch))), on_output)
        self.taps.start(n, joiner.on_output, _nodes(moved))
        for_moved = _call(self.model, moved, self.stop, self.up_to, "the moved copy of x alone")
        tensor = first_tensor(for_moved)
        if for_x is None or tensor is None or for_x.shape != tensor.shape:
            return None
        several = isinstance(for_moved, (tuple, list)) and isinstance(result_x, (tuple, list))
        if several and len(for_moved) == len(result_x):  # several outputs: each tensor joined
            return tuple(_joined(joiner, a, b) for a, b in zip(result_x, for_moved))
        return joiner.join(snapshot(for_x), tensor)


class Joiner:
    """The second of two passes: each layer's outputs for the moved copy joined to those the first
    pass kept for ``x`` (see ``Passes``), then handed to ``on_output`` as one batch's."""

    def __init__(
        self,
        first: dict[str, tuple[torch.Tensor | None, torch.Tensor]],
        inputs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        on_output: Hook,
    ) -> None:
        self.first, self.on = first, on_output
        # by id of a tensor of the second pass: the tensor itself (weakly), its version, its join
        self.joined: dict[int, tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = {}
        for moved, batch in inputs:  # the model's inputs of the second pass: the one batch's
            self._remember(moved, batch)

    def _remember(self, tensor: torch.Tensor, joined: torch.Tensor) -> torch.Tensor:
        self.joined[id(tensor)] = (weakref.ref(tensor), tensor._version, joined)
        return joined

    def join(self, for_x: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """``[for_x; tensor]``: the same joined tensor for the same ``tensor``, brought up to date in
        place where ``tensor`` was written to since."""
        found = self.joined.get(id(tensor))
        if found is not None and found[0]() is tensor:
            _, version, joined = found
            if version != tensor._version:
                n = len(for_x)
                with torch.no_grad():
                    joined[:n].copy_(for_x)
                    joined[n:].copy_(tensor)
                self.joined[id(tensor)] = (found[0], tensor._version, joined)
            return joined
        return self._remember(tensor, torch.cat([for_x, tensor]))

    def on_output(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        kept = self.first.get(name)
        if kept is None or kept[1].shape != tensor.shape:  # not run for x: another path through forward
            return
        source_x, output_x = kept
        source = first_tensor(inputs)
        joined_source = None
        if source is not None and source_x is not None and source_x.shape == source.shape:
            joined_source = self.join(source_x, source)
        permutation = None if source is None else view_permutation(source, tensor)
        if tensor is source:
            joined = joined_source
        elif joined_source is not None and permutation is not None:
            joined = self._remember(tensor, joined_source.permute(permutation))
        else:
            joined = self.join(output_x, tensor)
        if joined is not None:
            self.on(name, () if joined_source is None else (joined_source,), joined)


def _joined(joiner: Joiner, for_x: Any, moved: Any) -> Any:
    """Two passes' outputs joined where both are tensors of one shape (else None)."""
    if isinstance(for_x, torch.Tensor) and isinstance(moved, torch.Tensor) and for_x.shape == moved.shape:
        return joiner.join(snapshot(for_x), moved)
    return None


def _measured(
    passes: Passes, blurs: frozenset[str], junctions: bool, reading: type[LayerPass]
) -> tuple[LayerPass, LayerSums]:
    """Every profiled layer's two outputs compared, in a pool of sums: the pass and the pool."""
    pool = LayerSums(len(passes.x))
    batch = passes.batch()
    layer_pass = reading(passes, batch, pool, junctions=junctions, blurs=blurs)
    layer_pass.output(passes.run(batch, layer_pass.on_output, layer_pass.other_sizes()))
    if not layer_pass.compared:
        raise InvalidArgument(NONE_RAN)
    layer_pass.done()
    return layer_pass, pool


def _interaction(passes: Passes, layer_pass: LayerPass, first: Any, tolerance: Tolerance) -> str | None:
    """Why the first failure of the one batch may come from the batch (its halves influence each
    other), or None.

    Where no layer fails, or the first failure's cause is geometric
    (``causes.GEOMETRIC``), nothing is run. Otherwise the model runs once
    more on ``x[:1]`` alone, up to the first failing layer, and that row's
    tensor (the layer's output, the input computed for it in ``forward``, or
    the model's output) is compared with the one batch's for that sample,
    kept as the layer returned it: the same model on the same sample, in a
    batch of one instead of beside the others and its moved copy.
    """
    if first is None or first.cause in causes.GEOMETRIC or first.name not in layer_pass.firsts:
        return None
    joint = layer_pass.firsts[first.name]
    compared = layer_pass.compared[first.name]
    layer, pick = layer_pass.source(
        first.name.removesuffix(" (input)") if compared.kind == "input" else first.name
    )
    module = passes.taps.targets.get(layer) if first.name != layer_pass.output_name else None
    captured: list[torch.Tensor] = []

    def capture(name: str, inputs: Any, tensor: torch.Tensor) -> None:
        read = first_tensor(inputs) if compared.kind == "input" else pick(passes.taps.returned, tensor)
        if name == layer and not captured and read is not None:
            captured.append(read.detach().clone())

    alone = rows_of(passes.x, slice(0, 1))
    passes.taps.start(1, capture, _nodes(alone))
    try:
        result, _ = call_until(passes.model, alone, module or passes.stop)
    except Exception as exc:  # a model that needs more than one sample: two passes of N
        return (
            f"the model raised {type(exc).__name__} on x[:1] alone ({exc}), so its outputs may depend on "
            "the batch a sample is in; the profile ran x and its moved copy in two separate passes"
        )
    read = first_tensor(result) if module is None else (captured[0] if captured else None)
    if read is None or read.shape != joint.shape:
        return None
    diff = (read.detach().double() - joint.double()).square().sum().reshape(1, 1)
    ref = joint.double().square().sum().reshape(1, 1)
    errors, absolute = sample_errors(diff, ref, torch.tensor([[float(max(1, joint.numel()))]]))
    # kernels that round differently by batch size stay far below the tolerance; a batch statistic or
    # attention across the batch does not
    if bool(within(errors, absolute, tolerance).all()):
        return None
    kind = "absolute" if bool(absolute.any()) else "relative"
    return (
        f"the first failing row, {first.name}, gives x[:1] run alone another value than in the batch of "
        f"x and its moved copy (a difference of {float(errors.max()):.1e}, {kind}): "
        f"{causes.BATCH_INTERACTION}, so the profile ran x and its moved copy in two separate passes, "
        "joined layer by layer"
    )


@dataclass(frozen=True)
class Measured:
    """A row's sums, taken as the layer returned (by a sink that is then let go)."""

    taken: Sums

    def sums(self) -> Sums:
        return self.taken


Sink = GridSums | FlatSums | Measured | PooledLayer | None


@dataclass
class Compared:
    """A tensor the pass compares: its spec, its sink, and what it was read from."""

    spec: LayerSpec
    sink: Sink
    kind: str  # "output", "input" (a junction) or "unblurred" (the input, subsampled)
    same_as: str | None = None  # the tensor whose comparison it shares (the same elements on its grid)


class LayerPass:
    """The profile's pass: ``x`` and its moved copy as one batch of ``2N``; each profiled layer's
    output (and a tensor computed between layers, a blurring layer's input) is read as the layer
    returns it, its layout inferred from what came before, and its two halves compared at once.

    A tensor the pass has seen is known by ``id`` while it lives (a weak reference says whether it
    still does), so the pass keeps no layer's output alive.
    """

    def __init__(
        self, passes: Passes, batch: Inputs, pool: LayerSums, *, junctions: bool, blurs: frozenset[str]
    ) -> None:
        self.model, self.taps, self.element, self.boundary = (
            passes.model,
            passes.taps,
            passes.element,
            passes.boundary,
        )
        self.stop, self.up_to, self.pool = passes.stop, passes.up_to, pool
        self.n = len(passes.x)
        self.junctions, self.blurs = junctions, blurs
        targets = passes.taps.targets
        self.types = {name: type(module).__name__ for name, module in targets.items()}
        self.seen: dict[int, weakref.ref[torch.Tensor]] = {}
        for tensor in tensors_of(batch):
            self._see(tensor)
        self._start(passes, batch)
        self.compared: dict[str, Compared] = {}
        # by id of a tensor the pass has seen: its grid view's signature (``_signature``) and what it is
        self.views: dict[int, tuple[tuple[Any, ...] | None, Compared]] = {}
        self.last: torch.Tensor | None = None  # the last layer output recorded
        # each tensor's x[:1], as it was read (a small copy): is its sample alone the same?
        self.firsts: dict[str, torch.Tensor] = {}
        self.output_name: str | None = None  # the model's output, where no layer returned it
        self.samples = torch.arange(self.n)
        self.zero = torch.zeros(self.n, dtype=torch.long)

    def _start(self, passes: Passes, batch: Inputs) -> None:
        """What reading the layers on their grids needs: the layers that keep or set a layout, their
        strides, the inference of each output's layout."""
        assert isinstance(passes.x, torch.Tensor)
        assert isinstance(batch, torch.Tensor)
        targets = passes.taps.targets
        self.first = {name for name, module in targets.items() if isinstance(module, CHANNELS_FIRST_OPS)}
        self.keeps = {name for name, module in targets.items() if isinstance(module, LAYOUT_KEEPING_OPS)}
        self.stated = {name: stated_stride(module, passes.x.dim() - 2) for name, module in targets.items()}
        self.inference = LayerInference((self.n, *passes.x.shape[1:]), id(batch), passes.layouts)

    def done(self) -> None:
        """After the pass: nothing more to do on grids (a reading by field type checks what it met)."""

    def other_sizes(self) -> Hook | None:
        """Where outputs without the batch axis first go: nowhere on grids (they are not layers' maps)."""
        return None

    def source(self, row: str) -> tuple[str, Callable[[Any, torch.Tensor], torch.Tensor | None]]:
        """The layer whose output a row compares, and how to take the row's tensor from what the layer
        returned and its first tensor (on grids: the row is the layer's, its first tensor)."""
        return row, lambda _returned, tensor: tensor

    def judged(
        self, pool: LayerSums, request: LayerRequest, tolerance: Tolerance, make: Callable[..., L]
    ) -> tuple[L, ...]:
        """The rows of the pass: every layer judged, and each failure given its cause."""
        return _judged(self, pool, request, tolerance, make)

    def _see(self, tensor: torch.Tensor) -> None:
        self.seen[id(tensor)] = weakref.ref(tensor)

    def _known(self, tensor: torch.Tensor) -> bool:
        ref = self.seen.get(id(tensor))
        return ref is not None and ref() is tensor

    def per_sample(self, shape: torch.Size) -> tuple[int, ...]:
        return (self.n, *shape[1:])

    def on_output(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """The hook of the first pass: new rows, inferred and compared."""
        source = first_tensor(inputs)
        kind = self.types.get(name, type(self.model).__name__)
        if self.junctions and source is not None and self._is_junction(source):
            # computed from earlier tensors (a residual sum, an activation): it keeps their layout
            shape = self.per_sample(source.shape)
            record = Recorded(
                junction_name(name), JUNCTION, shape, id(source), None, shape, None, keeps_layout=True
            )
            self._add(record, source, "input")
            self._see(source)  # the same computed tensor may feed several layers: one row
        self._see(tensor)
        self.last = tensor
        if source is None:
            record = Recorded(
                name, kind, self.per_sample(tensor.shape), id(tensor), None, None, None, name in self.first,
                name in self.keeps, self.stated.get(name),
            )  # fmt: skip
        else:
            record = Recorded(
                name, kind, self.per_sample(tensor.shape), id(tensor),
                id(source) if self._known(source) else None, self.per_sample(source.shape),
                view_permutation(source, tensor), name in self.first, name in self.keeps,
                self.stated.get(name),
            )  # fmt: skip
        spec = self._add(record, tensor, "output")
        if name in self.blurs and source is not None:
            self._unblurred(spec, source)

    def output(self, result: Any) -> None:
        """The model's output (or the ``up_to`` layer's) compared last, unless a layer returned it."""
        last = OUTPUT if self.up_to is None else self.up_to
        output = first_tensor(result)
        if output is None or output.dim() < 1 or len(output) != 2 * self.n:
            return
        if last in self.compared:
            return
        if self.last is not None and (
            self.last is output or (self.last.shape == output.shape and torch.equal(self.last, output))
        ):
            return
        kind = type(self.stop).__name__ if self.stop is not None else type(self.model).__name__
        shape = self.per_sample(output.shape)
        record = Recorded(
            last, self.types.get(last, kind), shape, id(output), None, shape, None, keeps_layout=True
        )
        self._add(record, output, "output")
        self.output_name = last

    def _is_junction(self, source: torch.Tensor) -> bool:
        """A layer's input that no recorded layer returned: computed in ``forward`` (a sum, a parameter
        added)."""
        return (
            not self._known(source)
            and source.dim() >= 2
            and source.shape[0] == 2 * self.n
            and source.dtype.is_floating_point
        )

    def _add(self, record: Recorded, tensor: torch.Tensor, kind: str) -> LayerSpec:
        spec = self.inference.add(record)
        self.firsts[spec.name] = tensor[:1].detach().clone()
        producer = self.views.get(record.input_id) if record.input_id is not None else None
        self.views.pop(record.output_id, None)
        if spec.ambiguous is not None:
            self.compared[spec.name] = Compared(spec, None, kind)
            return spec
        view = _grid_view(spec, tensor)
        seen = _signature(view)
        if seen is not None and producer is not None and producer[0] == seen:
            # the same elements on the same grid as the tensor it was computed from, not written to since
            # (a permuted view, an Identity): that tensor's comparison is this one's
            self.compared[spec.name] = Compared(spec, producer[1].sink, kind, same_as=producer[1].spec.name)
            self.views[record.output_id] = (seen, producer[1])
            return spec
        compared = self.compared[spec.name] = Compared(spec, self._sink(spec, view), kind)
        self.views[record.output_id] = (seen, compared)
        self._compare(compared, view)
        return spec

    def _sink(self, spec: LayerSpec, both: torch.Tensor) -> Sink:
        """How a layer's output is compared: on its grid, or whole (no spatial dims); ``both``: its
        outputs for ``x`` and the moved input, viewed as that grid.

        A translation of the layer's grid (and a whole output) goes to the
        pool, which sums all layers together; other elements, and float64
        outputs that need scaling, get a sink of their own.
        """
        base = both[: self.n]
        scaled, per_sample = sample_scale(base) is not None, tuple(both.shape[1:])
        if spec.layout is None or spec.stride is None:
            return FlatSums(base, 1) if scaled else PooledLayer(self.pool, per_sample, both.dtype, None)
        d, element = len(spec.stride), self.element
        expected = _expected(element, spec.stride)
        # a shift is rounded to whole output samples: it acts on a grid of stride 1
        step = (1,) * d if isinstance(expected, Shift) else whole_samples(spec.stride)
        on_grid = Grid(d, step, self.boundary, spec.layout)
        spatial = tuple(both.shape[-d:])
        offsets: tuple[int, ...] | None
        if isinstance(expected, Shift):  # the same few shifts and sizes for most layers: worked out once
            offsets, region = _translated(tuple(expected), spatial, self.boundary)
        else:
            offsets, region = expected.translation(on_grid), expected.region(spatial, on_grid)
        if offsets is not None and not scaled:
            return PooledLayer(self.pool, per_sample, both.dtype, on_grid, offsets, region)
        return GridSums(base, [element], on_grid, (0,) * d, expected=[expected])

    def _compare(self, compared: Compared, tensor: torch.Tensor) -> None:
        """Both halves of a compared tensor (viewed as its grid) handed to its sink."""
        sink, name, n, element = compared.sink, compared.spec.name, self.n, self.element
        if sink is None or isinstance(sink, Measured):
            return

        def describe(which: str = "the moved input") -> str:
            where = f"the input of {name!r}" if compared.kind == "unblurred" else f"layer {name!r}"
            return f"{where} for {which if which == 'x' else f'the input moved by {element}'}"

        if isinstance(sink, PooledLayer):
            sink.measure(tensor, describe)
        else:
            sink.add(tensor[n:], slice(0, n), self.samples, self.zero, describe)

    def _unblurred(self, spec: LayerSpec, source: torch.Tensor) -> None:
        """For a layer that blurs before it subsamples: its input subsampled by the same step without
        the blur, compared like its output, to say how much of the aliasing the blur removes.

        The step is the ratio of the layer's input and output sizes; a layer whose sizes give none, or
        whose input or output is not a channels-first float map, is left out.
        """
        if spec.stride is None or spec.spatial is None:
            return
        d = len(spec.spatial)
        if not isinstance(spec.layout, ChannelsFirst) or source.dim() != d + 2:
            return
        if not source.is_floating_point():
            return
        steps = tuple(round(n / m) for n, m in zip(source.shape[2:], spec.spatial))
        if any(s < 1 for s in steps) or all(s == 1 for s in steps):
            return
        key = (slice(None), slice(None), *(slice(None, None, s) for s in steps))
        base = source[: self.n][key]
        if sample_scale(base) is not None:
            return
        assert isinstance(self.element, Shift)  # only shifts look for blurring layers
        moved = tuple(_divided(tuple(self.element), spec.stride))
        offsets, region = _translated(moved, tuple(base.shape[2:]), self.boundary)
        grid = Grid(d, (1,) * d, self.boundary)
        sink = PooledLayer(self.pool, tuple(base.shape[1:]), base.dtype, grid, offsets, region)
        name = _unblurred_name(spec.name)
        compared = Compared(dataclasses.replace(spec, name=name), sink, "unblurred")
        self.compared[name] = compared
        self._compare(compared, source[key])


def _signature(view: torch.Tensor) -> tuple[Any, ...] | None:
    """Where a view's elements are, and the version of its memory (in-place writes change it); None
    for a tensor without a version counter (made in inference mode)."""
    try:
        version = view._version
    except RuntimeError:
        return None
    return view.data_ptr(), tuple(view.shape), view.stride(), view.dtype, view.device, version


def _unblurred_name(layer: str) -> str:
    """The key of a blurring layer's input subsampled without the blur (not a row of the profile)."""
    return f"{layer} (unblurred)"


def _grid_view(spec: LayerSpec, tensor: torch.Tensor) -> torch.Tensor:
    """A row's tensor as it is compared: floating point, viewed as the row's grid where it has one."""
    if not tensor.dtype.is_floating_point:
        tensor = tensor.double()
    if spec.layout is not None and spec.stride is not None:
        tensor = spec.layout.to_grid(tensor, len(spec.stride))
    return tensor


def _call(
    model: nn.Module, batch: Inputs, stop: nn.Module | None, up_to: str | None,
    what: str = "x and its moved copy, one batch",
) -> Any:  # fmt: skip
    try:
        # the taps were registered first, so an up_to layer that is profiled is recorded before its
        # hook stops the pass
        result, reached = call_until(model, batch, stop)
    except InvalidArgument:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise InvalidArgument(
            f"out of memory running {what.replace(', one batch', ' as one batch')} of {_shown(batch)} "
            f"on {_first(batch).device}: the profile compares each layer's two outputs as the layer returns "
            f"them; profile fewer samples (x[:{max(1, len(batch) // 4)}])"
        ) from exc
    except Exception as exc:
        first = _first(batch)
        raise InvalidArgument(
            f"the model raised {type(exc).__name__} on {what} of {_shown(batch)} "
            f"({first.dtype}, {first.device}): {exc}"
        ) from exc
    if not reached:
        raise InvalidArgument(
            f"up_to={up_to!r} names a layer that was never called during the forward pass, so the "
            "profile cannot stop after it; pass the name of a layer that the model's forward uses"
        )
    return result


def rows_of(inputs: Inputs, rows: slice) -> Inputs:
    """Some samples of the inputs (one tensor, or a call), copied: a model may write to them."""
    if isinstance(inputs, torch.Tensor):
        return inputs[rows].clone()
    return inputs.select(rows).snapshot()


def tensors_of(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors the model is given: the one tensor, or those of the call."""
    return [inputs] if isinstance(inputs, torch.Tensor) else inputs.tensors


def _nodes(inputs: Inputs) -> int | None:
    """The nodes of a Batch of graphs (its per-node tensors' first axis); None for other inputs."""
    return sum(inputs.nodes()) if isinstance(inputs, Graphs) else None


def _first(inputs: Inputs) -> torch.Tensor:
    return inputs if isinstance(inputs, torch.Tensor) else inputs.first


def _shown(inputs: Inputs) -> str:
    return f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else inputs.describe()


@functools.lru_cache(maxsize=1024)
def _translated(
    offsets: tuple[int, ...], spatial: tuple[int, ...], boundary: Boundary
) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """A shift's offsets and valid region on a grid of stride 1."""
    grid = Grid(len(offsets), (1,) * len(offsets), boundary)
    shift = Shift(offsets)
    return shift.translation(grid), shift.region(spatial, grid)


def _expected(element: Action, stride: Stride) -> Action:
    """The element a layer's output should undergo: a shift divided (or rounded) by the stride."""
    if not isinstance(element, Shift):
        return element
    return _divided(tuple(element), stride)


@functools.lru_cache(maxsize=1024)
def _divided(offsets: tuple[int, ...], stride: Stride) -> Shift:
    return Shift(tuple(round(o / s) for o, s in zip(offsets, stride)))


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _judged(
    layer_pass: LayerPass,
    pool: LayerSums,
    request: LayerRequest,
    tolerance: Tolerance,
    make: Callable[..., L],
) -> tuple[L, ...]:
    """The rows of a pass: every layer judged, and each failure given its cause."""
    read = [c for c in layer_pass.compared.values() if c.kind != "unblurred"]
    specs = [c.spec for c in read]
    sinks = {c.spec.name: c.sink for c in read}
    pooled = pool.judge(tolerance, keep=KEEP_ANY)
    rows = _rows(specs, sinks, pooled, request.element, tolerance, make)
    without_blur = {
        name.removesuffix(" (unblurred)"): pooled[c.sink][0]
        for name, c in layer_pass.compared.items()
        if c.kind == "unblurred" and isinstance(c.sink, PooledLayer)
    }
    spatial = {spec.name: spec.spatial for spec in specs if spec.spatial is not None}
    spatial_in = tuple(layer_pass.inference.spatial_in)
    context = Context(
        request.model,
        request.element,
        request.boundary,
        spatial_in,
        without_blur,
        request.layers.modules,
        spatial,
    )
    return explained(rows, context)  # type: ignore[type-var]


def _rows(
    specs: Sequence[LayerSpec],
    sinks: dict[str, Sink],
    pooled: dict[PooledLayer, tuple[float, bool, int | None]],
    element: Action,
    tolerance: Tolerance,
    make: Callable[..., L],
) -> list[L]:
    """Every layer's row: errors and verdicts of all compared layers at once (``pooled``: those of the
    pool's layers), a first cause for each failure."""
    verdicts = _verdicts(sinks, tolerance)
    rows = []
    for spec in specs:
        sink = sinks[spec.name]
        common = dict(name=spec.name, type=spec.type, output_shape=spec.shape)
        if sink is None:
            rows.append(make(**common, stride=None, output_element=None, divisible=True, error=math.nan,
                             passed=True, note=spec.ambiguous, compared=False))  # fmt: skip
            continue
        error, passed, border = pooled[sink] if isinstance(sink, PooledLayer) else verdicts[spec.name]
        if spec.layout is None or spec.stride is None:
            cause, fix = (None, None) if passed else (causes.SPATIAL_DIMS_GONE, causes.spatial_dims_gone())
            rows.append(make(**common, stride=None, output_element=None, divisible=True, error=error,
                             passed=passed, cause=cause, fix=fix))  # fmt: skip
            continue
        divisible = not isinstance(element, Shift) or divides(spec.stride, tuple(element))
        found = (None, None) if passed else first_cause(element, spec.stride, divisible, border)
        rows.append(make(
            **common, stride=spec.stride, output_element=_expected(element, spec.stride), divisible=divisible,
            error=error, passed=passed, border=border, cause=found[0], fix=found[1], layout=spec.layout.name,
            note=spec.inferred,
        ))  # fmt: skip
    return rows


def _verdicts(sinks: dict[str, Sink], tolerance: Tolerance) -> dict[str, tuple[float, bool, int | None]]:
    """The worst error of each layer with a sink of its own, whether every sample passes, and where a
    failing layer's error lies within a few samples of its borders: one computation for all."""
    own = {
        name: sink.sums() for name, sink in sinks.items() if isinstance(sink, (GridSums, FlatSums, Measured))
    }
    if not own:
        return {}
    sums = list(own.values())
    scales = [s.scale for s in sums]
    scale = None
    if any(s is not None for s in scales):
        scale = torch.cat([torch.ones_like(s.diff_sq) if c is None else c for s, c in zip(sums, scales)])
    errors, absolute = sample_errors(
        torch.cat([s.diff_sq for s in sums]),
        torch.cat([s.ref_sq for s in sums]),
        torch.cat([s.count for s in sums]),
        scale,
    )
    worst, passes = errors.amax(1).tolist(), within(errors, absolute, tolerance).all(1).tolist()
    bordered = [name for name, ok in zip(own, passes) if not ok and own[name].border_diff is not None]
    borders = dict(zip(bordered, margins_that_pass([own[name] for name in bordered], tolerance, KEEP_ANY)))
    return {name: (e, ok, borders.get(name)) for name, e, ok in zip(own, worst, passes)}
