"""Default tolerances of the checks, keyed by dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from equivariance._engine.validation import as_float

FLOOR_FACTOR = 10.0
"""An error within this many times its own noise floor (the check's own rounding) passes."""

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "default_tolerance", "resolve_tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """The thresholds a check applies, and where they came from.

    Attributes:
        rtol: largest relative error that passes.
        atol: largest RMS absolute error that passes where the reference is zero.
        source: ``"float32 default"``, ``"caller"``, or a mix such as ``"rtol from caller, atol float32
            default"``.
    """

    rtol: float
    atol: float
    source: str


DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.bfloat16: (1e-1, 1e-2),
    torch.float16: (3e-2, 1e-3),
}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The default tolerance for ``dtype``.

    Examples:
        >>> default_tolerance(torch.float64)
        Tolerance(rtol=1e-10, atol=1e-12, source='float64 default')
    """
    rtol, atol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.float32])
    return Tolerance(rtol, atol, f"{_name(dtype)} default")


def resolve_tolerance(dtype: torch.dtype, rtol: object = None, atol: object = None) -> Tolerance:
    """The caller's ``rtol``/``atol`` where given, the dtype's defaults elsewhere.

    Examples:
        >>> resolve_tolerance(torch.float32, rtol=1e-3)
        Tolerance(rtol=0.001, atol=1e-06, source='rtol from caller, atol float32 default')
    """
    default = default_tolerance(dtype)
    given_rtol = as_float(rtol, "rtol", allow_none=True)
    given_atol = as_float(atol, "atol", allow_none=True)
    if given_rtol is None and given_atol is None:
        return default
    if given_rtol is not None and given_atol is not None:
        return Tolerance(given_rtol, given_atol, "caller")
    if given_rtol is not None:
        return Tolerance(given_rtol, default.atol, f"rtol from caller, atol {default.source}")
    assert given_atol is not None
    return Tolerance(default.rtol, given_atol, f"atol from caller, rtol {default.source}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
