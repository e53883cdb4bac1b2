"""Where each layer of a model keeps its spatial dims, and at which stride: read off the shapes.

The per-layer profile reads every layer's output as the layer returns it.
To compare a layer's output with the input's shift, it must know the output's
layout (channels first, channels last, tokens; see
[`equivariance.layouts`][equivariance.layouts]) and its grid's stride
relative to the input. Both are inferred here, layer by layer in the order
they ran, from what the layer was given and what it returned:

1. a layout the caller names (``layouts={"blocks.0.norm": "channels_last"}``) wins;
2. PyTorch's convolutions, pooling, batch, instance and group norms and
   upsampling work on ``(N, C, *spatial)`` tensors: their outputs are
   channels first;
3. a layer whose output is a permuted view of its input (a ``Permute``)
   moves the input's layout with the permutation;
4. a layer that keeps its input's shape, or changes only the channel dim of
   its input's layout (a ``LayerNorm``, a ``Linear`` on the channels), keeps
   its input's layout and grid, unless another layout reads its output on
   the same grid (6 channels on a 6x6 map) and it is not one of the modules
   known to keep a layout (``LAYOUT_KEEPING_OPS``);
5. otherwise each reading of the shape (channels first, channels last,
   tokens after a few prefix tokens) gives a grid. A reading on a grid seen
   before (the input's, an earlier layer's) wins; then a reading on a grid
   that one integer stride makes from the layer's input. Where several
   readings remain, the layout is *ambiguous*: the layer is not compared,
   and the profile says so and how to name the layout (as are the layers
   computed from it, until one settles it). No reading at all: the spatial
   dims are gone (a flatten, a dense head) and the output is compared whole.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from equivariance.downsampling import BlurPool, PolyphaseSampling
from equivariance.layouts import MAX_PREFIX, ChannelsFirst, ChannelsLast, Layout, Tokens, stride_of

CHANNELS_FIRST_OPS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.batchnorm._NormBase,  # batch and instance norms
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Upsample,
    BlurPool,
    PolyphaseSampling,
)
"""Modules that take and return ``(N, C, *spatial)`` tensors."""

LAYOUT_KEEPING_OPS: tuple[type[nn.Module], ...] = (
    *(getattr(nn.modules.activation, name) for name in nn.modules.activation.__all__),
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.LayerNorm,
    nn.Linear,
)
"""Modules that work elementwise or on the last dim: their output is in their input's layout."""


@dataclass(frozen=True)
class Recorded:
    """One layer's output in the profile's pass, and what it was computed from.

    Attributes:
        name: the layer's name in ``model.named_modules()``.
        type: the layer's class name.
        shape: the shape of the layer's first output with the batch dim, for
            the batch of ``x``.
        output_id: ``id`` of the output as the layer returned it.
        input_id: ``id`` of the layer's first tensor input where it is a tensor
            the pass has seen (an earlier layer's output, or the input), else None.
        input_shape: its shape, for the batch of ``x``.
        permutation: where the output is a permuted view of the input, the
            input dim of each output dim.
        channels_first: whether the layer is one of
            ``CHANNELS_FIRST_OPS``.
        keeps_layout: whether the layer is one of
            ``LAYOUT_KEEPING_OPS``.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    output_id: int
    input_id: int | None
    input_shape: tuple[int, ...] | None
    permutation: tuple[int, ...] | None
    channels_first: bool = False
    keeps_layout: bool = False


@dataclass(frozen=True)
class LayerSpec:
    """A layer's output as the profile compares it.

    Attributes:
        layout: its layout, None when its spatial dims are gone (compared
            whole) or its layout is ambiguous (not compared).
        spatial: the grid's size, None without one.
        stride: the grid's stride relative to the input, None without a grid.
        ambiguous: why the layout could not be inferred, with the fix.
        inferred: how a layout other than channels first was inferred.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    layout: Layout | None
    spatial: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    ambiguous: str | None = None
    inferred: str | None = None


_Known = tuple[Layout, tuple[int, ...], tuple[int, ...]]  # layout, grid, stride
_Producers = dict[int, _Known | None]  # None: computed from an ambiguous layout


def view_permutation(source: torch.Tensor, result: torch.Tensor) -> tuple[int, ...] | None:
    """The input dim of each dim of ``result`` where it is a permuted view of ``source`` (None if not)."""
    if result.dim() != source.dim() or result.numel() != source.numel() or result.numel() == 0:
        return None
    if result.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
        return None
    dims = {(size, stride): i for i, (size, stride) in enumerate(zip(source.shape, source.stride()))}
    if len(dims) != source.dim():
        return None  # two dims alike: the permutation is not determined
    found = [dims.get((size, stride)) for size, stride in zip(result.shape, result.stride())]
    if None in found or sorted(found) != list(range(source.dim())):  # type: ignore[type-var]
        return None
    return tuple(found)  # type: ignore[arg-type]


