"""``stride="auto"`` and ``margin="auto"``: reading the stride and the receptive field off the model.

The stride is inferred in two steps: the spatial sizes bound it (input size
over output size), then every candidate ``c`` up to one and a half times that
ratio is tested, in one batched measurement, by shifting the input ``c``
samples along each dim and expecting the output to move by one sample. The
candidate with the smallest error is the stride.

The margin is the receptive-field radius in output samples: the gradient of
the output at the centre of the map with respect to the input (one backward
pass) is nonzero exactly on that output's receptive field; its half-width,
divided by the stride and rounded up, is how far a boundary effect (zero
padding, content shifted in) can reach into the compared region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from equivariance._forward import Forward
from equivariance._isolation import eval_mode, exact_float32, preserved_buffers, preserved_rng
from equivariance._validation import per_dim
from equivariance.errors import InvalidArgument
from equivariance.metric import OutputAction, measure, sample_errors
from equivariance.shifts import Boundary, Shift, check_boundary
from equivariance.transforms import Transform

AUTO = "auto"


@dataclass(frozen=True)
class Inferred:
    """A value read off the model and the sentence saying how."""

    value: tuple[int, ...]
    note: str


def resolve(
    forward: Forward,
    x: torch.Tensor,
    stride: object,
    margin: object,
    boundary: Boundary,
    *,
    custom_action: bool,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """Strides and margins per dim, either as given or inferred (``"auto"``), and how they were found."""
    d = x.dim() - 2
    notes: list[str] = []
    for name, value in (("stride", stride), ("margin", margin)):
        if isinstance(value, str) and value != AUTO:
            raise InvalidArgument(
                f"{name} must be an int, one int per spatial dim or 'auto', found {value!r}; "
                f"pass e.g. {name}=2 or {name}='auto'"
            )
    if stride == AUTO:
        if custom_action:
            raise InvalidArgument(
                "pass either stride='auto' or output_action=, not both; an output action replaces the stride"
            )
        inferred = infer_stride(forward, x, check_boundary(boundary))
        strides = inferred.value
        notes.append(inferred.note)
    else:
        strides = per_dim(stride, d, "stride", minimum=1)
    if margin == AUTO:
        inferred = receptive_margin(forward, x, strides)
        margins = inferred.value
        notes.append(inferred.note)
    else:
        margins = per_dim(margin, d, "margin", minimum=0)
    return strides, margins, tuple(notes)


def output_of(forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """The measured output for ``x``, without autograd and without a trace on the model."""
    with eval_mode(forward.model), preserved_buffers(forward.model), torch.no_grad(), preserved_rng():
        return forward(x.clone())


def infer_stride(forward: Forward, x: torch.Tensor, boundary: Boundary) -> Inferred:
    """The output's stride per dim: the input shift that moves the output by one sample."""
    d = x.dim() - 2
    out = output_of(forward, x)
    if out.dim() < 2 + d:
        raise InvalidArgument(
            f"stride='auto' needs an output with {d} spatial dims, found an output of shape "
            f"{tuple(out.shape)}; pass layer= to measure a layer with spatial output, or use "
            "check_invariance"
        )
    spatial_in, spatial_out = tuple(x.shape[2:]), tuple(out.shape[-d:])
    candidates: list[list[int]] = []
    for i, (n_in, n_out) in enumerate(zip(spatial_in, spatial_out)):
        if n_out < 2:
            raise InvalidArgument(
                f"stride='auto' cannot infer the stride of spatial dim {i}: the output has "
                f"{n_out} sample there (output shape {tuple(out.shape)}), too few to move; pass "
                "stride= or a larger input"
            )
        top = max(2, math.ceil(1.5 * n_in / n_out))
        candidates.append(list(range(1, min(top, n_in - 1) + 1)))
    shifts = [Shift(tuple(c if j == i else 0 for j in range(d))) for i in range(d) for c in candidates[i]]
    measurement = measure(
        forward, x, shifts, mode="equivariance", output_action=_one_sample(boundary), boundary=boundary,
        noise_floor=False,
    )  # fmt: skip
    errors, _ = sample_errors(measurement.diff_sq, measurement.ref_sq, measurement.count)
    mean = errors.mean(dim=1).tolist()
    stride, parts, k = [], [], 0
    for i in range(d):
        tried = mean[k : k + len(candidates[i])]
        k += len(candidates[i])
        best = min(range(len(tried)), key=lambda j: tried[j])
        stride.append(candidates[i][best])
        parts.append(f"{candidates[i][best]} (error {tried[best]:.1e}; next best {_next_best(tried, best)})")
    shown = parts[0] if len(set(stride)) == 1 else ", ".join(parts)
    note = (
        f"stride {_shown(tuple(stride))}, the input shift that moves the output "
        f"{tuple(spatial_out)} by one sample, of 1 to {max(len(c) for c in candidates)} tried, is {shown}"
    )
    return Inferred(tuple(stride), note)


