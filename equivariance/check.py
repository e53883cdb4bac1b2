"""Checks over many shifts: ``check_*`` return a report, ``assert_*`` raise with it.

The three layers are kept apart: :mod:`equivariance.metric` computes,
:class:`~equivariance.EquivarianceReport` renders, and the ``assert_*``
functions raise :class:`~equivariance.EquivarianceError` with the report's
text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from equivariance import _auto
from equivariance._forward import Forward, OutputSelector
from equivariance._hints import hints_for, within
from equivariance._validation import per_dim
from equivariance.errors import EquivarianceError, InvalidArgument
from equivariance.metric import BatchSize, IntOrTuple, OutputAction, check_input, measure, sample_errors
from equivariance.report import EquivarianceReport, ShiftResult
from equivariance.shifts import Boundary, Shift, ShiftLike, as_shift_list, multiples_of
from equivariance.tolerances import resolve_tolerance
from equivariance.transforms import Transform, as_transform_list

__all__ = ["assert_equivariant", "assert_invariant", "check_equivariance", "check_invariance"]

DEFAULT_MAX_SHIFT = 2
"""Default box of shifts, in units of the stride: every multiple of the stride in [-2s, 2s]^d."""


def check_equivariance(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    max_shift: IntOrTuple | None = None,
    stride: IntOrTuple | Literal["auto"] = 1,
    output_action: OutputAction | None = None,
    boundary: Boundary = "zeros",
    margin: IntOrTuple | Literal["auto"] = 0,
    layer: str | None = None,
    output: OutputSelector = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_size: BatchSize = None,
    transforms: Sequence[Transform] | None = None,
) -> EquivarianceReport:
    """Measure the equivariance error of ``model`` on ``x`` for many shifts at once.

    Every shift of every sample runs through the model in batched forward
    passes (``batch_size`` samples each), never one pass per shift. A shift
    passes when, for every sample, the relative error (see
    :func:`~equivariance.equivariance_error`) is at most ``rtol``, or, where
    the reference output is all zero, the RMS absolute error is at most
    ``atol``. The defaults depend on the dtype
    (:mod:`equivariance.tolerances`).

    The report also carries the noise floor, the error the identity shift
    measures through the same batched path, which exposes batch-size-dependent
    kernels and reduced-precision arithmetic.

    >>> import torch
    >>> from equivariance.models import LeNet
    >>> x = torch.zeros(2, 1, 38, 38)
    >>> x[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
    >>> report = check_equivariance(LeNet(), x, max_shift=3, layer="conv4")
    >>> report.passed, len(report.shifts)
    (True, 49)

    Args:
        model: any ``nn.Module`` or callable from tensor to tensor.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shifts: the shifts to check (``Shift`` objects or tuples of ints).
            Default: every multiple of ``stride`` in the box ``[-max_shift, max_shift]``.
        max_shift: half-width of the default box (an int or one per dim);
            default ``2 * stride``. Not allowed together with ``shifts``.
        stride: the output's subsampling factor; the output shift is
            ``shift / stride``, and every shift must be a multiple of it.
            ``"auto"`` infers it (the report says what it found): the
            input shift that moves the output by one sample, of the
            candidates the spatial sizes allow, tested in one batched pass.
        output_action: a callable ``(f(x), shift) -> tensor`` for any other
            output action.
        boundary: ``"zeros"`` or ``"circular"``, see :mod:`equivariance.shifts`.
        margin: samples dropped at each edge of the compared region.
            ``"auto"`` measures the receptive-field radius of the output, in
            output samples, from the gradient of a centre output with respect
            to the input (one backward pass), so zero-padded 'same'
            convolutions pass with ``boundary="zeros"``; if that margin leaves
            nothing to compare, InvalidArgument says so.
        layer: measure this named submodule's output; the forward pass stops there.
        output: picks the tensor from a tuple or dict output.
        atol: tolerance on the RMS absolute error where the reference is zero.
        rtol: tolerance on the relative error.
        batch_size: samples per forward pass; by default about 32 MiB of
            activations (at least 8 samples) on the CPU, measured in the
            unshifted pass, and 2**22 input elements on a GPU; ``"auto"`` fills
            a memory budget instead (see the benchmarks page).
        transforms: check these symmetries instead of shifts, e.g.
            ``[Rot90(1), Flip(-1)]`` (:mod:`equivariance.transforms`): each acts
            alike on the input and on the output, over the whole grid less
            ``margin``, and is a row of the report. They run through the same
            batched engine (``batch_size``, noise floor, hints). Not allowed
            with ``shifts``, ``max_shift``, ``stride`` or ``output_action``;
            ``boundary`` does not apply to them.

    Returns:
        An :class:`~equivariance.EquivarianceReport`.
    """
    if transforms is not None:
        _no_shift_options(
            shifts=shifts is not None, max_shift=max_shift is not None, stride=stride != 1,
            output_action=output_action is not None,
        )  # fmt: skip
    return _check(
        "equivariance", model, x, shifts, max_shift, stride, output_action, boundary, margin,
        layer, output, atol, rtol, batch_size, transforms,
    )  # fmt: skip


def check_invariance(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shifts: Sequence[ShiftLike] | None = None,
    *,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary = "zeros",
    layer: str | None = None,
    output: OutputSelector = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_size: BatchSize = None,
    transforms: Sequence[Transform] | None = None,
) -> EquivarianceReport:
    """Measure how much an output that should not move changes under many shifts.

    Like :func:`check_equivariance` with the identity as output action: the
    output (logits, an embedding, anything with a batch dim) is compared whole
    to the output for the unshifted input. With ``transforms=[Rot90(1), ...]``
    the input is rotated or flipped instead of shifted, and the output must
    not change under those transforms either.

    >>> import torch
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
    ...     torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> check_invariance(net, torch.randn(3, 1, 16, 16), boundary="circular").passed
    True
    >>> from equivariance import Rot90
    >>> check_invariance(net, torch.randn(3, 1, 16, 16), transforms=[Rot90(1)]).passed
    False
    >>> pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> check_invariance(pool, torch.randn(3, 1, 16, 16), transforms=[Rot90(1), Rot90(2)]).passed
    True

    Arguments as in :func:`check_equivariance`; ``transforms`` is not allowed
    with ``shifts`` or ``max_shift``.
    """
    if transforms is not None:
        _no_shift_options(shifts=shifts is not None, max_shift=max_shift is not None)
    return _check(
        "invariance", model, x, shifts, max_shift, 1, None, boundary, 0, layer, output, atol, rtol,
        batch_size, transforms,
    )  # fmt: skip


def assert_equivariant(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shifts: Sequence[ShiftLike] | None = None,
    **options: Any,
) -> EquivarianceReport:
    """:func:`check_equivariance`, raising :class:`~equivariance.EquivarianceError` if it fails.

    The error message is the report: the worst shifts and their errors, the
    tolerance and dtype, and a hint when the pattern is recognisable. Returns
    the report when the check passes.

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
    return _passed_or_raise(check_equivariance(model, x, shifts, **options), options.get("layer"))


def assert_invariant(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shifts: Sequence[ShiftLike] | None = None,
    **options: Any,
) -> EquivarianceReport:
    """:func:`check_invariance`, raising :class:`~equivariance.EquivarianceError` if it fails.

    >>> import torch
    >>> assert_invariant(torch.nn.Flatten(), torch.randn(1, 1, 8, 8), max_shift=1)
    Traceback (most recent call last):
    ...
    equivariance.errors.EquivarianceError: invariance check FAILED: Flatten, 9 shifts, 8 failed; ...
    """
    __tracebackhide__ = True
    return _passed_or_raise(check_invariance(model, x, shifts, **options))


def _passed_or_raise(report: EquivarianceReport, layer: object = None) -> EquivarianceReport:
    __tracebackhide__ = True
    if not report.passed:
        text = str(report)
        if report.kind == "equivariance":
            # profile_equivariance takes a transform in place of the shift as well; a check of a
            # layer profiles up to it (the layers after it may refuse the input, as LeNet's head does)
            up_to = f", up_to={layer!r}" if isinstance(layer, str) else ""
            text += (
                "\n  to find the layer: equivariance.profile_equivariance(model, x, "
                f"shift={report.worst_shift}{up_to}) gives the error of every layer and the first that fails"
            )
        raise EquivarianceError(text, report)
    return report


def _no_shift_options(**given: bool) -> None:
    """transforms= replaces the shifts: the options that describe shifts are refused beside it."""
    clash = [name for name, present in given.items() if present]
    if clash:
        raise InvalidArgument(
            f"transforms= replaces the shifts, so {', '.join(clash)} cannot be passed with it; "
            "check shifts and transforms in two calls"
        )


def _check(
    mode: str,
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    shifts: Sequence[ShiftLike] | None,
    max_shift: IntOrTuple | None,
    stride: IntOrTuple | Literal["auto"],
    output_action: OutputAction | None,
    boundary: Boundary,
    margin: IntOrTuple | Literal["auto"],
    layer: str | None,
    output: OutputSelector,
    atol: float | None,
    rtol: float | None,
    batch_size: BatchSize,
    transforms: Sequence[Transform] | None = None,
) -> EquivarianceReport:
    forward = Forward(model, layer, output)
    x = check_input(x, model)
    d = x.dim() - 2
    resolve_tolerance(x.dtype, rtol=rtol, atol=atol)  # reject bad tolerances before any forward pass
    custom = output_action is not None
    transform_list = None if transforms is None else as_transform_list(transforms)
    strides, margins, inferred = _auto.resolve(forward, x, stride, margin, boundary, custom_action=custom)
    spatial = tuple(x.shape[2:])
    shift_list: Sequence[Shift | Transform]
    if transform_list is None:
        shift_list = _shift_set(shifts, max_shift, strides, spatial, custom_action=custom)
    else:
        shift_list = transform_list
    if margin == _auto.AUTO and not custom:
        _auto.check_room(tuple(_auto.output_of(forward, x).shape[-d:]), shift_list, strides, margins)
    measurement = measure(
        forward, x, shift_list, mode=mode, stride=strides, output_action=output_action,
        boundary=boundary, margin=margins, batch_size=batch_size, noise_floor=True,
    )  # fmt: skip
    # An output less precise than x (autocast, a half-precision head) sets the tolerance.
    dtype = min((x.dtype, measurement.output_dtype), key=lambda t: -torch.finfo(t).eps)
    tolerance = resolve_tolerance(dtype, rtol=rtol, atol=atol)
    errors, absolute = sample_errors(measurement.diff_sq, measurement.ref_sq, measurement.count)
    ok = within(errors, absolute, tolerance)
    worst = errors.argmax(dim=1)
    rows = torch.arange(len(shift_list))
    results = tuple(
        ShiftResult(shift, float(err), bool(passed), bool(abs_))
        for shift, err, passed, abs_ in zip(
            measurement.shifts,
            errors[rows, worst].tolist(),
            ok.all(dim=1).tolist(),
            absolute[rows, worst].tolist(),
        )
    )
    assert measurement.noise_diff_sq is not None
    assert measurement.noise_ref_sq is not None
    assert measurement.noise_count is not None
    noise, _ = sample_errors(measurement.noise_diff_sq, measurement.noise_ref_sq, measurement.noise_count)
    noise_floor = float(noise.max())
    hints = hints_for(
        measurement, [r.passed for r in results], [r.error for r in results], tolerance, noise_floor,
        equivariance=mode == "equivariance", boundary=boundary, strides=strides, margin=margins,
        custom_action=output_action is not None,
    )  # fmt: skip
    if transform_list is not None:
        action = "the same transform" if mode == "equivariance" else "none (invariance)"
        shown_boundary = "none (the transforms map the grid onto itself)"
    else:
        action = _describe_action(mode, strides, output_action, inferred=stride == _auto.AUTO)
        shown_boundary = boundary
    return EquivarianceReport(
        kind=mode,
        subject=forward.name(),
        results=results,
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        noise_floor=noise_floor,
        zero_reference=int(absolute.sum()),
        input_shape=measurement.input_shape,
        output_shape=measurement.output_shape,
        dtype=str(x.dtype).removeprefix("torch."),
        device=str(x.device),
        boundary=shown_boundary,
        output_action=action,
        margin=margins if mode == "equivariance" else (0,) * d,
        batch_size=measurement.batch_size,
        hints=hints,
        inferred=inferred,
    )


def _shift_set(
    shifts: Sequence[ShiftLike] | None,
    max_shift: IntOrTuple | None,
    strides: tuple[int, ...],
    spatial: tuple[int, ...],
    *,
    custom_action: bool,
) -> list[Shift]:
    d = len(spatial)
    if shifts is not None:
        if max_shift is not None:
            raise InvalidArgument(
                "pass either shifts= (an explicit list) or max_shift= (a box of shifts), not both"
            )
        shift_list = as_shift_list(shifts)
    else:
        step = (1,) * d if custom_action else strides
        if max_shift is None:
            bound = tuple(min(DEFAULT_MAX_SHIFT * s, (n - 1) // s * s) for s, n in zip(step, spatial))
        else:
            bound = per_dim(max_shift, d, "max_shift", minimum=0)
            if any(b >= n for b, n in zip(bound, spatial)):
                raise InvalidArgument(
                    f"max_shift {max_shift} is as large as the signal or larger (spatial size "
                    f"{spatial}); pass max_shift below {min(spatial)}"
                )
        shift_list = multiples_of(step, bound, ndim=d)
    if all(s.is_identity for s in shift_list):
        raise InvalidArgument(
            f"the shifts to check are only the identity {shift_list[0]}, a check that cannot fail; "
            "pass at least one nonzero shift (with stride=k, max_shift must be at least k)"
        )
    return shift_list


def _describe_action(
    mode: str, strides: tuple[int, ...], output_action: OutputAction | None, *, inferred: bool = False
) -> str:
    if inferred:
        return _describe_action(mode, strides, output_action) + " (inferred)"
    if mode == "invariance":
        return "none (invariance)"
    if output_action is not None:
        return getattr(output_action, "__name__", type(output_action).__name__)
    if all(s == 1 for s in strides):
        return "shift"
    shown = strides[0] if len(set(strides)) == 1 else strides
    return f"shift / {shown}"
