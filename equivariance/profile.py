"""Where a model loses equivariance: the error of every layer under one input shift.

[`profile_equivariance`][equivariance.profile.profile_equivariance] sends the input and its shifted
copy through the model once, as one batch of ``2N``, with forward hooks on
every leaf submodule (or on the layers named) that compare each layer's two
outputs as the layer returns them: the output for the shifted copy with the
output for the input moved by the layer's own expected output action (the
input element on the layer's grid). No layer's output is kept for a second
pass; small ones are compared together at the end of the pass, from
copy-on-write snapshots (``equivariance._engine.layer_sums``). A layer's *layout* (channels first, channels
last as inside ConvNeXt blocks, tokens as in a ViT) and *cumulative stride*
are inferred from the shapes the hooks see (see
`equivariance._engine.layers`); the profile says what it
inferred, and does not compare a layer whose layout the shapes leave
ambiguous (name it with ``layouts=``). The first layer whose error rises
above the tolerance is named, with the likely cause and a fix:

``aliasing``
    the cumulative stride does not divide the shift, so a subsampled map
    cannot follow it (a strided convolution or pooling layer), also after
    the map is upsampled back (the fix names the layer that subsampled);
``borders``
    the error sits within a few samples of the edges of the compared region
    (zero padding, or content leaving the canvas); or it is everywhere, but
    on a map that the padding of the layers before it reaches across (the
    borders' reach, `equivariance._engine.anatomy`), or after self-attention under
    the zeros boundary, which carries what enters and leaves at the edges to
    every token;
``global pooling``
    the map is pooled to one value per channel, a statistic that changes when
    content enters or leaves the canvas (a squeeze-excite block); also the
    layers after such a pooling whose error is everywhere (the statistic
    gates them);
``absolute positions``
    a parameter with a value for every position (a learned position
    embedding) is added to the map;
``spatial dims gone``
    the output has no spatial dims left (flatten, a dense head) and changes
    with the shift;
``no symmetry``
    the error is everywhere, and none of the above explains it: a layer that
    does not commute with translations (absolute coordinates, a dense layer
    on a map).

Where the tensor a layer is given was computed in ``forward`` (not returned
by a profiled layer) and is the first to fail, it gets a row of its own,
``"<layer> (input)"`` of type ``"(forward)"``: the break happened between
two submodules.

The one batch assumes the samples do not influence each other, as the
checks do. A model whose samples do (a layer that subtracts the batch mean,
attention across the batch, BatchNorm without running statistics) would make
a layer fail because of the batch, not of itself. So a first failure whose
cause is not geometric (``aliasing`` and ``borders`` are, whatever the batch)
is tested: the model runs on ``x[:1]`` alone up to that layer, and where
that sample's tensor there differs from the one batch's by more than the
tolerance, the profile runs ``x`` and its moved copy in two separate passes
(joined layer by layer into the same rows) and says why
(``EquivarianceProfile.separate_passes``). Layers after the first failure,
and a profile without failures, are not tested: a batch effect that makes a
layer pass would have to cancel its asymmetry exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from equivariance._engine import fixes as _profile_fixes
from equivariance._engine.anatomy import (
    KEEP_ANY,
    Cover,
    Padded,
    attends,
    covering,
    module_stride,
    pad_circularly,
    positional_parameter,
    reaching,
    sampling,
)
from equivariance._engine.forward import call_until, find_layer
from equivariance._engine.grids import Stride, divides, shown, stated_stride, whole_samples
from equivariance._engine.isolation import snapshot, submodules
from equivariance._engine.judge import KEEP_FRACTION, margins_that_pass, sample_errors, within
from equivariance._engine.layer_sums import LayerSums, PooledLayer
from equivariance._engine.layers import (
    CHANNELS_FIRST_OPS,
    LAYOUT_KEEPING_OPS,
    LayerInference,
    LayerSpec,
    Recorded,
    view_permutation,
)
from equivariance._engine.plan import as_element, check_fits, check_input
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import (
    FlatSums,
    GridSums,
    Sums,
    sample_scale,
)
from equivariance._engine.validation import describe, shown_per_dim, warn_deprecated
from equivariance.actions import Action, Boundary, Grid, check_boundary, guarded_act
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst, Layout, LayoutLike, as_layout
from equivariance.shifts import Shift, ShiftLike
from equivariance.tolerances import Tolerance, resolve_tolerance

__all__ = ["EquivarianceProfile", "LayerProfile", "profile_equivariance"]

FixMethod = Literal["auto", "antialias", "polyphase", "circular_padding"]

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
        stride: the cumulative stride per dim (the stride each module
            states, else the sizes'; docs/diagnosing.md), a fraction where
            the map is finer than the input's (0.5 after upsampling by 2);
            ``None`` where the output has no spatial dims.
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
    stride: Stride | None
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
        separate_passes: why ``x`` and its moved copy ran in two separate
            passes instead of one batch (the samples of a batch influence
            each other in this model); ``None`` for the one batch.
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
    separate_passes: str | None = None

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

    def fixed_copy(self, model: nn.Module, method: FixMethod = "auto", **options: Any) -> nn.Module:
        """A converted copy of ``model`` (the one profiled) with the surgery the profile's causes call for.

        ``"auto"``: where a layer fails for ``aliasing``, the strided layers
        the profile saw are converted: anti-aliased
        ([`antialias`][equivariance.surgery.antialias]) under the zeros
        boundary, with adaptive polyphase sampling
        ([`polyphase`][equivariance.surgery.polyphase]) under the circular one;
        where a layer fails for ``borders``, or under the circular boundary,
        the padded layers pad circularly
        ([`circular_padding`][equivariance.surgery.circular_padding]). Other
        causes (a dense head, a position embedding) are not what surgery
        changes. Profile the copy to see where the error went.

        Examples:
            >>> import torch
            >>> net = torch.nn.Sequential(
            ...     torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            ...     torch.nn.Conv2d(4, 4, 3, padding=1))
            >>> x = torch.zeros(2, 1, 32, 32)
            >>> x[..., 8:24, 8:24] = torch.rand(2, 1, 16, 16)
            >>> profile = profile_equivariance(net, x, (1, 0))
            >>> profile.first_failure.name, profile.first_failure.cause
            ('2', 'aliasing')
            >>> fixed = profile.fixed_copy(net)
            >>> type(fixed[2]).__name__
            'AntialiasedMaxPool2d'
            >>> profile_equivariance(fixed, x, (1, 0))["3"].error < profile["3"].error
            True

        Args:
            model: the model this profile was made of (it is copied, never changed).
            method: ``"auto"``, or one conversion: ``"antialias"``,
                ``"polyphase"`` or ``"circular_padding"``.
            **options: passed to the conversion (``filter_size``, ``pad_type``).

        Returns:
            The converted copy.
        """
        return _profile_fixes.fixed_copy(self, model, method, options)

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
            "separate_passes": self.separate_passes,
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
        if self.separate_passes is not None:
            lines.append(f"  two passes: {self.separate_passes}")
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

    ``x`` and its shifted copy run through the model once, as one batch of
    ``2N``, with forward hooks on every leaf submodule (or on the ``layers``
    named): each layer's output for the shifted copy is compared with its
    output for ``x`` moved by the input shift divided by the layer's
    cumulative stride, over the valid region of that output shift (zeros
    boundary). In one batch, a model whose samples influence each other (a
    layer that normalizes with the batch's statistics, attention across the
    batch) would give ``x`` outputs that depend on its moved copy: where a
    layer fails for a reason its geometry does not explain (not a stride, not
    the borders), the model runs once more on ``x[:1]`` alone up to that
    layer, and if that sample's output there is not what it was in the batch,
    the profile runs ``x`` and its moved copy in two separate passes instead
    and says so (``separate_passes``). An output without spatial dims is compared unmoved. Each
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

    Raises:
        InvalidArgument: for bad arguments, a model that raises on the batch
            (the message names it and its shape), or a batch of ``2N`` that does
            not fit in the GPU's memory (profile fewer samples).
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
    blurs = frozenset(
        name for name, module in targets.items() if isinstance(element, Shift) and _blurring(module)
    )
    with Runner(model), _Taps(targets) as taps:
        passes = _Passes(model, x, element, boundary, taps, stop, up_to)
        run, pool = _measured(passes, given, layers is None, blurs)
        rows = _judged_rows(run, pool, model, element, tolerance, targets)
        interaction = _interaction(passes, run, _first_failure(rows), tolerance)
        if interaction is not None:  # the halves of the one batch influence each other: two passes
            passes.separate = True
            run, pool = _measured(passes, given, layers is None, blurs)
            rows = _judged_rows(run, pool, model, element, tolerance, targets)
    rows = _profile_fixes.revised(rows, model, boundary)
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
        separate_passes=interaction,
    )


def _judged_rows(
    run: _Pass,
    pool: LayerSums,
    model: nn.Module,
    element: Action,
    tolerance: Tolerance,
    targets: Mapping[str, nn.Module],
) -> tuple[LayerProfile, ...]:
    """The rows of a pass: every layer judged, and each failure given its cause."""
    rows_of = [row for row in run.rows.values() if row.kind != "unblurred"]
    specs = [row.spec for row in rows_of]
    sinks = {row.spec.name: row.sink for row in rows_of}
    pooled = pool.judge(tolerance, keep=KEEP_ANY)
    rows = _profile_layers(specs, sinks, pooled, element, tolerance)
    without_blur = {
        name.removesuffix(" (unblurred)"): pooled[row.sink][0]
        for name, row in run.rows.items()
        if row.kind == "unblurred" and isinstance(row.sink, PooledLayer)
    }
    spatial = {spec.name: spec.spatial for spec in specs if spec.spatial is not None}
    spatial_in = tuple(run.inference.spatial_in)
    return _explained(rows, model, element, run.boundary, spatial_in, without_blur, targets, spatial)


def _first_failure(rows: Sequence[LayerProfile]) -> LayerProfile | None:
    return next((row for row in rows if not row.passed), None)


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
                and tensor.shape[0] == self.batch
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


JUNCTION = "(forward)"
"""The type of a row for a tensor computed in ``forward`` between two submodules."""


def junction_name(layer: str) -> str:
    """The row of the tensor that ``layer`` is given, where no profiled layer returned it."""
    return f"{layer} (input)"


def _paired(x: torch.Tensor, element: Action, boundary: Boundary) -> torch.Tensor:
    """The batch of the profile's one pass: ``x`` and its moved copy, ``(2N, ...)``."""
    return torch.cat([x, guarded_act(element, x, Grid.of_input(x.dim() - 2, boundary))])


