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
vectorized gather per chunk (:class:`~equivariance.shifts.ShiftedWindows`), never a
forward pass per shift.

The same engine measures rotations and flips (:mod:`equivariance.transforms`):
a transform takes the place of a shift in the plan, moves the input by
applying it to the chunk's samples and the output alike, and is compared over
the whole output grid, less ``margin``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from equivariance._forward import Forward, OutputSelector
from equivariance._isolation import isolated
from equivariance._memory import auto_batch_size, default_cpu_batch_size, metered, release_cached_memory
from equivariance._progress import Progress
from equivariance._validation import as_int, describe, per_dim
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.shifts import Boundary, Shift, ShiftLike, as_shift, check_boundary
from equivariance.transforms import Copies, Transform, check_transform_fits

__all__ = ["OutputAction", "equivariance_error", "invariance_error"]

OutputAction = Callable[[torch.Tensor, Shift], Any]
"""A callable ``(f(x), shift) -> g'.f(x)`` for output actions other than a (strided) shift.

It receives a batch of outputs for the unshifted input and one input shift,
and returns the outputs as they should look for the shifted input. It may
return a pair ``(tensor, mask)`` instead, ``mask`` a bool tensor of the
output's spatial shape (or with a leading batch dim), True where the expected
output is determined; only there is it compared. Example, a stride-2
upsampling layer, whose output moves twice as far as its input::

    def twice(y, shift):
        moved = Shift(tuple(2 * o for o in shift))
        return moved.apply(y), moved.valid_mask(y.shape[2:]).to(y.device)
"""

Reduction = Literal["mean", "max", "none"]
IntOrTuple = int | Sequence[int]
Dims = tuple[int, ...]
BatchSize = int | Literal["auto"] | None

