"""What a measurement accumulates, chunk by chunk: the sinks the runner feeds. `GridSums` (equivariance)
and `FlatSums` (invariance) keep the squared norms of ``f(g.x) - g'.f(x)`` and of ``g'.f(x)`` per
item, by the judge's precision rule (`equivariance._engine.judge`), written so that a chunk retried
after running out of memory overwrites rather than adds; `RelativeChange` and `Top1` keep the logits'
relative change and the predicted class; the checks of an output's dtype and finiteness live here too.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from equivariance._engine.copies import Copies
from equivariance._engine.judge import (
    Sums,
    accumulation_dtype,
    relative_sizes,
    sample_scale,
    scaled,
    squared_norms,
    squared_norms_finite,
)
from equivariance._engine.validation import describe
from equivariance.actions import Action, Grid
from equivariance.errors import InvalidArgument

__all__ = ["FlatSums", "GridSums", "RelativeChange", "Sums", "Top1"]

Dims = tuple[int, ...]
Describe = Callable[[], str]
OutputAction = Callable[[torch.Tensor, Any], Any]


class _Differences:
    """Squared norms of differences, in one scratch tensor kept across chunks (a fresh one each chunk
    costs the page faults of new memory).

    A difference is taken in the outputs' dtype (float32 for narrower ones,
    where it is exact). A sum that comes out non-finite is a nan or inf
    output, refused, or a difference beyond that dtype's range, taken again
    in float64.
    """

    def __init__(self, output: torch.Tensor) -> None:
        self.work = output.dtype if output.dtype in (torch.float32, torch.float64) else torch.float32
        self.scratch: torch.Tensor | None = None

    def checked(
        self,
        measure: Callable[[torch.dtype], tuple[torch.Tensor, bool]],
        outputs: torch.Tensor,
        what: Describe,
    ) -> torch.Tensor:
        """``measure(dtype)``'s sums, taken again in float64 where they overflowed ``self.work``
        (``measure`` also says whether they are known finite: then nothing is tested again)."""
        sums, finite = measure(self.work)
        if not finite and not bool(torch.isfinite(sums.sum())):
            check_finite(outputs, what())
            wide = accumulation_dtype(outputs.device)
            if wide != self.work:
                sums = measure(wide)[0]
        return sums

    def squared(
        self, outputs: torch.Tensor, reference: torch.Tensor, dims: Dims, what: Describe
    ) -> torch.Tensor:
        """``squared_norms(outputs - reference, dims)``; InvalidArgument for non-finite outputs."""
        return self.checked(
            lambda dtype: squared_norms_finite(self.between(outputs, reference, dtype), dims), outputs, what
        )

    def between(self, outputs: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``outputs - reference`` in ``dtype``, in the scratch tensor."""
        outputs = outputs.to(dtype)
        scratch = self.scratch
        if scratch is None or scratch.numel() < outputs.numel() or scratch.dtype != dtype:
            scratch = self.scratch = torch.empty(outputs.numel(), dtype=dtype, device=outputs.device)
        difference = scratch[: outputs.numel()].view(outputs.shape)
        return torch.sub(outputs, reference.to(dtype), out=difference)


class _Scales:
    """Each item's power of two (``judge.sample_scale``): its sample's, from ``f(x)``, or for a sample
    whose ``f(x)`` is all zero, that of the item's own output. None for all while no item needs one."""

    def __init__(self, base: torch.Tensor, items: int) -> None:
        self.sample = sample_scale(base)
        dead = (base.reshape(len(base), -1) == 0).all(1) if base.dtype == torch.float64 else None
        self.dead = dead if dead is not None and bool(dead.any()) else None
        self.base = scaled(base, self.sample)
        self.items: torch.Tensor | None = None
        self.count = items

    def of(self, outputs: torch.Tensor, items: slice, sample: torch.Tensor) -> torch.Tensor | None:
        """The powers of two of a chunk's items (recorded for ``Sums.scale``)."""
        factor = None if self.sample is None else self.sample[sample.to(self.sample.device)]
        if self.dead is not None:
            dead = self.dead[sample.to(self.dead.device)]
            own = sample_scale(outputs) if bool(dead.any()) else None
            if own is not None:
                factor = torch.where(dead, own, torch.ones_like(own) if factor is None else factor)
        if factor is not None:
            if self.items is None:
                self.items = torch.ones(self.count, dtype=torch.float64)
            self.items[items] = factor.cpu().double()
        return factor


