"""The equivariance metric: how far ``f(g.x)`` is from ``g'.f(x)``.

The relative L2 error of each sample over the region where both sides are defined, less the margin (an RMS
absolute error where the reference is all zero); the definition is in docs/concepts.md ("The number the
library computes").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from equivariance._engine import arguments as _arguments
from equivariance._engine import plan as _plan
from equivariance._engine.arguments import BatchSize
from equivariance._engine.forward import OutputSelector
from equivariance._engine.judge import accumulation_dtype, sample_errors, within
from equivariance._engine.runner import Runner
from equivariance._engine.vacuous import why_vacuous
from equivariance._engine.validation import describe
from equivariance.actions import Action, Boundary
from equivariance.crops import Crop
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.fields import FieldSpec, ModelInput
from equivariance.layouts import LayoutLike
from equivariance.regular import Regular
from equivariance.shifts import Shift, ShiftLike
from equivariance.tolerances import resolve_tolerance

__all__ = ["OutputAction", "equivariance_error", "invariance_error"]

OutputAction = Callable[[torch.Tensor, Shift], Any]
"""A callable ``(f(x), shift) -> g'.f(x)``: the outputs the shifted input should give.

It may return ``(tensor, mask)``, ``mask`` True where the expected output is determined; only there is it
compared. See "Actions and layouts" for an example and for writing an [`Action`][equivariance.actions.Action]
instead.
"""

Reduction = Literal["mean", "max", "none"]
IntOrTuple = int | Sequence[int]


def equivariance_error(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shift: ShiftLike | Action,
    *,
    stride: IntOrTuple | Literal["auto"] = 1,
    output_action: OutputAction | Regular | None = None,
    boundary: Boundary | Crop = "zeros",
    margin: IntOrTuple | Literal["auto"] = 0,
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: BatchSize = None,
    layout: LayoutLike | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> torch.Tensor:
    """The relative error $||f(gx) - g'f(x)|| / ||g'f(x)||$ of a model under one shift.

    ``g'`` is the output action: the same shift, ``shift / stride`` for a subsampled output, or
    ``output_action``. The distance is taken per sample where both sides are defined, less ``margin``. The
    model runs in eval mode without autograd and is restored afterwards.

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 4, 3)
        >>> x = torch.randn(2, 1, 16, 16)
        >>> bool(equivariance_error(conv, x, (3, -2)) < 1e-5)
        True
        >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 256),
        ...                             torch.nn.Unflatten(1, (1, 16, 16)))
        >>> bool(equivariance_error(dense, x, (3, -2)) > 0.5)
        True

    Args:
        model: the function under test.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shift: a [`Shift`][equivariance.Shift] or a tuple of ints; or a transform such as
            [`Rot90`][equivariance.Rot90], acting alike on input and output (then no ``stride`` or callable
            ``output_action``).
        stride: the output's subsampling factor; ``"auto"`` infers it.
        output_action: a callable ``(f(x), shift) -> tensor``, or ``regular("p4")`` / ``regular("p4m")``.
        boundary: ``"zeros"``, ``"circular"`` or ``Crop(size)``.
        margin: samples dropped at each edge of the compared region; ``"auto"`` measures it.
        layer: measure the output of this named submodule; the forward pass stops there.
        output: picks the tensor from a tuple or dict output: an index, a key or a callable.
        reduction: ``"mean"`` (default) or ``"max"`` over the batch, or ``"none"``.
        batch_size: samples per forward pass, or ``"auto"``.
        layout: where the output keeps its spatial dims.
        inputs: for points, sets or graphs, the field type of ``x`` or of each argument; ``shift`` is then an
            element that acts on them (a ``Rotation``, a ``Permutation``).
        outputs: with ``inputs=``, the field type of each output; a sample's error is the largest of its
            outputs' relative errors.

    The options mean what they mean in [`check_equivariance`][equivariance.check_equivariance].

    Returns:
        A 0-dim tensor (``"mean"``, ``"max"``) or one error per sample (``"none"``), on ``x``'s device.
    """
    _check_reduction(reduction)
    request = _request(
        model, x, "equivariance", lambda: [_arguments.as_element(shift)], inputs=inputs, outputs=outputs,
        noise_floor=False, batch_size=batch_size, layer=layer, output=output, stride=stride, margin=margin,
        boundary=boundary, layout=layout, output_action=output_action,
    )  # fmt: skip
    return _error(request, reduction)


def invariance_error(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shift: ShiftLike | Action,
    *,
    boundary: Boundary | Crop = "zeros",
    layer: str | None = None,
    output: OutputSelector = None,
    reduction: Reduction = "mean",
    batch_size: BatchSize = None,
    inputs: FieldSpec = None,
) -> torch.Tensor:
    """The relative change $||f(gx) - f(x)|| / ||f(x)||$ of an output that should not move.

    The output may have any shape (logits, an embedding); it is compared whole. Arguments as in
    [`equivariance_error`][equivariance.metric.equivariance_error]; ``shift`` may be a transform
    ([`Rot90`][equivariance.Rot90], [`Flip`][equivariance.Flip]) too.

    Examples:
        >>> import torch
        >>> pool = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"),
        ...                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> x = torch.randn(4, 1, 12, 12)
        >>> bool(invariance_error(pool, x, (5, 2), boundary="circular") < 1e-5)
        True
    """
    _check_reduction(reduction)
    request = _request(
        model, x, "invariance", lambda: [_arguments.as_element(shift)], inputs=inputs, outputs=None,
        noise_floor=False, batch_size=batch_size, layer=layer, output=output, boundary=boundary,
    )  # fmt: skip
    return _error(request, reduction)


_GRID_DEFAULTS: dict[str, Any] = {
    "shifts": None, "max_shift": None, "stride": 1, "margin": 0, "boundary": "zeros", "layout": None,
    "output_action": None,
}  # fmt: skip
"""The options of a grid, at their defaults: any other value is refused beside ``inputs=``."""


def _request(
    model: Callable[..., Any],
    x: object,
    mode: _arguments.Mode,
    elements: Callable[[], Sequence[Action] | None],
    *,
    inputs: FieldSpec,
    outputs: FieldSpec,
    noise_floor: bool,
    batch_size: object,
    layer: str | None,
    output: OutputSelector,
    **grid: Any,
) -> _arguments.Request:
    """The request of every measurement of a model on ``x``, the checks' and the one element's: of
    several inputs (``validate_parts``) where ``x`` or the field types say so, the options of a grid
    (``grid``) then refused; else of a grid. ``elements`` builds the elements once the grid is known."""
    common: dict[str, Any] = {"batch_size": batch_size, "layer": layer, "output": output}
    if _arguments.several_inputs(x, inputs, outputs):
        _arguments.no_grid_options(
            **{name: _given(value, _GRID_DEFAULTS[name]) for name, value in grid.items()}
        )
        return _arguments.validate_parts(
            model, x, mode, elements(), inputs=inputs, outputs=outputs, noise_floor=noise_floor, **common
        )
    grid.pop("shifts", None)
    return _arguments.validate(model, x, mode, elements(), noise_floor=noise_floor, **grid, **common)


def _given(value: object, default: object) -> bool:
    return value is not None if default is None else bool(value != default)


def _check_reduction(reduction: object) -> None:
    if reduction not in ("mean", "max", "none"):
        raise InvalidArgument(
            f"reduction must be 'mean', 'max' or 'none', found {describe(reduction)}; pass "
            "reduction='none' for the error of every sample"
        )


def _error(request: _arguments.Request, reduction: Reduction) -> torch.Tensor:
    """The per-sample errors of the request's one element, reduced."""
    with Runner(request.forward.model) as runner:
        plan = _plan.make_plan(runner, request)
        if plan.outputs is not None:  # several outputs: each relative to its own size, the largest
            part_sums, _ = _plan.measure_parts(runner, plan)
            by_part = [sample_errors(s.diff_sq[0], s.ref_sq[0], s.count[0]) for s in part_sums]
            stacked = torch.stack([e for e, _ in by_part])
            worst = stacked.argmax(dim=0)
            errors = stacked.gather(0, worst[None])[0]
            absolute = torch.stack([a for _, a in by_part]).gather(0, worst[None])[0]
        else:
            sums, _ = _plan.measure(runner, plan)
            errors, absolute = sample_errors(
                sums.diff_sq[0], sums.ref_sq[0], sums.count[0], _first(sums.scale)
            )
        tolerance = resolve_tolerance(request.x.dtype)
        small = bool(within(errors, absolute, tolerance).all())
        why = why_vacuous(runner, plan, tolerance) if small else None
    if why is not None:
        warnings.warn(
            why.replace("the check cannot fail", "this error cannot show a failure"),
            EquivarianceWarning,
            stacklevel=3,
        )
    if bool(absolute.any()):
        warnings.warn(
            f"{int(absolute.sum())} of {absolute.numel()} samples have an all-zero reference "
            f"output (dead features?); their error is the RMS absolute error, not a relative one",
            EquivarianceWarning,
            stacklevel=3,
        )
    x = request.x
    errors = errors.to(device=x.device, dtype=accumulation_dtype(x.device))
    if reduction == "none":
        return errors
    return errors.max() if reduction == "max" else errors.mean()


def _first(scale: torch.Tensor | None) -> torch.Tensor | None:
    return None if scale is None else scale[0]