def _next_best(errors: Sequence[float], best: int) -> str:
    rest = [e for j, e in enumerate(errors) if j != best]
    return f"{min(rest):.1e}" if rest else "none"


def _one_sample(boundary: Boundary) -> OutputAction:
    def one_sample(y: torch.Tensor, shift: Shift) -> tuple[torch.Tensor, torch.Tensor]:
        moved = Shift(tuple((o > 0) - (o < 0) for o in shift))
        spatial = tuple(y.shape[y.dim() - shift.ndim :])
        mask = moved.valid_mask(spatial, boundary)
        if boundary == "zeros":
            # compare the central half only: borders (zero padding) blur the difference between candidates
            centre = torch.zeros_like(mask)
            centre[tuple(slice(n // 4, n - n // 4) for n in spatial)] = True
            mask &= centre
        return moved.apply(y, boundary), mask.to(y.device)

    return one_sample


def receptive_margin(forward: Forward, x: torch.Tensor, strides: tuple[int, ...]) -> Inferred:
    """The receptive-field radius of a centre output, in output samples, from one backward pass."""
    d = x.dim() - 2
    model = forward.model
    with eval_mode(model), preserved_buffers(model), exact_float32(), preserved_rng(), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        out = forward(leaf)
        if out.dim() < 2 + d:
            raise InvalidArgument(
                f"margin='auto' needs an output with {d} spatial dims, found an output of shape "
                f"{tuple(out.shape)}; a margin only applies to maps, pass layer= to measure one"
            )
        centre = tuple(n // 2 for n in out.shape[-d:])
        index: tuple[Any, ...] = (Ellipsis, *centre)
        picked = out[index]
        if not picked.requires_grad:
            raise InvalidArgument(
                "margin='auto' measures the receptive field by differentiating the output with "
                "respect to the input, but the output does not depend on x through autograd; pass margin="
            )
        (grad,) = torch.autograd.grad(picked.sum(), leaf, allow_unused=True)
    support = torch.zeros(x.shape[2:], dtype=torch.bool) if grad is None else (grad != 0).flatten(0, 1).any(0)
    if not bool(support.any()):
        raise InvalidArgument(
            "margin='auto' found no input sample that the output at the centre of the map depends on "
            "(a zero gradient: dead units or a constant output), so it cannot measure the receptive "
            "field; pass margin= explicitly"
        )
    margins, widths = [], []
    for i in range(d):
        along = support.movedim(i, 0).reshape(support.shape[i], -1).any(1)
        idx = along.nonzero().flatten()
        width = int(idx.max() - idx.min()) + 1
        widths.append(width)
        margins.append(math.ceil((width - 1) / 2 / strides[i]))
    note = (
        f"margin {_shown(tuple(margins))}: the output at the centre of the map depends on "
        f"{' x '.join(map(str, widths))} input samples (one backward pass), a radius of "
        f"{_shown(tuple(margins))} output samples at stride {_shown(strides)}"
    )
    return Inferred(tuple(margins), note)


def check_room(
    spatial_out: tuple[int, ...],
    shifts: Sequence[Shift | Transform],
    strides: tuple[int, ...],
    margins: tuple[int, ...],
) -> None:
    """An auto margin that leaves nothing to compare is an error, not a vacuous pass."""
    for shift in shifts:
        # a transform is compared over the whole grid, like the zero shift
        offsets = tuple(shift) if isinstance(shift, Shift) else (0,) * len(spatial_out)
        sides = [n - abs(o) // s - 2 * m for n, o, s, m in zip(spatial_out, offsets, strides, margins)]
        if min(sides) <= 0:
            if isinstance(shift, Shift):
                what = f"shift {shift}"
                fix = "a larger input (a zero canvas), smaller shifts, boundary='circular' with "
                fix += "circular padding"
            else:
                what, fix = f"transform {shift}", "a larger input (a zero canvas)"
            raise InvalidArgument(
                f"margin='auto' measured a receptive-field radius of {_shown(margins)} output samples, "
                f"which leaves nothing of the output {spatial_out} to compare for {what}; the "
                "model sees the whole input from every output, so it cannot be checked on maps this "
                f"small: use {fix}, or pass a smaller margin= explicitly"
            )


def _shown(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(values)
