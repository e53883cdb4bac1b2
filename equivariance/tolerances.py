"""Default tolerances of the checks, keyed by dtype.

A check passes a sample when its relative error is at most ``rtol`` or,
where the reference output is exactly zero, when its RMS absolute error is at
most ``atol``. An exactly equivariant model still shows rounding error,
because a shifted input changes the order of summation inside convolution
kernels and batched passes pick other kernels than a single pass. The
defaults sit well above that noise and far below the error of anything that
is not equivariant (order 1 for a dense layer, order 1e-2 for a one-pixel
aliasing error).

They were set from measurements (``python benchmarks/tolerances.py``, 30
random convolution stacks: 1-D to 3-D, depth 1 to 6, up to 64 channels,
kernel sizes 1 to 7, valid or circular padding). On the CPU the equivariance
error of these exactly equivariant models is zero or at the level of one
rounding (its kernels sum every output position in the same order), so the
tolerance has to absorb what other kernels may do: a GPU, another batch
size or another algorithm sums in another order, and two such orders differ
by up to about twice a model's rounding error against float64:

| dtype    | error seen on CPU | rounding vs float64 | default rtol |
| -------- | ----------------- | ------------------- | ------------ |
| float64  | 1e-16             | (reference)         | 1e-10        |
| float32  | 0                 | 1e-6                | 1e-4         |
| bfloat16 | 0                 | 9e-3                | 1e-1         |
| float16  | 0                 | 5e-3                | 3e-2         |

float32 and float64 get about a hundred times their rounding error; the half
types, whose rounding error is within two orders of magnitude of real
equivariance failures, get three to ten times theirs. Even the loosest
default (bfloat16) is ten times below the error of a dense layer (order 1).

Every default can be overridden per call (``rtol=``, ``atol=``), and the
report says which tolerance was used and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from equivariance._engine.validation import as_float

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "default_tolerance", "resolve_tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """The thresholds a check applies, and where they came from.

    Attributes:
        rtol: largest relative error that passes.
        atol: largest RMS absolute error that passes where the reference is zero.
        source: ``"float32 default"``, ``"caller"``, or a mix such as
            ``"rtol from caller, atol float32 default"``.
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
