"""The profile's sink: every layer's error under its one translation, summed for all layers at once.

A profile compares a few dozen layer outputs, each under one expected
translation (the input shift divided by the layer's stride). Judging each
layer on its own costs some forty small tensor operations a layer, which on
models that run in a millisecond is most of the profile's time. Here a layer
costs a handful of operations as it returns: the box of its output where the
translation is defined, less the slice of the recorded output it should
equal, squared and summed over channels, written into a *block* that the
layers whose boxes have the same sides share. The sums by distance to each
box's edge (a matrix product with masks of the box, ``equivariance._sinks.beyond_sums``),
the totals and the errors, verdicts and margins are then computed once for
all layers together.

Sums are float32 where that is exact enough for relative errors and float64
otherwise, by the rules of `equivariance._sinks`: a layer whose recorded
output has a sample with a squared norm below ``1e-10`` (or not finite) is
summed in float64 from the start, and a layer whose float32 sums come out not
finite is measured again in float64, its outputs tested for nan and inf as
they return (``LayerSums.unsettled``: the profile then sends the shifted
input through the model once more). Float64 outputs whose squares would
leave float64's exact range are not for this sink (see
``equivariance._sinks.sample_scale``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from equivariance._judge import margins_beyond, sample_errors, within
from equivariance._sinks import (
    _FLOAT32_MIN_REFERENCE,
    Describe,
    _tiles,
    beyond_sums,
    check_finite,
    reach_masks,
)
from equivariance.actions import Grid
from equivariance.layouts import ChannelsFirst
from equivariance.tolerances import Tolerance

__all__ = ["LayerSums", "PooledLayer"]


class PooledLayer:
    """One layer's part of a [`LayerSums`][equivariance._layer_sums.LayerSums]: the sink the profile
    feeds the layer's output to, as the layer returns it.

    Args:
        pool: the pool it belongs to.
        base: the layer's recorded output: viewed as a grid ``(N, *channels,
            *spatial)``, or as it was for a layer compared whole (``grid`` None).
        grid: the grid (its stride, boundary and layout); None to compare the
            output whole, unmoved.
        offsets: the translation on the grid, in samples per dim.
        region: where it is defined, a slice per spatial dim.
    """

    def __init__(
        self,
        pool: LayerSums,
        base: torch.Tensor,
        grid: Grid | None,
        offsets: tuple[int, ...] = (),
        region: tuple[slice, ...] = (),
    ) -> None:
        self.pool, self.grid = pool, grid
        if grid is None:  # the whole output as one position
            base, offsets, region = base.reshape(len(base), -1, 1), (0,), (slice(0, 1),)
        d = len(offsets)
        self.spatial_dims = d
        self.to_grid = grid is not None and not isinstance(grid.layout, ChannelsFirst)
        boundary = "zeros" if grid is None else grid.boundary
        lo, hi = tuple(r.start for r in region), tuple(r.stop for r in region)
        plan = _plan(base.dim(), tuple(base.shape[base.dim() - d :]), tuple(offsets), lo, hi, boundary)
        self.channel_dims, lead, self.tiles, self.box, self.depth = plan
        self.positions = math.prod(self.box)
        self.channels = math.prod(base.shape[1 : base.dim() - d])
        self.base, self.lead = base, lead
        # float64 sums: float64 outputs, and any layer float32 cannot sum exactly enough
        self.exact = base.dtype == torch.float64
        self.checked = False  # whether its outputs are tested for nan and inf as they return
        self.reference: torch.Tensor | None = None  # the reference over the box, in the sums' dtype
        self.map: torch.Tensor | None = None  # (N, *box): its squared differences, in its group's block

    @property
    def work(self) -> torch.dtype:
        """The dtype its squares are summed in."""
        return torch.float64 if self.exact else torch.float32

    def reference_box(self) -> torch.Tensor:
        """The recorded output over the box, in the sums' dtype (a view where one tile covers it)."""
        if len(self.tiles) == 1:
            key: tuple[Any, ...] = (slice(None), *self.lead, *self.tiles[0][3])
            box = self.base[key]
        else:
            box = self.base.new_empty((*self.base.shape[: self.base.dim() - len(self.box)], *self.box))
            for _, place, _, source in self.tiles:
                key = (slice(None), *self.lead, *source)
                box[place] = self.base[key]
        return box if box.dtype == self.work else box.to(self.work)

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        """One chunk's squared differences at each position of the box (its items are samples)."""
        assert self.reference is not None, "prepare the pool first"
        assert self.map is not None
        if self.grid is None:
            outputs = outputs.reshape(len(outputs), -1, 1)
        elif self.to_grid:
            outputs = self.grid.layout.to_grid(outputs, self.spatial_dims)
        if self.checked:
            check_finite(outputs, what())
        whole = items == self.pool.everything
        reference = self.reference if whole else self.reference[items]
        into = self.map if whole else self.map[items]
        one = len(self.tiles) == 1
        for in_map, in_reference, in_output, _ in self.tiles:
            out = outputs[in_output]
            difference = self.pool.scratch(out.shape, self.work, out.device)
            torch.sub(out, reference if one else reference[in_reference], out=difference)
            torch.sum(difference.square_(), self.channel_dims, out=into if one else into[in_map])

    def retry(self) -> None:
        pass  # each chunk overwrites its samples' part of the map


