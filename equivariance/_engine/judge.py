"""The rules that turn outputs into verdicts, each written once: how a squared norm is summed, the
error of a sample, pass or fail, and the margin that passes.

Every measurement reads them from here (the loss squares the error). The precision rule and its
limits are in docs/tolerances.md ("How errors are summed").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from equivariance.tolerances import FLOOR_FACTOR, Tolerance, default_tolerance

KEEP_FRACTION = 0.25
"""The share of the compared positions a suggested margin must keep."""

# float64 samples whose largest magnitude lies in this range square exactly; others are scaled first
_FLOAT64_SAFE = (2.0**-450, 2.0**450)
# float32 sums of squares from here up lose nothing to squares that underflow (each under 2**-149, so
# at most a relative n * 2**-49 of the sum); below it, or infinite, they are summed again in float64
_FLOAT32_SAFE = 2.0**-100


@dataclass(frozen=True)
class Sums:
    """What an error sink measured, on the CPU in float64.

    ``diff_sq[k, n]`` and ``ref_sq[k, n]`` are the squared norms of
    ``f(g_k.x_n) - g'_k.f(x_n)`` and of ``g'_k.f(x_n)`` over the compared
    region of row ``k``, which holds ``count[k]`` elements. ``border_*``
    split the same sums by the distance of a position to the region's edge
    (equivariance only), so a larger margin can be judged without running
    the model again. ``scale[k, n]`` is the power of two the operands were
    multiplied by (None: 1).
    """

    diff_sq: torch.Tensor
    ref_sq: torch.Tensor
    count: torch.Tensor
    border_diff: torch.Tensor | None = None
    border_ref: torch.Tensor | None = None
    border_count: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def rows(self, keep: slice) -> Sums:
        """The sums of some rows only (e.g. without the noise floor's)."""
        return Sums(
            self.diff_sq[keep], self.ref_sq[keep], self.count[keep], _pick(self.border_diff, keep),
            _pick(self.border_ref, keep), _pick(self.border_count, keep), _pick(self.scale, keep),
        )  # fmt: skip


def _pick(tensor: torch.Tensor | None, keep: slice) -> torch.Tensor | None:
    return None if tensor is None else tensor[keep]


# -- the precision rule ---------------------------------------------------------------------------


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype squares are summed and errors returned in: float64 (float32 on MPS, which lacks it)."""
    return torch.float32 if device.type == "mps" else torch.float64


def squared_norms(tensor: torch.Tensor, dims: int | tuple[int, ...]) -> torch.Tensor:
    """``sum(tensor ** 2)`` over ``dims``, returned in float64, right at every finite scale.

    A float32 tensor is summed in float32 (one fast pass: float64 sums of a
    float32 tensor convert it element by element, several times slower on the
    CPU), which is right to float32's rounding wherever the sum lies in
    ``[2**-100, inf)``; a sum outside it (an overflow, or squares that may
    have underflowed) is summed again from the same tensor in float64, where
    float32 values square exactly, unless the tensor is all zeros there.
    Other dtypes are summed in float64; a float64 tensor must already be in
    the range where its squares are exact (see
    [`sample_scale`][equivariance._engine.judge.sample_scale]).

    Examples:
        >>> tiny = torch.tensor([[1e-30, 0.0]])   # its square underflows in float32
        >>> squared_norms(tiny, 1).item() > 0
        True
        >>> huge = torch.tensor([[3.0, 4.0]]) * 2.0**100   # its squares overflow in float32
        >>> squared_norms(huge, 1).item() == 25 * 2.0**200
        True
    """
    return squared_norms_finite(tensor, dims)[0]


def squared_norms_finite(tensor: torch.Tensor, dims: int | tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """[`squared_norms`][equivariance._engine.judge.squared_norms], and True where its reduction
    already showed every sum finite (False: not known; a caller that refuses nan or inf tests then)."""
    accumulate = accumulation_dtype(tensor.device)
    if tensor.dtype != torch.float32 or accumulate == torch.float32:
        return tensor.to(accumulate).square().sum(dims), False
    return float32_sums_finite(torch.mul(tensor, tensor).sum(dims), lambda: tensor, dims)


def float32_sums(
    sums: torch.Tensor, tensor: Callable[[], torch.Tensor], dims: int | tuple[int, ...]
) -> torch.Tensor:
    """Float32 sums of a float32 tensor's squares over ``dims``, in float64, by
    [`squared_norms`][equivariance._engine.judge.squared_norms]' rule: summed again in float64 from
    ``tensor()`` (called only then) where a sum is doubtful and the tensor is not all zeros there.
    Sums of another dtype are returned in float64 as they are.
    """
    return float32_sums_finite(sums, tensor, dims)[0]


def float32_sums_finite(
    sums: torch.Tensor, tensor: Callable[[], torch.Tensor], dims: int | tuple[int, ...]
) -> tuple[torch.Tensor, bool]:
    """[`float32_sums`][equivariance._engine.judge.float32_sums], and True where the reduction that
    chose its fast path showed every sum finite (a nan makes both bounds nan; False: not known)."""
    if sums.dtype != torch.float32 or sums.numel() == 0:
        return sums.to(torch.float64), sums.numel() == 0
    low, high = (float(bound) for bound in torch.aminmax(sums))  # the common case in one reduction
    if low >= _FLOAT32_SAFE and high < math.inf:
        return sums.to(torch.float64), True
    values = tensor()
    if high == 0 and all_zeros(values):  # every sum zero: exact (an exact layer), unless squares underflowed
        return sums.to(torch.float64), True
    sums = sums.to(torch.float64)
    doubtful = ~(sums >= _FLOAT32_SAFE) | sums.isinf()  # nan is doubtful too, and stays nan
    again = doubtful & ((values.amax(dims) != 0) | (values.amin(dims) != 0))  # two fast reductions
    if bool(again.any()):
        sums = torch.where(again, values.to(torch.float64).square().sum(dims), sums)
    return sums, False


def all_zeros(tensor: torch.Tensor) -> bool:
    """Whether every element is zero: one reduction, read in memory order (a permuted view would be
    copied first)."""
    if tensor.numel() == 0:
        return True
    strides = tensor.stride()
    low, high = torch.aminmax(tensor.permute(sorted(range(tensor.dim()), key=lambda k: -strides[k])))
    return float(low) == 0 and float(high) == 0


def sample_scale(tensor: torch.Tensor) -> torch.Tensor | None:
    """A power of two per sample (dim 0) that brings a float64 tensor's largest magnitude into
    ``[0.5, 1)``; None where no sample needs one (every sample in the exact range, or not float64).

    An all-zero sample gets 1. A subnormal peak gets ``2**1022``, the largest
    power of two float64 holds, which brings it above ``2**-52``.

    Examples:
        >>> sample_scale(torch.tensor([[1e300], [3.0], [0.0]], dtype=torch.float64)).log2().tolist()
        [-997.0, -2.0, 0.0]
        >>> sample_scale(torch.tensor([[3.0]])) is None   # float32 squares exactly in float64
        True
    """
    if tensor.dtype != torch.float64 or tensor.numel() == 0:
        return None
    peak = tensor.detach().abs().reshape(len(tensor), -1).amax(dim=1)
    low, high = _FLOAT64_SAFE
    if not bool(((peak > 0) & ((peak < low) | (peak > high))).any()):
        return None
    _, exponent = torch.frexp(peak)
    one = torch.ones_like(peak)
    return torch.where(peak > 0, torch.ldexp(one, -exponent.clamp_min(-1022)), one)


def scaled(tensor: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Each sample (dim 0) of ``tensor`` times its power of two (``scale`` None: the tensor itself)."""
    if scale is None:
        return tensor
    factor = scale.to(device=tensor.device, dtype=tensor.dtype)
    return tensor * factor.reshape(-1, *([1] * (tensor.dim() - 1)))


# -- the error of a sample --------------------------------------------------------------------------


def squared_errors(diff_sq: torch.Tensor, ref_sq: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """The rule, squared: ``diff_sq / ref_sq`` (relative) where the reference is nonzero, else
    ``diff_sq / count`` (the mean square of the difference, ``count`` elements).

    Differentiable (the loss penalises it); ``count`` broadcasts against the
    leading dims of ``diff_sq``.

    Examples:
        >>> squared_errors(torch.tensor([1.0, 4.0]), torch.tensor([4.0, 0.0]), 4.0).tolist()
        [0.25, 1.0]
    """
    count = torch.as_tensor(count, dtype=diff_sq.dtype, device=diff_sq.device).clamp_min(1)
    while count.dim() < diff_sq.dim():
        count = count.unsqueeze(-1)
    absolute = ref_sq == 0
    return diff_sq / torch.where(absolute, count, ref_sq)


def sample_errors(
    diff_sq: torch.Tensor,
    ref_sq: torch.Tensor,
    count: torch.Tensor | float,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample errors and a mask of the samples measured as absolute errors.

    The error is ``sqrt(diff_sq / ref_sq)`` (relative L2) where the reference
    is nonzero, else ``sqrt(diff_sq / count)`` (RMS absolute error): the
    square root of [`squared_errors`][equivariance._engine.judge.squared_errors].
    ``scale`` is the power of two the operands were multiplied by before
    squaring, which a relative error does not see and an absolute one
    divides out.

    Examples:
        >>> errors, absolute = sample_errors(torch.tensor([1.0, 4.0]), torch.tensor([4.0, 0.0]),
        ...                                  torch.tensor(4.0))
        >>> errors.tolist(), absolute.tolist()
        ([0.5, 1.0], [False, True])
    """
    absolute = ref_sq == 0
    errors = squared_errors(diff_sq, ref_sq, count).sqrt()
    if scale is not None:
        factor = scale.reshape(scale.shape + (1,) * (errors.dim() - scale.dim())).to(errors.dtype)
        errors = torch.where(absolute, errors / factor, errors)
    return errors, absolute


def relative_sizes(difference: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[`sample_errors`][equivariance._engine.judge.sample_errors] of whole samples (dim 0):
    ``||difference|| / ||reference||``, or the RMS of ``difference`` where the reference is all zero.

    Float64 samples are scaled by the reference's power of two (the
    difference's own where the reference is all zero) before squaring.

    Examples:
        >>> errors, absolute = relative_sizes(torch.tensor([[3.0, 4.0], [1.0, 1.0]]),
        ...                                   torch.tensor([[0.0, 10.0], [0.0, 0.0]]))
        >>> errors.tolist(), absolute.tolist()
        ([0.5, 1.0], [False, True])
    """
    difference = difference.detach().reshape(len(difference), -1)
    reference = reference.detach().reshape(len(reference), -1)
    scale = sample_scale(reference)
    ref_sq = squared_norms(scaled(reference, scale), 1)
    own = sample_scale(difference) if bool((ref_sq == 0).any()) else None
    if own is not None:  # an all-zero reference: the difference is measured on its own scale
        scale = torch.where(ref_sq == 0, own, torch.ones_like(own) if scale is None else scale)
    diff_sq = squared_norms(scaled(difference, scale), 1)
    return sample_errors(diff_sq, ref_sq, float(difference.shape[1]), scale)


def within(errors: torch.Tensor, absolute: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Which errors pass: relative ones at most ``rtol``, absolute ones at most ``atol``."""
    return torch.where(absolute, errors <= tolerance.atol, errors <= tolerance.rtol)


def credited_floor(floor: float, dtype: torch.dtype) -> float:
    """The noise floor an output's errors may be judged against: ``floor`` where rounding can explain it
    (at most the default ``rtol`` of ``dtype``, the least precise of the call's), else 0. A floor above
    that is no rounding: the output depends on the batch it is computed in, and an error it reaches
    fails as any other.

    Examples:
        >>> credited_floor(3e-7, torch.float32), credited_floor(0.9, torch.float32)
        (3e-07, 0.0)
    """
    return floor if floor <= default_tolerance(dtype).rtol else 0.0


def within_floor(
    errors: torch.Tensor, absolute: torch.Tensor, tolerance: Tolerance, floor: float
) -> torch.Tensor:
    """``within``, or a relative error at most ``FLOOR_FACTOR`` times ``floor``: what the check's own
    rounding measures (the identity through the batched path, and an input moved there and back by an
    element that rounds, ``g⁻¹(g x)``). An error that rounding alone reaches tells nothing of the
    model's symmetry, so a float32 model is not failed for the rounding of a rotated input."""
    return within(errors, absolute, tolerance) | (~absolute & (errors <= FLOOR_FACTOR * floor))


# -- the margin rule --------------------------------------------------------------------------------


def margin_that_passes(
    border_diff: torch.Tensor,
    border_ref: torch.Tensor,
    border_count: torch.Tensor,
    tolerance: Tolerance,
    scale: torch.Tensor | None = None,
    keep: float = KEEP_FRACTION,
) -> int | None:
    """The smallest ``r >= 1`` such that dropping ``r`` more samples at every edge passes every sample.

    ``border_*[k, n, r]`` are sums over the positions at distance ``r`` from
    the edge of row ``k``'s compared region (``border_count[k, r]``
    positions). None when no margin that keeps at least ``keep`` (default
    ``KEEP_FRACTION``) of every row's region, and some of it, makes every
    sample pass.
    """
    diff = border_diff.flip(-1).cumsum(-1).flip(-1)  # sums over distance >= r
    ref = border_ref.flip(-1).cumsum(-1).flip(-1)
    count = border_count.flip(-1).cumsum(-1).flip(-1)
    # every distance at once: the rows' counts (K, R) broadcast over the samples of diff (K, N, R)
    keeps = ((count >= keep * count[:, :1]) & (count > 0)).all(dim=0).tolist()
    errors, absolute = sample_errors(diff, ref, count.unsqueeze(1), scale)
    passes = within(errors, absolute, tolerance).flatten(0, -2).all(dim=0).tolist()
    return first_margin(keeps, passes)


def margins_that_pass(
    sums: Sequence[Sums], tolerance: Tolerance, keep: float = KEEP_FRACTION
) -> list[int | None]:
    """``margin_that_passes`` for each of several one-row sums (the profile's layers), computed together.

    Each layer's sums by distance are padded with zeros to the deepest
    layer's: a padded distance has no positions, so no margin reaches it.
    """
    if not sums:
        return []
    # (layers, distance, samples), zeros beyond a layer's own depth; then sums over distance >= r
    diff = pad_sequence([s.border_diff[0].T for s in sums], batch_first=True)  # type: ignore[index]
    ref = pad_sequence([s.border_ref[0].T for s in sums], batch_first=True)  # type: ignore[index]
    count = pad_sequence([s.border_count[0] for s in sums], batch_first=True)  # type: ignore[index]
    diff, ref, count = (t.flip(1).cumsum(1).flip(1) for t in (diff, ref, count))
    scale = None
    if any(s.scale is not None for s in sums):
        scale = torch.cat(
            [torch.ones_like(s.diff_sq) if s.scale is None else s.scale for s in sums]
        ).unsqueeze(1)
    return margins_beyond(diff, ref, count, [False] * len(sums), tolerance, scale, keep)


def margins_beyond(
    diff: torch.Tensor,
    ref: torch.Tensor,
    count: torch.Tensor,
    passed: Sequence[bool],
    tolerance: Tolerance,
    scale: torch.Tensor | None = None,
    keep: float = KEEP_FRACTION,
) -> list[int | None]:
    """The margin rule for several layers at once, from their sums over distance ``r`` or more:
    ``diff`` and ``ref`` ``(L, R, N)``, ``count`` ``(L, R)`` elements. None for a layer that passed."""
    keeps = ((count >= keep * count[:, :1]) & (count > 0)).tolist()
    errors, absolute = sample_errors(diff, ref, count.unsqueeze(-1), scale)
    passes = within(errors, absolute, tolerance).all(dim=-1).tolist()
    return [None if ok else first_margin(k, p) for ok, k, p in zip(passed, keeps, passes)]


def first_margin(keeps: list[bool], passes: list[bool]) -> int | None:
    """The first distance ``r >= 1`` at which every sample passes, unless the margin stops keeping
    enough of the region first."""
    for r in range(1, len(keeps)):
        if not keeps[r]:
            return None
        if passes[r]:
            return r
    return None
