"""The profile's causes: a failing layer's own numbers give a first cause (``first_cause``), which
``explained`` reads again with the rows before it and the model's anatomy, as the check's hints do, worded
by `equivariance._engine.causes` (docs/diagnosing.md)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from torch import nn

from equivariance._engine import causes
from equivariance._engine.anatomy import (
    Cover,
    Padded,
    attends,
    covering,
    module_stride,
    positional_parameter,
    reaching,
    sampling,
)
from equivariance._engine.grids import Stride, whole_samples
from equivariance._engine.isolation import submodules
from equivariance._engine.judge import KEEP_FRACTION
from equivariance._engine.validation import shown_per_dim
from equivariance.actions import Action
from equivariance.shifts import Shift

JUNCTION = "(forward)"
"""The type of a row for a tensor computed in ``forward`` between two submodules."""


def junction_name(layer: str) -> str:
    """The row of the tensor that ``layer`` is given, where no profiled layer returned it."""
    return f"{layer} (input)"


class Layer(Protocol):
    """What the causes read of a profile's row (``equivariance.profile.LayerProfile``)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def output_shape(self) -> tuple[int, ...]: ...
    @property
    def stride(self) -> Stride | None: ...
    @property
    def output_element(self) -> Action | None: ...
    @property
    def divisible(self) -> bool: ...
    @property
    def error(self) -> float: ...
    @property
    def passed(self) -> bool: ...
    @property
    def border(self) -> int | None: ...
    @property
    def cause(self) -> str | None: ...
    @property
    def fix(self) -> str | None: ...


L = TypeVar("L", bound=Layer)


def first_cause(element: Action, stride: Stride, divisible: bool, border: int | None) -> tuple[str, str]:
    """A failing map's cause and fix from its own numbers: its stride, and where its error lies."""
    if not isinstance(element, Shift):
        lead = f"this layer does not commute with {element!r}"
        if not type(element).moves_positions_only:  # not a rotation or flip of the grid: no advice of grids
            own = element.failure_hint("the output", None)
            return causes.NO_SYMMETRY, own or causes.not_followed(lead, "compare with the layers before it")
        if any(s > 1 for s in stride):
            return causes.ALIASING, causes.misaligned_grid(
                f"the map is subsampled by {shown_per_dim(stride)}, and the subsampling grid is not mapped "
                f"onto itself by {element!r} (it keeps samples 0, 2, 4, ... of an even size)",
                "use sizes for which the grid maps onto itself (odd sizes with centred sampling)",
            )
        return causes.NO_SYMMETRY, causes.no_group_symmetry(lead, "test the layers before it")
    if not divisible:
        lead = f"shift {element} is not a multiple of this map's stride {shown_per_dim(stride)}"
        return causes.ALIASING, causes.aliasing(lead, stride)
    if border is not None:
        return causes.BORDERS, ""  # worded by ``explained``, which knows the map and the boundary
    return causes.NO_SYMMETRY, causes.no_symmetry(
        "the error is everywhere, not only at the borders",
        "make it translation-equivariant, or test the layers before it",
    )


def is_global(shape: tuple[int, ...], stride: Stride, spatial_in: tuple[int, ...]) -> bool:
    """A map pooled to one sample per dim from an input with more."""
    return all(s >= n for s, n in zip(stride, spatial_in)) and any(n > 1 for n in spatial_in)


def blurring(module: nn.Module) -> bool:
    """Whether a layer low-pass filters before it subsamples: an average pool, or a fixed (buffer) kernel."""
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return True
    buffers = module._buffers.values()
    kernels = [b for b in buffers if b is not None and b.dim() >= 3 and b.is_floating_point()]
    return bool(kernels) and all(p is None for p in module._parameters.values())


def between(layer: Layer, before: Sequence[Layer]) -> str:
    """Where a tensor computed in ``forward`` lies: between the last layer before it and its own."""
    name = layer.name.removesuffix(" (input)")
    previous = next((r.name for r in reversed(before) if r.type != JUNCTION), None)
    return f"between {previous} and {name}" if previous is not None else f"before {name}"


