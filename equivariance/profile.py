"""Where a model loses equivariance: the error of every layer under one input shift.

[`profile_equivariance`][equivariance.profile.profile_equivariance] sends the input through the model
once, with
forward hooks on every leaf submodule (or on the layers named) recording
each layer's output, and then the shifted input once, comparing each layer's
output as it is computed with its own expected output action: the input
element on the layer's grid. A layer's *layout* (channels first, channels
last as inside ConvNeXt blocks, tokens as in a ViT) and *cumulative stride*
are inferred from the shapes the hooks see (see
`equivariance._layers`); the profile says what it
inferred, and does not compare a layer whose layout the shapes leave
ambiguous (name it with ``layouts=``). The first layer whose error rises
above the tolerance is named, with the likely cause and a fix:

``aliasing``
    the cumulative stride does not divide the shift, so a subsampled map
    cannot follow it (a strided convolution or pooling layer), also after
    the map is upsampled back (the fix names the layer that subsampled);
``borders``
    the error sits within a few samples of the edges of the compared region
    (zero padding, or content leaving the canvas);
``global pooling``
    the map is pooled to one value per channel, a statistic that changes when
    content enters or leaves the canvas (a squeeze-excite block);
``absolute positions``
    a parameter with a value for every position (a learned position
    embedding) is added to the map;
``spatial dims gone``
    the output has no spatial dims left (flatten, a dense head) and changes
    with the shift;
``no symmetry``
    the error is everywhere: a layer that does not commute with translations
    (absolute coordinates, a dense layer on a map).

Where the tensor a layer is given was computed in ``forward`` (not returned
by a profiled layer) and is the first to fail, it gets a row of its own,
``"<layer> (input)"`` of type ``"(forward)"``: the break happened between
two submodules.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._copies import Copies
from equivariance._forward import call_until, find_layer
from equivariance._isolation import snapshot, submodules
from equivariance._judge import margins_that_pass, sample_errors, within
from equivariance._layer_sums import LayerSums, PooledLayer
from equivariance._layers import (
    CHANNELS_FIRST_OPS,
    LAYOUT_KEEPING_OPS,
    LayerSpec,
    Recorded,
    infer_layers,
    view_permutation,
)
from equivariance._plan import as_element, check_fits, check_input
from equivariance._runner import Runner
from equivariance._sinks import (
    Describe,
    FlatSums,
    GridSums,
    Sums,
    check_floating,
    sample_scale,
)
from equivariance._validation import describe, shown_per_dim, warn_deprecated
from equivariance.actions import Action, Boundary, Grid, check_boundary
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst, Layout, LayoutLike, as_layout
from equivariance.shifts import Shift, ShiftLike
from equivariance.tolerances import Tolerance, resolve_tolerance

__all__ = ["EquivarianceProfile", "LayerProfile", "profile_equivariance"]

CAUSES = (
    "aliasing",
    "borders",
    "global pooling",
    "absolute positions",
    "spatial dims gone",
    "no symmetry",
)
_LAYOUT_LABELS = {"channels_first": "C first", "channels_last": "C last", "tokens": "tokens"}


@dataclass(frozen=True)
class LayerProfile:
    """The equivariance error of one layer's output under the input shift.

    Attributes:
        name: the layer's name in ``model.named_modules()``; ``"(output)"``
            for the model's output where no leaf returns it.
        type: the layer's class name, e.g. ``"Conv2d"``.
        output_shape: the shape of the layer's output for ``x``.
        stride: the cumulative stride inferred from the spatial sizes, per
            dim; ``None`` where the output has no spatial dims.
        output_element: the element the output is expected to undergo: the
            input shift divided by the stride (rounded where the stride does
            not divide it), or the transform; ``None`` without spatial dims
            (compared unmoved).
        exact: whether the stride divides the shift.
        error: the worst relative error over the batch (RMS absolute error
            where the reference is all zero).
        passed: whether every sample is within tolerance.
        border: for a failing layer, the number of samples at the edges of
            the compared region that hold all of the error; ``None`` if the
            error is not confined to the borders.
        cause: for a failing layer, one of ``CAUSES``: ``"aliasing"``,
            ``"borders"``, ``"global pooling"``, ``"absolute positions"``,
            ``"spatial dims gone"`` or ``"no symmetry"``.
        fix: for a failing layer, what to do about it.
        layout: the output's layout as inferred (or named), e.g.
            ``"channels_last"``; ``None`` without spatial dims.
        note: why a layer was not compared (an ambiguous layout), or how a
            layout other than channels first was inferred.
        compared: whether the layer was compared at all (not when its layout
            is ambiguous: its ``error`` is then nan and it counts as passed).
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    stride: tuple[int, ...] | None
    output_element: Action | None
    exact: bool
    error: float
    passed: bool
    border: int | None = None
    cause: str | None = None
    fix: str | None = None
    layout: str | None = None
    note: str | None = None
    compared: bool = True

    @property
    def output_shift(self) -> Action | None:
        """Deprecated name of ``output_element`` (it may be a transform)."""
        warn_deprecated("LayerProfile.output_shift", "LayerProfile.output_element")
        return self.output_element

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields (``output_shift`` repeats ``output_element`` for
        one release)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["output_shape"] = list(self.output_shape)
        data["stride"] = None if self.stride is None else list(self.stride)
        moved = None if self.output_element is None else self.output_element.to_json()
        data["output_element"] = data["output_shift"] = moved
        data["error"] = None if math.isnan(self.error) else self.error
        return data


