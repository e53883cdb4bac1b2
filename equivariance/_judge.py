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

import torch

from equivariance.tolerances import Tolerance

KEEP_FRACTION = 0.25
"""The share of the compared positions a suggested margin must keep."""


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


def margin_that_passes(
    border_diff: torch.Tensor,
    border_ref: torch.Tensor,
    border_count: torch.Tensor,
    tolerance: Tolerance,
    scale: torch.Tensor | None = None,
) -> int | None:
    """The smallest ``r >= 1`` such that dropping ``r`` more samples at every edge passes every sample.

    ``border_*[k, n, r]`` are sums over the positions at distance ``r`` from
    the edge of row ``k``'s compared region (``border_count[k, r]``
    positions). None when no margin that keeps at least
    ``KEEP_FRACTION`` of every row's region makes every sample pass.
    """
    diff = border_diff.flip(-1).cumsum(-1).flip(-1)  # sums over distance >= r
    ref = border_ref.flip(-1).cumsum(-1).flip(-1)
    count = border_count.flip(-1).cumsum(-1).flip(-1)
    # every distance at once: the rows' counts (K, R) broadcast over the samples of diff (K, N, R)
    keeps = ((count >= KEEP_FRACTION * count[:, :1]) & (count > 0)).all(dim=0).tolist()
    errors, absolute = sample_errors(diff, ref, count.unsqueeze(1), scale)
    passes = within(errors, absolute, tolerance).flatten(0, -2).all(dim=0).tolist()
    for r in range(1, diff.shape[-1]):
        if not keeps[r]:
            return None
        if passes[r]:
            return r
    return None