@dataclass(frozen=True)
class Context:
    """What the causes are read with besides the rows: the model, the input's element and boundary, the
    input's and each row's spatial sizes, the profiled layers by name, and by blurring layer the error
    of its input subsampled without the blur."""

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

    def module(self, name: str) -> nn.Module | None:
        """The submodule ``name``: a profiled one, else looked up; None if there is none."""
        found = self.modules.get(name)
        if found is not None:
            return found
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return None


@dataclass
class _Seen:
    """What the rows before a failure say, as ``explained`` goes through them."""

    padded: list[Padded] = dataclasses.field(default_factory=list)
    subsampled: Layer | None = None  # the first layer whose stride the shift did not divide
    pooled: Layer | None = None  # the first global pooling that failed
    positioned: Layer | None = None  # the first row a position embedding broke


def explained(rows: Sequence[L], context: Context) -> tuple[L, ...]:
    """Causes read with the layers around each failure; rows of computed inputs kept where they fail first.

    A row for a tensor computed in ``forward`` (``JUNCTION``) is shown only
    where it is the first failure: the break happened between two submodules.
    """
    if all([row.passed for row in rows]):  # nothing to explain
        return tuple([row for row in rows if row.type != JUNCTION])
    kept: list[L] = []
    seen = _Seen()
    failed = False
    for row in rows:
        if row.type == JUNCTION and (row.passed or failed):
            continue
        seen.padded.extend(_padded(row, context))
        if not row.passed:
            row = _recaused(row, kept, seen, context)
            failed = True
            if seen.positioned is None and row.cause == causes.ABSOLUTE_POSITIONS:
                seen.positioned = row
        global_pool = row.stride is not None and is_global(row.output_shape, row.stride, context.spatial_in)
        if seen.subsampled is None and not row.divisible and row.stride is not None and not global_pool:
            seen.subsampled = row
        if seen.pooled is None and global_pool and not row.passed:
            seen.pooled = row
        kept.append(row)
    return tuple(kept)