@dataclass(frozen=True)
class EquivarianceProfile:
    """The per-layer errors of a model under one shift; ``str()`` is a table.

    Made by [`profile_equivariance`][equivariance.profile.profile_equivariance].

    Attributes:
        subject: the model's class name.
        element: the input shift, or a transform (``Rot90``, ``Flip``, an action of your own).
        boundary: ``"zeros"`` or ``"circular"``.
        input_shape: the shape of ``x``.
        dtype: the dtype of ``x``.
        rtol: the relative tolerance a layer is held to.
        atol: the RMS absolute tolerance where a reference is all zero.
        tolerance_source: where the tolerance came from.
        layers: one [`LayerProfile`][equivariance.profile.LayerProfile] per layer, in the order they ran.
        up_to: the submodule after which the forward pass stopped; ``None``
            when the whole model ran.
    """

    subject: str
    element: Action
    boundary: str
    input_shape: tuple[int, ...]
    dtype: str
    rtol: float
    atol: float
    tolerance_source: str
    layers: tuple[LayerProfile, ...]
    up_to: str | None = None

    @property
    def shift(self) -> Action:
        """Deprecated name of ``element`` (it may be a transform)."""
        warn_deprecated("EquivarianceProfile.shift", "EquivarianceProfile.element")
        return self.element

    @property
    def passed(self) -> bool:
        """Whether every compared layer is within tolerance."""
        return all(layer.passed for layer in self.layers)

    @property
    def first_failure(self) -> LayerProfile | None:
        """The first layer (in the order they ran) whose error is above tolerance."""
        return next((layer for layer in self.layers if not layer.passed), None)

    def __getitem__(self, name: str) -> LayerProfile:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict: the fields, the verdict and the first failure's name."""
        first = self.first_failure
        return {
            "subject": self.subject,
            "up_to": self.up_to,
            "element": self.element.to_json(),
            "shift": self.element.to_json(),
            "boundary": self.boundary,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "tolerance_source": self.tolerance_source,
            "passed": self.passed,
            "first_failure": None if first is None else first.name,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> str:
        """One line: the verdict and the first layer that fails, with its cause."""
        first = self.first_failure
        subject = self.subject if self.up_to is None else f"{self.subject} up to {self.up_to}"
        head = f"equivariance profile of {subject} under {self.element.noun} {self.element} ({self.boundary})"
        if first is None:
            return f"{head}: every layer within rtol {self.rtol:.0e}"
        if first.type == JUNCTION:
            where = _between(first, list(self.layers[: self.layers.index(first)]))
            return f"{head}: first failure {where} (in forward, not a submodule), {first.cause}"
        return f"{head}: first failure at {first.name} ({first.type}), {first.cause}"

    def __str__(self) -> str:
        rows = [("layer", "type", "output", "layout", "stride", "out shift", "error", "verdict")]
        for layer in self.layers:
            stride = "-" if layer.stride is None else _tuple(layer.stride)
            if layer.stride is not None and _is_global(
                layer.output_shape, layer.stride, self.input_shape[2:]
            ):
                stride = "global"
            moved = "none" if layer.output_element is None else str(layer.output_element)
            if not layer.exact:
                moved += " ~"
            verdict = "ok" if layer.passed else f"FAIL ({layer.cause})"
            error = f"{layer.error:.2e}"
            if not layer.compared:
                verdict, error, moved = "not compared (layout?)", "-", "-"
            shape = _tuple(layer.output_shape[1:])
            layout = _LAYOUT_LABELS.get(layer.layout or "", "-")
            rows.append((layer.name, layer.type, shape, layout, stride, moved, error, verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [self.summary()]
        lines.append(
            f"  input {self.input_shape} {self.dtype}; tolerance rtol={self.rtol:.0e}, "
            f"atol={self.atol:.0e} ({self.tolerance_source})"
        )
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if any(not layer.exact for layer in self.layers):
            lines.append("  ~: the stride does not divide the shift; compared with the rounded shift")
        for layer in self.layers:
            if layer.note is not None:
                lines.append(
                    f"  {'not compared' if not layer.compared else 'layout'}: {layer.name}: {layer.note}"
                )
        first = self.first_failure
        if first is not None:
            lines.append(f"  likely cause at {first.name}: {first.cause}; fix: {first.fix}")
        return "\n".join(lines)


def profile_equivariance(
    model: nn.Module,
    x: torch.Tensor,
    shift: ShiftLike | Action,
    *,
    layers: Sequence[str] | None = None,
    up_to: str | None = None,
    boundary: Boundary = "zeros",
    atol: float | None = None,
    rtol: float | None = None,
    layouts: Mapping[str, LayoutLike] | None = None,
) -> EquivarianceProfile:
    """The equivariance error of every layer of ``model`` under one input shift.

    ``x`` runs through the model once with forward hooks recording the
    output of every leaf submodule (or of the ``layers`` named), then its
    shifted copy once, each layer's output compared as it is computed with
    the unshifted output moved by the input shift divided by the layer's
    cumulative stride, over the valid region of that output shift (zeros
    boundary). An output without spatial dims is compared unmoved. Each
    layer's layout is inferred from the shapes (see the module docstring) or
    named in ``layouts``. Failing layers get a likely cause and a fix. With
    ``up_to``, the pass stops once that layer has returned, as a check's
    ``layer=`` does, so a model whose head refuses the input size can still
    be profiled up to it.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
        ...     torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
        >>> x = torch.zeros(2, 1, 32, 32)
        >>> x[..., 8:24, 8:24] = torch.rand(2, 1, 16, 16)
        >>> profile = profile_equivariance(net, x, (1, 0))
        >>> profile.first_failure.name, profile.first_failure.cause
        ('2', 'aliasing')
        >>> profile_equivariance(net, x, (2, 0)).passed
        True

        The seed's LeNet only takes 28x28 digits whole; on a 38x38 canvas its
        convolutions are profiled up to ``conv4``:

        >>> from equivariance.models import LeNet
        >>> canvas = torch.zeros(2, 1, 38, 38)
        >>> canvas[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
        >>> profile = profile_equivariance(LeNet(), canvas, (2, 1), up_to="conv4")
        >>> [layer.name for layer in profile.layers], profile.passed
        (['conv1', 'conv2', 'conv3', 'conv4'], True)

    Args:
        model: an ``nn.Module``.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shift: the input shift, a [`Shift`][equivariance.Shift] or a tuple of
            ints; or a transform ([`Rot90`][equivariance.Rot90],
            [`Flip`][equivariance.Flip], an [`Action`][equivariance.actions.Action]
            of your own), which every spatial output is expected to undergo too.
        layers: names of the submodules to profile (``model.named_modules()``);
            default every leaf submodule that runs.
        up_to: the name of a submodule after whose output the forward pass
            stops: only the layers that ran up to and including it are
            profiled, and its own output is a row of the profile if no
            profiled layer returned it. Default: the whole model runs.
        boundary: ``"zeros"`` or ``"circular"``, see [`equivariance.shifts`][equivariance.shifts].
        atol: tolerance on the RMS absolute error where the reference is zero.
        rtol: tolerance on the relative error; default by dtype
            ([`equivariance.tolerances`][equivariance.tolerances]).
        layouts: layouts of layers whose shapes leave them ambiguous, by name:
            ``{"blocks.0.norm": "channels_last"}`` (see
            [`equivariance.layouts`][equivariance.layouts]).

    Returns:
        An [`EquivarianceProfile`][equivariance.EquivarianceProfile].
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"profile_equivariance needs an nn.Module to hook its layers, found {describe(model)}; "
            "use check_equivariance for a plain callable"
        )
    x = check_input(x, model)
    element, boundary = _profiled_element(shift, x, check_boundary(boundary))
    tolerance = resolve_tolerance(x.dtype, rtol=rtol, atol=atol)
    targets, stop = _targets(model, layers), _stop_layer(model, up_to)
    given = _given_layouts(model, layouts)
    blurs = frozenset(name for name in targets if isinstance(element, Shift) and _blurs(model, name))
    blurred: dict[str, torch.Tensor] = {}
    with Runner(model) as runner, _Taps(targets) as taps:
        recorded, x_id = _record(
            model, x, taps, stop, up_to, junctions=layers is None, inputs_of=blurs, inputs=blurred
        )
        specs = infer_layers(recorded, x, x_id, given)
        pool = LayerSums(len(x))
        sinks = {
            spec.name: _sink(spec, r.output, element, boundary, pool) for spec, r in zip(specs, recorded)
        }
        unblurred = _unblurred(specs, blurred, element, boundary, pool)
        pool.prepare()
        consumer = _Layers(model, taps, stop, up_to, sinks, unblurred)
        copies = Copies(x, [element], Grid.of_input(x.dim() - 2, boundary))
        runner.run(copies, 1, [consumer], len(x), lambda row: f"the input moved by {element}")
        if pool.unsettled():  # sums that came out not finite: again in float64, outputs tested for nan
            runner.run(copies, 1, [consumer], len(x), lambda row: f"the input moved by {element}")
    pooled = pool.judge(tolerance)
    rows = _profile_layers(specs, sinks, pooled, element, tolerance)
    without_blur = {name: pooled[sink][0] for name, (_, sink) in unblurred.items()}
    rows = _explained(rows, model, element, tuple(x.shape[2:]), without_blur)
    return EquivarianceProfile(
        subject=type(model).__name__,
        element=element,
        boundary=boundary,
        input_shape=tuple(x.shape),
        dtype=str(x.dtype).removeprefix("torch."),
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        layers=rows,
        up_to=up_to,
    )


def _profiled_element(shift: object, x: torch.Tensor, boundary: Boundary) -> tuple[Action, Boundary]:
    element = as_element(shift)
    check_fits(element, x)
    if element.is_identity:
        raise InvalidArgument(
            f"{element.noun} {element} is the identity, a profile that cannot fail; pass a nonzero shift"
        )
    # a rotation or flip maps the grid onto itself: nothing is filled in
    return element, boundary if type(element).uses_boundary else "circular"


def _targets(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    if layers is None:
        leaves = {
            name: module for name, module in model.named_modules() if name and not any(module.children())
        }
        return leaves or {"(output)": model}
    if isinstance(layers, str):
        raise InvalidArgument(f"layers must be a list of layer names, found {layers!r}; pass [{layers!r}]")
    return {name: find_layer(model, name) for name in layers}


def _stop_layer(model: nn.Module, up_to: str | None) -> nn.Module | None:
    """The submodule named by ``up_to``, after which the forward pass stops; checked before it runs."""
    if up_to is None:
        return None
    if not isinstance(up_to, str):
        raise InvalidArgument(
            f"up_to must be a submodule name (str), found {describe(up_to)}; pass e.g. up_to='conv4'"
        )
    return find_layer(model, up_to)


def _given_layouts(model: nn.Module, layouts: Mapping[str, LayoutLike] | None) -> dict[str, Layout]:
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise InvalidArgument(
            f"layouts must be a dict from layer names to layouts, found {describe(layouts)}; pass e.g. "
            "layouts={'blocks.0.norm': 'channels_last'}"
        )
    for name in layouts:
        find_layer(model, name)  # an unknown name is refused with the close ones
    return {name: as_layout(layout) for name, layout in layouts.items()}


class _Taps:
    """Forward hooks on the profiled layers, active within ``with`` (registered once for both
    passes): in a pass begun with ``start``, each layer's first output with the batch dim of the
    pass goes to ``on_output(name, inputs, output)``."""

    def __init__(self, targets: dict[str, nn.Module]) -> None:
        self.targets = targets
        self.on_output: Callable[[str, Any, torch.Tensor], None] = lambda *_: None
        self.batch, self.seen = 0, set[str]()
        self.handles: list[Any] = []

    def start(self, batch: int, on_output: Callable[[str, Any, torch.Tensor], None]) -> None:
        """A new pass of ``batch`` samples."""
        self.batch, self.seen, self.on_output = batch, set(), on_output

    def hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(_module: nn.Module, inputs: Any, out: Any) -> None:
            tensor = _first_tensor(out)
            if (
                name not in self.seen
                and tensor is not None
                and tensor.dim() >= 1
                and len(tensor) == self.batch
            ):
                self.seen.add(name)
                self.on_output(name, inputs, tensor)

        return record

    def __enter__(self) -> _Taps:
        self.handles = [m.register_forward_hook(self.hook(name)) for name, m in self.targets.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _record(
    model: nn.Module,
    x: torch.Tensor,
    taps: _Taps,
    stop: nn.Module | None,
    up_to: str | None,
    *,
    junctions: bool = True,
    inputs_of: frozenset[str] = frozenset(),
    inputs: dict[str, torch.Tensor] | None = None,
) -> tuple[list[Recorded], int]:
    """The unshifted pass: every profiled layer's output (a copy) and what it was computed from; and
    the input (a copy) of each layer in ``inputs_of``, put in ``inputs``."""
    targets = taps.targets
    types = {name: type(module).__name__ for name, module in targets.items()}
    first = {name for name, module in targets.items() if isinstance(module, CHANNELS_FIRST_OPS)}
    keeps = {name for name, module in targets.items() if isinstance(module, LAYOUT_KEEPING_OPS)}
    records: list[Recorded] = []
    batch = x.clone()
    alive: list[Any] = []  # the pass's own tensors, kept so that their ids stay theirs until it ends

    made = {id(batch)}  # tensors a recorded layer returned (or x): any other input is a junction

    def keep(name: str, given: Any, tensor: torch.Tensor) -> None:
        source = _first_tensor(given)
        alive.extend((source, tensor))
        if inputs is not None and name in inputs_of and source is not None:
            inputs[name] = snapshot(source)
        kind = types.get(name, type(model).__name__)
        if junctions and source is not None and _is_junction(source, made, len(x)):
            made.add(id(source))  # the same computed tensor may feed several layers: one row
            junction = snapshot(source)
            records.append(
                # computed from earlier tensors (a residual sum, an activation): it keeps their layout
                Recorded(
                    junction_name(name), JUNCTION, junction, id(source), None, tuple(junction.shape), None,
                    keeps_layout=True,
                )
            )  # fmt: skip
        made.add(id(tensor))
        if source is None:
            copy = snapshot(tensor)
            records.append(
                Recorded(name, kind, copy, id(tensor), None, None, None, name in first, name in keeps)
            )
            return
        moved = view_permutation(source, tensor)
        copy = snapshot(tensor)
        shape = tuple(source.shape)
        records.append(
            Recorded(name, kind, copy, id(tensor), id(source), shape, moved, name in first, name in keeps)
        )

    taps.start(len(x), keep)
    result = _call(model, batch, stop, up_to)
    _record_output(records, result, len(x), types, model, stop, up_to)
    if not records:
        raise InvalidArgument(
            "no profiled layer returned a tensor with the input's batch dim; pass layers= naming "
            "submodules that the forward pass calls"
        )
    return records, id(batch)


JUNCTION = "(forward)"
"""The type of a row for a tensor computed in ``forward`` between two submodules."""


def junction_name(layer: str) -> str:
    """The row of the tensor that ``layer`` is given, where no profiled layer returned it."""
    return f"{layer} (input)"


def _is_junction(source: torch.Tensor, made: set[int], n: int) -> bool:
    """A layer's input that no recorded layer returned: computed in ``forward`` (a sum, a parameter added)."""
    return (
        id(source) not in made and source.dim() >= 2 and len(source) == n and source.dtype.is_floating_point
    )


def _record_output(
    records: list[Recorded],
    result: Any,
    n: int,
    types: dict[str, str],
    model: nn.Module,
    stop: nn.Module | None,
    up_to: str | None,
) -> None:
    """The model's output (or the ``up_to`` layer's) as a last row, unless a recorded layer returned it."""
    last = "(output)" if up_to is None else up_to
    output = _first_tensor(result)
    if output is None or output.dim() < 1 or len(output) != n or any(r.name == last for r in records):
        return
    if records and records[-1].output.shape == output.shape and torch.equal(records[-1].output, output):
        return
    kind = type(stop).__name__ if stop is not None else type(model).__name__
    records.append(
        Recorded(
            last, types.get(last, kind), snapshot(output), id(output), None, tuple(output.shape),
            None, keeps_layout=True,
        )
    )  # fmt: skip


def _call(model: nn.Module, batch: torch.Tensor, stop: nn.Module | None, up_to: str | None) -> Any:
    try:
        # the taps were registered first, so an up_to layer that is profiled is recorded before its
        # hook stops the pass
        result, reached = call_until(model, batch, stop)
    except (InvalidArgument, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"the model raised {type(exc).__name__} on an input of shape {tuple(batch.shape)} "
            f"({batch.dtype}, {batch.device}): {exc}"
        ) from exc
    if not reached:
        raise InvalidArgument(
            f"up_to={up_to!r} names a layer that was never called during the forward pass, so the "
            "profile cannot stop after it; pass the name of a layer that the model's forward uses"
        )
    return result


Sink = GridSums | FlatSums | PooledLayer | None


def _sink(spec: LayerSpec, base: torch.Tensor, element: Action, boundary: Boundary, pool: LayerSums) -> Sink:
    """How a layer's output is compared: on its grid, whole (no spatial dims), or not (ambiguous).

    A translation of the layer's grid (and a whole output) goes to the
    pool, which sums all layers together; other elements, and float64
    outputs that need scaling, get a sink of their own.
    """
    if spec.ambiguous is not None:
        return None
    if not base.dtype.is_floating_point:
        base = base.double()
    if spec.layout is None or spec.stride is None:
        return FlatSums(base, 1) if sample_scale(base) is not None else pool.layer(base, None)
    d = len(spec.stride)
    expected = _expected(element, spec.stride)
    # a shift is rounded to whole output samples: it acts on a grid of stride 1
    on_grid = Grid(d, (1,) * d if isinstance(expected, Shift) else spec.stride, boundary, spec.layout)
    on_grid_base = spec.layout.to_grid(base, d)
    spatial = tuple(on_grid_base.shape[-d:])
    offsets: tuple[int, ...] | None
    if isinstance(expected, Shift):  # the same few shifts and sizes for most layers: worked out once
        offsets, region = _translated(tuple(expected), spatial, boundary)
    else:
        offsets, region = expected.translation(on_grid), expected.region(spatial, on_grid)
    if offsets is not None and sample_scale(on_grid_base) is None:
        return pool.layer(on_grid_base, on_grid, offsets, region)
    return GridSums(on_grid_base, [element], on_grid, (0,) * d, expected=[expected])


@functools.lru_cache(maxsize=1024)
def _translated(
    offsets: tuple[int, ...], spatial: tuple[int, ...], boundary: Boundary
) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """A shift's offsets and valid region on a grid of stride 1."""
    grid = Grid(len(offsets), (1,) * len(offsets), boundary)
    shift = Shift(offsets)
    return shift.translation(grid), shift.region(spatial, grid)


def _unblurred(
    specs: Sequence[LayerSpec],
    inputs: Mapping[str, torch.Tensor],
    element: Action,
    boundary: Boundary,
    pool: LayerSums,
) -> dict[str, tuple[tuple[slice, ...], PooledLayer]]:
    """For each layer that blurs before it subsamples: its input subsampled by the same step without
    the blur, compared like its output, to say how much of the aliasing the blur removes.

    The step is the ratio of the layer's input and output sizes; a layer whose sizes give none, or
    whose input or output is not a channels-first float map, is left out.
    """
    found = {}
    for spec in specs:
        source = inputs.get(spec.name)
        if source is None or spec.stride is None or spec.spatial is None:
            continue
        d = len(spec.spatial)
        if (
            not isinstance(spec.layout, ChannelsFirst)
            or source.dim() != d + 2
            or not source.is_floating_point()
        ):
            continue
        steps = tuple(round(n / m) for n, m in zip(source.shape[2:], spec.spatial))
        if any(s < 1 for s in steps) or all(s == 1 for s in steps) or sample_scale(source) is not None:
            continue
        key = (slice(None), slice(None), *(slice(None, None, s) for s in steps))
        subsampled = source[key]
        assert isinstance(element, Shift)  # only shifts look for blurring layers
        moved = tuple(_divided(tuple(element), spec.stride))
        offsets, region = _translated(moved, tuple(subsampled.shape[2:]), boundary)
        found[spec.name] = key, pool.layer(subsampled, Grid(d, (1,) * d, boundary), offsets, region)
    return found


def _expected(element: Action, stride: tuple[int, ...]) -> Action:
    """The element a layer's output should undergo: a shift divided (or rounded) by the stride."""
    if not isinstance(element, Shift):
        return element
    return _divided(tuple(element), stride)


@functools.lru_cache(maxsize=1024)
def _divided(offsets: tuple[int, ...], stride: tuple[int, ...]) -> Shift:
    return Shift(tuple(round(o / s) for o, s in zip(offsets, stride)))


class _Layers:
    """The shifted pass: each profiled layer's output fed to its sink as the layer returns it."""

    def __init__(
        self,
        model: nn.Module,
        taps: _Taps,
        stop: nn.Module | None,
        up_to: str | None,
        sinks: dict[str, Sink],
        unblurred: dict[str, tuple[tuple[slice, ...], PooledLayer]],
    ) -> None:
        self.model, self.taps, self.stop, self.up_to, self.sinks = model, taps, stop, up_to, sinks
        self.unblurred = unblurred
        self.junctions = {name: junction_name(name) for name in taps.targets if junction_name(name) in sinks}
        self.last = "(output)" if up_to is None else up_to
        self.chunk: tuple[slice, torch.Tensor, torch.Tensor, Describe] | None = None

    def feed(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        if name in self.unblurred and self.chunk is not None:
            key, sink = self.unblurred[name]
            source = _first_tensor(inputs)
            if source is not None:
                items, sample, row, what = self.chunk
                sink.add(source[key], items, sample, row, lambda: f"the input of {name!r} for {what()}")
        junction = self.junctions.get(name)
        if junction is not None:
            source = _first_tensor(inputs)
            if source is not None:
                self._feed(junction, source)
        self._feed(name, tensor)

    def _feed(self, name: str, tensor: torch.Tensor) -> None:
        sink = self.sinks.get(name)
        if sink is None or self.chunk is None:
            return
        items, sample, row, what = self.chunk
        if isinstance(sink, GridSums):
            tensor = sink.grid.layout.to_grid(
                tensor if tensor.dtype.is_floating_point else tensor.double(), sink.grid.spatial_dims
            )
        elif not tensor.dtype.is_floating_point:
            tensor = tensor.double()
        check_floating(tensor, what)
        sink.add(tensor, items, sample, row, lambda: f"layer {name!r} for {what()}")

    def consume(
        self, inputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        self.chunk = (items, sample, row, what)
        taps = self.taps
        taps.start(len(inputs), self.feed)
        result = _call(self.model, inputs, self.stop, self.up_to)
        output = _first_tensor(result)
        if self.last not in taps.seen and output is not None and self.last in self.sinks:
            self._feed(self.last, output)

    def retry(self) -> None:
        for sink in self.sinks.values():
            if sink is not None:
                sink.retry()


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _profile_layers(
    specs: Sequence[LayerSpec],
    sinks: Mapping[str, Sink],
    pooled: Mapping[PooledLayer, tuple[float, bool, int | None]],
    element: Action,
    tolerance: Tolerance,
) -> tuple[LayerProfile, ...]:
    """Every layer's row: errors and verdicts of all compared layers at once (``pooled``: those of the
    pool's layers), a cause for each failure."""
    verdicts: dict[str, tuple[float, bool, int | None]] = {}
    own = {
        name: sink for name, sink in sinks.items() if sink is not None and not isinstance(sink, PooledLayer)
    }
    sums = {name: sink.sums() for name, sink in own.items()}
    errors, passes = _judged(list(sums.values()), tolerance)
    # where a failing layer's error lies within a few samples of its borders
    bordered = [name for name, ok in zip(sums, passes) if not ok and sums[name].border_diff is not None]
    borders = dict(zip(bordered, margins_that_pass([sums[name] for name in bordered], tolerance)))
    for name, error, passed in zip(sums, errors, passes):
        verdicts[name] = (error, passed, borders.get(name))
    rows = []
    for spec in specs:
        sink = sinks[spec.name]
        if sink is None:
            rows.append(
                LayerProfile(
                    spec.name, spec.type, spec.shape, None, None, True, math.nan, True,
                    layout=None, note=spec.ambiguous, compared=False,
                )
            )  # fmt: skip
            continue
        error, passed, border = pooled[sink] if isinstance(sink, PooledLayer) else verdicts[spec.name]
        if spec.layout is None or spec.stride is None:
            cause, fix = (None, None) if passed else ("spatial dims gone", _GONE)
            rows.append(
                LayerProfile(
                    spec.name, spec.type, spec.shape, None, None, True, error, passed, None, cause, fix
                )
            )
            continue
        moved = _expected(element, spec.stride)
        exact = not isinstance(element, Shift) or all(o % s == 0 for o, s in zip(element, spec.stride))
        cause, fix = (None, None) if passed else _cause(element, spec.stride, exact, border)
        rows.append(
            LayerProfile(
                spec.name, spec.type, spec.shape, spec.stride, moved, exact, error, passed, border,
                cause, fix, layout=spec.layout.name, note=spec.inferred,
            )
        )  # fmt: skip
    return tuple(rows)


def _judged(sums: list[Sums], tolerance: Tolerance) -> tuple[list[float], list[bool]]:
    """The worst error of each layer, and whether every sample passes: one computation for all."""
    if not sums:
        return [], []
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
    return errors.amax(1).tolist(), within(errors, absolute, tolerance).all(1).tolist()


def _explained(
    rows: tuple[LayerProfile, ...],
    model: nn.Module,
    element: Action,
    spatial_in: tuple[int, ...],
    without_blur: Mapping[str, float],
) -> tuple[LayerProfile, ...]:
    """Causes read with the layers around each failure; rows of computed inputs kept where they fail first.

    A row for a tensor computed in ``forward`` (``JUNCTION``) is shown only
    where it is the first failure: the break happened between two submodules.
    """
    kept: list[LayerProfile] = []
    subsampled: LayerProfile | None = None  # the first layer whose stride the shift did not divide
    failed = False
    for row in rows:
        if row.type == JUNCTION and (row.passed or failed):
            continue
        if not row.passed:
            row = _recaused(row, kept, subsampled, model, element, spatial_in, without_blur)
            failed = True
        global_pool = row.stride is not None and _is_global(row.output_shape, row.stride, spatial_in)
        if subsampled is None and not row.exact and row.stride is not None and not global_pool:
            subsampled = row
        kept.append(row)
    return tuple(kept)


def _recaused(
    row: LayerProfile,
    before: list[LayerProfile],
    subsampled: LayerProfile | None,
    model: nn.Module,
    element: Action,
    spatial_in: tuple[int, ...],
    without_blur: Mapping[str, float],
) -> LayerProfile:
    """A failing row's cause, with what the rows before it and the model's parameters say."""
    replace = dataclasses.replace
    if row.stride is not None and _is_global(row.output_shape, row.stride, spatial_in):
        return replace(row, cause="global pooling", fix=_global_fix(row))
    if row.cause == "aliasing" and isinstance(element, Shift) and _blurs(model, row.name):
        return replace(row, fix=_blur_fix(row, without_blur.get(row.name)))
    if row.cause in ("no symmetry", "borders") and subsampled is not None and isinstance(element, Shift):
        return replace(row, cause="aliasing", fix=_upsampled_fix(subsampled, row))
    if row.cause != "no symmetry":
        return row
    positional = _positional_parameter(model, row)
    if positional is not None:
        return replace(row, cause="absolute positions", fix=_positions_fix(row, positional, before))
    if row.type == JUNCTION:
        return replace(row, fix=_junction_fix(row, before))
    return row


def _is_global(shape: tuple[int, ...], stride: tuple[int, ...], spatial_in: tuple[int, ...]) -> bool:
    """A map pooled to one sample per dim from an input with more."""
    return all(s >= n for s, n in zip(stride, spatial_in)) and any(n > 1 for n in spatial_in)


def _global_fix(row: LayerProfile) -> str:
    return (
        f"{row.name} pools the whole map into one value per channel: a global statistic, which a shift "
        "leaves unchanged only while all of the content stays inside the input and out of the zero "
        "padding's reach; content that enters or leaves the canvas changes it, and every layer it "
        "gates (a squeeze-excite block multiplies it back onto the map). Put the content on a zero "
        "canvas larger than the shift, use circular padding with boundary='circular', or check the "
        "pooled part for invariance (check_invariance)"
    )


def _blurs(model: nn.Module, name: str) -> bool:
    """Whether a layer low-pass filters before it subsamples: an average pool, or a fixed (buffer) kernel."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return True
    kernels = [b for b in module.buffers(recurse=False) if b.dim() >= 3 and b.dtype.is_floating_point]
    return bool(kernels) and not any(True for _ in module.parameters(recurse=False))


def _blur_fix(row: LayerProfile, without: float | None) -> str:
    """The fix for a blurring layer; ``without``: the error of its input subsampled without the blur."""
    assert row.stride is not None
    shown = shown_per_dim(row.stride)
    measured = ""
    if without is not None and math.isfinite(without) and without > 0:
        measured = (
            f" (its input subsampled by the same step without the blur: {without:.1e}, so the blur "
            f"divides the error by {without / row.error:.1f})"
            if row.error > 0
            else ""
        )
    return (
        f"{row.name} blurs before it subsamples by {shown}: blurring reduces aliasing but does not "
        f"remove it (a blur of a few taps leaves some of the signal above the new Nyquist frequency), "
        f"so a shift that {shown} does not divide still moves the output by a relative "
        f"{row.error:.1e}{measured}; test multiples of the stride (multiples_of({shown}, "
        f"max_shift=...)), or accept the residual with rtol above {row.error:.0e} (a wider blur lowers it)"
    )


def _upsampled_fix(subsampled: LayerProfile, row: LayerProfile) -> str:
    assert subsampled.stride is not None
    shown = shown_per_dim(subsampled.stride)
    return (
        f"the map was subsampled by {shown} at {subsampled.name} ({subsampled.type}), where the shift "
        f"stopped being followed, and brought back to a finer grid before {row.name}: upsampling "
        f"cannot restore what subsampling aliased. Test multiples of {shown} (multiples_of({shown}, "
        "max_shift=...)), or make the downsampling anti-aliased"
    )


def _positional_parameter(model: nn.Module, row: LayerProfile) -> tuple[str, tuple[int, ...]] | None:
    """A parameter or buffer shaped like one sample of the row's output: a value for each position."""
    per_sample = tuple(row.output_shape[1:])
    if len(per_sample) < 2:
        return None
    owner: nn.Module = model
    if row.type != JUNCTION:
        try:
            owner = model.get_submodule(row.name)
        except AttributeError:
            return None
    modules = submodules(owner)
    # parameters first, then buffers, each in named_parameters' order; a name made only for a match
    for kind, named in (("_parameters", owner.named_parameters), ("_buffers", owner.named_buffers)):
        for module in modules:
            for tensor in getattr(module, kind).values():
                if tensor is None:
                    continue
                shape = tuple(tensor.shape)
                if shape == per_sample or (
                    len(shape) == len(per_sample) + 1 and shape[0] == 1 and shape[1:] == per_sample
                ):
                    name = next((n for n, t in named() if t is tensor), None)
                    if name is None:
                        continue
                    return (name if row.type == JUNCTION else f"{row.name}.{name}"), shape
    return None


def _between(row: LayerProfile, before: list[LayerProfile]) -> str:
    layer = row.name.removesuffix(" (input)")
    previous = next((r.name for r in reversed(before) if r.type != JUNCTION), None)
    return f"between {previous} and {layer}" if previous is not None else f"before {layer}"


def _positions_fix(
    row: LayerProfile, positional: tuple[str, tuple[int, ...]], before: list[LayerProfile]
) -> str:
    name, shape = positional
    where = f" The break happens {_between(row, before)}, in forward." if row.type == JUNCTION else ""
    return (
        f"the parameter {name} of shape {shape} holds a value for every position and is added to "
        "the map: an absolute (learned) position embedding, which stays where it is when the content "
        f"moves.{where} Use relative positions (a relative position bias, as in Swin, or a "
        "convolutional position encoding) for equivariance, or test a pooled output for invariance "
        "(check_invariance) and the layers before the embedding for equivariance"
    )


def _junction_fix(row: LayerProfile, before: list[LayerProfile]) -> str:
    return (
        f"the break happens {_between(row, before)}, in forward code rather than in a submodule: an "
        "operation there (a parameter or a constant "
        "added, indexing or concatenation by position, a reshape that mixes positions) does not "
        "commute with translations; make it translation-equivariant, or wrap it in a submodule to "
        "profile it"
    )


_GONE = (
    "the spatial dims are gone (flatten, a dense head, or a pooling that keeps position), "
    "so nothing moves with the input: test the layer before it with layer=, pool over "
    "the whole map (global average pooling) for invariance, and use check_invariance "
    "with circular shifts or content inside a zero canvas"
)


def _cause(element: Action, stride: tuple[int, ...], exact: bool, border: int | None) -> tuple[str, str]:
    shown = shown_per_dim(stride)
    if not isinstance(element, Shift):
        if any(s > 1 for s in stride):
            return "aliasing", (
                f"the map is subsampled by {stride}, and the subsampling grid is not symmetric under "
                f"{element!r} (it keeps samples 0, 2, 4, ... of an even size): use sizes for which the "
                "grid maps onto itself (odd sizes with centred sampling) or anti-aliased downsampling"
            )
        return "no symmetry", (
            f"this layer does not commute with {element!r}: average its kernels over the group "
            "(as in a p4 / p4m group convolution), or test the layers before it"
        )
    if not exact:
        return "aliasing", (
            f"the output is subsampled by {shown}, which does not divide shift {element}: test "
            f"multiples of the stride (multiples_of({shown}, max_shift=...), stride={shown}), or "
            "make the downsampling anti-aliased (blur before subsampling)"
        )
    if border is not None:
        return "borders", (
            f"the error lies within {border} sample{'s' if border > 1 else ''} of the borders: "
            f"zero padding or content leaving the canvas; pass margin={border} (or margin='auto'), "
            "use circular padding with boundary='circular', or put the content on a larger zero canvas"
        )
    return "no symmetry", (
        "the error is everywhere, not only at the borders: this layer does not commute with "
        "translations (a positional embedding, absolute coordinates, a dense layer on a map); "
        "make it translation-equivariant or test the layers before it"
    )


def _tuple(values: tuple[int, ...]) -> str:
    return f"({values[0]},)" if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"