def _measured(
    passes: _Passes, given: dict[str, Layout], junctions: bool, blurs: frozenset[str]
) -> tuple[_Pass, LayerSums]:
    """Every profiled layer's two outputs compared, in a pool of sums: the pass, and where float32
    cannot keep some sums, those rows again in float64."""
    pool = LayerSums(len(passes.x))
    batch = passes.batch()
    run = _Pass(
        passes.model, passes.x, batch, passes.taps, passes.element, passes.boundary, given, pool,
        junctions=junctions, blurs=blurs,
    )  # fmt: skip
    run.output(passes.run(batch, run.on_output), passes.up_to, passes.stop)
    if not run.rows:
        raise InvalidArgument(
            "no profiled layer returned a tensor with the input's batch dim; pass layers= naming "
            "submodules that the forward pass calls"
        )
    redo = pool.settle()
    if redo:  # sums float32 cannot keep, or not finite: again in float64, the outputs tested for nan
        run.redo = {name for name, row in run.rows.items() if row.sink in redo and row.same_as is None}
        again = passes.run(passes.batch(), run.again)  # a new batch: the model may have written to the first
        run.output(again, passes.up_to, passes.stop, again=True)
        pool.settle()
    return run, pool


class _Passes:
    """How ``x`` and its moved copy go through the model: one batch of ``2N`` (the default), or, for a
    model whose samples interact (``separate``), two passes of ``N`` whose outputs are joined layer
    by layer into what the one batch would have given, had the halves not influenced each other.

    In two passes, each profiled layer's input and output for ``x`` are kept (copy-on-write) from
    the first pass, and its hook in the second joins them to those for the moved copy before the
    profile's pass (``_Pass``) sees them: the same tensor joins to the same joined tensor (a layer's
    input is the tensor an earlier layer returned), a tensor written to in place since is joined
    again in place, and a permuted view of a layer's input is the same view of the joined input, so
    layouts are inferred and rows shared as in one batch.
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, element: Action, boundary: Boundary, taps: _Taps,
        stop: nn.Module | None, up_to: str | None,
    ) -> None:  # fmt: skip
        self.model, self.x, self.element, self.boundary, self.taps = model, x, element, boundary, taps
        self.stop, self.up_to = stop, up_to
        self.separate = False

    def batch(self) -> torch.Tensor:
        """``x`` and its moved copy, ``(2N, ...)``: what the one pass gives the model."""
        return _paired(self.x, self.element, self.boundary)

    def run(self, batch: torch.Tensor, on_output: Callable[[str, Any, torch.Tensor], None]) -> Any:
        """The model's output for ``batch`` (its layers' outputs handed to ``on_output``)."""
        if not self.separate:
            self.taps.start(len(batch), on_output)
            return _call(self.model, batch, self.stop, self.up_to)
        n = len(self.x)
        first: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}

        def keep(name: str, inputs: Any, tensor: torch.Tensor) -> None:
            source = _first_tensor(inputs)
            first[name] = (None if source is None else snapshot(source), snapshot(tensor))

        self.taps.start(n, keep)
        for_x = _first_tensor(_call(self.model, batch[:n].clone(), self.stop, self.up_to, "x alone"))
        moved = batch[n:].clone()
        joiner = _Joiner(first, moved, batch, on_output)
        self.taps.start(n, joiner.on_output)
        for_moved = _call(self.model, moved, self.stop, self.up_to, "the moved copy of x alone")
        tensor = _first_tensor(for_moved)
        if for_x is None or tensor is None or for_x.shape != tensor.shape:
            return None
        return joiner.join(snapshot(for_x), tensor)


class _Joiner:
    """The second of two passes: each layer's outputs for the moved copy joined to those the first
    pass kept for ``x`` (see ``_Passes``), then handed to ``on_output`` as one batch's."""

    def __init__(
        self,
        first: dict[str, tuple[torch.Tensor | None, torch.Tensor]],
        moved: torch.Tensor,
        batch: torch.Tensor,
        on_output: Callable[[str, Any, torch.Tensor], None],
    ) -> None:
        self.first, self.on = first, on_output
        # by id of a tensor of the second pass: the tensor itself (weakly), its version, its join
        self.joined: dict[int, tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = {}
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
        source = _first_tensor(inputs)
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


GEOMETRIC_CAUSES = ("aliasing", "borders")
"""Causes the layer's geometry explains, whatever the batch: a stride that does not divide the
shift, error confined to the edges. A batch effect puts error everywhere on a layer that follows."""


def _interaction(passes: _Passes, run: _Pass, first: LayerProfile | None, tolerance: Tolerance) -> str | None:
    """Why the first failure of the one batch may come from the batch (its halves influence each
    other), or None.

    Where no layer fails, or the first failure's cause is geometric
    (``GEOMETRIC_CAUSES``), nothing is run. Otherwise the model runs once
    more on ``x[:1]`` alone, up to the first failing layer, and that row's
    tensor (the layer's output, the input computed for it in ``forward``, or
    the model's output) is compared with the one batch's for that sample,
    kept as the layer returned it: the same model on the same sample, in a
    batch of one instead of beside the others and its moved copy.
    """
    if first is None or first.cause in GEOMETRIC_CAUSES or first.name not in run.firsts:
        return None
    joint = run.firsts[first.name]
    row = run.rows[first.name]
    layer = first.name.removesuffix(" (input)") if row.kind == "input" else first.name
    module = passes.taps.targets.get(layer) if first.name != run.output_row else None
    captured: list[torch.Tensor] = []

    def capture(name: str, inputs: Any, tensor: torch.Tensor) -> None:
        read = _first_tensor(inputs) if row.kind == "input" else tensor
        if name == layer and not captured and read is not None:
            captured.append(read.detach().clone())

    passes.taps.start(1, capture)
    try:
        result, _ = call_until(passes.model, passes.x[:1].clone(), module or passes.stop)
    except Exception as exc:  # a model that needs more than one sample: two passes of N
        return (
            f"the model raised {type(exc).__name__} on x[:1] alone ({exc}), so its outputs may depend on "
            "the batch a sample is in; the profile ran x and its moved copy in two separate passes"
        )
    alone = _first_tensor(result) if module is None else (captured[0] if captured else None)
    if alone is None or alone.shape != joint.shape:
        return None
    diff = (alone.detach().double() - joint.double()).square().sum().reshape(1, 1)
    ref = joint.double().square().sum().reshape(1, 1)
    errors, absolute = sample_errors(diff, ref, torch.tensor([[float(max(1, joint.numel()))]]))
    # kernels that round differently by batch size stay far below the tolerance; a batch statistic or
    # attention across the batch does not
    if bool(within(errors, absolute, tolerance).all()):
        return None
    kind = "absolute" if bool(absolute.any()) else "relative"
    return (
        f"the first failing row, {first.name}, gives x[:1] run alone another value than in the batch of "
        f"x and its moved copy (a difference of {float(errors.max()):.1e}, {kind}): the samples of a batch "
        "influence each other (a layer that normalizes with the batch's statistics, attention across "
        "the batch, or randomness in forward), so the profile ran x and its moved copy in two separate "
        "passes, joined layer by layer"
    )


Sink = GridSums | FlatSums | PooledLayer | None


@dataclass
class _Row:
    """A compared tensor of the pass: its spec, its sink, and what it was read from."""

    spec: LayerSpec
    sink: Sink
    kind: str  # "output", "input" (a junction) or "unblurred" (the input, subsampled)
    key: tuple[slice, ...] = ()  # the subsampling of an unblurred row
    same_as: str | None = None  # the row whose comparison it shares (the same elements on its grid)


class _Pass:
    """The profile's pass: ``x`` and its moved copy as one batch of ``2N``; each profiled layer's
    output (and a tensor computed between layers, a blurring layer's input) is read as the layer
    returns it, its layout inferred from what came before, and its two halves compared at once.

    A tensor the pass has seen is known by ``id`` while it lives (a weak reference says whether it
    still does), so the pass keeps no layer's output alive.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        batch: torch.Tensor,
        taps: _Taps,
        element: Action,
        boundary: Boundary,
        given: dict[str, Layout],
        pool: LayerSums,
        *,
        junctions: bool,
        blurs: frozenset[str],
    ) -> None:
        self.model, self.taps, self.element, self.boundary, self.pool = model, taps, element, boundary, pool
        self.n = len(x)
        self.junctions, self.blurs = junctions, blurs
        targets = taps.targets
        self.types = {name: type(module).__name__ for name, module in targets.items()}
        self.first = {name for name, module in targets.items() if isinstance(module, CHANNELS_FIRST_OPS)}
        self.keeps = {name for name, module in targets.items() if isinstance(module, LAYOUT_KEEPING_OPS)}
        self.stated = {name: stated_stride(module, x.dim() - 2) for name, module in targets.items()}
        self.inference = LayerInference((self.n, *x.shape[1:]), id(batch), given)
        self.seen: dict[int, weakref.ref[torch.Tensor]] = {}
        self._see(batch)
        self.rows: dict[str, _Row] = {}
        # by id of a tensor the pass has seen: its grid view's signature (``_signature``) and its row
        self.views: dict[int, tuple[tuple[Any, ...] | None, _Row]] = {}
        self.last: torch.Tensor | None = None  # the last layer output recorded
        # each row's tensor for x[:1], as it was read (a small copy): is its sample alone the same?
        self.firsts: dict[str, torch.Tensor] = {}
        self.redo: set[str] = set()  # the rows to measure again
        self.output_row: str | None = None  # the row of the model's output, where no layer returned it
        self.samples = torch.arange(self.n)
        self.zero = torch.zeros(self.n, dtype=torch.long)

    def _see(self, tensor: torch.Tensor) -> None:
        self.seen[id(tensor)] = weakref.ref(tensor)

    def _known(self, tensor: torch.Tensor) -> bool:
        ref = self.seen.get(id(tensor))
        return ref is not None and ref() is tensor

    def per_sample(self, shape: torch.Size) -> tuple[int, ...]:
        return (self.n, *shape[1:])

    def on_output(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """The hook of the first pass: new rows, inferred and compared."""
        source = _first_tensor(inputs)
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

    def again(self, name: str, inputs: Any, tensor: torch.Tensor) -> None:
        """The hook of a pass run again: the rows to measure again, measured."""
        source = _first_tensor(inputs)
        reads = ((junction_name(name), source), (name, tensor), (_unblurred_name(name), source))
        for row_name, read in reads:
            row = self.rows.get(row_name)
            if row_name in self.redo and row is not None and read is not None:
                self._measure(row, read)

    def output(self, result: Any, up_to: str | None, stop: nn.Module | None, *, again: bool = False) -> None:
        """The model's output (or the ``up_to`` layer's) as a last row, unless a row has it; in a pass
        run again, that row measured again."""
        last = "(output)" if up_to is None else up_to
        output = _first_tensor(result)
        if output is None or output.dim() < 1 or len(output) != 2 * self.n:
            return
        if again:
            if self.output_row is not None and self.output_row in self.redo:
                self._measure(self.rows[self.output_row], output)
            return
        if last in self.rows:
            return
        if self.last is not None and (
            self.last is output or (self.last.shape == output.shape and torch.equal(self.last, output))
        ):
            return
        kind = type(stop).__name__ if stop is not None else type(self.model).__name__
        shape = self.per_sample(output.shape)
        record = Recorded(
            last, self.types.get(last, kind), shape, id(output), None, shape, None, keeps_layout=True
        )
        self._add(record, output, "output")
        self.output_row = last

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
            self.rows[spec.name] = _Row(spec, None, kind)
            return spec
        view = _grid_view(spec, tensor)
        seen = _signature(view)
        if seen is not None and producer is not None and producer[0] == seen:
            # the same elements on the same grid as the row it was computed from, not written to since
            # (a permuted view, an Identity): that row's comparison is this one's
            self.rows[spec.name] = _Row(spec, producer[1].sink, kind, same_as=producer[1].spec.name)
            self.views[record.output_id] = (seen, producer[1])
            return spec
        row = self.rows[spec.name] = _Row(spec, self._sink(spec, view), kind)
        self.views[record.output_id] = (seen, row)
        self._compare(row, view)
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

    def _measure(self, row: _Row, tensor: torch.Tensor) -> None:
        """A row measured again: its tensor read and viewed as its grid."""
        spec = row.spec
        if row.kind == "unblurred":
            tensor = tensor[row.key]
        self._compare(row, _grid_view(spec, tensor))

    def _compare(self, row: _Row, tensor: torch.Tensor) -> None:
        """Both halves of a row's tensor (viewed as its grid) handed to its sink."""
        sink, name, n, element = row.sink, row.spec.name, self.n, self.element
        if sink is None:
            return

        def what(which: str = "the moved input") -> str:
            where = f"the input of {name!r}" if row.kind == "unblurred" else f"layer {name!r}"
            return f"{where} for {which if which == 'x' else f'the input moved by {element}'}"

        if isinstance(sink, PooledLayer):
            sink.measure(tensor, what)
        else:
            sink.add(tensor[n:], slice(0, n), self.samples, self.zero, what)

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
        row = self.rows[name] = _Row(dataclasses.replace(spec, name=name), sink, "unblurred", key)
        self._compare(row, source[key])


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
    model: nn.Module, batch: torch.Tensor, stop: nn.Module | None, up_to: str | None,
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
            f"out of memory running {what.replace(', one batch', ' as one batch')} of shape "
            f"{tuple(batch.shape)} on {batch.device}: the profile compares each layer's two outputs as the "
            f"layer returns them; profile fewer samples (x[:{max(1, len(batch) // 4)}])"
        ) from exc
    except Exception as exc:
        raise InvalidArgument(
            f"the model raised {type(exc).__name__} on {what} of shape "
            f"{tuple(batch.shape)} ({batch.dtype}, {batch.device}): {exc}"
        ) from exc
    if not reached:
        raise InvalidArgument(
            f"up_to={up_to!r} names a layer that was never called during the forward pass, so the "
            "profile cannot stop after it; pass the name of a layer that the model's forward uses"
        )
    return result


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
    borders = dict(zip(bordered, margins_that_pass([sums[name] for name in bordered], tolerance, KEEP_ANY)))
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
        exact = not isinstance(element, Shift) or divides(spec.stride, tuple(element))
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


