"""Each layer's layout, grid and stride, inferred from the shapes its forward hook sees, layer by layer.

The per-layer profile and the Lie derivative read every layer's output through it; the stride follows
`equivariance._engine.grids`. How layouts are told apart is in docs/actions.md ("Layouts in the
profile"); how strides are read, in docs/diagnosing.md ("How strides are read").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._engine.grids import Stride, stated_stride, step, times
from equivariance._engine.isolation import owning_module
from equivariance.downsampling import BlurPool, PolyphaseSampling
from equivariance.layouts import MAX_PREFIX, ChannelsFirst, ChannelsLast, Layout, Tokens

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
    """One layer's first output in a pass (shapes for the batch of ``x``) and what it was computed from:
    its first tensor input by ``id`` where the pass has seen it, the input dim of each output dim where
    the output is a permuted view of it, whether the module is one of ``CHANNELS_FIRST_OPS`` or
    ``LAYOUT_KEEPING_OPS``, and the stride it states (``grids.stated_stride``)."""

    name: str
    type: str
    shape: tuple[int, ...]
    output_id: int
    input_id: int | None
    input_shape: tuple[int, ...] | None
    permutation: tuple[int, ...] | None
    channels_first: bool = False
    keeps_layout: bool = False
    stated: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LayerSpec:
    """A layer's output as the profile compares it: its layout (None where its spatial dims are gone,
    compared whole, or where it is ``ambiguous``: why, with the fix), its grid and stride relative to
    the input, and how a layout other than channels first was ``inferred``."""

    name: str
    type: str
    shape: tuple[int, ...]
    layout: Layout | None
    spatial: tuple[int, ...] | None
    stride: Stride | None
    ambiguous: str | None = None
    inferred: str | None = None


_Known = tuple[Layout, tuple[int, ...], Stride]  # layout, grid, stride
_Producers = dict[int, _Known | None]  # None: computed from an ambiguous layout
_Grids = dict[tuple[int, ...], Stride]  # each grid met, at the stride it was first met at


def view_permutation(source: torch.Tensor, result: torch.Tensor) -> tuple[int, ...] | None:
    """The input dim of each dim of ``result`` where it is a permuted view of ``source`` (None if not,
    or where the storage cannot be read: a tensor of ``torch.func``)."""
    if result.dim() != source.dim() or result.numel() != source.numel() or result.numel() == 0:
        return None
    try:
        if result.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
            return None
    except NotImplementedError:
        return None
    dims = {(size, stride): i for i, (size, stride) in enumerate(zip(source.shape, source.stride()))}
    if len(dims) != source.dim():
        return None  # two dims alike: the permutation is not determined
    found = [dims.get((size, stride)) for size, stride in zip(result.shape, result.stride())]
    if None in found or sorted(found) != list(range(source.dim())):  # type: ignore[type-var]
        return None
    return tuple(found)  # type: ignore[arg-type]


class LayerInference:
    """Each recorded layer's layout, grid and stride, inferred as the layers run from the model's input
    (its shape and ``id``) and the layouts the caller named (``given``, by layer name)."""

    def __init__(self, x_shape: tuple[int, ...], x_id: int, given: dict[str, Layout]) -> None:
        self.spatial_in = spatial_in = tuple(x_shape[2:])
        self.d, ones = len(spatial_in), (1,) * len(spatial_in)
        self.given = given
        self.known: _Producers = {x_id: (ChannelsFirst(), spatial_in, ones)}
        # an input computed outside the profiled layers (F.relu, a residual sum) takes after the last
        # recorded output of its shape
        self.by_shape: dict[tuple[int, ...], _Known | None] = {tuple(x_shape): self.known[x_id]}
        self.grids: _Grids = {spatial_in: ones}

    def add(self, record: Recorded) -> LayerSpec:
        """The next layer's spec, from what it was given and what it returned."""
        producer = None
        if record.input_id is not None and record.input_id in self.known:
            producer = self.known[record.input_id]
        elif record.input_shape is not None:
            producer = self.by_shape.get(record.input_shape)
        spec = self._infer(record, producer, self.given.get(record.name))
        if spec.ambiguous is not None:
            self.known[record.output_id] = self.by_shape[spec.shape] = None
        elif spec.layout is not None and spec.spatial is not None and spec.stride is not None:
            found = (spec.layout, spec.spatial, spec.stride)
            self.known[record.output_id] = self.by_shape[spec.shape] = found
            self.grids.setdefault(spec.spatial, spec.stride)
        else:  # spatial dims gone: what is computed from it takes after its shape (an id is reused)
            self.known.pop(record.output_id, None)
        return spec

    def _infer(self, record: Recorded, producer: _Known | None, given: Layout | None) -> LayerSpec:
        shape, d, grids, spatial_in = record.shape, self.d, self.grids, self.spatial_in
        base = LayerSpec(record.name, record.type, shape, None, None, None)
        own = self._input_grid(record, producer)
        if given is not None:
            layout = given.resolved(shape, spatial_in) if isinstance(given, Tokens) else given
            if isinstance(layout, Tokens):
                layout.check_grid(spatial_in, None, f"layouts[{record.name!r}]=")
            spatial = layout.check(shape, d, f"the output of layer {record.name!r}")
            return _spec(base, layout, spatial, self._stride(record, own, spatial))
        first = ChannelsFirst().spatial_shape(shape, d)
        if record.channels_first and first is not None:
            return _spec(base, ChannelsFirst(), first, self._stride(record, own, first))
        if producer is not None:
            kept = self._kept(record, producer)
            if kept is not None:
                return _spec(base, kept[0], producer[1], producer[2], kept[1])
        readings = _readings(shape, d, tuple(grids))
        seen = [r for r in readings if r[1] in grids]
        if seen:
            return _choose(base, seen, lambda grid: grids[grid], "on a grid seen before")
        reference = own[0] if own is not None else spatial_in
        new = [r for r in readings if not isinstance(r[0], Tokens) and _follows(reference, r[1])]
        if new:
            return _choose(base, new, functools.partial(self._stride, record, own), "at one stride")
        return base  # no spatial reading: the spatial dims are gone

    def _kept(self, record: Recorded, producer: _Known) -> tuple[Layout, str | None] | None:
        """The layout a layer carries over from its input, if the shapes (or the module) say it does."""
        (layout, grid, _), shape, d = producer, record.shape, self.d
        if record.permutation is not None and record.permutation != tuple(range(len(record.permutation))):
            moved = _permuted(layout, record.permutation, d)
            if moved is not None and moved.spatial_shape(shape, d) == grid:
                return moved, f"{moved.describe()}, a permuted view of its input ({layout.describe()})"
            return None
        before = record.input_shape
        if before is None or not (shape == before or _only_channels_differ(layout, before, shape, d)):
            return None
        readings = _readings(shape, d, tuple(self.grids))
        others = [r for r in readings if r[1] == grid and type(r[0]) is not type(layout)]
        return (layout, None) if record.keeps_layout or not others else None

    def _input_grid(self, record: Recorded, producer: _Known | None) -> tuple[tuple[int, ...], Stride] | None:
        """The grid of a layer's input and its stride: its producer's; for a channels-first layer, the grid
        its input's shape reads (``read``); else None."""
        if producer is not None:
            return producer[1], producer[2]
        d, shape = self.d, record.input_shape
        if not record.channels_first or shape is None or len(shape) < d + 2:
            return None
        grid = tuple(shape[len(shape) - d :])
        return grid, self.read(grid)

    def _stride(
        self, record: Recorded, own: tuple[tuple[int, ...], Stride] | None, grid: tuple[int, ...]
    ) -> Stride:
        """The stride of a layer's output ``grid``: its input's times the layer's step (the stride its
        module states, else the sizes'; ``grids.step``); where its input is not known, ``read``."""
        if own is None:
            return self.read(grid)
        (reference, stride), stated = own, record.stated or (None,) * len(grid)
        return times(stride, tuple([step(n, m, s) for n, m, s in zip(reference, grid, stated)]))

    def read(self, grid: tuple[int, ...]) -> Stride:
        """The stride ``grid`` was met at, else read off its sizes against the model's input."""
        found = self.grids.get(grid)
        return found or times((1,) * len(grid), tuple([step(n, m) for n, m in zip(self.spatial_in, grid)]))


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


