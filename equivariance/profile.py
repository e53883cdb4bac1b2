"""Where a model loses equivariance: the error of every layer under one input shift (or one element).

[`profile_equivariance`][equivariance.profile.profile_equivariance] returns an
[`EquivarianceProfile`][equivariance.profile.EquivarianceProfile]: one
[`LayerProfile`][equivariance.profile.LayerProfile] per layer, with its error, its verdict and, where it
fails, the likely cause and a fix. How the pass runs and how each cause is read: the documentation's
"Diagnosing a broken model" page.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from equivariance._engine import arguments as _arguments
from equivariance._engine import causes as _causes
from equivariance._engine import fixes as _fixes
from equivariance._engine.diagnosis import JUNCTION, between, is_global
from equivariance._engine.field_layers import UNBATCHED, FieldPass
from equivariance._engine.grids import Stride, shown
from equivariance._engine.passes import profile_layers
from equivariance._engine.runner import Runner
from equivariance.actions import Action, Boundary
from equivariance.errors import InvalidArgument
from equivariance.fields import Field, FieldSpec, ModelInput
from equivariance.layouts import LayoutLike
from equivariance.shifts import ShiftLike
from equivariance.tolerances import resolve_tolerance

__all__ = ["EquivarianceProfile", "LayerProfile", "profile_equivariance"]

FixMethod = Literal["auto", "antialias", "polyphase", "circular_padding"]

CAUSES = _causes.CAUSES
_LAYOUT_LABELS = {"channels_first": "C first", "channels_last": "C last", "tokens": "tokens"}


@dataclass(frozen=True)
class LayerProfile:
    """The equivariance error of one layer's output under the input shift.

    Attributes:
        name: the layer's name in ``model.named_modules()``; ``"(output)"``
            for the model's output where no leaf returns it. For several
            inputs, a layer that returns several tensors has a row for each,
            ``"layers.0[1]"`` for the second.
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
        divisible: whether the stride divides the shift (``output_element`` is then exact, not rounded).
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
            is ambiguous, or, for several inputs, its field type is not named
            under a rotation: its ``error`` is then nan and it counts as passed).
        field: for several inputs, how the output moves: the field type
            named in ``fields=`` or ``outputs=``, or as read from its shape
            under a permutation (``"points on axis 1"``, ``"pooled"``); None on
            grids.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    stride: Stride | None
    output_element: Action | None
    divisible: bool
    error: float
    passed: bool
    border: int | None = None
    cause: str | None = None
    fix: str | None = None
    layout: str | None = None
    note: str | None = None
    compared: bool = True
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["output_shape"] = list(self.output_shape)
        data["stride"] = None if self.stride is None else list(self.stride)
        moved = None if self.output_element is None else self.output_element.to_json()
        data["output_element"] = moved
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
        inputs: for several inputs, each argument's shape and field type
            (``input_shape`` is then the first's); None for one tensor.
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
    inputs: str | None = None

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
        if self.inputs is not None:
            raise InvalidArgument(
                "fixed_copy converts the strided and padded layers of a model on a grid; a profile of "
                "several inputs names layers that no surgery fixes (its fix lines say what to change)"
            )
        return _fixes.fixed_copy(self, model, method, options)

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
            "boundary": self.boundary,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "tolerance_source": self.tolerance_source,
            "passed": self.passed,
            "first_failure": None if first is None else first.name,
            "separate_passes": self.separate_passes,
            "inputs": self.inputs,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> str:
        """One line: the verdict and the first layer that fails, with its cause."""
        first = self.first_failure
        subject = self.subject if self.up_to is None else f"{self.subject} up to {self.up_to}"
        # the boundary of an element that reads one (a shift); one that maps the grid onto itself has none
        boundary = f" ({self.boundary})" if type(self.element).uses_boundary else ""
        head = f"equivariance profile of {subject} under {self.element.noun} {self.element}{boundary}"
        skipped = sum(not layer.compared for layer in self.layers)
        if first is None and self.inputs is not None and skipped:
            return (
                f"{head}: every compared layer within rtol {self.rtol:.0e} ({skipped} of {len(self.layers)} "
                "not compared)"
            )
        if first is None:
            return f"{head}: every layer within rtol {self.rtol:.0e}"
        if first.type == JUNCTION:
            where = between(first, self.layers[: self.layers.index(first)])
            return f"{head}: first failure {where} (in forward, not a submodule), {first.cause}"
        return f"{head}: first failure at {first.name} ({first.type}), {first.cause}"

    def __str__(self) -> str:
        if self.inputs is not None:
            return self._points()
        table = [("layer", "type", "output", "layout", "stride", "out shift", "error", "verdict")]
        for layer in self.layers:
            stride = "-" if layer.stride is None else _tuple(layer.stride)
            if layer.stride is not None and is_global(layer.output_shape, layer.stride, self.input_shape[2:]):
                stride = "global"
            moved = "none" if layer.output_element is None else str(layer.output_element)
            if not layer.divisible:
                moved += " ~"
            verdict = "ok" if layer.passed else f"FAIL ({layer.cause})"
            error = f"{layer.error:.2e}"
            if not layer.compared:
                verdict, error, moved = "not compared (layout?)", "-", "-"
            shape = _tuple(layer.output_shape[1:])
            layout = _LAYOUT_LABELS.get(layer.layout or "", "-")
            table.append((layer.name, layer.type, shape, layout, stride, moved, error, verdict))
        widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
        lines = [self.summary()]
        lines.append(
            f"  input {self.input_shape} {self.dtype}; tolerance rtol={self.rtol:.0e}, "
            f"atol={self.atol:.0e} ({self.tolerance_source})"
        )
        if self.separate_passes is not None:
            lines.append(f"  two passes: {self.separate_passes}")
        for line in table:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if any(not layer.divisible for layer in self.layers):
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

    def _points(self) -> str:
        """The table of a profile of several inputs: each row's field type instead of a grid's."""
        table = [("layer", "type", "output", "moves as", "error", "verdict")]
        for layer in self.layers:
            verdict = "ok" if layer.passed else f"FAIL ({layer.cause})"
            error, field = f"{layer.error:.2e}", layer.field or "-"
            if not layer.compared:
                verdict, error = "not compared", "-"
            whole = layer.note is not None and layer.note.startswith(UNBATCHED)  # no batch axis first
            shape = _tuple(layer.output_shape if whole else layer.output_shape[1:])
            table.append((layer.name, layer.type, shape, field, error, verdict))
        widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
        lines = [
            self.summary(),
            f"  inputs {self.inputs}; {self.dtype}; tolerance rtol={self.rtol:.0e}, atol={self.atol:.0e} "
            f"({self.tolerance_source})",
        ]
        if self.separate_passes is not None:
            lines.append(f"  two passes: {self.separate_passes}")
        for line in table:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        by_note: dict[str, list[str]] = {}
        for layer in self.layers:
            if not layer.compared:
                by_note.setdefault(layer.note or "", []).append(layer.name)
        for note, names in by_note.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  not compared: {shown}: {note}")
        first = self.first_failure
        if first is not None:
            lines.append(f"  at {first.name}: {first.fix}")
        return "\n".join(lines)


def profile_equivariance(
    model: nn.Module,
    x: torch.Tensor | ModelInput,
    shift: ShiftLike | Action,
    *,
    layers: Sequence[str] | None = None,
    up_to: str | None = None,
    boundary: Boundary = "zeros",
    atol: float | None = None,
    rtol: float | None = None,
    layouts: Mapping[str, LayoutLike] | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
    fields: Mapping[str, Field | Sequence[Field | None]] | None = None,
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
    layer's layout is inferred from the shapes (docs/actions.md) or
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

        A model of sets, with the field type of its input (``inputs=``, as a
        check takes it) and a permutation: each layer that keeps the axis of
        points must reorder it, and a pooled one must not change:

        >>> from equivariance.fields import Scalars
        >>> from equivariance.permutations import Permutation
        >>> class Indexed(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.point, self.head = torch.nn.Linear(2, 4), torch.nn.Linear(4, 1)
        ...         self.index = torch.nn.Parameter(torch.randn(5, 4))
        ...     def forward(self, h):  # each point weighted by its index: the order matters
        ...         return self.head((self.point(h) * self.index).sum(-2))
        >>> profile = profile_equivariance(Indexed(), torch.randn(3, 5, 2), Permutation.cycle(5),
        ...                                inputs=Scalars())
        >>> [(row.name, row.field, row.passed) for row in profile.layers]
        [('point', 'points on axis 1', True), ('head (input)', 'pooled', False), ('head', 'pooled', False)]

    Args:
        model: an ``nn.Module``.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims; or, with
            ``inputs=``, a model's several arguments (a tensor, a tuple, a dict
            or a torch_geometric ``Data``/``Batch``), as
            [`check_equivariance`][equivariance.check.check_equivariance] takes them.
        shift: the input shift, a [`Shift`][equivariance.Shift] or a tuple of
            ints; or a transform ([`Rot90`][equivariance.Rot90],
            [`Flip`][equivariance.Flip], an [`Action`][equivariance.actions.Action]
            of your own), which every spatial output is expected to undergo too.
            For several inputs: one element of
            [`equivariance.permutations`][equivariance.permutations] or
            [`equivariance.euclidean`][equivariance.euclidean], or a product of them.
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
        inputs: the field type of each of the model's arguments
            ([`equivariance.fields`][equivariance.fields]), as a check takes it:
            the profile of several inputs. Under an element that only reorders
            points (a permutation), a layer's field type is read from its shape:
            the axis after the batch axis as long as the inputs' points holds
            them (reordered), none means pooled (unchanged), several are
            ambiguous (refused: name it in ``fields``). Under any other
            element, only the layers ``fields`` names (and the outputs) are
            compared; the others' rows say why not.
        outputs: with ``inputs``, the field type of each of the model's
            outputs; a layer that returns one is compared by it.
        fields: with ``inputs``, the field type of layers' outputs by name, as
            ``layouts`` names layouts: ``{"encoder": Scalars(), "head":
            Vectors()}``; a container's name covers the layers in it (the
            longest name wins). Each tensor a layer returns is a row of its
            own (``"layers.0[1]"``): name a tuple for such a layer, one field
            type (or None: as if not named) for each item it returns,
            ``{"layers.0": (Positions(), Scalars())}``; a single field type
            is its first tensor's. For a torch_geometric ``Batch``, a per-node
            output is read one row a graph (padded to the largest graph
            where their sizes differ), each graph moved by the element's
            ``sized(nodes)``; a per-edge output too, which keeps its order
            under a node permutation (name it ``Vectors(nodes=None)`` where
            it turns).

    Returns:
        An [`EquivarianceProfile`][equivariance.EquivarianceProfile].

    Raises:
        InvalidArgument: for bad arguments, a model that raises on the batch
            (the message names it and its shape), or a batch of ``2N`` that does
            not fit in the GPU's memory (profile fewer samples).
    """
    if _arguments.several_inputs(x, inputs, outputs) or fields is not None:
        _arguments.no_grid_options(boundary=boundary != "zeros", layouts=layouts is not None)
        request = _arguments.validate_layer_parts(
            model, x, shift, inputs=inputs, outputs=outputs, layers=layers, up_to=up_to, fields=fields
        )
        tolerance = resolve_tolerance(request.x.dtype, rtol=rtol, atol=atol)
        with Runner(request.model):
            rows, separate = profile_layers(request, tolerance, LayerProfile, FieldPass)
        assert request.arguments is not None
        return EquivarianceProfile(
            subject=type(request.model).__name__, element=request.element,
            boundary="none (tensors of points)",
            input_shape=tuple(request.x.shape), dtype=str(request.x.dtype).removeprefix("torch."),
            rtol=tolerance.rtol, atol=tolerance.atol, tolerance_source=tolerance.source, layers=rows,
            up_to=up_to, separate_passes=separate, inputs=request.arguments.shapes(),
        )  # fmt: skip
    request = _arguments.validate_layers(
        model, x, shift, layers=layers, up_to=up_to, boundary=boundary, layouts=layouts
    )
    tolerance = resolve_tolerance(request.x.dtype, rtol=rtol, atol=atol)
    with Runner(request.model):
        rows, separate = profile_layers(request, tolerance, LayerProfile)
    return EquivarianceProfile(
        subject=type(request.model).__name__,
        element=request.element,
        boundary=request.boundary,
        input_shape=tuple(request.x.shape),
        dtype=str(request.x.dtype).removeprefix("torch."),
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        layers=_fixes.revised(rows, request.model, request.boundary),
        up_to=up_to,
        separate_passes=separate,
    )


def _tuple(values: tuple[float, ...]) -> str:
    return f"({shown(values[0])},)" if len(values) == 1 else "(" + ", ".join(map(shown, values)) + ")"