@dataclass(frozen=True)
class _Context:
    """What the causes are read with, besides the rows: the model and the element, by ``_explained``."""

    model: nn.Module
    element: Action
    boundary: str
    spatial_in: tuple[int, ...]
    without_blur: Mapping[str, float]
    modules: Mapping[str, nn.Module]
    spatial: Mapping[str, tuple[int, ...]]

    @functools.cached_property
    def order(self) -> dict[str, int]:
        """Each submodule's place in ``model.named_modules()``."""
        return {name: i for i, (name, _) in enumerate(self.model.named_modules())}

    @functools.cached_property
    def attention(self) -> list[str]:
        """The self-attention layers of the model, in ``named_modules()`` order."""
        return [name for name, module in self.model.named_modules() if name and attends(module)]


def _explained(
    rows: tuple[LayerProfile, ...],
    model: nn.Module,
    element: Action,
    boundary: str,
    spatial_in: tuple[int, ...],
    without_blur: Mapping[str, float],
    modules: Mapping[str, nn.Module],
    spatial: Mapping[str, tuple[int, ...]],
) -> tuple[LayerProfile, ...]:
    """Causes read with the layers around each failure; rows of computed inputs kept where they fail first.

    A row for a tensor computed in ``forward`` (``JUNCTION``) is shown only
    where it is the first failure: the break happened between two submodules.
    The padded layers met so far give the borders' reach (``equivariance._engine.anatomy``).
    """
    context = _Context(model, element, boundary, spatial_in, without_blur, modules, spatial)
    kept: list[LayerProfile] = []
    padded: list[Padded] = []
    subsampled: LayerProfile | None = None  # the first layer whose stride the shift did not divide
    pooled: LayerProfile | None = None  # the first global pooling that failed
    positioned: LayerProfile | None = None  # the first row a position embedding broke
    failed = False
    for row in rows:
        if row.type == JUNCTION and (row.passed or failed):
            continue
        padded.extend(_padded(row, context))
        if not row.passed:
            row = _recaused(row, kept, subsampled, pooled, positioned, padded, context)
            failed = True
            if positioned is None and row.cause == "absolute positions":
                positioned = row
        global_pool = row.stride is not None and _is_global(row.output_shape, row.stride, spatial_in)
        if subsampled is None and not row.exact and row.stride is not None and not global_pool:
            subsampled = row
        if pooled is None and global_pool and not row.passed:
            pooled = row
        kept.append(row)
    return tuple(kept)


