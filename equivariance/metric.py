"""The equivariance metric: how far ``f(g.x)`` is from ``g'.f(x)``.

For an input shift ``g`` and its output action ``g'`` (the same shift by
default, the shift divided by the stride for subsampled outputs, the identity
for invariance), the error of one sample is the relative L2 distance

    ||f(g.x) - g'.f(x)|| / ||g'.f(x)||

over the output region where both sides are defined: under the zeros
boundary, the valid region of ``g'`` (samples not filled in by the shift),
less ``margin`` samples at each of its edges.

Where the reference ``g'.f(x)`` is exactly zero (every feature dead), a
relative error does not exist; the root-mean-square absolute error is used
instead, the measurement says so, and the check compares it to ``atol``.

All shifts of all samples go through the model in batched forward passes of
at most ``batch_size`` samples: the input shifts are produced by one
vectorized gather per chunk (:func:`~equivariance.shifts.shift_each`), never a
forward pass per shift.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from equivariance._forward import Forward, OutputSelector
from equivariance._isolation import isolated
from equivariance._validation import as_int, describe, per_dim
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.shifts import Boundary, Shift, ShiftLike, as_shift, check_boundary, shift_each

__all__ = ["OutputAction", "equivariance_error", "invariance_error"]

OutputAction = Callable[[torch.Tensor, Shift], torch.Tensor]
"""A callable ``(f(x), shift) -> g'.f(x)`` for output actions other than a (strided) shift."""

Reduction = Literal["mean", "max", "none"]
IntOrTuple = int | Sequence[int]

# Input elements per forward pass when batch_size is not given. On the CPU
# chunks of about a megabyte of input keep activations in cache (for the
# seed's LeNet, 181 canvases a pass ran 1.25x faster than 2,904); a GPU wants
# large batches to fill its cores, limited by the activations' memory.
DEFAULT_BATCH_ELEMENTS = {"cpu": 2**18, "cuda": 2**22}


@dataclass(frozen=True)
class Measurement:
    """Raw sums from one batched measurement, kept on the CPU in float64.

    ``diff_sq[k, n]`` and ``ref_sq[k, n]`` are the squared norms of
    ``f(g_k.x_n) - g'_k.f(x_n)`` and of ``g'_k.f(x_n)`` over the compared
    region, which holds ``count[k]`` elements. ``border_diff[k, n, r]`` and
    ``border_ref[k, n, r]`` split the same sums by the distance ``r`` of a
    position to the nearest edge of the compared region (equivariance only),
    so one can ask how the error would look with a larger margin without
    running the model again. ``noise_*`` are the same sums for the identity
    shift sent through the batched path.
    """

    shifts: tuple[Shift, ...]
    diff_sq: torch.Tensor
    ref_sq: torch.Tensor
    count: torch.Tensor
    border_diff: torch.Tensor | None
    border_ref: torch.Tensor | None
    border_count: torch.Tensor | None
    noise_diff_sq: torch.Tensor | None
    noise_ref_sq: torch.Tensor | None
    noise_count: torch.Tensor | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    batch_size: int


