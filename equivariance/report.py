"""The result of a check: per-shift errors, the verdict, and how it was reached.

A check of ``transforms=`` (rotations, flips) has one row per transform and
says so: it counts *transforms*, names the worst one, and lists them under a
``transform`` column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from equivariance.shifts import Shift
from equivariance.transforms import Transform

__all__ = ["EquivarianceReport", "ShiftResult"]

_ROWS = 8  # shifts listed in str(report); the rest are summarised in one line


@dataclass(frozen=True)
class ShiftResult:
    """The outcome for one shift, over the whole batch.

    Attributes:
        shift: the input shift, or the transform (``Rot90``, ``Flip``) when
            the check was given ``transforms=``.
        error: the worst error over the batch: relative, or RMS absolute
            where ``absolute`` is set.
        passed: whether every sample was within tolerance.
        absolute: whether the worst sample's reference output was all zero,
            making its error an absolute one.
    """

    shift: Shift | Transform
    error: float
    passed: bool
    absolute: bool = False


@dataclass(frozen=True)
class EquivarianceReport:
    """What a check measured, and its verdict.

    ``str(report)`` is a compact table, worst shifts (or transforms) first;
    :meth:`to_dict` is JSON-serializable. Made by
    :func:`~equivariance.check_equivariance` and
    :func:`~equivariance.check_invariance`; never needs to be built by hand.

    Attributes:
        kind: ``"equivariance"`` or ``"invariance"``.
        subject: what was measured, e.g. ``"LeNet.conv4"``.
        results: one :class:`ShiftResult` per shift (or transform), in the order checked.
        rtol: relative tolerance used.
        atol: absolute (RMS) tolerance used where the reference is zero.
        tolerance_source: where the tolerance came from, e.g. ``"float32 default"``.
        noise_floor: the error of the identity shift sent through the same
            batched path: what the numerics alone contribute.
        zero_reference: how many (shift, sample) pairs had an all-zero
            reference and were measured as absolute errors.
        input_shape: shape of ``x``.
        output_shape: shape of the measured output for ``x``.
        dtype: dtype of ``x``, e.g. ``"float32"``.
        device: device of ``x``, e.g. ``"cpu"``.
        boundary: ``"zeros"`` or ``"circular"``; for transforms, which map the
            grid onto itself, ``"none (the transforms map the grid onto itself)"``.
        output_action: how the output was expected to move: ``"shift"``,
            ``"shift / 2"``, ``"the same transform"``, ``"none (invariance)"``
            or a callable's name.
        margin: samples dropped at each edge of the compared region, per dim.
        batch_size: samples per forward pass.
        hints: likely causes of a failure, with fixes, when recognisable.
        inferred: how ``stride="auto"`` and ``margin="auto"`` were resolved,
            one sentence each.
    """

    kind: str
    subject: str
    results: tuple[ShiftResult, ...]
    rtol: float
    atol: float
    tolerance_source: str
    noise_floor: float
    zero_reference: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dtype: str
    device: str
    boundary: str
    output_action: str
    margin: tuple[int, ...]
    batch_size: int
    hints: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether every shift passed."""
        return all(r.passed for r in self.results)

    @property
    def shifts(self) -> tuple[Shift | Transform, ...]:
        """The shifts (or transforms) checked, in order."""
        return tuple(r.shift for r in self.results)

    @property
    def errors(self) -> tuple[float, ...]:
        """The worst error over the batch, for each shift (or transform) in order."""
        return tuple(r.error for r in self.results)

    @property
    def max_error(self) -> float:
        """The largest error over all shifts and samples."""
        return float(max(self.errors))

    @property
    def mean_error(self) -> float:
        """The mean over shifts of the per-shift (worst-sample) errors."""
        return float(sum(self.errors) / len(self.errors))

    @property
    def worst_shift(self) -> Shift | Transform:
        """The shift (or transform) with the largest error."""
        return max(self.results, key=lambda r: r.error).shift

    @property
    def failures(self) -> tuple[ShiftResult, ...]:
        """The shifts (or transforms) that failed, worst first."""
        return tuple(sorted((r for r in self.results if not r.passed), key=lambda r: -r.error))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field, plus the verdict and summary numbers."""
        data = dataclasses.asdict(self)
        data["results"] = [
            {"shift": _jsonable(r.shift), "error": r.error, "passed": r.passed, "absolute": r.absolute}
            for r in self.results
        ]
        for key in ("input_shape", "output_shape", "margin", "hints", "inferred"):
            data[key] = list(data[key])
        worst = self.worst_shift
        data.update(
            passed=self.passed,
            max_error=self.max_error,
            mean_error=self.mean_error,
            worst_shift=_jsonable(worst),
            failed=len(self.failures),
        )
        return data

    def summary(self) -> str:
        """One line: the verdict, what was measured, and the worst error against the tolerance."""
        verdict = "PASSED" if self.passed else "FAILED"
        failed = f", {len(self.failures)} failed" if not self.passed else ""
        noun = self._noun()
        return (
            f"{self.kind} check {verdict}: {self.subject}, {_count(len(self.results), noun)}{failed}; "
            f"max error {self.max_error:.2e} at {noun} {self.worst_shift} "
            f"(rtol {self.rtol:.0e}, {self.dtype})"
        )

    def _noun(self) -> str:
        return "shift" if all(isinstance(r.shift, Shift) for r in self.results) else "transform"

    def __str__(self) -> str:
        lines = [self.summary()]
        margin = f", margin {self.margin}" if any(self.margin) else ""
        lines.append(
            f"  input {self.input_shape} {self.dtype} on {self.device} -> output "
            f"{self.output_shape}; boundary {self.boundary}, output action {self.output_action}{margin}"
        )
        lines.append(
            f"  tolerance rtol={self.rtol:.0e}, atol={self.atol:.0e} ({self.tolerance_source}); "
            f"noise floor {self.noise_floor:.1e}; mean error {self.mean_error:.2e}"
        )
        lines.extend(f"  inferred: {note}" for note in self.inferred)
        if self.zero_reference:
            lines.append(
                f"  {self.zero_reference} shifted samples had an all-zero reference output (dead "
                "features); their error is the RMS absolute error, compared to atol"
            )
        ordered = sorted(self.results, key=lambda r: -r.error)
        width = max(len(str(r.shift)) for r in ordered[:_ROWS])
        noun = self._noun()
        width = max(width, len(noun))
        lines.append(f"  {noun:<{width}}  {'error':>9}  verdict")
        for r in ordered[:_ROWS]:
            mark = " (abs)" if r.absolute else ""
            verdict = "ok" if r.passed else "FAIL"
            lines.append(f"  {r.shift!s:<{width}}  {r.error:9.2e}  {verdict}{mark}")
        rest = ordered[_ROWS:]
        if rest:
            failed = sum(not r.passed for r in rest)
            lines.append(
                f"  ... {_count(len(rest), 'more ' + noun)}, {failed} failed, errors {rest[-1].error:.2e} "
                f"to {rest[0].error:.2e}"
            )
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)


def _jsonable(shift: Shift | Transform) -> list[int] | str:
    return list(shift.offsets) if isinstance(shift, Shift) else repr(shift)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
