"""Checks over many shifts: ``check_*`` return a report, ``assert_*`` raise with it.

The three layers are kept apart: the plan and runner (`equivariance._engine.plan`) compute, the
[`EquivarianceReport`][equivariance.EquivarianceReport] renders, and the ``assert_*`` functions raise
[`EquivarianceError`][equivariance.EquivarianceError] with the report's text (through
[`raise_if_failed`][equivariance.report.EquivarianceReport.raise_if_failed], which the pytest fixtures share).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from equivariance._engine import arguments as _arguments
from equivariance._engine import plan as _plan
from equivariance._engine.anatomy import Structure, read_structure
from equivariance._engine.arguments import BatchSize, Mode
from equivariance._engine.forward import OutputSelector
from equivariance._engine.hints import Verdicts, hints_for
from equivariance._engine.judge import sample_errors, within
from equivariance._engine.part_report import part_report
from equivariance._engine.plan import Plan
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import OutputAction, Sums
from equivariance._engine.vacuous import why_vacuous
from equivariance.actions import Action, Boundary, Grid
from equivariance.crops import Crop
from equivariance.errors import InvalidArgument
from equivariance.fields import FieldSpec, ModelInput
from equivariance.layouts import LayoutLike
from equivariance.metric import _request
from equivariance.regular import Regular
from equivariance.report import EquivarianceReport, ShiftResult
from equivariance.shifts import Shift, ShiftLike, as_shift_list
from equivariance.tolerances import Tolerance, resolve_tolerance
from equivariance.transforms import as_transform_list

__all__ = ["assert_equivariant", "assert_invariant", "check_equivariance", "check_invariance"]

IntOrTuple = int | Sequence[int]
DEFAULT_MAX_SHIFT = _arguments.DEFAULT_MAX_SHIFT
"""Default box of shifts, in units of the stride $s$: every multiple of $s$ in $[-2s, 2s]^d$."""


def check_equivariance(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    max_shift: IntOrTuple | None = None,
    stride: IntOrTuple | Literal["auto"] = 1,
    output_action: OutputAction | Regular | None = None,
    boundary: Boundary | Crop = "zeros",
    margin: IntOrTuple | Literal["auto"] = 0,
    layer: str | None = None,
    output: OutputSelector = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_size: BatchSize = None,
    transforms: Sequence[Action] | None = None,
    layout: LayoutLike | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> EquivarianceReport:
    """Measure the equivariance error of ``model`` on ``x`` for many shifts at once, in batched passes.

    A shift passes when every sample's relative error (see
    [`equivariance_error`][equivariance.equivariance_error]) is at most ``rtol``, or, where the reference is
    all zero, its RMS absolute error is at most ``atol``. The report also carries the noise floor (see
    "Concepts").

    Examples:
        >>> import torch
        >>> from equivariance.models import LeNet
        >>> x = torch.zeros(2, 1, 38, 38)
        >>> x[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
        >>> report = check_equivariance(LeNet(), x, max_shift=3, layer="conv4")
        >>> report.passed, len(report.elements)
        (True, 49)

        A point cloud, with the field types of its input and output (see "Point clouds, sets and graphs"):

        >>> from equivariance.euclidean import SO3
        >>> from equivariance.fields import Positions, Vectors
        >>> centred = lambda pos: pos - pos.mean(-2, keepdim=True)
        >>> check_equivariance(centred, torch.randn(2, 5, 3), transforms=SO3(8, seed=0),
        ...                    inputs=Positions(), outputs=Vectors()).passed
        True

    Args:
        model: any ``nn.Module`` or callable from tensor to tensor.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shifts: the shifts to check (``Shift`` objects or tuples of ints); default every multiple of
            ``stride`` in the box ``[-max_shift, max_shift]``.
        max_shift: half-width of the default box (an int or one per dim); default ``2 * stride``.
        stride: the output's subsampling factor: the output moves by ``shift / stride``; ``"auto"`` infers it
            in one batched pass.
        output_action: a callable ``(f(x), shift) -> tensor``, or ``regular("p4")`` / ``regular("p4m")`` for
            group-convolution channels ([`equivariance.regular`][equivariance.regular]).
        boundary: ``"zeros"``, ``"circular"`` or ``Crop(size)`` ([`equivariance.crops`][equivariance.crops]).
        margin: samples dropped at each edge of the compared region; ``"auto"`` measures the receptive-field
            radius of the output by one backward pass.
        layer: measure this named submodule's output; the forward pass stops there.
        output: picks the tensor from a tuple or dict output.
        atol: tolerance on the RMS absolute error where the reference is zero.
        rtol: tolerance on the relative error.
        batch_size: samples per forward pass (default from the activations' size), or ``"auto"`` to fill a
            memory budget (see "Benchmarks").
        transforms: check these elements instead of shifts, e.g. ``[Rot90(1), Flip(-1)]``
            ([`equivariance.transforms`][equivariance.transforms]) or an
            [`Action`][equivariance.actions.Action] of your own; not with ``shifts``, ``max_shift``,
            ``stride`` or a callable ``output_action``.
        layout: where the output keeps its spatial dims: ``"channels_first"`` (default), ``"channels_last"``
            or ``Tokens(grid, prefix=k)`` ([`equivariance.layouts`][equivariance.layouts]).
        inputs: for points, sets or graphs: the field type ([`equivariance.fields`][equivariance.fields]) of
            ``x``, or of each argument when ``x`` is a tuple or dict; needs ``transforms=`` and refuses the
            grid's options.
        outputs: with ``inputs=``: the field type of the output, or of each output, each a row.

    Returns:
        An [`EquivarianceReport`][equivariance.EquivarianceReport].
    """
    request = _request(
        model, x, "equivariance", lambda: _elements(shifts, transforms, max_shift, stride, output_action),
        inputs=inputs, outputs=outputs, noise_floor=True, batch_size=batch_size, layer=layer, output=output,
        shifts=shifts, max_shift=max_shift, stride=stride, margin=margin, boundary=boundary, layout=layout,
        output_action=output_action,
    )  # fmt: skip
    return _check(request, atol, rtol, layer, inferred_stride=stride == "auto", drawn=transforms)


def check_invariance(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary | Crop = "zeros",
    layer: str | None = None,
    output: OutputSelector = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_size: BatchSize = None,
    transforms: Sequence[Action] | None = None,
    inputs: FieldSpec = None,
) -> EquivarianceReport:
    """Measure how much an output that should not move changes under many shifts.

    [`check_equivariance`][equivariance.check.check_equivariance] with the identity as output action: the
    output (logits, an embedding) is compared whole to the unshifted input's. Arguments as there.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
        ...     torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> check_invariance(net, torch.randn(3, 1, 16, 16), boundary="circular").passed
        True
        >>> from equivariance import Rot90
        >>> check_invariance(net, torch.randn(3, 1, 16, 16), transforms=[Rot90(1)]).passed
        False
        >>> from equivariance.fields import Scalars
        >>> from equivariance.permutations import Permutations
        >>> pooled = lambda h: h.sum(-2)
        >>> check_invariance(pooled, torch.randn(3, 5, 2), transforms=Permutations(8, n=5),
        ...                  inputs=Scalars()).passed
        True
    """
    request = _request(
        model, x, "invariance", functools.partial(_elements, shifts, transforms, max_shift), inputs=inputs,
        outputs=None, noise_floor=True, batch_size=batch_size, layer=layer, output=output, shifts=shifts,
        max_shift=max_shift, boundary=boundary,
    )  # fmt: skip
    return _check(request, atol, rtol, layer, drawn=transforms)


def assert_equivariant(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    allow_vacuous: bool = False,
    **options: Any,
) -> EquivarianceReport:
    """[`check_equivariance`][equivariance.check.check_equivariance], raising
    [`EquivarianceError`][equivariance.EquivarianceError] with the report if it fails, or
    [`VacuousCheckError`][equivariance.errors.VacuousCheckError] if it could not have failed, unless
    ``allow_vacuous=True``; else the report.

    Examples:
        >>> import torch
        >>> from equivariance.models import MLP
        >>> x = torch.zeros(2, 1, 38, 38)
        >>> x[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
        >>> assert_equivariant(MLP(input_size=38), x, max_shift=1)
        Traceback (most recent call last):
        ...
        equivariance.errors.EquivarianceError: equivariance check FAILED: MLP, 9 shifts, 8 failed; ...
    """
    __tracebackhide__ = True
    return check_equivariance(model, x, shifts, **options).raise_if_failed(allow_vacuous=allow_vacuous)


def assert_invariant(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    allow_vacuous: bool = False,
    **options: Any,
) -> EquivarianceReport:
    """[`check_invariance`][equivariance.check.check_invariance], raising as
    [`assert_equivariant`][equivariance.check.assert_equivariant] does.

    Examples:
        >>> import torch
        >>> assert_invariant(torch.nn.Flatten(), torch.randn(1, 1, 8, 8), max_shift=1)
        Traceback (most recent call last):
        ...
        equivariance.errors.EquivarianceError: invariance check FAILED: Flatten, 9 shifts, 8 failed; ...
    """
    __tracebackhide__ = True
    return check_invariance(model, x, shifts, **options).raise_if_failed(allow_vacuous=allow_vacuous)


def _elements(
    shifts: object, transforms: object, max_shift: object, stride: object = 1, output_action: object = None
) -> list[Action] | None:
    """The elements to check: the transforms, which replace the shifts (so the options that describe
    shifts are refused beside them), the shifts given, or None for the default box."""
    if transforms is not None:
        given = {"shifts": shifts is not None, "max_shift": max_shift is not None, "stride": stride != 1}
        given["output_action"] = output_action is not None and not isinstance(output_action, Regular)
        if clash := [name for name, present in given.items() if present]:
            raise InvalidArgument(
                f"transforms= replaces the shifts, so {', '.join(clash)} cannot be passed with it; "
                "check shifts and transforms in two calls"
            )
        return as_transform_list(transforms)
    if shifts is None:
        return None
    if max_shift is not None:
        raise InvalidArgument(
            "pass either shifts= (an explicit list) or max_shift= (a box of shifts), not both"
        )
    shift_list: list[Action] = list(as_shift_list(shifts))
    _arguments.check_not_identity(shift_list, "check", "a check that cannot fail", _arguments.IDENTITY_BOX)
    return shift_list


def _check(
    request: _arguments.Request,
    atol: object,
    rtol: object,
    layer: str | None,
    *,
    inferred_stride: bool = False,
    drawn: object = None,
) -> EquivarianceReport:
    resolve_tolerance(request.x.dtype, rtol=rtol, atol=atol)  # bad tolerances are refused before any pass
    with Runner(request.forward.model) as runner:
        plan = _plan.make_plan(runner, request)
        report_of: Callable[[Tolerance], EquivarianceReport]
        if plan.outputs is None:
            sums, batch_size = _plan.measure(runner, plan)
            report_of = functools.partial(
                _report, plan, sums, batch_size, layer=layer, inferred=inferred_stride
            )
        else:
            part_sums, batch_size = _plan.measure_parts(runner, plan)
            report_of = functools.partial(part_report, plan, part_sums, batch_size, layer=layer, drawn=drawn)
        # an output less precise than x (autocast, a half-precision head) sets the tolerance
        dtype = min((request.x.dtype, plan.base.dtype), key=lambda t: -torch.finfo(t).eps)
        tolerance = resolve_tolerance(dtype, rtol=rtol, atol=atol)
        report = report_of(tolerance)
        why = why_vacuous(runner, plan, tolerance) if report.within_tolerance else None
    # not a pass (report.passed is False): the reason is also the first hint
    return report if why is None else dataclasses.replace(report, vacuous=why, hints=(why, *report.hints))


def _report(
    plan: Plan,
    sums: Sums,
    batch_size: int,
    tolerance: Tolerance,
    layer: str | None,
    inferred: bool,
) -> EquivarianceReport:
    noise = sums.rows(slice(0, plan.noise_rows))
    checked = sums.rows(slice(plan.noise_rows, None))
    errors, absolute = sample_errors(
        checked.diff_sq, checked.ref_sq, checked.count.unsqueeze(-1), checked.scale
    )
    ok = within(errors, absolute, tolerance)
    worst = errors.argmax(dim=1)
    rows = torch.arange(len(plan.elements))
    results = tuple(
        ShiftResult(element, float(err), bool(passed), bool(abs_))
        for element, err, passed, abs_ in zip(
            plan.elements,
            errors[rows, worst].tolist(),
            ok.all(dim=1).tolist(),
            absolute[rows, worst].tolist(),
        )
    )
    noise_errors, _ = sample_errors(noise.diff_sq, noise.ref_sq, noise.count.unsqueeze(-1), noise.scale)
    noise_floor = float(noise_errors.max())
    verdicts = Verdicts(
        [r.passed for r in results], [r.error for r in results], checked, tolerance, noise_floor
    )
    request = plan.request
    mode: Mode = request.mode
    d = request.spatial_dims
    return EquivarianceReport(
        kind=mode,
        subject=request.forward.name(),
        results=results,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        noise_floor=noise_floor,
        zero_reference=int(absolute.sum()),
        input_shape=tuple(request.x.shape),
        output_shape=tuple(plan.base.shape),
        dtype=str(request.x.dtype).removeprefix("torch."),
        device=str(request.x.device),
        boundary=_shown_boundary(plan),
        output_action=_describe_action(plan, inferred=inferred),
        margin=plan.margins if mode == "equivariance" else (0,) * d,
        batch_size=batch_size,
        hints=hints_for(plan, verdicts, functools.partial(_structure, plan, results)),
        inferred=plan.inferred,
        layout=plan.grid.layout.name if plan.grid is not None else "channels_first",
        layer=layer,
    )


def _structure(plan: Plan, results: Sequence[ShiftResult]) -> Structure | None:
    """The checked model's layers, read by one more pass of ``x`` and, for the change of a global
    pooling, one of ``x`` moved by the first failing shift (for a hint; see ``_engine.anatomy``)."""
    request = plan.request
    failing = next(
        (
            r.element
            for r in results
            if not r.passed and isinstance(r.element, Shift) and not r.element.is_identity
        ),
        None,
    )
    moved = None
    if failing is not None and request.crop is None:
        moved = failing.act(request.x, Grid.of_input(request.spatial_dims, request.boundary))
    return read_structure(request.forward, request.forward.model, request.x, moved)


def _shown_boundary(plan: Plan) -> str:
    if plan.request.crop is not None:
        return str(plan.request.crop)
    if any(type(e).uses_boundary for e in plan.elements):
        return plan.request.boundary
    return "none (the transforms map the grid onto itself)"


def _describe_action(plan: Plan, *, inferred: bool = False) -> str:
    request = plan.request
    if request.mode == "invariance":
        return "none (invariance)"
    if request.fields is not None:
        return str(request.fields)
    if not all(isinstance(e, Shift) for e in plan.elements):
        return "the same transform"
    if request.output_action is not None:
        return getattr(request.output_action, "__name__", type(request.output_action).__name__)
    strides = plan.strides
    shown = strides[0] if len(set(strides)) == 1 else strides
    text = "shift" if all(s == 1 for s in strides) else f"shift / {shown}"
    return f"{text} (inferred)" if inferred else text
