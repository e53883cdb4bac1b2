"""The judge and report of several outputs: each part judged by its own errors and noise floor (the rules of
`equivariance._engine.judge`); an element passes when every part passes for every sample, and a failing
part's worst element says what the failure means (``Action.failure_hint``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from equivariance._engine import causes
from equivariance._engine.judge import Sums, credited_floor, sample_errors, within_floor
from equivariance._engine.parts import Graphs
from equivariance._engine.plan import Plan
from equivariance.report import EquivarianceReport, PartResult, ShiftResult
from equivariance.sampling import GroupSample
from equivariance.tolerances import Tolerance


def part_errors(
    plan: Plan, sums: Sequence[Sums], tolerance: Tolerance
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[float]]:
    """Per part: the errors ``[element, sample]`` of the elements checked, which are absolute, which
    pass, and the part's noise floor."""
    errors, absolutes, passes, floors = [], [], [], []
    k = plan.noise_rows
    dtype = _dtype(plan)
    for part in sums:
        noise, checked = part.rows(slice(0, k)), part.rows(slice(k, None))
        error, absolute = sample_errors(checked.diff_sq, checked.ref_sq, checked.count.unsqueeze(-1))
        floor = 0.0
        if k:
            noise_error, _ = sample_errors(noise.diff_sq, noise.ref_sq, noise.count.unsqueeze(-1))
            floor = float(noise_error.max())
        errors.append(error)
        absolutes.append(absolute)
        passes.append(within_floor(error, absolute, tolerance, credited_floor(floor, dtype)))
        floors.append(floor)
    return errors, absolutes, passes, floors


def _dtype(plan: Plan) -> torch.dtype:
    """The least precise of the inputs' and the outputs' dtypes."""
    return min((plan.request.x.dtype, plan.base.dtype), key=lambda t: -torch.finfo(t).eps)


def part_report(
    plan: Plan,
    sums: Sequence[Sums],
    batch_size: int,
    tolerance: Tolerance,
    layer: str | None,
    drawn: object = None,
) -> EquivarianceReport:
    """The report of a plan of several inputs and outputs (see the module docstring)."""
    request, outputs = plan.request, plan.outputs
    assert outputs is not None
    assert request.arguments is not None
    errors, absolutes, passes, floors = part_errors(plan, sums, tolerance)
    stacked = torch.stack(errors)  # (part, element, sample)
    ok = torch.stack(passes).all(dim=0).all(dim=1)  # (element,)
    worst_by_part = stacked.amax(dim=2)  # (part, element)
    # each element's worst part and, in it, its worst sample: read once for all elements
    elements = torch.arange(len(plan.elements))
    worst_part = worst_by_part.argmax(dim=0)
    worst_sample = stacked[worst_part, elements].argmax(dim=1)
    worst = stacked[worst_part, elements, worst_sample].tolist()
    absolute = torch.stack(absolutes)[worst_part, elements, worst_sample].tolist()
    results = [
        ShiftResult(element, error, passed, zero, tuple(by_part))
        for element, error, passed, zero, by_part in zip(
            plan.elements, worst, ok.tolist(), absolute, worst_by_part.T.tolist()
        )
    ]
    invariance = request.mode == "invariance"
    parts = []
    for p, part in enumerate(outputs.parts):
        flat = int(errors[p].argmax())
        k, n = divmod(flat, errors[p].shape[1])
        parts.append(PartResult(
            part.name, "unchanged" if invariance or part.field is None else repr(part.field),
            outputs.shapes[p], float(errors[p][k, n]), plan.elements[k], n, bool(passes[p].all()), floors[p],
            float(worst_by_part[p].median()), int((~passes[p]).any(dim=0).sum()), errors[p].shape[1],
        ))  # fmt: skip
    return EquivarianceReport(
        kind=request.mode,
        subject=request.forward.name(),
        results=tuple(results),
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        noise_floor=max(floors, default=0.0),
        zero_reference=int(sum(int(a.sum()) for a in absolutes)),
        input_shape=tuple(request.x.shape),
        output_shape=outputs.shapes[0],
        dtype=str(request.x.dtype).removeprefix("torch."),
        device=str(request.x.device),
        boundary="none (tensors of points)",
        output_action="none (invariance)" if invariance else "by field type",
        margin=(),
        batch_size=batch_size,
        hints=_hints(plan, parts),
        layout="fields",
        layer=layer,
        parts=tuple(parts),
        inputs=request.arguments.shapes(),
        drawn=repr(drawn) if isinstance(drawn, GroupSample) else "",
    )


def _hints(plan: Plan, parts: Sequence[PartResult]) -> tuple[str, ...]:
    """For each failing output, what its worst element says the failure means (once each)."""
    outputs = plan.outputs
    assert outputs is not None
    invariance = plan.request.mode == "invariance"
    hints: list[str] = []
    dtype = _dtype(plan)
    arguments = plan.request.arguments
    graphs = ""
    if isinstance(arguments, Graphs):
        graphs = "; between graphs, an operation that reaches across the graphs of a Batch"
    for part, result in zip(outputs.parts, parts):
        if result.passed:
            continue
        if result.noise_floor > 0 and credited_floor(result.noise_floor, dtype) == 0:
            hints.append(
                f"the noise floor of {part.name} alone (f(x) computed again, in a chunk of other samples) "
                f"measures {result.noise_floor:.1e}, more than rounding reaches in "
                f"{str(dtype).removeprefix('torch.')}: the output depends on the batch it is computed in, "
                f"not only on the sample: {causes.BATCH_INTERACTION}{graphs}"
            )
        field = None if invariance else part.field
        hint = result.element.failure_hint(part.name, field)
        if hint is not None and hint not in hints:
            hints.append(hint)
    alone = [] if arguments is None else [p.name for p in arguments.parts if p.field is None]
    if alone and any(not r.passed for r in parts):
        names = ", ".join(alone)
        hints.append(
            f"input{'s' if len(alone) > 1 else ''} {names} {'are' if len(alone) > 1 else 'is'} left alone "
            "(field type None): an input the elements should move (edge attributes, relative vectors, "
            "node indices) left as it was breaks the check by itself; give it its field type"
        )
    return tuple(hints)