class LayerInference:
    """Each recorded layer's layout, grid and stride, inferred as the layers run (see the module).

    Args:
        x_shape: the shape of the model's input ``x``.
        x_id: ``id`` of the input tensor the model was given.
        given: the layouts the caller named, by layer name.
    """

    def __init__(self, x_shape: tuple[int, ...], x_id: int, given: dict[str, Layout]) -> None:
        self.spatial_in = spatial_in = tuple(x_shape[2:])
        ones = (1,) * len(spatial_in)
        self.given = given
        self.known: _Producers = {x_id: (ChannelsFirst(), spatial_in, ones)}
        # an input computed outside the profiled layers (F.relu, a residual sum) takes after the last
        # recorded output of its shape
        self.by_shape: dict[tuple[int, ...], _Known | None] = {tuple(x_shape): self.known[x_id]}
        self.grids: dict[tuple[int, ...], tuple[int, ...]] = {spatial_in: ones}

    def add(self, record: Recorded) -> LayerSpec:
        """The next layer's spec, from what it was given and what it returned."""
        producer = None
        if record.input_id is not None and record.input_id in self.known:
            producer = self.known[record.input_id]
        elif record.input_shape is not None:
            producer = self.by_shape.get(record.input_shape)
        spec = _infer(record, producer, self.grids, self.spatial_in, self.given.get(record.name))
        if spec.ambiguous is not None:
            self.known[record.output_id] = self.by_shape[spec.shape] = None
        elif spec.layout is not None and spec.spatial is not None and spec.stride is not None:
            found = (spec.layout, spec.spatial, spec.stride)
            self.known[record.output_id] = self.by_shape[spec.shape] = found
            self.grids.setdefault(spec.spatial, spec.stride)
        else:  # spatial dims gone: what is computed from it takes after its shape (an id is reused)
            self.known.pop(record.output_id, None)
        return spec


def _infer(
    record: Recorded,
    producer: _Known | None,
    grids: dict[tuple[int, ...], tuple[int, ...]],
    spatial_in: tuple[int, ...],
    given: Layout | None,
) -> LayerSpec:
    shape, d = record.shape, len(spatial_in)
    base = LayerSpec(record.name, record.type, shape, None, None, None)
    if given is not None:
        layout = given.resolved(shape, spatial_in) if isinstance(given, Tokens) else given
        if isinstance(layout, Tokens):
            layout.check_grid(spatial_in, None, f"layouts[{record.name!r}]=")
        spatial = layout.check(shape, d, f"the output of layer {record.name!r}")
        return _spec(base, layout, spatial, _stride_to(spatial, producer, grids, spatial_in))
    first = ChannelsFirst().spatial_shape(shape, d)
    if record.channels_first and first is not None:
        return _spec(base, ChannelsFirst(), first, _stride_to(first, producer, grids, spatial_in))
    if producer is not None:
        kept = _kept(record, producer, shape, d, grids)
        if kept is not None:
            layout, how = kept
            return _spec(base, layout, producer[1], producer[2], how)
    readings = _readings(shape, d, grids)
    seen = [r for r in readings if r[1] in grids]
    if seen:
        return _choose(base, seen, producer, lambda grid: grids[grid], "on a grid seen before")
    reference = producer[1:] if producer is not None else (spatial_in, (1,) * d)
    new = [r for r in readings if not isinstance(r[0], Tokens) and _follows(reference[0], r[1])]
    if new:
        return _choose(base, new, producer, lambda grid: _stride_from(reference, grid), "at one stride")
    return base  # no spatial reading: the spatial dims are gone


def _kept(
    record: Recorded,
    producer: _Known,
    shape: tuple[int, ...],
    d: int,
    grids: dict[tuple[int, ...], tuple[int, ...]],
) -> tuple[Layout, str | None] | None:
    """The layout a layer carries over from its input, if the shapes (or the module) say it does."""
    layout, grid, _ = producer
    if record.permutation is not None and record.permutation != tuple(range(len(record.permutation))):
        moved = _permuted(layout, record.permutation, d)
        if moved is not None and moved.spatial_shape(shape, d) == grid:
            return moved, f"{moved.describe()}, a permuted view of its input ({layout.describe()})"
        return None
    before = record.input_shape
    if before is None:
        return None
    if not (shape == before or _only_channels_differ(layout, before, shape, d)):
        return None
    others = [r for r in _readings(shape, d, grids) if r[1] == grid and type(r[0]) is not type(layout)]
    return (layout, None) if record.keeps_layout or not others else None


