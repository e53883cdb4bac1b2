"""The profile's sink: every layer's error under its one translation, summed for all layers at once
(`LayerSums`, one `PooledLayer` a layer), by the judge's rules; docs/concepts.md says how.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from equivariance._engine.judge import (
    KEEP_FRACTION,
    accumulation_dtype,
    all_zeros,
    float32_sums_finite,
    margins_beyond,
    sample_errors,
    squared_norms_finite,
    within,
)
from equivariance._engine.sinks import _tiles, beyond_sums, check_finite, reach_masks
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
        # a circular translation of the whole grid: its tiles are a roll (fewer ops for a small layer)
        whole = boundary == "circular" and lo == (0,) * d and hi == tuple(shape[len(shape) - d :])
        self.roll = tuple(offsets) if whole else None
        # the dims it moves (``torch.roll`` copies the tensor once for each dim it is given, moved or not)
        sides = shape[len(shape) - d :]
        self.rolled = tuple(k for k in range(d) if offsets[k] % sides[k] != 0)
        self.channel_dims = channel_dims  # in (N, ...)
        self.summed = tuple(dim + 1 for dim in channel_dims)  # in (2, N, ...): see _squares_copied
        self.shape = (*shape[: len(shape) - d], *self.box)  # a sample's reference over the box
        self.channels = math.prod(shape[: len(shape) - d])
        # differences in the output's dtype (float32 for narrower ones, where they are exact)
        self.work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        # (2, N, *box), float64: its squared differences at each position, and the reference's squared
        # norms, summed over channels
        self.sums: torch.Tensor | None = None

    def measure(self, both: torch.Tensor, what: Callable[[str], str]) -> None:
        """Compare the layer's output for the moved input with its output for ``x`` translated: both
        outputs as one ``(2N, ...)`` tensor (``x``'s first), viewed as the pool's grid; ``what`` names
        them for an error message; compared as the layer returns them, before the model can write to them.
        A difference beyond the output dtype's range is taken again in float64.
        """
        if self.grid is None:
            both = both.reshape(len(both), -1, 1)
        if both.numel() <= _TINY and self._fast(both):
            # a small layer: kept as it is now, compared later with the others of its shape at once
            self.pool.defer(self, both.clone(), what)
            return
        self.sums = self._finished(both, *self._squares(both, self.work), what)

    def _finished(
        self, both: torch.Tensor, sums: torch.Tensor, finite: bool, what: Callable[[str], str]
    ) -> torch.Tensor:
        """``sums``, or where they are not finite (``finite``: known to be), an error for outputs that
        are not (after any earlier layer's), or the sums taken again in float64."""
        if finite or bool(torch.isfinite(sums.sum())):
            return sums
        self.pool.flush()  # an earlier layer's outputs that are not finite are named first
        n = self.pool.n
        check_finite(both[:n], what("x"))
        check_finite(both[n:], what("the moved input"))
        return self._squares(both, torch.float64)[0] if both.device.type != "mps" else sums

    def _fast(self, both: torch.Tensor) -> bool:
        """Whether ``_squares`` compares these outputs in their own dtype (not converted first)."""
        return self.work == both.dtype and accumulation_dtype(both.device) == torch.float64

    def _squares(self, both: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, bool]:
        """``(2, N, *box)``: the squared differences and the reference's squares, summed over channels;
        and whether they are known finite."""
        if work != both.dtype or not self._fast(both):
            return self._squares_copied(both, work)
        n = self.pool.n
        return self._compared(both[:n], both[n:], work)

    def _compared(
        self, base: torch.Tensor, moved: torch.Tensor, work: torch.dtype
    ) -> tuple[torch.Tensor, bool]:
        """``_squares`` of the outputs for ``x`` and the moved input, of any number of samples."""
        n, d, dims = len(base), len(self.box), self.channel_dims
        # kept memory (fresh memory would cost page faults), laid out in the output's memory order (a
        # channels-last output read across would cost several times more): the differences over the
        # box, then their squares and the reference's squares over the whole output, in turn
        order = _memory_order(base)
        size, whole = n * self.channels * math.prod(self.box), base.numel()
        flat = self.pool.scratch((size + max(size, whole),), work, base.device)
        differences = _laid_out(flat[:size], (n, *self.shape), order)
        if self.roll is not None and whole <= _SMALL:  # one copy of a small layer, not a few slices
            torch.sub(moved, self._rolled(base, base.dim() - d), out=differences)
        else:
            for in_box, in_moved, in_base in self.tiles:
                torch.sub(moved[in_moved], base[in_base], out=differences[in_box])
        summed, finite = self._differences(differences, flat[size : 2 * size], order)
        # the reference's squares summed over channels where it lies whole, then its tiles: a small copy
        squared = torch.mul(base, base, out=_laid_out(flat[size : size + whole], base.shape, order))
        full, whole_finite = float32_sums_finite(squared.sum(dims), lambda: base, dims)
        finite = finite and whole_finite
        if self.roll is not None:
            return torch.stack([summed, self._rolled(full, 1)]), finite
        sums = torch.empty((2, n, *self.box), dtype=torch.float64, device=base.device)
        sums[0] = summed
        reference, samples = sums[1], (slice(None),)
        for in_box, _, in_base in self.tiles:
            reference[samples + in_box[-d:]] = full[samples + in_base[-d:]]
        return sums, finite

    def _differences(
        self, differences: torch.Tensor, scratch: torch.Tensor, order: tuple[int, ...]
    ) -> tuple[torch.Tensor, bool]:
        """The squared differences summed over channels, in float64 (``scratch`` holds their squares),
        and whether they are known finite. Where the layer before was exact (all its differences zero,
        as in a model equivariant by construction), this one is tested first by one reduction, which
        spares its squares and sums; the sums are the same zeros either way."""
        pool, dims = self.pool, self.channel_dims
        if pool.exact:
            pool.exact = all_zeros(differences)
            if pool.exact:
                shape = [size for k, size in enumerate(differences.shape) if k not in dims]
                return torch.zeros(shape, dtype=torch.float64, device=differences.device), True
        squared = torch.mul(differences, differences, out=_laid_out(scratch, differences.shape, order))
        summed, finite = float32_sums_finite(squared.sum(dims), lambda: differences, dims)
        pool.exact = finite and not bool(summed.any())  # all zero: not an underflow (float32_sums)
        return summed, finite

    def _rolled(self, tensor: torch.Tensor, first: int) -> torch.Tensor:
        """``tensor`` rolled by the layer's translation, its spatial dims from ``first`` on: only along
        the dims it moves (``tensor`` itself where it moves none)."""
        assert self.roll is not None
        if not self.rolled:
            return tensor
        offsets = tuple(self.roll[k] for k in self.rolled)
        return torch.roll(tensor, offsets, tuple(first + k for k in self.rolled))

    def _squares_copied(self, both: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, bool]:
        """``_squares`` for an output converted to ``work`` (a narrower dtype, or float64 again)."""
        n = self.pool.n
        base, moved = both[:n], both[n:]
        # the differences and the reference side by side, squared and summed over channels at once
        squares = self.pool.scratch((2, n, *self.shape), work, both.device)
        differences, reference = squares[0], squares[1]
        for in_box, in_moved, in_base in self.tiles:
            reference[in_box].copy_(base[in_base])
            torch.sub(moved[in_moved], reference[in_box], out=differences[in_box])
        return squared_norms_finite(squares, self.summed)


Kept = tuple[PooledLayer, torch.Tensor, Callable[[str], str]]
"""A small layer's outputs kept to compare later, and how to name them."""


class LayerSums:
    """The pooled sink of every layer a profile compares by a translation (or whole).

    Make its layers ([`PooledLayer`][equivariance._engine.layer_sums.PooledLayer]s of
    the pool) and have each [`measure`][equivariance._engine.layer_sums.PooledLayer.measure]
    its outputs; then [`judge`][equivariance._engine.layer_sums.LayerSums.judge] judges them all.

    Args:
        n: the number of samples.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.layers: list[PooledLayer] = []
        self._scratch: dict[torch.dtype, torch.Tensor] = {}
        self.exact = True  # whether the layer compared last had no difference at all
        self._views: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
        # small layers' outputs not compared yet, in groups that share a shape, a dtype, a comparison
        self._deferred: list[list[Kept]] = []
        self._open: dict[tuple[Any, ...], list[Kept]] = {}  # the group each kind of layer joins now

    def defer(self, layer: PooledLayer, both: torch.Tensor, what: Callable[[str], str]) -> None:
        """Keep a small layer's two outputs (a copy) to compare with the others like it in ``flush``:
        one comparison of a group costs about what one of them does."""
        key: tuple[Any, ...] = (tuple(both.shape), both.dtype, both.device, layer.box, layer.roll)
        key += (layer.channel_dims, *map(repr, layer.tiles))
        group = self._open.get(key)
        if group is None or (len(group) + 1) * both.numel() > 2 * _SMALL:  # more would grow the memory
            group = self._open[key] = []
            self._deferred.append(group)
        group.append((layer, both, what))

    def flush(self) -> None:
        """Compare the layers ``defer`` kept, a few ops for each group; an error for outputs that are
        not finite names the first such layer."""
        deferred, n = self._deferred, self.n
        self._deferred, self._open = [], {}
        failing: list[Kept] = []
        for group in deferred:
            first = group[0][0]
            base = torch.stack([both[:n] for _, both, _ in group]).flatten(0, 1)
            moved = torch.stack([both[n:] for _, both, _ in group]).flatten(0, 1)
            sums, finite = first._compared(base, moved, first.work)
            sums = sums.view(2, len(group), n, *sums.shape[2:])
            finite = finite or bool(torch.isfinite(sums.sum()))
            for k, (layer, both, what) in enumerate(group):
                layer.sums = sums[:, k]
                if not finite:
                    failing.append((layer, both, what))
        order = {layer: k for k, layer in enumerate(self.layers)}
        for layer, both, what in sorted(failing, key=lambda item: order[item[0]]):
            layer.sums = layer._finished(both, layer.sums, False, what)  # type: ignore[arg-type]

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

    def judge(
        self, tolerance: Tolerance, keep: float = KEEP_FRACTION
    ) -> dict[PooledLayer, tuple[float, bool, int | None]]:
        """Each layer's worst error, whether every sample passes, and for a failing layer the margin
        that passes, keeping at least ``keep`` of the region (``judge.margin_that_passes``):
        a few operations for all layers."""
        self.flush()
        measured = [layer for layer in self.layers if layer.sums is not None]
        return dict(_Group(self, measured).judge(tolerance, keep)) if measured else {}


class _Group:
    """The measured layers, judged together.

    Layers whose boxes have the same sides share a *block* ``(2N, layers,
    *box)``: at each position, the squared differences (rows ``:N``) and the
    reference's squared norms (rows ``N:``). The sums over the positions at
    distance ``r`` or more from a box's edge, for every ``r`` (its *depth*
    of them), are a matrix product and a masked sum a block, with masks of
    the positions that reach that deep in each dim; totals are the sums at
    distance 0. Errors and margins then follow for all layers at once, their
    sums padded with zeros to the deepest box's depth.
    """

    def __init__(self, pool: LayerSums, layers: list[PooledLayer]) -> None:
        self.n = pool.n
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
            masks = _reaching(box, members[0].depth, block.dtype, device)
            self.blocks.append((block, masks))
        # elements at distance >= r from the edge, (L, R); r = 0: all of them
        deep = [_deep(layer.box, self.depth) for layer in self.layers]
        self.beyond_count = torch.tensor(
            [[float(count * layer.channels) for count in row] for layer, row in zip(self.layers, deep)],
            dtype=torch.float64,
        )

    def judge(
        self, tolerance: Tolerance, keep: float
    ) -> list[tuple[PooledLayer, tuple[float, bool, int | None]]]:
        parts = []
        for block, masks in self.blocks:  # (2N, k, *box) -> (2N, k, R)
            summed = beyond_sums(block.flatten(0, 1), masks).view(*block.shape[:2], -1)
            parts.append(torch.nn.functional.pad(summed, (0, self.depth - summed.shape[-1])))
        both = torch.cat(parts, 1).permute(1, 2, 0).double().cpu()  # (L, R, 2N)
        diff, ref = both[..., : self.n], both[..., self.n :]
        errors, absolute = sample_errors(diff[:, 0], ref[:, 0], self.beyond_count[:, 0])
        worst, passed = errors.amax(1).tolist(), within(errors, absolute, tolerance).all(1).tolist()
        margins: list[int | None] = [None] * len(self.layers)
        if not all(passed):  # every layer's every margin at once
            margins = margins_beyond(diff, ref, self.beyond_count, passed, tolerance, keep=keep)
        return list(zip(self.layers, zip(worst, passed, margins)))


Tile = tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]
_SMALL = 2**16
"""A layer's output of at most this many elements a sample set (``N`` samples) is rolled whole, and
tiny layers are compared together in groups of at most this many elements."""
_TINY = 2**14
"""A layer's two outputs of at most this many elements are compared later, with others like them."""


def _memory_order(tensor: torch.Tensor) -> tuple[int, ...]:
    """A tensor's dims from the outermost in memory to the innermost (by stride, ties in order)."""
    strides = tensor.stride()
    return tuple(sorted(range(tensor.dim()), key=lambda k: -strides[k]))


def _laid_out(
    flat: torch.Tensor, shape: tuple[int, ...] | torch.Size, order: tuple[int, ...]
) -> torch.Tensor:
    """``flat`` as a tensor of ``shape`` whose dims lie in memory in ``order`` (outermost first)."""
    inverse = sorted(range(len(order)), key=lambda k: order[k])
    return flat.view([shape[k] for k in order]).permute(inverse)


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