class LayerSums:
    """The pooled sink of every layer a profile compares by a translation (or whole).

    Make the layers with [`layer`][equivariance._layer_sums.LayerSums.layer],
    call [`prepare`][equivariance._layer_sums.LayerSums.prepare] once before
    the shifted pass, and [`judge`][equivariance._layer_sums.LayerSums.judge]
    after it.

    Args:
        n: the number of samples.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.everything = slice(0, n)
        self.layers: list[PooledLayer] = []
        self.groups: list[_Group] = []
        self._scratch: dict[torch.dtype, torch.Tensor] = {}
        self._views: dict[tuple[torch.Size, torch.dtype], torch.Tensor] = {}

    def scratch(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Memory for one layer's differences, kept across layers and chunks: a fresh tensor each time
        would cost the page faults of new memory."""
        view = self._views.get((shape, dtype))
        if view is not None:
            return view
        numel = math.prod(shape)
        flat = self._scratch.get(dtype)
        if flat is None or flat.numel() < numel or flat.device != device:
            flat = self._scratch[dtype] = torch.empty(numel, dtype=dtype, device=device)
            self._views = {key: view for key, view in self._views.items() if key[1] != dtype}
        view = self._views[(shape, dtype)] = flat[:numel].view(shape)
        return view

    def layer(
        self,
        base: torch.Tensor,
        grid: Grid | None,
        offsets: tuple[int, ...] = (),
        region: tuple[slice, ...] = (),
    ) -> PooledLayer:
        """A new layer of the pool (see [`PooledLayer`][equivariance._layer_sums.PooledLayer])."""
        layer = PooledLayer(self, base, grid, offsets, region)
        self.layers.append(layer)
        return layer

    def prepare(self) -> None:
        """Each layer's reference norms, and the dtype its sums are kept in."""
        fast = [layer for layer in self.layers if not layer.exact]
        groups = []
        while fast:
            group = _Group(self, fast, torch.float32)
            unsure = group.unsure()
            if not unsure:
                groups.append(group)
                break
            for layer in unsure:
                layer.exact = True
            fast = [layer for layer in fast if not layer.exact]
        exact = [layer for layer in self.layers if layer.exact]
        if exact:
            groups.append(_Group(self, exact, torch.float64))
        self.groups = groups

    def unsettled(self) -> bool:
        """Whether some layer's sums came out not finite and its outputs were not yet tested; those
        layers are then summed in float64 and tested as they return, for the pass to be run again."""
        redo = [
            layer
            for group in self.groups
            for layer, finite in zip(group.layers, group.finite())
            if not finite and not layer.checked
        ]
        for layer in redo:
            layer.exact = layer.checked = True
        if redo:
            self.prepare()
        return bool(redo)

    def judge(self, tolerance: Tolerance) -> dict[PooledLayer, tuple[float, bool, int | None]]:
        """Each layer's worst error, whether every sample passes, and for a failing layer the margin
        that passes (``equivariance._judge.margin_that_passes``): a few operations for all layers."""
        return {layer: verdict for group in self.groups for layer, verdict in group.judge(tolerance)}