def sample_errors(
    diff_sq: torch.Tensor, ref_sq: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample errors and a mask of the samples measured as absolute errors.

    The error is ``sqrt(diff_sq / ref_sq)`` (relative L2) where the reference
    is nonzero, else ``sqrt(diff_sq / count)`` (RMS absolute error). ``count``
    broadcasts against the leading dims of ``diff_sq``.
    """
    absolute = ref_sq == 0
    count = count.to(diff_sq.dtype).clamp_min(1)
    while count.dim() < diff_sq.dim():
        count = count.unsqueeze(-1)
    relative = diff_sq / torch.where(absolute, torch.ones_like(ref_sq), ref_sq)
    rms = diff_sq / count
    return torch.where(absolute, rms, relative).sqrt(), absolute


def equivariance_error(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shift: ShiftLike,
    *,
    stride: IntOrTuple = 1,
    output_action: OutputAction | None = None,
    boundary: Boundary = "zeros",
    margin: IntOrTuple = 0,
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: int | None = None,
) -> torch.Tensor:
    """The relative error ``||f(g.x) - g'.f(x)|| / ||g'.f(x)||`` of a model under one shift.

    ``f`` is ``model`` (any ``nn.Module`` or callable from tensor to tensor),
    or the output of its submodule ``layer``; ``g`` is ``shift`` applied to
    the input with ``boundary``; ``g'`` is the output action: the same shift,
    the shift divided by ``stride`` for a subsampled output, or
    ``output_action(f(x), shift)`` for anything else. The distance is taken
    per sample over the output region where both sides are defined, less
    ``margin`` samples at each edge.

    The model is run in eval mode without autograd; its training flags, its
    state, the RNG and the TF32 settings are restored afterwards.

    >>> import torch
    >>> conv = torch.nn.Conv2d(1, 4, 3)
    >>> x = torch.randn(2, 1, 16, 16)
    >>> bool(equivariance_error(conv, x, (3, -2)) < 1e-5)
    True
    >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 256),
    ...                             torch.nn.Unflatten(1, (1, 16, 16)))
    >>> bool(equivariance_error(dense, x, (3, -2)) > 0.5)
    True

    Args:
        model: the function under test.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shift: a :class:`~equivariance.Shift` or a tuple of ints, one per spatial dim.
        stride: the output's subsampling factor (an int or one per dim); the
            output shift is ``shift / stride``, which must be exact.
        output_action: a callable ``(f(x), shift) -> tensor`` replacing the
            default output action.
        boundary: ``"zeros"`` (content moves on a finite canvas) or
            ``"circular"`` (on a torus).
        margin: samples dropped at each edge of the compared region (an int
            or one per dim), for zero-padded convolutions whose border outputs
            see the padding.
        layer: measure the output of this named submodule instead; the
            forward pass stops there.
        output: picks the tensor from a model returning a tuple or dict: an
            index, a key or a callable.
        reduction: ``"mean"`` (default) or ``"max"`` over the batch, or
            ``"none"`` for the per-sample errors.
        batch_size: samples per forward pass (default: chosen from the input size and device).

    Returns:
        A 0-dim tensor (``"mean"``, ``"max"``) or one error per sample
        (``"none"``), on ``x``'s device.
    """
    return _error(
        model, x, shift, "equivariance", stride, output_action, boundary, margin, layer, output,
        reduction, batch_size,
    )  # fmt: skip


def invariance_error(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shift: ShiftLike,
    *,
    boundary: Boundary = "zeros",
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: int | None = None,
) -> torch.Tensor:
    """The relative change ``||f(g.x) - f(x)|| / ||f(x)||`` of an output that should not move.

    The output may have any shape (logits, an embedding); it is compared
    whole. Arguments as in :func:`equivariance_error`.

    >>> import torch
    >>> pool = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"),
    ...                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> x = torch.randn(4, 1, 12, 12)
    >>> bool(invariance_error(pool, x, (5, 2), boundary="circular") < 1e-5)
    True
    """
    return _error(model, x, shift, "invariance", 1, None, boundary, 0, layer, output, reduction, batch_size)


def _error(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shift: ShiftLike,
    mode: str,
    stride: IntOrTuple,
    output_action: OutputAction | None,
    boundary: Boundary,
    margin: IntOrTuple,
    layer: str | None,
    output: OutputSelector,
    reduction: Reduction,
    batch_size: int | None,
) -> torch.Tensor:
    if reduction not in ("mean", "max", "none"):
        raise InvalidArgument(f"reduction must be 'mean', 'max' or 'none', found {describe(reduction)}")
    forward = Forward(model, layer, output)
    measurement = measure(
        forward, x, [as_shift(shift)], mode=mode, stride=stride, output_action=output_action,
        boundary=boundary, margin=margin, batch_size=batch_size, noise_floor=False,
    )  # fmt: skip
    errors, absolute = sample_errors(measurement.diff_sq[0], measurement.ref_sq[0], measurement.count[0])
    if bool(absolute.any()):
        warnings.warn(
            f"{int(absolute.sum())} of {absolute.numel()} samples have an all-zero reference "
            f"output (dead features?); their error is the RMS absolute error, not a relative one",
            EquivarianceWarning,
            stacklevel=3,
        )
    errors = errors.to(device=x.device, dtype=accumulation_dtype(x.dtype))
    if reduction == "none":
        return errors
    return errors.max() if reduction == "max" else errors.mean()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms are summed in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- validation ---------------------------------------------------------------------------------


def check_input(x: object, model: object) -> torch.Tensor:
    """``x`` if it is a usable batch for ``model``, else InvalidArgument saying why."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"x must be a torch.Tensor, found {describe(x)}")
    shape = tuple(x.shape)
    if not 3 <= x.dim() <= 5:
        fix = (
            "add the missing batch and channel dims, e.g. x[None, None]"
            if x.dim() <= 2
            else "fold the extra dims into the batch or channel dim"
        )
        raise InvalidArgument(
            f"x must be a batch (N, C, L), (N, C, H, W) or (N, C, D, H, W), found a tensor of "
            f"shape {shape} ({x.dim()} dims); {fix}"
        )
    if not x.dtype.is_floating_point:
        raise InvalidArgument(
            f"x must have a floating-point dtype, found {x.dtype}; convert it, e.g. x.float()"
        )
    if x.shape[0] == 0:
        raise InvalidArgument(f"x is an empty batch (shape {shape}); pass at least one sample")
    if x.numel() == 0:
        raise InvalidArgument(f"x of shape {shape} has no elements; every dim must be nonzero")
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgument(
            f"x contains {int((~torch.isfinite(x)).sum())} non-finite values (nan or inf); "
            "equivariance is only measurable on finite inputs"
        )
    if isinstance(model, nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
        devices = {t.device for t in tensors}
        if len(devices) == 1 and next(iter(devices)) != x.device:
            (device,) = devices
            raise InvalidArgument(
                f"the model is on {device} but x is on {x.device}; move x with x.to({str(device)!r}) "
                f"or the model with model.to({str(x.device)!r})"
            )
        dtypes = {t.dtype for t in tensors if t.dtype.is_floating_point}
        if len(dtypes) == 1 and next(iter(dtypes)) != x.dtype:
            (dtype,) = dtypes
            raise InvalidArgument(
                f"the model's parameters are {dtype} but x is {x.dtype}; convert one to the "
                f"other, e.g. x.to({dtype}) or model.to({x.dtype})"
            )
    return x


def check_shift_fits(shift: Shift, x: torch.Tensor) -> None:
    """A shift must have one offset per spatial dim and be smaller than the signal."""
    spatial = tuple(x.shape[2:])
    if shift.ndim != len(spatial):
        raise InvalidArgument(
            f"shift {shift} has {shift.ndim} dims but x of shape {tuple(x.shape)} has "
            f"{len(spatial)} spatial dims; pass a shift of length {len(spatial)}"
        )
    for offset, size in zip(shift, spatial):
        if abs(offset) >= size:
            raise InvalidArgument(
                f"shift {shift} is as large as the signal or larger (spatial size "
                f"{spatial}); a shift must be smaller than the size in every dim, so pass "
                f"offsets in ({-size}, {size})"
            )


# -- the batched measurement --------------------------------------------------------------------


def default_batch_size(x: torch.Tensor) -> int:
    """Samples per forward pass when the caller does not say.

    About 2**18 input elements per pass on the CPU and 2**22 on a GPU, at
    least one sample.
    """
    budget = DEFAULT_BATCH_ELEMENTS.get(x.device.type, DEFAULT_BATCH_ELEMENTS["cuda"])
    return max(1, budget // max(1, x[0].numel()))


def measure(
    forward: Forward,
    x: torch.Tensor,
    shifts: Sequence[Shift],
    *,
    mode: str,
    stride: IntOrTuple = 1,
    output_action: OutputAction | None = None,
    boundary: Boundary = "zeros",
    margin: IntOrTuple = 0,
    batch_size: int | None = None,
    noise_floor: bool = True,
) -> Measurement:
    """Run every shift of every sample through the model in batched passes and sum the errors.

    This is the one engine behind :func:`equivariance_error` and
    :func:`~equivariance.check_equivariance`. ``mode`` is ``"equivariance"``
    or ``"invariance"``. With ``noise_floor``, the identity shift is sent
    through the first batch as well, to measure what the batched path alone
    contributes.
    """
    x = check_input(x, forward.model)
    boundary = check_boundary(boundary)
    d = x.dim() - 2
    if not shifts:
        raise InvalidArgument("no shifts to check; pass at least one shift")
    for shift in shifts:
        check_shift_fits(shift, x)
    equivariant = mode == "equivariance"
    strides = per_dim(stride, d, "stride", minimum=1)
    margins = per_dim(margin, d, "margin", minimum=0)
    if output_action is not None and not callable(output_action):
        raise InvalidArgument(
            f"output_action must be a callable (f(x), shift) -> tensor, found {describe(output_action)}"
        )
    if output_action is not None and strides != (1,) * d:
        raise InvalidArgument(
            "pass either stride= or output_action=, not both; fold the stride into the output action"
        )
    if equivariant and output_action is None:
        for shift in shifts:
            shift / strides  # raises for a shift the stride does not divide
    if batch_size is None:
        batch_size = default_batch_size(x)
    else:
        batch_size = as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be positive, found {batch_size}")

    n = x.shape[0]
    identity = Shift.identity(d)
    plan = [identity, *shifts] if noise_floor else list(shifts)
    in_offsets = torch.tensor([s.offsets for s in plan], dtype=torch.long)

    with isolated(forward.model):
        base = forward(x.clone())
        _check_finite(base, "the unshifted input x")
        out_shape = tuple(base.shape)
        if equivariant:
            comparison = _Comparison.build(base, plan, d, strides, margins, boundary, output_action)
        total = len(plan) * n
        diff_sq = torch.zeros(total, dtype=torch.float64)
        ref_sq = torch.zeros(total, dtype=torch.float64)
        border_diff = border_ref = None
        if equivariant:
            border_diff = torch.zeros(total, comparison.depth, dtype=torch.float64)
            border_ref = torch.zeros(total, comparison.depth, dtype=torch.float64)
        note = (
            f" (the check sends shifted copies of x through the model in batches of up to "
            f"{batch_size} samples; if the model needs a fixed batch size, pass batch_size={n})"
        )
        acc = accumulation_dtype(x.dtype)
        for start in range(0, total, batch_size):
            items = torch.arange(start, min(start + batch_size, total))
            shift_index, sample = items // n, items % n
            device_sample = sample.to(x.device)
            shifted_inputs = shift_each(x, device_sample, in_offsets[shift_index].to(x.device), boundary)
            outputs = forward(shifted_inputs, note if batch_size > n else "")
            _check_finite(outputs, f"shifted inputs ({_shifts_in(plan, shift_index)})")
            if tuple(outputs.shape[1:]) != out_shape[1:]:
                raise InvalidArgument(
                    f"the output for shifted inputs has shape {tuple(outputs.shape[1:])} per sample "
                    f"but {out_shape[1:]} for x; the model must map inputs of one shape to "
                    "outputs of one shape"
                )
            if equivariant:
                reference = comparison.reference(base, plan, shift_index, device_sample)
                sums = comparison.sums(outputs.to(acc) - reference.to(acc), reference.to(acc), shift_index)
                diff_sq[start : start + len(items)] = sums[0]
                ref_sq[start : start + len(items)] = sums[1]
                assert border_diff is not None
                assert border_ref is not None
                border_diff[start : start + len(items)] = sums[2]
                border_ref[start : start + len(items)] = sums[3]
            else:
                reference = base[device_sample].to(acc)
                diff = (outputs.to(acc) - reference).flatten(1)
                diff_sq[start : start + len(items)] = diff.square().sum(1).cpu().double()
                ref_sq[start : start + len(items)] = reference.flatten(1).square().sum(1).cpu().double()

    k = len(plan)
    diff_sq, ref_sq = diff_sq.view(k, n), ref_sq.view(k, n)
    if equivariant:
        count = comparison.count.double()
        border_count = comparison.border_count.double()
    else:
        count = torch.full((k,), float(base[0].numel()), dtype=torch.float64)
        border_count = None
    if border_diff is not None and border_ref is not None:
        border_diff = border_diff.view(k, n, -1)
        border_ref = border_ref.view(k, n, -1)
    first = 1 if noise_floor else 0
    return Measurement(
        shifts=tuple(shifts),
        diff_sq=diff_sq[first:],
        ref_sq=ref_sq[first:],
        count=count[first:],
        border_diff=None if border_diff is None else border_diff[first:],
        border_ref=None if border_ref is None else border_ref[first:],
        border_count=None if border_count is None else border_count[first:],
        noise_diff_sq=diff_sq[0] if noise_floor else None,
        noise_ref_sq=ref_sq[0] if noise_floor else None,
        noise_count=count[0] if noise_floor else None,
        input_shape=tuple(x.shape),
        output_shape=out_shape,
        batch_size=batch_size,
    )


@dataclass(frozen=True)
class _Comparison:
    """Where and against what the output of each shift is compared (equivariance).

    For shift ``k`` the compared region is a box ``[lo[k], hi[k])`` of the
    output grid: the valid region of the output shift (zeros boundary) or the
    whole grid, shrunk by the margin.
    """

    out_offsets: torch.Tensor | None
    lo: torch.Tensor
    hi: torch.Tensor
    channels: int
    spatial: tuple[int, ...]
    boundary: Boundary
    output_action: OutputAction | None
    depth: int

    @classmethod
    def build(
        cls,
        base: torch.Tensor,
        plan: Sequence[Shift],
        d: int,
        strides: tuple[int, ...],
        margins: tuple[int, ...],
        boundary: Boundary,
        output_action: OutputAction | None,
    ) -> _Comparison:
        if base.dim() < 1 + d:
            raise InvalidArgument(
                f"the output of shape {tuple(base.shape)} has fewer than {d} spatial dims, so it "
                f"cannot carry a shift of the input's {d} spatial dims; to test that it does not "
                "change use check_invariance, or pass layer= to measure a layer with spatial output"
            )
        spatial = tuple(base.shape[base.dim() - d :])
        channels = int(torch.tensor(base.shape[1 : base.dim() - d]).prod().item())
        out_offsets = None
        if output_action is None:
            out_shifts = [shift / strides for shift in plan]
            out_offsets = torch.tensor([s.offsets for s in out_shifts], dtype=torch.long)
            if boundary == "zeros":
                regions = [s.valid_region(spatial) for s in out_shifts]
            else:
                regions = [tuple(slice(0, size) for size in spatial)] * len(plan)
        else:
            regions = [tuple(slice(0, size) for size in spatial)] * len(plan)
        lo = torch.tensor([[r.start for r in region] for region in regions], dtype=torch.long)
        hi = torch.tensor([[r.stop for r in region] for region in regions], dtype=torch.long)
        lo = lo + torch.tensor(margins)
        hi = hi - torch.tensor(margins)
        empty = (hi <= lo).any(dim=1)
        if bool(empty.any()):
            shift = plan[int(empty.nonzero()[0])]
            out_shift = shift if out_offsets is None else shift / strides
            what = f"output shift {out_shift}" if out_shift != shift else f"shift {shift}"
            margin_note = f" and margin {margins}" if any(margins) else ""
            raise InvalidArgument(
                f"the output's spatial dims {spatial} cannot carry {what}{margin_note}: "
                "nothing of the output is left to compare; use smaller shifts"
                + (
                    " or a smaller margin"
                    if any(margins)
                    else ", a larger input or a layer= with larger maps"
                )
            )
        depth = int(((hi - lo + 1) // 2).max().item())
        return cls(out_offsets, lo, hi, channels, spatial, boundary, output_action, max(depth, 1))

    @property
    def count(self) -> torch.Tensor:
        """Compared elements per sample, for each shift."""
        return (self.hi - self.lo).prod(dim=1) * self.channels

    @property
    def border_count(self) -> torch.Tensor:
        """Compared elements per sample at each distance from the region's edge, for each shift.

        A box with sides ``L`` has ``prod(max(L - 2r, 0))`` positions at
        distance ``r`` or more from its edge; differences give each distance.
        """
        r = torch.arange(self.depth + 1)
        sides = (self.hi - self.lo).unsqueeze(1)  # (K, 1, d)
        at_least = (sides - 2 * r.view(1, -1, 1)).clamp_min(0).prod(dim=2)  # (K, depth + 1)
        return (at_least[:, :-1] - at_least[:, 1:]) * self.channels

    def reference(
        self, base: torch.Tensor, plan: Sequence[Shift], shift_index: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """``g'.f(x)`` for every item of a batch."""
        if self.out_offsets is not None:
            offsets = self.out_offsets[shift_index].to(base.device)
            return shift_each(base, sample, offsets, self.boundary)
        assert self.output_action is not None
        pieces = []
        # A Python loop over the shifts in this batch, on outputs only: a custom
        # output action is an opaque callable of one shift.
        for k in torch.unique_consecutive(shift_index).tolist():
            rows = (shift_index == k).nonzero().flatten().to(base.device)
            try:
                moved = self.output_action(base[sample[rows]], plan[k])
            except InvalidArgument:
                raise
            except Exception as exc:
                raise InvalidArgument(
                    f"output_action raised {type(exc).__name__} for shift {plan[k]}: {exc}"
                ) from exc
            if not isinstance(moved, torch.Tensor) or moved.shape != base[sample[rows]].shape:
                raise InvalidArgument(
                    f"output_action must return a tensor shaped like f(x) "
                    f"{tuple(base[sample[rows]].shape)}, found {describe(moved)}"
                )
            pieces.append(moved)
        return torch.cat(pieces)

    def sums(
        self, diff: torch.Tensor, reference: torch.Tensor, shift_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Squared norms over the compared region, in total and by distance from its edge."""
        d = len(self.spatial)
        device = diff.device
        mask, dist = _box(self.lo[shift_index].to(device), self.hi[shift_index].to(device), self.spatial)
        channel_dims = tuple(range(1, diff.dim() - d))
        diff_map = diff.square()
        ref_map = reference.square()
        if channel_dims:
            diff_map = diff_map.sum(channel_dims)
            ref_map = ref_map.sum(channel_dims)
        diff_map = (diff_map * mask).flatten(1)
        ref_map = (ref_map * mask).flatten(1)
        bucket = dist.clamp(0, self.depth - 1).flatten(1)
        border_diff = torch.zeros(len(diff), self.depth, dtype=diff.dtype, device=device)
        border_ref = torch.zeros_like(border_diff)
        border_diff.scatter_add_(1, bucket, diff_map)
        border_ref.scatter_add_(1, bucket, ref_map)
        return (
            diff_map.sum(1).cpu().double(),
            ref_map.sum(1).cpu().double(),
            border_diff.cpu().double(),
            border_ref.cpu().double(),
        )


def _box(lo: torch.Tensor, hi: torch.Tensor, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For boxes ``[lo[b], hi[b])``: a mask of the box and each position's distance to its edge."""
    d = len(spatial)
    batch = lo.shape[0]
    mask = torch.ones((batch, *spatial), dtype=torch.bool, device=lo.device)
    dist = torch.full((batch, *spatial), torch.iinfo(torch.long).max, dtype=torch.long, device=lo.device)
    for i, size in enumerate(spatial):
        view = [batch] + [1] * d
        view[1 + i] = size
        ar = torch.arange(size, device=lo.device)
        low, high = lo[:, i : i + 1], hi[:, i : i + 1]
        inside = ((ar >= low) & (ar < high)).view(view)
        edge = torch.minimum(ar - low, high - 1 - ar).view(view)
        mask = mask & inside
        dist = torch.minimum(dist, edge)
    return mask, dist.clamp_min(0)


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not tensor.dtype.is_floating_point:
        raise InvalidArgument(
            f"the output for {what} has dtype {tensor.dtype}; equivariance errors need a "
            "floating-point output"
        )
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum())
        raise InvalidArgument(
            f"the model's output is not finite (nan or inf) for {bad} of {len(tensor)} samples of "
            f"{what}; the error of a non-finite output is meaningless. Look for overflow (half "
            "precision?), a log or division by zero, or non-finite weights"
        )


def _shifts_in(plan: Sequence[Shift], shift_index: torch.Tensor) -> str:
    present = [str(plan[k]) for k in torch.unique(shift_index).tolist()]
    shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
    return f"shift {shown}" if len(present) == 1 else f"shifts {shown}"
