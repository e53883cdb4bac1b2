"""Test, measure and explain the translation equivariance of PyTorch models.

Examples:
    >>> import torch
    >>> from equivariance import check_equivariance
    >>> conv = torch.nn.Conv2d(1, 8, 5)
    >>> check_equivariance(conv, torch.randn(4, 1, 32, 32), max_shift=3).passed
    True
"""

from equivariance.audit import AuditResult, audit
from equivariance.check import assert_equivariant, assert_invariant, check_equivariance, check_invariance
from equivariance.crops import Crop
from equivariance.errors import EquivarianceError, EquivarianceWarning, InvalidArgument, VacuousCheckError
from equivariance.lie import lie_derivative_error, profile_lie_derivative
from equivariance.loss import equivariance_loss
from equivariance.metric import equivariance_error, invariance_error
from equivariance.profile import EquivarianceProfile, LayerProfile, profile_equivariance
from equivariance.regular import regular
from equivariance.report import EquivarianceReport, ShiftResult
from equivariance.shifts import Shift, apply_shifts, circular_group, multiples_of, shifts_in_box
from equivariance.transforms import Flip, Rot90, Transpose

__version__ = "0.2.0.dev0"

__all__ = [
    "AuditResult",
    "Crop",
    "EquivarianceError",
    "EquivarianceReport",
    "EquivarianceProfile",
    "EquivarianceWarning",
    "Flip",
    "InvalidArgument",
    "LayerProfile",
    "Rot90",
    "Shift",
    "ShiftResult",
    "Transpose",
    "VacuousCheckError",
    "__version__",
    "apply_shifts",
    "assert_equivariant",
    "assert_invariant",
    "audit",
    "check_equivariance",
    "check_invariance",
    "circular_group",
    "equivariance_error",
    "invariance_error",
    "multiples_of",
    "profile_equivariance",
    "regular",
    "shifts_in_box",
    "equivariance_loss",
    "lie_derivative_error",
    "profile_lie_derivative",
]
