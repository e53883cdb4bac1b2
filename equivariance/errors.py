"""The exceptions and warnings the library raises.

Two failures are kept apart on purpose: [`InvalidArgument`][equivariance.errors.InvalidArgument] means the
check could not be run as asked (a usage error, fixed by changing the call), while
[`EquivarianceError`][equivariance.errors.EquivarianceError] means it ran and the model failed it.
"""

from __future__ import annotations

__all__ = ["EquivarianceError", "EquivarianceWarning", "InvalidArgument", "VacuousCheckError"]


class InvalidArgument(ValueError):
    """A call the library cannot carry out as written.

    The message says what was expected, what was found and how to fix it.

    Examples:
        >>> from equivariance import Shift
        >>> Shift(1.5)
        Traceback (most recent call last):
        ...
        equivariance.errors.InvalidArgument: shift offsets must be integers, found 1.5 (float) in (1.5,); ...
    """


class EquivarianceError(AssertionError):
    """A model failed an equivariance or invariance check.

    Raised by [`assert_equivariant`][equivariance.assert_equivariant] and
    [`assert_invariant`][equivariance.assert_invariant]. It subclasses ``AssertionError`` so test runners
    report it as a failed assertion; the failing [`EquivarianceReport`][equivariance.EquivarianceReport] is
    kept as ``.report``.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class VacuousCheckError(EquivarianceError):
    """A check that could not have failed (``report.vacuous``): an output that does not move, or does
    not respond to its input.

    Raised by ``assert_equivariant``, ``assert_invariant`` and the pytest fixtures unless they are given
    ``allow_vacuous=True``: a check that asserted nothing is not a passing test. A subclass of
    [`EquivarianceError`][equivariance.EquivarianceError], so ``pytest.raises(EquivarianceError)`` catches it
    too.
    """


class EquivarianceWarning(UserWarning):
    """Something about a measurement the caller should know, such as errors
    that had to be measured as absolute because the reference was zero."""
