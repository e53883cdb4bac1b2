"""The result of a check: per-element errors, the verdict, and how it was reached.

One row per group element checked; a failed report is raised by
[`raise_if_failed`][equivariance.report.EquivarianceReport.raise_if_failed], which the asserts and the pytest
fixtures share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from equivariance.actions import Action
from equivariance.errors import EquivarianceError, VacuousCheckError
from equivariance.tolerances import FLOOR_FACTOR

__all__ = ["EquivarianceReport", "PartResult", "ShiftResult"]

_ROWS = 8  # shifts listed in str(report); the rest are summarised in one line


@dataclass(frozen=True)
class ShiftResult:
    """The outcome for one group element (a shift or a transform), over the whole batch.

    Attributes:
        element: the input shift, or the transform (``Rot90``, ``Flip``, an action of your own) when the check
            was given ``transforms=``.
        error: the worst error over the batch: relative, or RMS absolute where ``absolute`` is set.
        passed: whether every sample was within tolerance.
        absolute: whether the worst sample's reference output was all zero, making its error an absolute one.
        parts: for a model of several outputs (``outputs=``), the worst error of each output part under this
            element, in the order of ``EquivarianceReport.parts``; empty otherwise.
    """

    element: Action
    error: float
    passed: bool
    absolute: bool = False
    parts: tuple[float, ...] = ()


@dataclass(frozen=True)
class PartResult:
    """The outcome for one output of a model of several outputs (``outputs=``), over every element.

    Attributes:
        name: the output, e.g. ``"output[1]"`` or ``"output['forces']"``.
        field: its field type, e.g. ``"Vectors()"``; ``"unchanged"`` for invariance.
        shape: its shape for the inputs as given.
        error: its worst error over the elements and samples, relative to its own size (or RMS absolute where
            its reference is zero).
        element: the element with that error.
        sample: the sample with that error.
        passed: whether it was within tolerance (or within ``FLOOR_FACTOR`` times its noise floor) for every
            element and sample.
        noise_floor: its error through the check's own path: the identity, and inputs moved there and back by
            elements that round.
        median: the median over the elements of its worst error over the samples.
        failed_samples: how many samples fail under some element (errors tiny for most inputs and large for a
            few show as a few failed samples).
        samples: how many samples were checked.
    """

    name: str
    field: str
    shape: tuple[int, ...]
    error: float
    element: Action
    sample: int
    passed: bool
    noise_floor: float
    median: float
    failed_samples: int = 0
    samples: int = 0


@dataclass(frozen=True, repr=False)
class EquivarianceReport:
    """What a check measured, and its verdict.

    ``str(report)`` is a compact table, worst shifts (or transforms) first, and ``repr(report)`` its first
    line (so a failing ``assert report.passed`` in pytest shows one line before the table, not every field);
    [`to_dict`][equivariance.report.EquivarianceReport.to_dict] is JSON-serializable. Made by
    [`check_equivariance`][equivariance.check_equivariance] and
    [`check_invariance`][equivariance.check_invariance]; never needs to be built by hand.

    Attributes:
        kind: ``"equivariance"`` or ``"invariance"``.
        subject: what was measured, e.g. ``"LeNet.conv4"``.
        results: one [`ShiftResult`][equivariance.report.ShiftResult] per shift (or transform), in the order
            checked.
        rtol: relative tolerance used.
        atol: absolute (RMS) tolerance used where the reference is zero.
        tolerance_source: where the tolerance came from, e.g. ``"float32 default"``.
        noise_floor: the error of the identity shift sent through the same batched path: what the numerics
            alone contribute.
        zero_reference: how many (shift, sample) pairs had an all-zero reference and were measured as absolute
            errors.
        input_shape: shape of ``x``.
        output_shape: shape of the measured output for ``x``.
        dtype: dtype of ``x``, e.g. ``"float32"``.
        device: device of ``x``, e.g. ``"cpu"``.
        boundary: ``"zeros"`` or ``"circular"``; for transforms, which map the grid onto itself, ``"none (the
            transforms map the grid onto itself)"``.
        output_action: how the output was expected to move: ``"shift"``, ``"shift / 2"``, ``"the same
            transform"``, ``"none (invariance)"`` or a callable's name.
        margin: samples dropped at each edge of the compared region, per dim.
        batch_size: samples per forward pass.
        hints: likely causes of a failure, with fixes, when recognisable.
        inferred: how ``stride="auto"`` and ``margin="auto"`` (and a layout that is not channels first) were
            resolved, one sentence each.
        layout: the output's layout, e.g. ``"channels_last"`` (equivariance).
        layer: the layer measured (``layer=``), None for the model's output.
        parts: for a model of several inputs and outputs (``inputs=``, ``outputs=``), one
            [`PartResult`][equivariance.report.PartResult] per output: each judged by its own size.
        inputs: for several inputs, each with its shape and field type.
        drawn: how the elements were drawn, e.g. ``"E3(64, seed=0)"`` (a group sample), or "".
        vacuous: why a check whose every element is within tolerance could not have failed (an output that
            does not move, or does not respond to the input), None when it could. Such a check is not a pass:
            ``passed`` is False, the reason is also the first hint, and ``assert_*`` and the pytest fixtures
            raise [`VacuousCheckError`][equivariance.errors.VacuousCheckError] unless given
            ``allow_vacuous=True``.
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
    layout: str = "channels_first"
    layer: str | None = None
    vacuous: str | None = None
    parts: tuple[PartResult, ...] = ()
    inputs: str = ""
    drawn: str = ""

    @property
    def passed(self) -> bool:
        """Whether the check showed the symmetry: every shift (or transform) within tolerance, and a
        check that could have failed.

        A vacuous check (``vacuous``: an output that does not move, or does not respond to its input) is not a
        pass, though every element is within tolerance (``within_tolerance``): a test that reads ``passed``
        must not go green on a check that asserted nothing, as a Hypothesis test whose every example was
        rejected fails.
        """
        return self.within_tolerance and self.vacuous is None

    @property
    def within_tolerance(self) -> bool:
        """Whether every shift (or transform) is within tolerance, whether or not the check could fail."""
        return all(r.passed for r in self.results)

    @property
    def elements(self) -> tuple[Action, ...]:
        """The shifts (or transforms) checked, in order."""
        return tuple(r.element for r in self.results)

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
    def worst_element(self) -> Action:
        """The shift (or transform) with the largest error."""
        return max(self.results, key=lambda r: r.error).element

    @property
    def failures(self) -> tuple[ShiftResult, ...]:
        """The shifts (or transforms) that failed, worst first."""
        return tuple(sorted((r for r in self.results if not r.passed), key=lambda r: -r.error))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field, plus the verdict and summary numbers.

        Each element is in its JSON form (a shift as a list of offsets, a transform as its repr).
        """
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["results"] = [
            {"element": r.element.to_json(), "error": r.error, "passed": r.passed, "absolute": r.absolute}
            | ({"parts": list(r.parts)} if r.parts else {})
            for r in self.results
        ]  # fmt: skip
        data["parts"] = [
            {**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}, "element": p.element.to_json(),
             "shape": list(p.shape)}
            for p in self.parts
        ]  # fmt: skip
        for key in ("input_shape", "output_shape", "margin", "hints", "inferred"):
            data[key] = list(data[key])
        worst = self.worst_element.to_json()
        data.update(
            passed=self.passed,
            within_tolerance=self.within_tolerance,
            max_error=self.max_error,
            mean_error=self.mean_error,
            worst_element=worst,
            failed=len(self.failures),
        )
        return data

    def raise_if_failed(self, *, allow_vacuous: bool = False) -> EquivarianceReport:
        """Raise [`EquivarianceError`][equivariance.EquivarianceError] with the report's text if the
        check failed, and [`VacuousCheckError`][equivariance.errors.VacuousCheckError] (one) if it could not
        have failed, unless ``allow_vacuous``; return the report otherwise.

        The message of a failure ends with the call that finds the layer where an equivariance check breaks
        (the per-layer profile of the worst element, up to the layer measured).

        Args:
            allow_vacuous: return a check that could not have failed instead of raising (a property test that
                may draw dead networks).
        """
        __tracebackhide__ = True
        if self.within_tolerance:
            if self.vacuous is None or allow_vacuous:
                return self
            raise VacuousCheckError(
                f"{self}\n  a check that cannot fail asserts nothing; pass allow_vacuous=True to accept it "
                "(a property test that may draw dead networks), or check a model and input whose output "
                "moves with the input",
                self,
            )
        text = str(self)
        if self.kind == "equivariance":
            # a check of a layer profiles up to it (the layers after it may refuse the input: LeNet's head)
            up_to = f", up_to={self.layer!r}" if self.layer is not None else ""
            text += (
                "\n  to find the layer: equivariance.profile_equivariance(model, x, "
                f"shift={self.worst_element}{up_to}) gives the error of every layer and the first that fails"
            )
        raise EquivarianceError(text, self)

    def summary(self) -> str:
        """One line: the verdict, what was measured, and the worst error against the tolerance."""
        verdict = "PASSED" if self.passed else "FAILED"
        if self.within_tolerance and self.vacuous is not None:
            verdict = "VACUOUS (cannot fail)"
        failed = f", {len(self.failures)} failed" if self.failures else ""
        noun = self._noun()
        return (
            f"{self.kind} check {verdict}: {self.subject}, {_count(len(self.results), noun)}{failed}; "
            f"max error {self.max_error:.2e} at {noun} {self.worst_element} "
            f"(rtol {self.rtol:.0e}, {self.dtype})"
        )

    def _noun(self) -> str:
        nouns = {r.element.noun for r in self.results}
        return nouns.pop() if len(nouns) == 1 else "transform"

    def __repr__(self) -> str:
        return f"<EquivarianceReport {self.summary()}>"

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.parts:
            lines.extend(self._part_lines())
        else:
            lines.extend(self._grid_lines())
        lines.extend(f"  inferred: {note}" for note in self.inferred)
        if self.zero_reference:
            lines.append(
                f"  {self.zero_reference} moved samples had an all-zero reference output (dead "
                "features); their error is the RMS absolute error, compared to atol"
            )
        ordered = sorted(self.results, key=lambda r: -r.error)
        width = max(len(str(r.element)) for r in ordered[:_ROWS])
        noun = self._noun()
        width = max(width, len(noun))
        lines.append(f"  {noun:<{width}}  {'error':>9}  verdict")
        for r in ordered[:_ROWS]:
            mark = " (abs)" if r.absolute else ""
            verdict = "ok" if r.passed else "FAIL"
            lines.append(f"  {r.element!s:<{width}}  {r.error:9.2e}  {verdict}{mark}")
        rest = ordered[_ROWS:]
        if rest:
            failed = sum(not r.passed for r in rest)
            lines.append(
                f"  ... {_count(len(rest), 'more ' + noun)}, {failed} failed, errors {rest[-1].error:.2e} "
                f"to {rest[0].error:.2e}"
            )
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        if self.vacuous is not None and self.vacuous not in self.hints:
            lines.append(f"  vacuous: {self.vacuous}")
        return "\n".join(lines)

    def _part_lines(self) -> list[str]:
        """The inputs, how the elements were drawn and the spread of their errors, and a row per output."""
        lines = [f"  inputs {self.inputs}; {self.dtype} on {self.device}"]
        errors = sorted(self.errors)
        drawn = f"{self.drawn}; " if self.drawn else ""
        lines.append(
            f"  {drawn}errors over the {_count(len(errors), self._noun())}: min {errors[0]:.1e}, median "
            f"{_quantile(errors, 0.5):.1e}, 90% {_quantile(errors, 0.9):.1e}, max {errors[-1]:.1e}"
        )
        lines.append(
            f"  tolerance rtol={self.rtol:.0e}, atol={self.atol:.0e} ({self.tolerance_source}), or an "
            f"output's error within {FLOOR_FACTOR:g}x its noise floor (the check's own rounding)"
        )
        names = [p.name for p in self.parts]
        fields = [p.field for p in self.parts]
        shapes = [str(p.shape) for p in self.parts]
        columns = ((names, "output"), (shapes, "shape"), (fields, "field"))
        w = [max(len(t) for t in [*col, head]) for col, head in columns]
        lines.append(
            f"  {'output':<{w[0]}}  {'shape':<{w[1]}}  {'field':<{w[2]}}  {'error':>7}  {'median':>7}  "
            f"{'floor':>7}  verdict, worst at"
        )
        for p, shape in zip(self.parts, shapes):
            verdict = "ok" if p.passed else f"FAIL ({p.failed_samples} of {p.samples} samples)"
            lines.append(
                f"  {p.name:<{w[0]}}  {shape:<{w[1]}}  {p.field:<{w[2]}}  {p.error:7.1e}  {p.median:7.1e}  "
                f"{p.noise_floor:7.1e}  {verdict}, sample {p.sample}, {p.element}"
            )
        return lines

    def _grid_lines(self) -> list[str]:
        lines = []
        margin = f", margin {self.margin}" if any(self.margin) else ""
        layout = "" if self.layout == "channels_first" else f", layout {self.layout}"
        lines.append(
            f"  input {self.input_shape} {self.dtype} on {self.device} -> output "
            f"{self.output_shape}{layout}; boundary {self.boundary}, "
            f"output action {self.output_action}{margin}"
        )
        lines.append(
            f"  tolerance rtol={self.rtol:.0e}, atol={self.atol:.0e} ({self.tolerance_source}); "
            f"noise floor {self.noise_floor:.1e}; mean error {self.mean_error:.2e}"
        )
        return lines


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (the nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
