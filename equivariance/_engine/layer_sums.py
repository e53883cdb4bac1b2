"""The profile's sink: every layer's error under its one translation, summed for all layers at once.

A profile compares a few dozen layer outputs, each under one expected
translation (the input shift divided by the layer's stride). Judging each
layer on its own costs some forty small tensor operations a layer, which on
models that run in a millisecond is most of the profile's time. Here a layer
costs a handful of operations: the box of its output for the moved input
where the translation is defined, less the slice of its output for ``x`` it
should equal, squared and summed over channels, beside the squared norms of
that slice. A large layer is compared as it returns; small ones (at most
``_DEFERRED_BYTES``) are kept as copy-on-write snapshots and compared at the
end of the pass, a stack of the layers of each shape and plan at once, since
on small maps each operation costs its fixed overhead. The sums by distance
to each box's edge (a matrix product with masks of the box,
``equivariance._engine.sinks.beyond_sums``), the totals and the errors, verdicts and
margins are then computed once for all layers together, in one *block* for
the layers whose boxes have the same sides.

Sums are float32 where that is exact enough for relative errors and float64
otherwise, by the rules of `equivariance._engine.sinks`: after the pass
(``LayerSums.settle``), a float32 layer whose output for ``x`` has a sample
with a squared norm below ``1e-10`` (or not finite), and any layer whose sums
came out not finite, is measured again in float64, its outputs tested for
nan and inf (the profile then runs its batch through the model once more).
Float64 outputs whose squares would leave float64's exact range are not for
this sink (see ``equivariance._engine.sinks.sample_scale``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from equivariance._engine.isolation import snapshot
from equivariance._engine.judge import KEEP_FRACTION, margins_beyond, sample_errors, within
from equivariance._engine.sinks import (
    _FLOAT32_MIN_REFERENCE,
    _tiles,
    beyond_sums,
    check_finite,
    reach_masks,
)
from equivariance.actions import Grid
from equivariance.tolerances import Tolerance

__all__ = ["LayerSums", "PooledLayer"]


class PooledLayer:
    """One layer's part of a [`LayerSums`][equivariance._engine.layer_sums.LayerSums] (made, it joins the
    pool): the sink the profile
    hands the layer's two outputs to, for ``x`` and its moved copy, as the layer returns them.

    Args:
        pool: the pool it belongs to.
        shape: the shape of one sample of the layer's output, viewed as a grid
            ``(*channels, *spatial)``, or as it is for a layer compared whole
            (``grid`` None).
        dtype: the output's dtype.
        grid: the grid (its stride, boundary and layout); None to compare the
            output whole, unmoved.
        offsets: the translation on the grid, in samples per dim.
        region: where it is defined, a slice per spatial dim.
    """

    def __init__(
        self,
        pool: LayerSums,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        grid: Grid | None,
        offsets: tuple[int, ...] = (),
        region: tuple[slice, ...] = (),
    ) -> None:
        self.pool, self.grid = pool, grid
        pool.layers.append(self)
        if grid is None:  # the whole output as one position
            shape, offsets, region = (math.prod(shape), 1), (0,), (slice(0, 1),)
        d = len(offsets)
        boundary = "zeros" if grid is None else grid.boundary
        lo, hi = tuple(r.start for r in region), tuple(r.stop for r in region)
        plan = _plan(len(shape) + 1, shape[len(shape) - d :], tuple(offsets), lo, hi, boundary)
        channel_dims, self.tiles, self.box, self.depth = plan
        self.summed = tuple(dim + 2 for dim in channel_dims)  # in (2, layers, N, ...): see _compared
        self.shape = (*shape[: len(shape) - d], *self.box)  # a sample's reference over the box
        self.channels = math.prod(shape[: len(shape) - d])
        # float64 sums: float64 outputs, and any layer float32 cannot sum exactly enough
        self.exact = dtype == torch.float64
        self.checked = False  # whether its outputs are tested for nan and inf as they return
        # (2, N, *box): its squared differences at each position, and the reference's squared norms,
        # summed over channels
        self.sums: torch.Tensor | None = None

    @property
    def work(self) -> torch.dtype:
        """The dtype its squares are summed in."""
        return torch.float64 if self.exact else torch.float32

    def measure(self, both: torch.Tensor, what: Callable[[str], str]) -> None:
        """Compare the layer's output for the moved input with its output for ``x`` translated: both
        outputs as one ``(2N, ...)`` tensor (``x``'s first), viewed as the pool's grid; ``what`` names
        them for an error message.

        A small layer is compared later, together with the others of its shape and plan (a copy-on-write
        snapshot keeps its outputs as they are now); a large one at once.
        """
        if self.grid is None:
            both = both.reshape(len(both), -1, 1)
        if self.checked:
            n = self.pool.n
            check_finite(both[:n], what("x"))
            check_finite(both[n:], what("the moved input"))
        if both.numel() * both.element_size() <= _DEFERRED_BYTES and not self.checked:
            self.pool.defer(self, snapshot(both))
        else:
            self.sums = _compared([self], both[None])[0]


def _compared(layers: list[PooledLayer], both: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The sums ``(2, N, *box)`` of layers of one shape and plan, their outputs stacked ``(k, 2N, ...)``."""
    first = layers[0]
    k, n, work = len(layers), first.pool.n, first.work
    base, moved = both[:, :n], both[:, n:]
    sums = torch.empty((2, k, n, *first.box), dtype=work, device=both.device)
    # the differences and the reference side by side, squared and summed over channels at once
    squares = first.pool.scratch((2, k, n, *first.shape), work, both.device)
    differences, reference = squares[0], squares[1]
    every = (slice(None),)
    for in_box, in_moved, in_base in first.tiles:
        box_key, moved_key, base_key = every + in_box, every + in_moved, every + in_base
        reference[box_key].copy_(base[base_key])
        torch.sub(moved[moved_key], reference[box_key], out=differences[box_key])
    torch.sum(squares.square_(), first.summed, out=sums)
    return sums.unbind(1)


class LayerSums:
    """The pooled sink of every layer a profile compares by a translation (or whole).

    Make its layers ([`PooledLayer`][equivariance._engine.layer_sums.PooledLayer]s of
    the pool) and have each [`measure`][equivariance._engine.layer_sums.PooledLayer.measure]
    its outputs; then [`settle`][equivariance._engine.layer_sums.LayerSums.settle]
    says which to measure again in float64, and
    [`judge`][equivariance._engine.layer_sums.LayerSums.judge] judges them all.

    Args:
        n: the number of samples.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.layers: list[PooledLayer] = []
        self.groups: list[_Group] = []
        self._scratch: dict[torch.dtype, torch.Tensor] = {}
        self._views: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._pending: dict[tuple[Any, ...], list[tuple[PooledLayer, torch.Tensor]]] = {}
        self._pending_bytes = 0

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Memory for one layer's differences, kept across layers: a fresh tensor each time would
        cost the page faults of new memory."""
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

    def defer(self, layer: PooledLayer, both: torch.Tensor) -> None:
        """Keep a small layer's outputs, to compare with the others of its shape and plan at once."""
        key = (id(layer.tiles), tuple(both.shape), both.dtype, layer.work, both.device)
        self._pending.setdefault(key, []).append((layer, both))
        self._pending_bytes += both.numel() * both.element_size()
        if self._pending_bytes > _PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        """Compare the layers kept for later, a stack of each shape and plan at once."""
        for members in self._pending.values():
            layers = [layer for layer, _ in members]
            both = members[0][1][None] if len(members) == 1 else torch.stack([t for _, t in members])
            for layer, sums in zip(layers, _compared(layers, both)):
                layer.sums = sums
        self._pending, self._pending_bytes = {}, 0

    def settle(self) -> list[PooledLayer]:
        """After a pass: the layers to measure again, in float64 with their outputs tested for nan
        and inf as they return. Those are the float32 layers whose sums float32 cannot keep exact
        enough (a sample's reference norm not finite, or too small for squares of differences that
        underflow not to matter; see ``equivariance._engine.sinks``), and any layer whose sums came out
        not finite before its outputs were tested."""
        self.flush()
        measured = [layer for layer in self.layers if layer.sums is not None]
        groups = [
            _Group(self, members, dtype)
            for dtype in (torch.float32, torch.float64)
            if (members := [layer for layer in measured if layer.work == dtype])
        ]
        self.groups = groups
        redo = [layer for group in groups for layer in group.unsettled()]
        for layer in redo:
            layer.exact = layer.checked = True
        return redo

    def judge(
        self, tolerance: Tolerance, keep: float = KEEP_FRACTION
    ) -> dict[PooledLayer, tuple[float, bool, int | None]]:
        """Each layer's worst error, whether every sample passes, and for a failing layer the margin
        that passes, keeping at least ``keep`` of the region (``judge.margin_that_passes``):
        a few operations for all layers."""
        return {layer: verdict for group in self.groups for layer, verdict in group.judge(tolerance, keep)}


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
        self.n = pool.n
        self.dtype = dtype
        by_box: dict[tuple[int, ...], list[PooledLayer]] = {}
        for layer in layers:
            by_box.setdefault(layer.box, []).append(layer)
        self.layers = [layer for members in by_box.values() for layer in members]
        device = layers[0].sums.device  # type: ignore[union-attr]
        self.depth = max(layer.depth for layer in layers)
        self.blocks: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        for box, members in by_box.items():
            # (2, N, k, *box) -> (2N, k, *box)
            block = torch.stack([layer.sums for layer in members], 2).flatten(0, 1)  # type: ignore[misc]
            masks = _reaching(box, members[0].depth, dtype, device)
            self.blocks.append((block, masks))
        # elements at distance >= r from the edge, (L, R); r = 0: all of them
        deep = [_deep(layer.box, self.depth) for layer in self.layers]
        self.beyond_count = torch.tensor(
            [[float(count * layer.channels) for count in row] for layer, row in zip(self.layers, deep)],
            dtype=torch.float64,
        )
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

    def unsettled(self) -> list[PooledLayer]:
        """The layers to measure again (see ``LayerSums.settle``)."""
        diff, ref = self.beyond()
        redo = ~torch.isfinite(diff[:, 0]).all(1)
        if self.dtype == torch.float32:  # references float32 cannot sum exactly enough
            totals = ref[:, 0]
            redo |= (~torch.isfinite(totals) | (totals < _FLOAT32_MIN_REFERENCE)).any(1)
        return [layer for layer, again in zip(self.layers, redo.tolist()) if again and not layer.checked]

    def judge(
        self, tolerance: Tolerance, keep: float
    ) -> list[tuple[PooledLayer, tuple[float, bool, int | None]]]:
        diff, ref = self.beyond()
        errors, absolute = sample_errors(diff[:, 0], ref[:, 0], self.count)
        worst, passed = errors.amax(1).tolist(), within(errors, absolute, tolerance).all(1).tolist()
        margins: list[int | None] = [None] * len(self.layers)
        if not all(passed):  # every layer's every margin at once
            margins = margins_beyond(diff, ref, self.beyond_count, passed, tolerance, keep=keep)
        return list(zip(self.layers, zip(worst, passed, margins)))


Tile = tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]