def _padded(row: LayerProfile, context: _Context) -> list[Padded]:
    """The row's layer where it pads or subsamples its input, with its input's stride."""
    if row.type == JUNCTION or row.stride is None:
        return []
    module = _module(context.model, row.name, context.modules)
    if module is None:
        return []
    d = len(row.stride)
    stride = tuple(max(1, int(s // k)) for s, k in zip(row.stride, module_stride(module, d)))
    layer = sampling(row.name, module, d, stride)
    return [] if layer is None else [layer]


def _recaused(
    row: LayerProfile,
    before: list[LayerProfile],
    subsampled: LayerProfile | None,
    pooled: LayerProfile | None,
    positioned: LayerProfile | None,
    padded: list[Padded],
    context: _Context,
) -> LayerProfile:
    """A failing row's cause, with what the rows before it and the model's layers and parameters say."""
    replace, element = dataclasses.replace, context.element
    if row.stride is not None and _is_global(row.output_shape, row.stride, context.spatial_in):
        return replace(row, cause="global pooling", fix=_global_fix(row))
    if (
        row.cause == "aliasing"
        and isinstance(element, Shift)
        and _blurs(context.model, row.name, context.modules)
    ):
        return replace(row, fix=_blur_fix(row, context.without_blur.get(row.name)))
    if row.cause in ("no symmetry", "borders") and subsampled is not None and isinstance(element, Shift):
        return replace(row, cause="aliasing", fix=_upsampled_fix(subsampled, row))
    if row.cause == "borders":
        return replace(row, fix=_borders_fix(row, padded, context))
    if row.cause != "no symmetry":
        return row
    positional = _positional_parameter(context.model, row, context.modules)
    if positional is not None:
        return replace(row, cause="absolute positions", fix=_positions_fix(row, positional, before))
    if positioned is not None:
        return replace(row, cause="absolute positions", fix=_carried_positions_fix(positioned))
    if isinstance(element, Shift):
        if pooled is not None:
            return replace(row, cause="global pooling", fix=_gated_fix(pooled))
        cover = _cover(row, padded, context)
        if cover is not None:
            return replace(row, cause="borders", fix=f"{cover.because()}; {cover.fix()}")
        attention = _attention_before(row, context)
        if attention is not None:
            return replace(row, cause="borders", fix=_attention_fix(attention))
    if row.type == JUNCTION:
        return replace(row, fix=_junction_fix(row, before))
    return row


def _cover(row: LayerProfile, padded: list[Padded], context: _Context) -> Cover | None:
    """The borders' reach, where it covers the row's compared region in a dim the shift moves."""
    spatial, moved, element = context.spatial.get(row.name), row.output_element, context.element
    if (
        spatial is None
        or row.stride is None
        or not isinstance(moved, Shift)
        or not isinstance(element, Shift)
    ):
        return None
    sides = [n - abs(o) for n, o in zip(spatial, moved)]
    dims = [i for i, o in enumerate(element) if o]
    return covering(padded, context.boundary, whole_samples(row.stride), sides, dims)


def _attention_before(row: LayerProfile, context: _Context) -> str | None:
    """Under the zeros boundary, a self-attention layer that comes before the row's layer (or holds it)
    in the model's module order."""
    if context.boundary != "zeros" or not context.attention:
        return None
    place = context.order.get(row.name.removesuffix(" (input)"))
    if place is None:
        return None
    return next((name for name in context.attention if context.order[name] <= place), None)


def _attention_fix(attention: str) -> str:
    return (
        f"self-attention ({attention!r}) mixes every token with every other, and under boundary='zeros' "
        "a shift drops content at one edge and fills zeros in at the other: the tokens there change, "
        "and through attention every token. A model without a position embedding follows shifts by "
        "whole patches on a torus: profile with boundary='circular', or with content on a zero canvas "
        "that the shift keeps inside"
    )


def _borders_fix(row: LayerProfile, padded: list[Padded], context: _Context) -> str:
    """The fix of an error within ``row.border`` samples of the borders: the margin, what it keeps
    where that is little, and the layer to pad circularly under the circular boundary."""
    border, fix = row.border, row.fix or ""
    assert border is not None
    spatial, moved = context.spatial.get(row.name), row.output_element
    if spatial is not None and isinstance(moved, Shift):
        sides = [n - abs(o) for n, o in zip(spatial, moved)]
        kept = math.prod(max(0, n - 2 * border) for n in sides) / max(1, math.prod(sides))
        if kept < KEEP_FRACTION:
            fix += f" (a margin of {border} keeps only {kept:.0%} of this map: a larger input keeps more)"
    carrying = reaching(padded, context.boundary)
    if context.boundary == "circular" and carrying:
        first = carrying[0]
        fix = (
            f"boundary='circular' moves content across the edges, but {first.describe()} does not pad "
            f"circularly, and the error lies within {border} sample{'s' if border > 1 else ''} of the "
            f"borders from it on: {pad_circularly(first)}"
        )
    return fix


def _carried_positions_fix(positioned: LayerProfile) -> str:
    return (
        f"the error is everywhere, after the position embedding at {positioned.name} (see its row): "
        "a value for every position that stays where it is when the content moves, which every later "
        "layer carries; fix it there"
    )


def _gated_fix(pooled: LayerProfile) -> str:
    return (
        f"the error is everywhere, after {pooled.name} pooled the whole map into one value per channel "
        "and that value changed with the shift (its row fails): a global statistic that gates or is "
        f"added to the map changes every sample of it. Put the content on a zero canvas larger than "
        "the shift, use circular padding with boundary='circular', or check the pooled part for "
        "invariance (check_invariance)"
    )


def _is_global(shape: tuple[int, ...], stride: Stride, spatial_in: tuple[int, ...]) -> bool:
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


def _blurs(model: nn.Module, name: str, modules: Mapping[str, nn.Module]) -> bool:
    """Whether the layer ``name`` of ``model`` (in ``modules`` by name, if there) low-pass filters
    before it subsamples (``_blurring``)."""
    module = _module(model, name, modules)
    return module is not None and _blurring(module)


def _module(model: nn.Module, name: str, modules: Mapping[str, nn.Module]) -> nn.Module | None:
    """The submodule ``name`` of ``model``: from ``modules`` where it is there; None if none is."""
    module = modules.get(name)
    if module is not None:
        return module
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _blurring(module: nn.Module) -> bool:
    """Whether a layer low-pass filters before it subsamples: an average pool, or a fixed (buffer) kernel."""
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return True
    kernels = [b for b in module._buffers.values() if b is not None and b.dim() >= 3]
    fixed = not any(p is not None for p in module._parameters.values())
    return fixed and any(b.is_floating_point() for b in kernels)


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


def _positional_parameter(
    model: nn.Module, row: LayerProfile, modules: Mapping[str, nn.Module]
) -> tuple[str, tuple[int, ...]] | None:
    """A parameter or buffer shaped like one sample of the row's output whose values vary over positions
    (``equivariance._engine.anatomy.positional_parameter``): of the row's layer, or of the model for a row
    computed in ``forward``."""
    owner: nn.Module = model
    if row.type != JUNCTION:
        found = _module(model, row.name, modules)
        if found is None:
            return None
        owner = found
    positional = positional_parameter(owner, submodules(owner), [tuple(row.output_shape[1:])])
    if positional is None:
        return None
    name, shape = positional
    return (name if row.type == JUNCTION else f"{row.name}.{name}"), shape


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


def _cause(element: Action, stride: Stride, exact: bool, border: int | None) -> tuple[str, str]:
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


def _tuple(values: tuple[float, ...]) -> str:
    return f"({shown(values[0])},)" if len(values) == 1 else "(" + ", ".join(map(shown, values)) + ")"
