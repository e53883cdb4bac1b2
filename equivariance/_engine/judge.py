"""The rules that turn sums into verdicts: the error of a sample, the pass/fail rule, the margin rule.

One home for each, shared by the checks, the metric, the profile, the hints
and the audit:

- ``sample_errors``: the relative L2 error of a sample, or its RMS
  absolute error where the reference is exactly zero;
- ``within``: relative errors pass at ``rtol``, absolute ones at ``atol``;
- ``margin_that_passes``: the smallest extra margin with which every
  sample passes, read off the error split by distance to the compared
  region's edge, as long as the margin keeps a quarter of the region (a
  margin that leaves almost nothing to compare proves nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from equivariance._engine.sinks import Sums
from equivariance.tolerances import Tolerance

KEEP_FRACTION = 0.25
"""The share of the compared positions a suggested margin must keep."""
FLOOR_FACTOR = 10.0
"""An output part whose relative error is within this many times its noise floor passes (see
``within_floor``)."""


def sample_errors(
    diff_sq: torch.Tensor, ref_sq: torch.Tensor, count: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample errors and a mask of the samples measured as absolute errors.

    The error is ``sqrt(diff_sq / ref_sq)`` (relative L2) where the reference
    is nonzero, else ``sqrt(diff_sq / count)`` (RMS absolute error).
    ``count`` broadcasts against the leading dims of ``diff_sq``. ``scale``
    is the factor the sums' operands were multiplied by before squaring (for
    float64 outputs beyond the range where squares are exact), which a
    relative error does not see and an absolute one divides out.

    Examples:
        >>> errors, absolute = sample_errors(torch.tensor([1.0, 4.0]), torch.tensor([4.0, 0.0]),
        ...                                  torch.tensor(4.0))
        >>> errors.tolist(), absolute.tolist()
        ([0.5, 1.0], [False, True])
    """
    absolute = ref_sq == 0
    count = count.to(diff_sq.dtype).clamp_min(1)
    while count.dim() < diff_sq.dim():
        count = count.unsqueeze(-1)
    relative = diff_sq / torch.where(absolute, torch.ones_like(ref_sq), ref_sq)
    rms = (diff_sq / count).sqrt()
    if scale is not None:
        rms = rms / scale.reshape(scale.shape + (1,) * (rms.dim() - scale.dim()))
    return torch.where(absolute, rms, relative.sqrt()), absolute


def within(errors: torch.Tensor, absolute: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Which errors pass: relative ones against ``rtol``, absolute ones against ``atol``."""
    return torch.where(absolute, errors <= tolerance.atol, errors <= tolerance.rtol)


def within_floor(
    errors: torch.Tensor, absolute: torch.Tensor, tolerance: Tolerance, floor: float
) -> torch.Tensor:
    """``within``, or a relative error at most ``FLOOR_FACTOR`` times ``floor``: what the check's own
    rounding measures (the identity through the batched path, and an input moved there and back by an
    element that rounds, ``g⁻¹(g x)``). An error that rounding alone reaches tells nothing of the
    model's symmetry, so a float32 model is not failed for the rounding of a rotated input."""
    return within(errors, absolute, tolerance) | (~absolute & (errors <= FLOOR_FACTOR * floor))


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