def _permuted(layout: Layout, permutation: tuple[int, ...], d: int) -> Layout | None:
    """The layout of a permuted view of a tensor in ``layout`` (channels first or last), if it is one."""
    n = len(permutation)
    if isinstance(layout, ChannelsFirst) and n == d + 2:
        channel, spatial = 1, list(range(2, n))
    elif isinstance(layout, ChannelsLast):
        channel, spatial = n - 1, list(range(1, n - 1))
    else:
        return None
    if permutation[0] != 0:
        return None
    if list(permutation) == [0, channel, *spatial]:
        return ChannelsFirst()
    if list(permutation) == [0, *spatial, channel]:
        return ChannelsLast()
    return None


def _only_channels_differ(layout: Layout, before: tuple[int, ...], after: tuple[int, ...], d: int) -> bool:
    if len(before) != len(after):
        return False
    differ = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    if isinstance(layout, ChannelsFirst):
        return all(1 <= i < len(before) - d for i in differ)
    return differ == [len(before) - 1]  # channels last and tokens: the last dim


def _readings(
    shape: tuple[int, ...], d: int, grids: dict[tuple[int, ...], tuple[int, ...]]
) -> tuple[tuple[Layout, tuple[int, ...]], ...]:
    """Every layout that can read ``shape``, with its grid (tokens only on grids seen before)."""
    return _readings_on(shape, d, tuple(grids))


@functools.lru_cache(maxsize=1024)
def _readings_on(
    shape: tuple[int, ...], d: int, grids: tuple[tuple[int, ...], ...]
) -> tuple[tuple[Layout, tuple[int, ...]], ...]:
    readings: list[tuple[Layout, tuple[int, ...]]] = []
    for layout in (ChannelsFirst(), ChannelsLast()):
        spatial = layout.spatial_shape(shape, d)
        if spatial is not None:
            readings.append((layout, spatial))
    if len(shape) == 3:
        for grid in grids:
            prefix = shape[1] - math.prod(grid)
            if 0 <= prefix <= MAX_PREFIX and not (d == 1 and prefix == 0):
                readings.append((Tokens(grid, prefix), grid))
    return tuple(readings)


def _choose(
    base: LayerSpec,
    readings: list[tuple[Layout, tuple[int, ...]]],
    producer: _Known | None,
    stride: object,
    why: str,
) -> LayerSpec:
    """The one reading left; else an ambiguous spec."""
    if len(readings) > 1:
        options = " or ".join(layout.describe() for layout, _ in readings)
        fix = ", ".join(repr(layout.name) for layout, _ in readings if not isinstance(layout, Tokens))
        return LayerSpec(
            base.name, base.type, base.shape, None, None, None,
            ambiguous=(
                f"the output of shape {base.shape} reads as {options}; name its layout, e.g. "
                f"layouts={{{base.name!r}: {fix.split(', ')[0] if fix else 'Tokens(grid, prefix)'}}}"
            ),
        )  # fmt: skip
    layout, spatial = readings[0]
    how = (
        None
        if isinstance(layout, ChannelsFirst)
        else f"{layout.describe()}, the only reading of its shape {why}"
    )
    return _spec(base, layout, spatial, stride(spatial), how)  # type: ignore[operator]


def _spec(
    base: LayerSpec,
    layout: Layout,
    spatial: tuple[int, ...],
    stride: tuple[int, ...],
    how: str | None = None,
) -> LayerSpec:
    return LayerSpec(base.name, base.type, base.shape, layout, spatial, stride, None, how)


def _follows(reference: tuple[int, ...], grid: tuple[int, ...]) -> bool:
    """Whether ``grid`` comes from ``reference`` by one integer stride, or one upsampling factor."""
    if len(grid) != len(reference) or min(grid) < 1:
        return False
    if all(g <= r for g, r in zip(grid, reference)):
        return len({stride_of(r, g) for r, g in zip(reference, grid)}) == 1
    factors = {g / r for g, r in zip(grid, reference)}
    return len(factors) == 1 and float(next(iter(factors))).is_integer()


def _stride_from(
    reference: tuple[tuple[int, ...], tuple[int, ...]], grid: tuple[int, ...]
) -> tuple[int, ...]:
    """The stride of ``grid``, made from a grid of known stride (an upsampled grid divides it)."""
    ref_grid, ref_stride = reference
    strides = []
    for r, g, s in zip(ref_grid, grid, ref_stride):
        strides.append(s * stride_of(r, g) if g <= r else max(1, s // round(g / r)))
    return tuple(strides)


def _stride_to(
    spatial: tuple[int, ...],
    producer: _Known | None,
    grids: dict[tuple[int, ...], tuple[int, ...]],
    spatial_in: tuple[int, ...],
) -> tuple[int, ...]:
    if spatial in grids:
        return grids[spatial]
    reference = producer[1:] if producer is not None else (spatial_in, (1,) * len(spatial_in))
    return _stride_from(reference, spatial)
