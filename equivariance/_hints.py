"""Recognise the usual reasons a check fails, from the numbers it already has.

Each hint names a likely cause and a concrete fix. They are read off the
measurement without running the model again: which shifts failed (a stride
pattern), where in the output the error sits (a boundary effect, from the
error split by distance to the edge), and the noise floor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from equivariance.metric import Measurement, sample_errors
from equivariance.shifts import Shift
from equivariance.tolerances import Tolerance


def within(errors: torch.Tensor, absolute: torch.Tensor, tolerance: Tolerance) -> torch.Tensor:
    """Which errors pass: relative ones against rtol, absolute ones against atol."""
    return torch.where(absolute, errors <= tolerance.atol, errors <= tolerance.rtol)


def hints_for(
    measurement: Measurement,
    passed: Sequence[bool],
    errors: Sequence[float],
    tolerance: Tolerance,
    noise_floor: float,
    *,
    equivariance: bool,
    boundary: str,
    strides: tuple[int, ...],
    margin: tuple[int, ...],
    custom_action: bool,
) -> tuple[str, ...]:
    """The hints for a failed check (none for a passed one)."""
    if all(passed):
        return ()
    hints: list[str] = []
    noisy = noise_floor > tolerance.rtol
    if noisy:
        hints.append(
            f"the identity shift alone measures an error of {noise_floor:.1e} through the batched "
            f"path, above rtol={tolerance.rtol:.0e}: the output depends on the batch it is computed "
            "in, not only on the sample. Batch statistics (BatchNorm with "
            "track_running_stats=False), randomness in forward, or batch-size-dependent kernels "
            "and reduced precision do this; for the numerics, pass a looser rtol or use float64"
        )
    transformed = not all(isinstance(s, Shift) for s in measurement.shifts)
    if not equivariance:
        hints.append(
            "the output changes when the input is rotated or flipped; invariance needs features that "
            "rotate or flip with the input (kernels averaged over the group, as in a p4 / p4m group "
            "convolution) pooled over the whole map and over the group (global average pooling)"
            if transformed
            else "the output changes when the input moves; invariance needs pooling over the whole map "
            "(global average pooling) and, for an exact result, circular shifts or content on a "
            "zero canvas that stays inside it"
        )
        return tuple(hints)
    if transformed:
        return (*hints, *_transform_hints(measurement, tolerance, margin, noisy))
    shifts = [s for s in measurement.shifts if isinstance(s, Shift)]
    spatial_in = measurement.input_shape[2:]
    spatial_out = measurement.output_shape[len(measurement.output_shape) - len(spatial_in) :]
    found = len(hints)
    ratios = [n_in / n_out for n_in, n_out in zip(spatial_in, spatial_out)]
    stride_hint = _divisibility_hint(shifts, passed, subsampled=min(ratios) >= 1.5)
    if stride_hint:
        hints.append(stride_hint)
    if not custom_action and all(s == 1 for s in strides) and all(r >= 2 for r in ratios):
        k = round(min(ratios))
        hints.append(
            f"the output {tuple(spatial_out)} is about {k} times smaller than the input "
            f"{tuple(spatial_in)}; if the model subsamples by {k}, pass stride={k} so the "
            f"expected output shift is shift / {k}"
        )
    if boundary == "circular" and not custom_action:
        expected = tuple(n // s for n, s in zip(spatial_in, strides))
        if tuple(spatial_out) != expected:
            hints.append(
                f"boundary='circular' but the output's spatial size {tuple(spatial_out)} is not the "
                f"input's {tuple(spatial_in)} divided by the stride: only circularly padded models "
                "are equivariant on the torus; use boundary='zeros' for valid or zero-padded "
                "convolutions"
            )
    border = _border_hint(measurement, tolerance, margin)
    if border:
        hints.append(border)
    if len(hints) == found and not noisy:
        nonzero = [e for s, e in zip(shifts, errors) if not s.is_identity]
        failing_nonzero = [p for s, p in zip(shifts, passed) if not s.is_identity]
        if nonzero and not any(failing_nonzero):
            smallest = min(nonzero)
            hints.append(
                f"every nonzero shift fails, with errors of {smallest:.1e} or more, and the error is "
                "not confined to the borders: the output does not move with the input. Dense "
                "layers (flatten, fully connected), positional embeddings or absolute coordinates "
                "break translation equivariance; check an earlier layer with layer="
            )
    return tuple(hints)


def _transform_hints(
    measurement: Measurement, tolerance: Tolerance, margin: tuple[int, ...], noisy: bool
) -> list[str]:
    """Rotations and flips: a boundary effect, or no symmetry at all."""
    border = _border_hint(measurement, tolerance, margin)
    if border:
        return [border]
    if noisy:
        return []
    return [
        "the output does not rotate or flip with the input: a plain convolution has no such symmetry; "
        "make kernels symmetric (average them over the group, as in a p4 / p4m group convolution) or "
        "check an earlier layer with layer="
    ]


def _divisibility_hint(shifts: Sequence[Shift], passed: Sequence[bool], *, subsampled: bool) -> str | None:
    """Errors only at shifts that some k > 1 does not divide."""
    failing = [s for s, p in zip(shifts, passed) if not p]
    if not failing or any(s.is_identity for s in failing):
        return None
    largest = max(abs(o) for s in shifts for o in s)
    for k in range(2, largest + 1):
        multiples = [(s, p) for s, p in zip(shifts, passed) if not s.is_identity and s.divisible_by(k)]
        if not multiples or not all(p for _, p in multiples):
            continue
        if any(s.divisible_by(k) for s in failing):
            continue
        example_pass = multiples[0][0]
        pattern = (
            f"errors only at shifts that {k} does not divide ({failing[0]} fails, {example_pass} passes)"
        )
        if subsampled:
            return (
                f"{pattern}: looks like a stride-{k} layer; pass stride={k} if the output is "
                f"subsampled by {k}, or test multiples of {k} (multiples_of({k}, max_shift=...))"
            )
        return (
            f"{pattern}: looks like a stride-{k} layer followed by upsampling back to full "
            f"resolution, which can only follow multiples of {k}; test multiples_of({k}, "
            "max_shift=...), or make the down- and upsampling anti-aliased (blur before subsampling)"
        )
    return None


def _border_hint(measurement: Measurement, tolerance: Tolerance, margin: tuple[int, ...]) -> str | None:
    """Errors that vanish once ``r`` more samples are dropped at each edge."""
    if measurement.border_diff is None or measurement.border_ref is None:
        return None
    assert measurement.border_count is not None
    # Sums over the positions at distance >= r from the edge, for every r.
    diff = measurement.border_diff.flip(-1).cumsum(-1).flip(-1)
    ref = measurement.border_ref.flip(-1).cumsum(-1).flip(-1)
    count = measurement.border_count.flip(-1).cumsum(-1).flip(-1)
    depth = diff.shape[-1]
    for r in range(1, depth):
        if bool((count[:, r] == 0).any()):
            return None
        errors, absolute = sample_errors(diff[..., r], ref[..., r], count[:, r])
        if bool(within(errors, absolute, tolerance).all()):
            suggested = tuple(m + r for m in margin)
            shown = suggested[0] if len(set(suggested)) == 1 else suggested
            return (
                f"errors only within {r} sample{'s' if r > 1 else ''} of the borders of the compared "
                f"region: a boundary effect (zero padding, or content leaving the canvas); pass "
                f"margin={shown} or put the content on a larger zero canvas"
            )
    return None