def _padded(row: Layer, context: Context) -> list[Padded]:
    """The row's layer where it pads or subsamples its input, with its input's stride."""
    if row.type == JUNCTION or row.stride is None:
        return []
    module = context.module(row.name)
    if module is None:
        return []
    d = len(row.stride)
    stride = tuple(max(1, int(s // k)) for s, k in zip(row.stride, module_stride(module, d)))
    layer = sampling(row.name, module, d, stride)
    return [] if layer is None else [layer]


def _recaused(row: L, before: list[L], seen: _Seen, context: Context) -> L:
    """A failing row's cause, with what the rows before it and the model's layers and parameters say."""
    replace, element = dataclasses.replace, context.element
    shift = isinstance(element, Shift)
    if row.stride is not None and is_global(row.output_shape, row.stride, context.spatial_in):
        lead = f"{row.name} pools the whole map into one value per channel"
        return replace(row, cause=causes.GLOBAL_POOLING, fix=causes.global_pooling(lead))  # type: ignore[type-var]
    if row.cause == causes.ALIASING and shift and _blurs(row, context):
        assert row.stride is not None
        fix = causes.blurred(row.name, row.stride, row.error, context.without_blur.get(row.name))
        return replace(row, fix=fix)  # type: ignore[type-var]
    if row.cause in (causes.NO_SYMMETRY, causes.BORDERS) and seen.subsampled is not None and shift:
        return replace(row, cause=causes.ALIASING, fix=_upsampled(seen.subsampled, row))  # type: ignore[type-var]
    if row.cause == causes.BORDERS:
        return replace(row, fix=_borders_fix(row, seen.padded, context))  # type: ignore[type-var]
    if row.cause != causes.NO_SYMMETRY:
        return row
    found = _everywhere(row, before, seen, context)
    if found is not None:
        return replace(row, cause=found[0], fix=found[1])  # type: ignore[type-var]
    if row.type == JUNCTION:
        return replace(row, fix=causes.in_forward(between(row, before)))  # type: ignore[type-var]
    return row


def _everywhere(row: Layer, before: Sequence[Layer], seen: _Seen, context: Context) -> tuple[str, str] | None:
    """An error everywhere that the layers explain: a position embedding (here or carried from an
    earlier row), a global pooling that failed before, the borders' reach, attention under zeros."""
    positional = _positional_parameter(row, context)
    if positional is not None:
        where = f" The break happens {between(row, before)}, in forward." if row.type == JUNCTION else ""
        return causes.ABSOLUTE_POSITIONS, causes.positions(*positional, where=where)
    if seen.positioned is not None:
        return causes.ABSOLUTE_POSITIONS, causes.carried_positions(seen.positioned.name)
    if not isinstance(context.element, Shift):
        return None
    if seen.pooled is not None:
        lead = (
            f"the error is everywhere, after {seen.pooled.name} pooled the whole map into one value per "
            "channel and that value changed with the shift (its row fails)"
        )
        return causes.GLOBAL_POOLING, causes.global_pooling(lead)
    cover = _cover(row, seen.padded, context)
    if cover is not None:
        return causes.BORDERS, causes.covered(cover)
    attention = _attention_before(row, context)
    if attention is not None:
        return causes.BORDERS, causes.attention([attention], verb="profile")
    return None


def _upsampled(subsampled: Layer, row: Layer) -> str:
    assert subsampled.stride is not None
    lead = (
        f"the map was subsampled by {shown_per_dim(subsampled.stride)} at {subsampled.name} "
        f"({subsampled.type}), where the shift stopped being followed, and brought back to a finer grid "
        f"before {row.name}"
    )
    return causes.brought_back(lead, subsampled.stride)


def _cover(row: Layer, padded: list[Padded], context: Context) -> Cover | None:
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


def _attention_before(row: Layer, context: Context) -> str | None:
    """Under the zeros boundary, a self-attention layer that comes before the row's layer (or holds it)
    in the model's module order."""
    if context.boundary != "zeros" or not context.attention:
        return None
    place = context.order.get(row.name.removesuffix(" (input)"))
    if place is None:
        return None
    return next((name for name in context.attention if context.order[name] <= place), None)


def _borders_fix(row: Layer, padded: list[Padded], context: Context) -> str:
    """The fix of an error within ``row.border`` samples of the borders: the margin, what it keeps
    where that is little, and the layer to pad circularly under the circular boundary."""
    border = row.border
    assert border is not None
    carrying = reaching(padded, context.boundary)
    if context.boundary == "circular" and carrying:
        first = carrying[0]
        return (
            f"{causes.not_circular(first)}, and the error lies within {border} sample"
            f"{'s' if border > 1 else ''} of the borders from it on: {causes.pad_circularly(first)}"
        )
    fix = causes.borders(border, (border,), context.boundary)
    spatial, moved = context.spatial.get(row.name), row.output_element
    if spatial is not None and isinstance(moved, Shift):
        kept = causes.kept_share([n - abs(o) for n, o in zip(spatial, moved)], border)
        if kept < KEEP_FRACTION:
            fix += f" ({causes.keeps_little(border, kept)})"
    return fix


def _blurs(row: Layer, context: Context) -> bool:
    """Whether the row's layer low-pass filters before it subsamples (``blurring``)."""
    module = context.module(row.name)
    return module is not None and blurring(module)


def _positional_parameter(row: Layer, context: Context) -> tuple[str, tuple[int, ...]] | None:
    """A parameter or buffer shaped like one sample of the row's output whose values vary over positions
    (``anatomy.positional_parameter``): of the row's layer, or of the model for a row computed in
    ``forward``."""
    owner: nn.Module = context.model
    if row.type != JUNCTION:
        found = context.module(row.name)
        if found is None:
            return None
        owner = found
    positional = positional_parameter(owner, submodules(owner), [tuple(row.output_shape[1:])])
    if positional is None:
        return None
    name, shape = positional
    return (name if row.type == JUNCTION else f"{row.name}.{name}"), shape