class _Group:
    """The layers whose squares are summed in one dtype.

    Layers whose boxes have the same sides share a *block* ``(2N, layers,
    *box)``: at each position, the squared differences (rows ``:N``) and the
    reference's squared norms (rows ``N:``). The sums over the positions at
    distance ``r`` or more from a box's edge, for every ``r`` (its *depth*
    of them), are a matrix product and a masked sum a block, with masks of
    the positions that reach that deep in each dim; totals are the sums at
    distance 0. Errors and margins then follow for all layers at once, their
    sums padded with zeros to the deepest box's depth.
    """

    def __init__(self, pool: LayerSums, layers: list[PooledLayer], dtype: torch.dtype) -> None:
        self.n = n = pool.n
        by_box: dict[tuple[int, ...], list[PooledLayer]] = {}
        for layer in layers:
            by_box.setdefault(layer.box, []).append(layer)
        self.layers = [layer for members in by_box.values() for layer in members]
        device = layers[0].base.device
        self.depth = max(layer.depth for layer in layers)
        self.blocks: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        totals = []
        for box, members in by_box.items():
            block = torch.zeros((2 * n, len(members), *box), dtype=dtype, device=device)
            for i, layer in enumerate(members):
                layer.map = block[:n, i]
                layer.reference = reference = layer.reference_box()
                squares = torch.mul(reference, reference, out=pool.scratch(reference.shape, dtype, device))
                torch.sum(squares, layer.channel_dims, out=block[n:, i])
            masks = [mask.to(device=device) for mask in _reaching(box, members[0].depth)]
            self.blocks.append((block, masks))
            totals.append(block[n:].flatten(2).sum(2))
        # the reference's squared norm of each sample, (L, N)
        self.ref_totals = torch.cat(totals, 1).T.double().cpu()
        # elements at distance >= r from the edge, (L, R); r = 0: all of them
        deep = [_deep(layer.box, self.depth) for layer in self.layers]
        channels = torch.tensor([float(layer.channels) for layer in self.layers], dtype=torch.float64)
        self.beyond_count = torch.tensor(deep, dtype=torch.float64) * channels[:, None]
        self.count = self.beyond_count[:, 0]
        self._beyond: tuple[torch.Tensor, torch.Tensor] | None = None

    def beyond(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, R, N)`` sums over the positions at distance ``>= r`` from the edge, of the squared
        differences and of the reference's squared norms, float64 on the CPU."""
        if self._beyond is None:
            parts = []
            for block, masks in self.blocks:  # (2N, k, *box) -> (2N, k, R)
                summed = beyond_sums(block.flatten(0, 1), masks).view(*block.shape[:2], -1)
                parts.append(torch.nn.functional.pad(summed, (0, self.depth - summed.shape[-1])))
            both = torch.cat(parts, 1).permute(1, 2, 0).double().cpu()
            self._beyond = both[..., : self.n], both[..., self.n :]
        return self._beyond

    def unsure(self) -> list[PooledLayer]:
        """The layers float32 cannot sum exactly enough: a sample's reference norm not finite, or too
        small for squares of differences that underflow not to matter (see ``equivariance._sinks``)."""
        totals = self.ref_totals
        doubtful = (~torch.isfinite(totals) | (totals < _FLOAT32_MIN_REFERENCE)).any(1)
        return [layer for layer, bad in zip(self.layers, doubtful.tolist()) if bad]

    def finite(self) -> list[bool]:
        """Whether each layer's sums of squared differences are finite for every sample."""
        return torch.isfinite(self.beyond()[0][:, 0]).all(1).tolist()

    def judge(self, tolerance: Tolerance) -> list[tuple[PooledLayer, tuple[float, bool, int | None]]]:
        diff, ref = self.beyond()
        errors, absolute = sample_errors(diff[:, 0], ref[:, 0], self.count)
        worst, passed = errors.amax(1).tolist(), within(errors, absolute, tolerance).all(1).tolist()
        margins: list[int | None] = [None] * len(self.layers)
        if not all(passed):  # every layer's every margin at once
            margins = margins_beyond(diff, ref, self.beyond_count, passed, tolerance)
        return list(zip(self.layers, zip(worst, passed, margins)))


Tile = tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]


@functools.lru_cache(maxsize=1024)
def _plan(
    dims: int,
    spatial: tuple[int, ...],
    offsets: tuple[int, ...],
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    boundary: str,
) -> tuple[tuple[int, ...], tuple[slice, ...], list[Tile], tuple[int, ...], int]:
    """How a layer's output of ``dims`` dims is compared with its box ``[lo, hi)`` translated by
    ``offsets``: its channel dims, the slices before its spatial dims, its tiles, its box's sides, and
    its depth (distances to the edge). Each tile says where it sits in the box (in the map, in the
    reference), where it is in the output, and where its reference comes from."""
    d = len(spatial)
    lead = (slice(None),) * (dims - d - 1)
    tiles = []
    for target, source in _tiles(lo, hi, offsets, spatial, boundary):
        place = tuple(slice(t.start - a, t.stop - a) for t, a in zip(target, lo))
        everything = (slice(None), *lead)
        tiles.append(((slice(None), *place), (*everything, *place), (*everything, *target), source))
    box = tuple(b - a for a, b in zip(lo, hi))
    depth = max(1, max((b - a + 1) // 2 for a, b in zip(lo, hi)))
    return tuple(range(1, dims - d)), lead, tiles, box, depth


@functools.lru_cache(maxsize=256)
def _deep(box: tuple[int, ...], depth: int) -> list[int]:
    """How many positions of a box lie ``r`` or more from its edge, for ``r < depth``."""
    return [math.prod(max(side - 2 * r, 0) for side in box) for r in range(depth)]


@functools.lru_cache(maxsize=256)
def _reaching(box: tuple[int, ...], depth: int) -> list[torch.Tensor]:
    """``reach_masks`` of a whole box (the same for every layer of those sides)."""
    lo = torch.zeros(1, len(box), dtype=torch.long)
    return reach_masks(lo, torch.tensor([box]), box, depth, torch.device("cpu"))