@functools.lru_cache(maxsize=1024)
def _readings(
    shape: tuple[int, ...], d: int, grids: tuple[tuple[int, ...], ...]
) -> tuple[tuple[Layout, tuple[int, ...]], ...]:
    """Every layout that can read ``shape``, with its grid (tokens only on ``grids``, those seen before)."""
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
    stride: Callable[[tuple[int, ...]], Stride],
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
    return _spec(base, layout, spatial, stride(spatial), how)


def _spec(
    base: LayerSpec, layout: Layout, spatial: tuple[int, ...], stride: Stride, how: str | None = None
) -> LayerSpec:
    return dataclasses.replace(base, layout=layout, spatial=spatial, stride=stride, inferred=how)


def _follows(reference: tuple[int, ...], grid: tuple[int, ...]) -> bool:
    """Whether ``grid`` comes from ``reference`` by one step in every dim (a stride, an upsampling)."""
    if len(grid) != len(reference) or min(grid) < 1:
        return False
    return len({step(r, g) for r, g in zip(reference, grid)}) == 1


class Follower:
    """A ``LayerInference`` fed by forward hooks: each layer's output recorded as it returns it, a
    tensor known by ``id`` while a weak reference says it lives (the Lie derivative's, and its profile's).

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Conv2d(2, 2, 5), nn.Conv2d(2, 2, 3, stride=2))
        >>> x = torch.zeros(1, 1, 12, 12)
        >>> follower = Follower(x)
        >>> with follower.following(net):
        ...     y = net(x)
        >>> follower.stride(y), follower.stride(torch.zeros(1, 2, 4, 4)), follower.stride(torch.zeros(1, 10))
        ((2, 2), (1, 1), None)
    """

    def __init__(self, x: torch.Tensor, given: dict[str, Layout] | None = None) -> None:
        self.d = x.dim() - 2
        self.inference = LayerInference(tuple(x.shape), id(x), given or {})
        self.seen: dict[int, weakref.ref[torch.Tensor]] = {id(x): weakref.ref(x)}

    def known(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is one the inference has seen (not another that reuses its id)."""
        ref = self.seen.get(id(tensor))
        return ref is not None and ref() is tensor

    def add(self, name: str, module: nn.Module, inputs: Any, out: torch.Tensor) -> LayerSpec:
        """A layer's output as it returned it, from ``inputs`` (its first tensor is read as its input)."""
        source = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
        spec = self.inference.add(
            Recorded(
                name, type(module).__name__, tuple(out.shape), id(out),
                id(source) if source is not None and self.known(source) else None,
                None if source is None else tuple(source.shape),
                None if source is None else view_permutation(source, out),
                isinstance(module, CHANNELS_FIRST_OPS), isinstance(module, LAYOUT_KEEPING_OPS),
                stated_stride(module, self.d),
            )
        )  # fmt: skip
        self.seen[id(out)] = weakref.ref(out)
        return spec

    def stride(self, tensor: torch.Tensor) -> Stride | None:
        """The stride of ``tensor`` read channels first, ``(N, C, *spatial)``; None without the input's
        number of spatial dims: as inferred where a layer returned it (or the last of its shape), else
        the stride its grid was met at, else its grid read against the model's input."""
        if tensor.dim() != self.d + 2:
            return None
        inference, grid = self.inference, tuple(tensor.shape[2:])
        found = inference.known.get(id(tensor)) if self.known(tensor) else None
        found = found or inference.by_shape.get(tuple(tensor.shape))
        if found is not None and isinstance(found[0], ChannelsFirst):
            return found[2]
        return inference.read(grid)

    @contextlib.contextmanager
    def following(self, model: Callable[..., Any]) -> Iterator[Follower]:
        """Within the block, every leaf module of ``model`` that runs adds its output."""
        owner = owning_module(model)
        leaves = {} if owner is None else {name: m for name, m in owner.named_modules() if not m._modules}

        def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
            def add(module: nn.Module, inputs: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    self.add(name, module, inputs, out)

            return add

        handles = [leaf.register_forward_hook(hook(name)) for name, leaf in leaves.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