# a layer whose two outputs take at most this many bytes is compared with the others of its shape at
# the end of the pass; all kept take at most _PENDING_BYTES
_DEFERRED_BYTES = 1 << 16
_PENDING_BYTES = 32 << 20


@functools.lru_cache(maxsize=1024)
def _plan(
    dims: int,
    spatial: tuple[int, ...],
    offsets: tuple[int, ...],
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    boundary: str,
) -> tuple[tuple[int, ...], list[Tile], tuple[int, ...], int]:
    """How a layer's output of ``dims`` dims is compared with its box ``[lo, hi)`` translated by
    ``offsets``: its channel dims, its tiles, its box's sides, and its depth (distances to the edge).
    Each tile says where it sits in the box, where it is in the output for the moved input, and where
    its reference comes from in the output for ``x``."""
    d = len(spatial)
    everything = (slice(None),) * (dims - d)
    tiles = []
    for target, source in _tiles(lo, hi, offsets, spatial, boundary):
        place = tuple(slice(t.start - a, t.stop - a) for t, a in zip(target, lo))
        tiles.append(((*everything, *place), (*everything, *target), (*everything, *source)))
    box = tuple(b - a for a, b in zip(lo, hi))
    depth = max(1, max((b - a + 1) // 2 for a, b in zip(lo, hi)))
    return tuple(range(1, dims - d)), tiles, box, depth


@functools.lru_cache(maxsize=256)
def _deep(box: tuple[int, ...], depth: int) -> list[int]:
    """How many positions of a box lie ``r`` or more from its edge, for ``r < depth``."""
    return [math.prod(max(side - 2 * r, 0) for side in box) for r in range(depth)]


@functools.lru_cache(maxsize=256)
def _reaching(
    box: tuple[int, ...], depth: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """``reach_masks`` of a whole box (the same for every layer of those sides), in ``dtype``."""
    lo = torch.zeros(1, len(box), dtype=torch.long)
    masks = reach_masks(lo, torch.tensor([box]), box, depth, torch.device("cpu"))
    return [mask.to(dtype=dtype, device=device) for mask in masks]