class _ItemSums:
    """Per-item float64 arrays a sink writes chunk by chunk."""

    def __init__(self, rows: int, n: int, depth: int = 0) -> None:
        self.rows, self.n = rows, n
        total = rows * n
        self.diff_sq = torch.zeros(total, dtype=torch.float64)
        self.ref_sq = torch.zeros(total, dtype=torch.float64)
        self.border_diff = torch.zeros(total, depth, dtype=torch.float64) if depth else None
        self.border_ref = torch.zeros(total, depth, dtype=torch.float64) if depth else None

    def write(self, items: slice, diff: torch.Tensor, ref: torch.Tensor) -> None:
        self.diff_sq[items] = diff.cpu().double()
        self.ref_sq[items] = ref.cpu().double()

    def sums(
        self, count: torch.Tensor, border_count: torch.Tensor | None, scale: torch.Tensor | None
    ) -> Sums:
        k, n = self.rows, self.n
        return Sums(
            self.diff_sq.view(k, n), self.ref_sq.view(k, n), count,
            None if self.border_diff is None else self.border_diff.view(k, n, -1),
            None if self.border_ref is None else self.border_ref.view(k, n, -1),
            border_count, None if scale is None else scale.view(k, n),
        )  # fmt: skip


class FlatSums:
    """Invariance: each output compared whole with the output for the unshifted input.

    Args:
        base: ``f(x)``, the outputs for the unshifted input (any shape with a batch dim).
        rows: the number of rows (elements) of the plan.
    """

    def __init__(self, base: torch.Tensor, rows: int) -> None:
        self.base = base.reshape(len(base), -1)
        self.scales = _Scales(self.base, rows * len(base))
        self.differences = _Differences(base)
        self.base_sq = squared_norms(self.scales.base, 1)
        self.items = _ItemSums(rows, len(base))

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        rows = sample.to(self.base.device)
        flat = outputs.reshape(len(outputs), -1)
        flat = scaled(flat, self.scales.of(flat, items, sample))
        diff = self.differences.squared(flat, self.scales.base[rows], (1,), what)
        self.items.write(items, diff, self.base_sq[rows])

    def retry(self) -> None:
        self.differences.scratch = None

    def sums(self) -> Sums:
        count = torch.full((self.items.rows,), float(self.base[0].numel()), dtype=torch.float64)
        return self.items.sums(count, None, self.scales.items)