# Input elements per forward pass when batch_size is not given, off the CPU: a GPU wants
# large batches to fill its cores, limited by the activations' memory. On the CPU the
# chunks are sized from the activations the unshifted pass measured
# (equivariance._memory.default_cpu_batch_size); this figure stands in until then.
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
    shift sent through the batched path. ``shifts`` may hold transforms
    (rotations, flips) in place of shifts.
    """

    shifts: tuple[Shift | Transform, ...]
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
    output_dtype: torch.dtype
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
    shift: ShiftLike | Transform,
    *,
    stride: IntOrTuple | Literal["auto"] = 1,
    output_action: OutputAction | None = None,
    boundary: Boundary = "zeros",
    margin: IntOrTuple | Literal["auto"] = 0,
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: BatchSize = None,
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
        shift: a :class:`~equivariance.Shift` or a tuple of ints, one per spatial dim;
            or a transform (:class:`~equivariance.Rot90`, :class:`~equivariance.Flip`),
            which acts alike on the input and the output, over the whole grid
            less ``margin`` (``stride`` and ``output_action`` are then not allowed).
        stride: the output's subsampling factor (an int or one per dim); the
            output shift is ``shift / stride``, which must be exact.
            ``"auto"`` infers it, as in :func:`~equivariance.check_equivariance`.
        output_action: a callable ``(f(x), shift) -> tensor`` replacing the
            default output action.
        boundary: ``"zeros"`` (content moves on a finite canvas) or
            ``"circular"`` (on a torus).
        margin: samples dropped at each edge of the compared region (an int
            or one per dim), for zero-padded convolutions whose border outputs
            see the padding. ``"auto"`` measures the receptive-field radius,
            as in :func:`~equivariance.check_equivariance`.
        layer: measure the output of this named submodule instead; the
            forward pass stops there.
        output: picks the tensor from a model returning a tuple or dict: an
            index, a key or a callable.
        reduction: ``"mean"`` (default) or ``"max"`` over the batch, or
            ``"none"`` for the per-sample errors.
        batch_size: samples per forward pass (default: chosen from the input size and
            device), or ``"auto"`` to fit the chunks to the device's memory.

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
    shift: ShiftLike | Transform,
    *,
    boundary: Boundary = "zeros",
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: BatchSize = None,
) -> torch.Tensor:
    """The relative change ``||f(g.x) - f(x)|| / ||f(x)||`` of an output that should not move.

    The output may have any shape (logits, an embedding); it is compared
    whole. Arguments as in :func:`equivariance_error`; ``shift`` may be a
    transform (:class:`~equivariance.Rot90`, :class:`~equivariance.Flip`) too.

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
    shift: ShiftLike | Transform,
    mode: str,
    stride: IntOrTuple | Literal["auto"],
    output_action: OutputAction | None,
    boundary: Boundary,
    margin: IntOrTuple | Literal["auto"],
    layer: str | None,
    output: OutputSelector,
    reduction: Reduction,
    batch_size: BatchSize,
) -> torch.Tensor:
    if reduction not in ("mean", "max", "none"):
        raise InvalidArgument(f"reduction must be 'mean', 'max' or 'none', found {describe(reduction)}")
    forward = Forward(model, layer, output)
    element = _as_element(shift)
    if not isinstance(element, Shift) and stride == "auto":
        raise InvalidArgument(
            f"stride='auto' infers how shifts move the output, but {element} is a transform, which "
            "acts alike on the input and the output; drop stride="
        )
    if "auto" in (stride, margin):
        # imported here: the inference runs measurements itself
        from equivariance import _auto

        x = check_input(x, model)
        custom = output_action is not None
        strides, margins, _ = _auto.resolve(forward, x, stride, margin, boundary, custom_action=custom)
        if margin == _auto.AUTO and not custom:
            out = _auto.output_of(forward, x)
            _auto.check_room(tuple(out.shape[out.dim() - (x.dim() - 2) :]), [element], strides, margins)
        stride, margin = strides, margins
    assert not isinstance(stride, str)
    assert not isinstance(margin, str)
    measurement = measure(
        forward, x, [element], mode=mode, stride=stride, output_action=output_action,
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
    errors = errors.to(device=x.device, dtype=accumulation_dtype(x.device))
    if reduction == "none":
        return errors
    return errors.max() if reduction == "max" else errors.mean()


def _as_element(shift: object) -> Shift | Transform:
    """A shift (from a Shift, an int or ints) or a transform; a Shift has apply() too, so it comes first."""
    if isinstance(shift, Shift) or not isinstance(shift, Transform):
        return as_shift(shift)
    return shift


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype errors are returned in: float64 (float32 on devices without it, MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


# A float32 sum of squared differences is trusted for a row whose reference has
# a squared norm of at least this: difference elements too small to square in
# float32 (below ~1e-19) then change the relative error by less than 1e-9.
_FLOAT32_MIN_REFERENCE = 1e-10


class _Squares:
    """Sums of squared differences: in float32 where that is exact enough, else float64.

    Squaring and summing in float32 is several times faster on a CPU, but the
    verdict must not depend on the scale of the outputs (a model whose outputs
    are 1e-23 or 1e25 is as equivariant as one whose outputs are 1). The
    reference's squared norms are always taken in float64 (once per check);
    a chunk's float32 difference sums are kept only if they are finite and
    every row's reference norm is large enough for an underflowing difference
    element not to matter (:data:`_FLOAT32_MIN_REFERENCE`). Otherwise the chunk
    is summed again in float64, and so is every later chunk.

    The sums also find non-finite outputs, which they propagate to: a model's
    output is not read an extra time to look for them.
    """

    def __init__(self, output: torch.Tensor) -> None:
        self.exact = accumulation_dtype(output.device)
        self.work = self.exact if output.dtype == torch.float64 else torch.float32
        self.scratch: torch.Tensor | None = None

    def diff(
        self,
        outputs: torch.Tensor,
        reference: torch.Tensor | list[tuple[slice, torch.Tensor]],
        dims: Dims,
        ref_rows: torch.Tensor,
        what: Callable[[], str],
    ) -> torch.Tensor:
        """``sum((outputs - reference)^2)`` over ``dims``, redone in float64 where float32 fails.

        ``reference`` is a tensor, or runs ``(items, view)`` (see
        :meth:`ShiftedWindows.runs`) subtracted without gathering them first;
        ``ref_rows`` are the reference's squared norms a sample. Raises
        InvalidArgument for non-finite outputs, which the sums propagate.
        """
        diff = self._diff(outputs, reference, dims)
        if not bool(torch.isfinite(diff.sum())):
            _check_finite(outputs, what())  # raises for a nan or inf output; else the squares overflowed
        if self.work == self.exact or _float32_sums_hold(diff, ref_rows):
            # (finite float64 outputs beyond 1e154 overflow their squares: the error is inf)
            return diff
        self.work = self.exact
        return self._diff(outputs, reference, dims)

    def _diff(
        self, outputs: torch.Tensor, reference: torch.Tensor | list[tuple[slice, torch.Tensor]], dims: Dims
    ) -> torch.Tensor:
        # the difference goes to one scratch tensor kept across chunks: a fresh one each chunk
        # costs the page faults of touching new memory
        outputs = outputs.to(self.work)
        difference = self._scratch(outputs)
        if isinstance(reference, torch.Tensor):
            torch.sub(outputs, reference.to(self.work), out=difference)
        else:
            for items, view in reference:
                torch.sub(outputs[items], view.to(self.work), out=difference[items])
        return difference.square_().sum(dims)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        scratch = self.scratch
        if scratch is None or scratch.numel() < like.numel() or scratch.dtype != like.dtype:
            scratch = self.scratch = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return scratch[: like.numel()].view(like.shape)


def _float32_sums_hold(diff: torch.Tensor, ref_rows: torch.Tensor) -> bool:
    """Whether float32 sums of squared differences can stand: finite, with large enough references."""
    return bool(torch.isfinite(diff.sum())) and bool((ref_rows >= _FLOAT32_MIN_REFERENCE).all())


def squared_distances(
    outputs: torch.Tensor, reference: torch.Tensor, dims: Dims
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum((outputs - reference)^2)`` and ``sum(reference^2)`` over ``dims``, for one comparison.

    In float32 where the sums are finite and every sample's reference norm is
    large enough (as :class:`_Squares` decides for the engine's chunks), else
    again in float64: fast for the common case, exact whatever the outputs'
    scale. The inputs must be finite.
    """
    exact = accumulation_dtype(outputs.device)
    work = exact if torch.float64 in (outputs.dtype, reference.dtype) else torch.float32
    while True:
        diff = (outputs.to(work) - reference.to(work)).square_().sum(dims)
        ref = reference.to(work).square().sum(dims)
        if work == exact or _float32_sums_hold(diff, ref.reshape(len(ref), -1).sum(1)):
            return diff.to(exact), ref.to(exact)  # reduced maps: cheap, and their ratios cannot overflow
        work = exact


def squared_norms(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``sum(tensor^2)`` over ``dims``, in float64 (float32 on MPS)."""
    return tensor.to(accumulation_dtype(tensor.device)).square().sum(dims)


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
    if x.device.type == "meta":
        raise InvalidArgument(
            "x is on the meta device, which holds shapes but no values; pass a tensor with data"
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
    """Samples per forward pass when the caller does not say, before the unshifted pass.

    About 2**22 input elements per pass on a GPU, at least one sample. On the
    CPU, :func:`measure` replaces its 2**18 elements by chunks sized from the
    activations of the unshifted pass (:func:`~equivariance._memory.default_cpu_batch_size`).
    """
    budget = DEFAULT_BATCH_ELEMENTS.get(x.device.type, DEFAULT_BATCH_ELEMENTS["cuda"])
    return max(1, budget // max(1, x[0].numel()))


def measure(
    forward: Forward,
    x: torch.Tensor,
    shifts: Sequence[Shift | Transform],
    *,
    mode: str,
    stride: IntOrTuple = 1,
    output_action: OutputAction | None = None,
    boundary: Boundary = "zeros",
    margin: IntOrTuple = 0,
    batch_size: BatchSize = None,
    noise_floor: bool = True,
    progress: bool | None = None,
) -> Measurement:
    """Run every shift of every sample through the model in batched passes and sum the errors.

    This is the one engine behind :func:`equivariance_error` and
    :func:`~equivariance.check_equivariance`. ``mode`` is ``"equivariance"``
    or ``"invariance"``. With ``noise_floor``, the identity shift is sent
    through the first batch as well, to measure what the batched path alone
    contributes.

    ``batch_size="auto"`` sizes the chunks from the memory the unshifted pass
    used (:mod:`equivariance._memory`); a chunk that runs out of CUDA memory is
    halved and retried. ``progress`` shows a bar on stderr; None shows one
    for sweeps of 20 chunks or more when stderr is a terminal, outside pytest.

    ``shifts`` may hold transforms (:mod:`equivariance.transforms`) beside
    the shifts: a transform moves the input samples and the output alike,
    is compared over the whole output grid less ``margin`` (no boundary),
    and takes neither ``stride`` nor ``output_action``.
    """
    x = check_input(x, forward.model)
    boundary = check_boundary(boundary)
    d = x.dim() - 2
    if not shifts:
        raise InvalidArgument("no shifts to check; pass at least one shift")
    for shift in shifts:
        if isinstance(shift, Shift):  # first: a Shift has apply() too
            check_shift_fits(shift, x)
        elif isinstance(shift, Transform):
            check_transform_fits(shift, x, d)
        else:
            raise InvalidArgument(f"shifts must hold Shift objects or transforms, found {describe(shift)}")
    transforms = [t for t in shifts if not isinstance(t, Shift)]
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
    if transforms and (output_action is not None or strides != (1,) * d):
        raise InvalidArgument(
            f"stride= and output_action= say how shifts move the output, but {transforms[0]} is a "
            "transform, which acts alike on the input and the output; pass neither with transforms"
        )
    if equivariant and output_action is None:
        for shift in shifts:
            if isinstance(shift, Shift):
                shift / strides  # raises for a shift the stride does not divide
    auto = batch_size == "auto"
    sized_by_activations = auto or (batch_size is None and x.device.type == "cpu")
    if batch_size is None or auto:
        batch_size = default_batch_size(x)
    else:
        batch_size = as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be positive, found {batch_size}")

    n = x.shape[0]
    plan: list[Shift | Transform] = [Shift.identity(d), *shifts] if noise_floor else list(shifts)
    in_offsets = torch.tensor([_offsets(s, d) for s in plan], dtype=torch.long)
    total = len(plan) * n
    with isolated(forward.model):
        # clone: a model may hand out the same output buffer on every call
        with metered(forward.model, enabled=sized_by_activations) as meter:
            base = forward(x.clone()).clone()
        if auto:
            batch_size = auto_batch_size(x, base, meter, total)
        elif sized_by_activations:
            batch_size = default_cpu_batch_size(x, base, meter, total)
        note = (
            f" (the check sends shifted copies of x through the model in batches of up to "
            f"{batch_size} samples; if the model needs a fixed batch size, pass batch_size={n})"
            if batch_size > n
            else ""
        )
        _check_finite(base, "the unshifted input x")
        comparison = (
            _Comparison(base, plan, d, strides, margins, boundary, output_action) if equivariant else None
        )
        squares = _Squares(base)
        base_sq = squared_norms(base.reshape(len(base), -1), (1,)) if comparison is None else None
        inputs = Copies(x, plan, in_offsets, boundary)
        diff_sq = torch.zeros(total, dtype=torch.float64)
        ref_sq = torch.zeros(total, dtype=torch.float64)
        depth = comparison.depth if comparison is not None else 0
        border_diff = torch.zeros(total, depth, dtype=torch.float64)
        border_ref = torch.zeros(total, depth, dtype=torch.float64)
        bar = Progress(
            -(-total // batch_size), "equivariance sweep", enabled=_show_progress(progress, total, batch_size)
        )
        start = 0
        while start < total:
            items = torch.arange(start, min(start + batch_size, total))
            chunk = slice(start, start + len(items))
            shift_index, sample = items // n, items % n
            try:
                outputs = forward(inputs.take(sample, shift_index), note)
                what = functools.partial(_moved_inputs, plan, shift_index)  # for messages only
                _check_floating(outputs, what)
                if tuple(outputs.shape[1:]) != tuple(base.shape[1:]):
                    raise InvalidArgument(
                        f"the output for shifted inputs has shape {tuple(outputs.shape[1:])} per sample "
                        f"but {tuple(base.shape[1:])} for x; the model must map inputs of one shape to "
                        "outputs of one shape"
                    )
                if comparison is None:
                    assert base_sq is not None
                    rows = sample.to(base.device)
                    flat, reference = outputs.reshape(len(items), -1), base[rows].reshape(len(items), -1)
                    diff_rows = squares.diff(flat, reference, (1,), base_sq[rows], what)
                    diff_sq[chunk] = diff_rows.cpu().double()
                    ref_sq[chunk] = base_sq[rows].cpu().double()
                else:
                    sums = comparison.sums(outputs, shift_index, sample, squares, what)
                    diff_sq[chunk], ref_sq[chunk], border_diff[chunk], border_ref[chunk] = sums
            except torch.cuda.OutOfMemoryError:
                if len(items) == 1:
                    raise
                batch_size = len(items) // 2  # halve the chunk and retry it
                bar.total = bar.count + -(-(total - start) // batch_size)
                squares.scratch = None  # sized for the larger chunk
                release_cached_memory(x.device)
                continue
            start += len(items)
            bar.update()
        bar.close()

    k = len(plan)
    if comparison is not None:
        count, border_count = comparison.count.double(), comparison.border_count.double()
    else:
        count, border_count = torch.full((k,), float(base[0].numel()), dtype=torch.float64), None
    first = 1 if noise_floor else 0
    has_border = comparison is not None
    return Measurement(
        shifts=tuple(shifts),
        diff_sq=diff_sq.view(k, n)[first:],
        ref_sq=ref_sq.view(k, n)[first:],
        count=count[first:],
        border_diff=border_diff.view(k, n, -1)[first:] if has_border else None,
        border_ref=border_ref.view(k, n, -1)[first:] if has_border else None,
        border_count=border_count[first:] if border_count is not None else None,
        noise_diff_sq=diff_sq.view(k, n)[0] if noise_floor else None,
        noise_ref_sq=ref_sq.view(k, n)[0] if noise_floor else None,
        noise_count=count[0] if noise_floor else None,
        input_shape=tuple(x.shape),
        output_shape=tuple(base.shape),
        output_dtype=base.dtype,
        batch_size=batch_size,
    )


class _Comparison:
    """Where and against what the output of each shift is compared (equivariance).

    For shift ``k`` the compared region is a box ``[lo[k], hi[k])`` of the
    output grid: the valid region of the output shift (zeros boundary) or the
    whole grid, shrunk by the margin. A custom output action may narrow it
    further by returning a mask with its tensor. A transform in the plan is
    expected to act alike on the output, over the whole grid less the margin.
    """

    def __init__(
        self,
        base: torch.Tensor,
        plan: Sequence[Shift | Transform],
        d: int,
        strides: tuple[int, ...],
        margins: tuple[int, ...],
        boundary: Boundary,
        output_action: OutputAction | None,
    ) -> None:
        transforms = [t for t in plan if not isinstance(t, Shift)]
        if base.dim() < 2 + d:
            raise InvalidArgument(
                f"the output of shape {tuple(base.shape)} has no channel dim and {d} spatial dims "
                f"to carry a {'transform' if transforms else 'shift'} of the input's {d} spatial dims "
                "(expected (N, C, *spatial)); to "
                "test that it does not change use check_invariance, pass layer= to measure a layer "
                "with spatial output, or output=lambda y: y[:, None] to add a channel dim"
            )
        self.base = base
        self.plan = plan
        self.spatial = tuple(base.shape[base.dim() - d :])
        self.channels = math.prod(base.shape[1 : base.dim() - d])
        self.output_action = output_action
        full = tuple(slice(0, size) for size in self.spatial)
        for t in transforms:
            check_transform_fits(t, base, d, f"the output of shape {tuple(base.shape)}")
        self.windows: Copies | None = None
        self.out_offsets: torch.Tensor | None = None
        regions = [full] * len(plan)
        if output_action is None:
            out_shifts = [s / strides if isinstance(s, Shift) else s for s in plan]
            self.out_offsets = torch.tensor([_offsets(s, d) for s in out_shifts], dtype=torch.long)
            if boundary == "zeros":
                regions = [s.valid_region(self.spatial) if isinstance(s, Shift) else full for s in out_shifts]
        lo = torch.tensor([[r.start for r in region] for region in regions], dtype=torch.long)
        hi = torch.tensor([[r.stop for r in region] for region in regions], dtype=torch.long)
        self.lo, self.hi = lo + torch.tensor(margins), hi - torch.tensor(margins)
        empty = (self.hi <= self.lo).any(dim=1)
        if bool(empty.any()):
            # name a transform rather than the identity shift of the noise floor
            named = [k for k in empty.nonzero().flatten().tolist() if not isinstance(plan[k], Shift)]
            shift = plan[named[0] if named else int(empty.nonzero()[0])]
            margin_note = f" and margin {margins}" if any(margins) else ""
            if not isinstance(shift, Shift):
                raise InvalidArgument(
                    f"the output's spatial dims {self.spatial} cannot carry transform {shift}{margin_note}: "
                    "nothing of the output is left to compare; use a smaller margin, a larger input or "
                    "a layer= with larger maps"
                )
            what = f"output shift {shift / strides}" if strides != (1,) * d else f"shift {shift}"
            if output_action is not None:
                what = f"shift {shift}"
            fix = "or a smaller margin" if any(margins) else ", a larger input or a layer= with larger maps"
            raise InvalidArgument(
                f"the output's spatial dims {self.spatial} cannot carry {what}{margin_note}: "
                f"nothing of the output is left to compare; use smaller shifts {fix}".replace(" ,", ",")
            )
        self.channel_dims = tuple(range(1, base.dim() - d))
        self.ref_windows: Copies | None = None
        if self.out_offsets is not None:
            self.windows = Copies(base, plan, self.out_offsets, boundary)
            # the reference's squared norms at each position, once: a chunk gathers (or transforms) them
            self.ref_windows = Copies(
                squared_norms(base, self.channel_dims), plan, self.out_offsets, boundary
            )
        self.depth = max(1, int(((self.hi - self.lo + 1) // 2).max()))

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

    def acted(self, shift_index: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``g'.f(x)`` by the custom output action, for every item of a batch, and its mask."""
        assert self.output_action is not None
        pieces, masks = [], []
        # A Python loop over the shifts present in this batch, on outputs only:
        # a custom output action is an opaque callable of one shift.
        for k in torch.unique_consecutive(shift_index).tolist():
            rows = sample[shift_index == k].to(self.base.device)
            shift = self.plan[k]
            assert isinstance(shift, Shift)  # measure() refuses an output action with transforms
            moved, mask = self._act(self.base[rows], shift)
            pieces.append(moved)
            masks.append(mask.expand(len(rows), *self.spatial))
        return torch.cat(pieces), torch.cat(masks)

    def _act(self, outputs: torch.Tensor, shift: Shift) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.output_action is not None
        try:
            result = self.output_action(outputs, shift)
        except InvalidArgument:
            raise
        except Exception as exc:
            raise InvalidArgument(
                f"output_action raised {type(exc).__name__} for shift {shift}: {exc}"
            ) from exc
        mask: object = torch.ones(self.spatial, dtype=torch.bool, device=outputs.device)
        if isinstance(result, tuple) and len(result) == 2:
            result, mask = result
        if not isinstance(result, torch.Tensor) or result.shape != outputs.shape:
            raise InvalidArgument(
                f"output_action must return a tensor shaped like f(x) {tuple(outputs.shape)} (or a "
                f"(tensor, mask) pair), found {describe(result)}"
            )
        if (
            not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape[-len(self.spatial) :]) != self.spatial
            or mask.dim() not in (len(self.spatial), len(self.spatial) + 1)
        ):
            raise InvalidArgument(
                f"the mask returned by output_action must be a bool tensor of the output's spatial "
                f"shape {self.spatial} (or with a leading batch dim), found {describe(mask)}"
            )
        return result, mask.to(outputs.device)

    def sums(
        self,
        outputs: torch.Tensor,
        shift_index: torch.Tensor,
        sample: torch.Tensor,
        squares: _Squares,
        what: Callable[[], str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Squared norms over the compared region, in total and by distance from its edge."""
        action_mask = None
        reference: torch.Tensor | list[tuple[slice, torch.Tensor]]
        if self.windows is not None:
            assert self.ref_windows is not None
            runs = self.windows.runs(sample, shift_index)
            reference = runs if runs is not None else self.windows.take(sample, shift_index)
            ref_map = self.ref_windows.take(sample, shift_index)
        else:
            reference, action_mask = self.acted(shift_index, sample)
            ref_map = squared_norms(reference, self.channel_dims)
        device = outputs.device
        dist = _edge_distance(self.lo[shift_index].to(device), self.hi[shift_index].to(device), self.spatial)
        inside = dist >= 0
        if action_mask is not None:
            inside &= action_mask
        ref_map = torch.where(inside, ref_map, ref_map.new_zeros(())).flatten(1)
        ref_rows = ref_map.sum(1)
        diff_map = squares.diff(outputs, reference, self.channel_dims, ref_rows, what)
        diff_map = torch.where(inside, diff_map, diff_map.new_zeros(())).flatten(1)
        bucket = dist.clamp(0, self.depth - 1).flatten(1)
        border_diff = diff_map.new_zeros(len(diff_map), self.depth).scatter_add_(1, bucket, diff_map)
        border_ref = ref_map.new_zeros(len(ref_map), self.depth).scatter_add_(1, bucket, ref_map)
        return (
            diff_map.sum(1).cpu().double(),
            ref_rows.cpu().double(),
            border_diff.cpu().double(),
            border_ref.cpu().double(),
        )


def _edge_distance(lo: torch.Tensor, hi: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """For boxes ``[lo[b], hi[b])``: each position's distance to the box's edge, negative outside."""
    d = len(spatial)
    dist: torch.Tensor | None = None
    for i, size in enumerate(spatial):
        view = [lo.shape[0]] + [1] * d
        view[1 + i] = size
        ar = torch.arange(size, device=lo.device)
        edge = torch.minimum(ar - lo[:, i : i + 1], hi[:, i : i + 1] - 1 - ar).view(view)
        dist = edge if dist is None else torch.minimum(dist, edge)
    assert dist is not None
    return dist


def _check_floating(tensor: torch.Tensor, what: Callable[[], str]) -> None:
    if not tensor.dtype.is_floating_point:
        raise InvalidArgument(
            f"the output for {what()} has dtype {tensor.dtype}; equivariance errors need a "
            "floating-point output"
        )


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    _check_floating(tensor, lambda: what)
    # one summing pass finds any nan or inf (they propagate); the exact test runs only if it
    # fires, which a finite tensor whose sum overflows also does
    if bool(torch.isfinite(tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32)))):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).reshape(len(tensor), -1).any(1).sum())
        raise InvalidArgument(
            f"the model's output is not finite (nan or inf) for {bad} of {len(tensor)} samples of "
            f"{what}; the error of a non-finite output is meaningless. Look for overflow (half "
            "precision?), a log or division by zero, or non-finite weights"
        )


def _show_progress(progress: bool | None, total: int, batch_size: int) -> bool:
    if progress is not None:
        return progress
    return total >= 20 * batch_size and sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ


def _offsets(element: Shift | Transform, d: int) -> tuple[int, ...]:
    """A shift's offsets; zeros for a transform, which is applied, not gathered."""
    return element.offsets if isinstance(element, Shift) else (0,) * d


def _moved_inputs(plan: Sequence[Shift | Transform], shift_index: torch.Tensor) -> str:
    """The inputs of a chunk in words: ``shifted inputs (shift (1, 0))``."""
    present = [plan[k] for k in torch.unique(shift_index).tolist()]
    shifts = [str(p) for p in present if isinstance(p, Shift)]
    transforms = [str(p) for p in present if not isinstance(p, Shift)]
    parts = [_listed("shift", shifts)] if shifts else []
    parts += [_listed("transform", transforms)] if transforms else []
    moved = "shifted and transformed" if shifts and transforms else "shifted" if shifts else "transformed"
    return f"{moved} inputs ({', '.join(parts)})"


def _listed(noun: str, names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{noun} {shown}" if len(names) == 1 else f"{noun}s {shown}"