class GridSums:
    """Equivariance: each output compared with the unshifted output moved by the row's output action.

    For row ``k`` the reference is ``rows[k]`` acting on the base output on
    ``grid`` (its stride, boundary and layout), or ``output_action(f(x),
    rows[k])`` where the caller gave one; the compared region is the row's
    region on the grid less ``margins`` at each edge, narrowed by the mask
    an output action may return.

    Args:
        base: ``f(x)`` viewed as a grid, ``(N, *channels, *spatial)``.
        rows: the input elements of the plan, one per row.
        grid: the output's grid.
        margins: samples dropped at each edge of the compared region, per dim.
        output_action: a callable ``(f(x), element) -> tensor | (tensor, mask)``
            replacing the rows' own action on the output.
        expected: the elements that act on the output instead of ``rows``
            (one per row), e.g. the one-sample moves of stride inference.
    """

    def __init__(
        self,
        base: torch.Tensor,
        rows: Sequence[Action],
        grid: Grid,
        margins: tuple[int, ...],
        output_action: OutputAction | None = None,
        expected: Sequence[Action] | None = None,
    ) -> None:
        d = grid.spatial_dims
        self.base, self.rows, self.grid, self.output_action = base, list(rows), grid, output_action
        self.spatial = tuple(base.shape[base.dim() - d :])
        self.channel_dims = tuple(range(1, base.dim() - d))
        self.channels = math.prod(base.shape[1 : base.dim() - d])
        self.acting = list(expected) if expected is not None else self.rows
        self.lo, self.hi = _boxes(self.acting, self.spatial, grid, margins, output_action is not None)
        # every row's box the whole grid, no mask (a circular shift): nothing to mask out, once for all
        whole = [0] * d, list(self.spatial)
        self.everywhere = output_action is None and all(
            lo == whole[0] and hi == whole[1] for lo, hi in zip(self.lo.tolist(), self.hi.tolist())
        )
        self.scales = _Scales(base, len(self.rows) * len(base))
        self.scaled = self.scales.base
        # per-position norms of the reference, once (a chunk moves them like the reference)
        self.norm_map: torch.Tensor | None = None
        if output_action is None and all(type(e).moves_positions_only for e in self.acting):
            self.norm_map = squared_norms(self.scaled, self.channel_dims)
        self._copies: tuple[Copies, Copies | None] | None = None  # made when first needed
        self._masks: list[torch.Tensor] | None = None  # each row's reach_masks, made when first needed
        self.differences = _Differences(base)
        self.depth = max(1, int(((self.hi - self.lo + 1) // 2).max()))
        self.items = _ItemSums(len(self.rows), len(base), self.depth)

    @property
    def count(self) -> torch.Tensor:
        """Compared elements per sample, for each row."""
        return ((self.hi - self.lo).prod(dim=1) * self.channels).double()

    @property
    def border_count(self) -> torch.Tensor:
        """Compared elements per sample at each distance from the region's edge, for each row.

        A box with sides ``L`` has ``prod(max(L - 2r, 0))`` positions at
        distance ``r`` or more from its edge; differences give each distance.
        """
        r = torch.arange(self.depth + 1)
        sides = (self.hi - self.lo).unsqueeze(1)  # (K, 1, d)
        at_least = (sides - 2 * r.view(1, -1, 1)).clamp_min(0).prod(dim=2)  # (K, depth + 1)
        return ((at_least[:, :-1] - at_least[:, 1:]) * self.channels).double()

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        """Sum the chunk's squared differences over the compared region, in total and by edge distance:
        whole grids against moved copies of the reference, masked to each row's box."""
        reference, ref_map, mask = self._reference(sample, row)
        if self.everywhere:  # every position is in the box: nothing to mask
            outputs = scaled(outputs, self.scales.of(outputs, items, sample))
            diff_map = self.differences.squared(outputs, reference, self.channel_dims, what)
            self._write(items, diff_map.flatten(1), ref_map.flatten(1), row)
            return
        # in the box: reaching distance 0 in every dim
        inside: torch.Tensor | None = mask
        for i, reach in enumerate(self._reach(row, outputs.device)):
            shape = [len(reach)] + [1] * len(self.spatial)
            shape[1 + i] = reach.shape[-1]
            along = reach[:, 0].view(shape) > 0
            inside = along if inside is None else inside & along
        assert inside is not None
        ref_map = torch.where(inside, ref_map, ref_map.new_zeros(())).flatten(1)
        outputs = scaled(outputs, self.scales.of(outputs, items, sample))
        diff_map = self.differences.squared(outputs, reference, self.channel_dims, what)
        diff_map = torch.where(inside, diff_map, diff_map.new_zeros(())).flatten(1)
        self._write(items, diff_map, ref_map, row)

    def _write(self, items: slice, diff_map: torch.Tensor, ref_map: torch.Tensor, row: torch.Tensor) -> None:
        """The sums of one stretch of items (flattened maps, zero outside each row's box): in total, and
        by distance to the edge of the box."""
        masks = self._reach(row, diff_map.device)
        shape = (len(diff_map), *self.spatial)
        beyond = [beyond_sums(m.view(shape), masks).cpu().double() for m in (diff_map, ref_map)]
        self.items.write(items, beyond[0][:, 0], beyond[1][:, 0])
        assert self.items.border_diff is not None
        assert self.items.border_ref is not None
        self.items.border_diff[items] = by_distance(beyond[0])
        self.items.border_ref[items] = by_distance(beyond[1])

    def _reach(self, row: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """The ``reach_masks`` of each item's row, ``(items, depth, n)`` per dim (every row's made once)."""
        if self._masks is None:
            boxes = (tuple(map(tuple, self.lo.tolist())), tuple(map(tuple, self.hi.tolist())))
            self._masks = _row_masks(*boxes, self.spatial, self.depth, accumulation_dtype(device), device)
        rows = row.to(device)
        return [mask[rows] for mask in self._masks]

    def _reference(
        self, sample: torch.Tensor, row: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The chunk's references, their norms a position, and a mask."""
        if self.output_action is not None:
            reference, mask = self._custom(sample, row)
            return reference, squared_norms(reference, self.channel_dims), mask
        references, norms = self._moved()
        reference = references.take(sample, row)
        if norms is not None:
            return reference, norms.take(sample, row).squeeze(1), None
        return reference, squared_norms(reference, self.channel_dims), None

    def _moved(self) -> tuple[Copies, Copies | None]:
        """The reference (and its norms) moved by each row, made the first time a chunk needs them."""
        if self._copies is None:
            norms = (
                None if self.norm_map is None else Copies(self.norm_map.unsqueeze(1), self.acting, self.grid)
            )
            self._copies = (Copies(self.scaled, self.acting, self.grid), norms)
        return self._copies

    def _custom(self, sample: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g'.f(x)`` by the caller's output action, once per run of a row, and its mask."""
        assert self.output_action is not None
        pieces, masks = [], []
        for k in torch.unique_consecutive(row).tolist():
            rows = sample[row == k].to(self.base.device)
            moved, mask = _call_output_action(self.output_action, self.base[rows], self.rows[k], self.spatial)
            scale = self.scales.sample
            pieces.append(scaled(moved, None if scale is None else scale[sample[row == k].to(scale.device)]))
            masks.append(mask.expand(len(rows), *self.spatial))
        return torch.cat(pieces), torch.cat(masks)

    def retry(self) -> None:
        self.differences.scratch = None

    def sums(self) -> Sums:
        return self.items.sums(self.count, self.border_count, self.scales.items)


def _tiles(
    lo: Sequence[int], hi: Sequence[int], offsets: Sequence[int], spatial: Sequence[int], boundary: str
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """The box ``[lo, hi)`` of a grid translated by ``offsets``, as tiles ``(box part, where the reference
    for it comes from)``: the reference at ``p`` is the base at ``p - offsets``, wrapped around under the
    circular boundary, which splits a dim in two where the source wraps."""
    per_dim = []
    for a, b, o, n in zip(lo, hi, offsets, spatial):
        if boundary == "zeros":
            per_dim.append([(slice(a, b), slice(a - o, b - o))])
            continue
        wrap = min(max(o % n, a), b)  # the first position whose source is 0
        parts = [(s, e) for s, e in ((a, wrap), (wrap, b)) if e > s]
        per_dim.append([(slice(s, e), slice((s - o) % n, (s - o) % n + e - s)) for s, e in parts])
    return [
        (tuple(part for part, _ in combo), tuple(source for _, source in combo))
        for combo in itertools.product(*per_dim)
    ]


def _boxes(
    acting: Sequence[Action], spatial: tuple[int, ...], grid: Grid, margins: tuple[int, ...], custom: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's compared box ``[lo, hi)``: its region on the grid (the whole grid for a custom
    output action, which narrows it with a mask), less the margins."""
    full = tuple(slice(0, n) for n in spatial)
    regions = [full if custom else element.region(spatial, grid) for element in acting]
    lo = torch.tensor([[r.start for r in region] for region in regions], dtype=torch.long)
    hi = torch.tensor([[r.stop for r in region] for region in regions], dtype=torch.long)
    return lo + torch.tensor(margins), hi - torch.tensor(margins)


def _call_output_action(
    action: OutputAction, outputs: torch.Tensor, element: Action, spatial: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The caller's output action on some outputs, checked: a tensor like them, and a bool mask."""
    try:
        result = action(outputs, element)
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"output_action raised {type(exc).__name__} for shift {element}: {exc}"
        ) from exc
    mask: object = torch.ones(spatial, dtype=torch.bool, device=outputs.device)
    if isinstance(result, tuple) and len(result) == 2:
        result, mask = result
    if not isinstance(result, torch.Tensor) or result.shape != outputs.shape:
        raise InvalidArgument(
            f"output_action must return a tensor shaped like f(x) {tuple(outputs.shape)} (or a "
            f"(tensor, mask) pair), found {describe(result)}; return the outputs moved, not a copy of "
            "another shape"
        )
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape[-len(spatial) :]) != spatial
        or mask.dim() not in (len(spatial), len(spatial) + 1)
    ):
        raise InvalidArgument(
            f"the mask returned by output_action must be a bool tensor of the output's spatial "
            f"shape {spatial} (or with a leading batch dim), found {describe(mask)}; return e.g. "
            "shift.valid_mask(y.shape[2:])"
        )
    return result, mask.to(outputs.device)


def reach_masks(
    lo: torch.Tensor, hi: torch.Tensor, spatial: tuple[int, ...], depth: int, device: torch.device
) -> list[torch.Tensor]:
    """For boxes ``[lo[b], hi[b])`` of a grid of ``spatial``, per dim ``(B, depth, n)``: which positions lie
    ``r`` or more samples inside the box from both of its ends in that dim (all False outside it)."""
    r = torch.arange(depth, device=device).view(1, -1, 1)
    masks = []
    for i, n in enumerate(spatial):
        p = torch.arange(n, device=device).view(1, 1, -1)
        a, b = lo[:, i : i + 1, None].to(device), hi[:, i : i + 1, None].to(device)
        masks.append(torch.minimum(p - a, b - 1 - p) >= r)
    return masks


@functools.lru_cache(maxsize=64)
def _row_masks(
    lo: tuple[tuple[int, ...], ...],
    hi: tuple[tuple[int, ...], ...],
    spatial: tuple[int, ...],
    depth: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """``reach_masks`` of the boxes of a check's rows, in ``dtype``: the same for every check of the
    same shapes, shifts and margins (made once; nothing writes to them)."""
    masks = reach_masks(torch.tensor(lo), torch.tensor(hi), spatial, depth, device)
    return [mask.to(dtype) for mask in masks]


def beyond_sums(maps: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """``(B, depth)`` sums of each map ``(B, *spatial)`` over the positions at distance ``r`` or more from
    the edge of its box: the product of ``reach_masks`` (``(B or 1, depth, n)`` per dim) contracted with it.

    A matrix product over the last dim, then a masked sum over each other: no index of the map's
    size, and every term a sum of the map's own values (no differences of large sums).
    """
    d = len(masks)
    batch = maps.shape[0]
    ones = [1] * max(d - 2, 0)  # the batch dims of the product: (B, n_0, ..., n_{d-3})
    last = masks[-1].to(maps.dtype).transpose(1, 2)  # (B, n, depth)
    summed = (maps.unsqueeze(1) if d == 1 else maps) @ last.reshape(last.shape[0], *ones, *last.shape[1:])
    for i in reversed(range(d - 1)):  # summed: (B, n_0, ..., n_i, depth)
        mask = masks[i].to(maps.dtype).transpose(1, 2)
        summed = (summed * mask.reshape(mask.shape[0], *([1] * i), *mask.shape[1:])).sum(-2)
    return summed.reshape(batch, -1)


def by_distance(beyond: torch.Tensor) -> torch.Tensor:
    """Sums at each distance from sums over each distance or more (the last dim)."""
    rings = beyond.clone()
    rings[..., :-1] -= beyond[..., 1:]
    return rings


class RelativeChange:
    """``||f(g.x) - f(x)|| / ||f(x)||`` of every copy, where row 0 is the identity: ``f(x)`` itself.

    Row 0 goes through the model first, in the same chunks as the others, and
    is kept as the reference of the rows after it.

    Args:
        rows: the number of rows, the identity's included.
        n: the number of samples.
    """

    def __init__(self, rows: int, n: int) -> None:
        self.rows, self.n = rows, n
        self.reference: torch.Tensor | None = None
        self.change = torch.zeros(rows * n, dtype=torch.float64)

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        check_finite(outputs, what())
        flat = outputs.detach().reshape(len(outputs), -1).double().cpu()
        first = row == 0
        if bool(first.any()):
            if self.reference is None:
                self.reference = torch.zeros(self.n, flat.shape[1], dtype=torch.float64)
            self.reference[sample[first]] = flat[first]
        assert self.reference is not None
        reference = self.reference[sample]
        change, zero = relative_sizes(flat - reference, reference)
        if bool(zero.any()):
            raise InvalidArgument(
                f"{int(zero.sum())} samples have all-zero logits, where a relative change does "
                "not exist; check the model (dead features?) or leave those samples out"
            )
        self.change[items] = change

    def retry(self) -> None:
        pass

    def table(self) -> torch.Tensor:
        """The relative changes, ``[row, sample]`` (row 0: zeros)."""
        return self.change.view(self.rows, self.n)


class Top1:
    """The predicted class (top-1) of every copy: for consistency, prediction change and audits.

    Args:
        rows: the number of rows (elements) of the plan.
        n: the number of samples.
    """

    def __init__(self, rows: int, n: int) -> None:
        self.rows, self.n = rows, n
        self.predicted = torch.zeros(rows * n, dtype=torch.long)

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        self.predicted[items] = top1(outputs, what).cpu()

    def retry(self) -> None:
        pass

    def table(self) -> torch.Tensor:
        """The predictions, ``[row, sample]``."""
        return self.predicted.view(self.rows, self.n)


def top1(logits: torch.Tensor, what: Describe) -> torch.Tensor:
    """The argmax of logits ``(N, classes)``; InvalidArgument for any other shape or non-finite logits."""
    if logits.dim() != 2:
        raise InvalidArgument(
            f"the model returned an output of shape {tuple(logits.shape)}; a top-1 prediction needs "
            "logits (N, classes): pass output= to pick them, or add a pooling and a linear head"
        )
    check_floating(logits, what)
    check_finite(logits, what())
    return logits.argmax(dim=1)


def check_floating(tensor: torch.Tensor, what: Describe) -> None:
    """InvalidArgument for an output that is not floating point."""
    if not tensor.dtype.is_floating_point:
        raise InvalidArgument(
            f"the output for {what()} has dtype {tensor.dtype}; equivariance errors need a "
            "floating-point output: return float outputs, e.g. by passing output=lambda y: y.float()"
        )


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """InvalidArgument for an output with a nan or an inf, naming how many samples have one."""
    check_floating(tensor, lambda: what)
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).reshape(len(tensor), -1).any(1).sum())
        raise InvalidArgument(
            f"the model's output is not finite (nan or inf) for {bad} of {len(tensor)} samples of "
            f"{what}; the error of a non-finite output is meaningless. Look for overflow (half "
            "precision?), a log or division by zero, or non-finite weights"
        )


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: one summing pass (a nan or inf propagates), and the exact,
    element-wise test only where that fires (as it also does for finite values whose sum overflows)."""
    if bool(torch.isfinite(tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32)))):
        return True
    return bool(torch.isfinite(tensor).all())
