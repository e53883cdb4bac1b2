"""``stride="auto"`` and ``margin="auto"``: the input shift that moves the output by one sample, measured in
one batched run, and the receptive-field radius from one backward pass (docs/diagnosing.md, "Letting the
check find the stride and the margin")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from equivariance._engine.copies import Copies
from equivariance._engine.forward import Forward
from equivariance._engine.grids import stride_of
from equivariance._engine.isolation import owning_module
from equivariance._engine.judge import sample_errors
from equivariance._engine.runner import ModelConsumer, Runner
from equivariance._engine.sinks import GridSums
from equivariance._engine.validation import shown_per_dim
from equivariance.actions import Action, Boundary, Grid
from equivariance.errors import InvalidArgument
from equivariance.layouts import Layout
from equivariance.shifts import Shift
from equivariance.tolerances import resolve_tolerance

AUTO = "auto"


@dataclass(frozen=True)
class Inferred:
    """A value read off the model and the sentence saying how."""

    value: tuple[int, ...]
    note: str
    clean: bool = True


def infer_stride(
    runner: Runner,
    forward: Forward,
    x: torch.Tensor,
    base: torch.Tensor,
    layout: Layout,
    boundary: Boundary,
    batch_size: int,
) -> Inferred:
    """The output's stride per dim: the input shift that moves the output by one sample.

    ``base`` is ``f(x)`` as the model returned it; ``layout`` views it as a grid.
    """
    d = x.dim() - 2
    grid_base = layout.to_grid(base, d)
    spatial_in, spatial_out = tuple(x.shape[2:]), tuple(grid_base.shape[-d:])
    candidates = _candidates(spatial_in, spatial_out, tuple(base.shape))
    rows: list[Action] = []
    moves: list[Action] = []
    for i in range(d):
        for c in candidates[i]:
            rows.append(Shift(tuple(c if j == i else 0 for j in range(d))))
            moves.append(Shift(tuple(1 if j == i else 0 for j in range(d))))
    grid = Grid(d, (1,) * d, boundary, layout)
    # zeros: compare the central half only, where the border (zero padding) does not blur the candidates
    margins = tuple(n // 4 for n in spatial_out) if boundary == "zeros" else (0,) * d
    sums = GridSums(grid_base, rows, grid, margins, expected=moves)
    consumer = ModelConsumer(forward, [sums], tuple(base.shape[1:]), layout, d)
    input_copies = Copies(x, rows, Grid.of_input(d, boundary))
    runner.run(input_copies, len(rows), [consumer], batch_size, lambda row: "the shifts of stride='auto'")
    measured = sums.sums()
    errors, _ = sample_errors(measured.diff_sq, measured.ref_sq, measured.count.unsqueeze(-1))
    rtol = resolve_tolerance(base.dtype if base.dtype.is_floating_point else x.dtype).rtol
    return _choose(candidates, errors.mean(dim=1).tolist(), spatial_in, spatial_out, rtol)


def _candidates(
    spatial_in: tuple[int, ...], spatial_out: tuple[int, ...], shape: tuple[int, ...]
) -> list[list[int]]:
    candidates = []
    for i, (n_in, n_out) in enumerate(zip(spatial_in, spatial_out)):
        if n_out < 2:
            raise InvalidArgument(
                f"stride='auto' cannot infer the stride of spatial dim {i}: the output has "
                f"{n_out} sample there (output shape {shape}), too few to move; pass "
                "stride= or a larger input"
            )
        top = max(2, math.ceil(1.5 * n_in / n_out))
        candidates.append(list(range(1, min(top, n_in - 1) + 1)))
    return candidates


def _choose(
    candidates: list[list[int]],
    mean: list[float],
    spatial_in: tuple[int, ...],
    spatial_out: tuple[int, ...],
    rtol: float,
) -> Inferred:
    """The best candidate per dim where one moves the output cleanly; else the size ratio, said so."""
    stride, picked, parts, k, unclear = [], [], [], 0, []
    for i, tried_at in enumerate(candidates):
        tried = mean[k : k + len(tried_at)]
        k += len(tried_at)
        order = sorted(range(len(tried)), key=lambda j: tried[j])
        best = order[0]
        next_best = tried[order[1]] if len(order) > 1 else math.inf
        stride.append(tried_at[best])
        picked.append(tried_at[best])
        shown_next = f"{next_best:.1e}" if len(order) > 1 else "none"
        parts.append(f"{tried_at[best]} (error {tried[best]:.1e}; next best {shown_next})")
        if not _clean(tried[best], next_best, rtol):
            unclear.append(i)
            stride[i] = stride_of(spatial_in[i], spatial_out[i])
    shown = parts[0] if len(set(picked)) == 1 else ", ".join(parts)
    tried_range = f"1 to {max(len(c) for c in candidates)}"
    if unclear and max(mean) <= rtol:
        # every candidate moves the output "cleanly": it does not move at all (a constant map), and the
        # check that follows cannot fail either way, so it is not told to expect a failure
        note = (
            f"stride {shown_per_dim(stride)}, the input's size over the output's: every input shift of "
            f"{tried_range} tried moves the output by one sample to within tolerance (errors of "
            f"{max(mean):.1e} at most), as an output that does not move at all does (a constant map, or "
            "one that varies below the tolerance), so none tells the stride"
        )
        return Inferred(tuple(stride), note, clean=False)
    if unclear:
        note = (
            f"stride {shown_per_dim(stride)}, the input's size over the output's: no input shift of "
            f"{tried_range} tried moves the output {spatial_out} cleanly by one sample (the best is "
            f"{shown}). Expect the check to fail: the model subsamples and upsamples back (aliasing), "
            "or its output does not move with the input; profile_equivariance names the layer"
        )
        return Inferred(tuple(stride), note, clean=False)
    note = (
        f"stride {shown_per_dim(stride)}, the input shift that moves the output "
        f"{spatial_out} by one sample, of {tried_range} tried, is {shown}"
    )
    return Inferred(tuple(stride), note)


CLEAN_ERROR = 100
"""The best candidate's error must be within this many ``rtol`` to be the stride."""
CLEAR_LEAD = 2
"""... and the next best's error this many times its own (and above ``rtol``)."""


def _clean(best: float, next_best: float, rtol: float) -> bool:
    """A stride candidate that moves the output within tolerance's reach, well ahead of the next."""
    return best <= CLEAN_ERROR * rtol and next_best > max(CLEAR_LEAD * best, rtol)


def receptive_support(leaf: torch.Tensor, grid_output: torch.Tensor, d: int) -> torch.Tensor:
    """Which input positions the output at the centre of the map depends on (one backward pass)."""
    centre = tuple(n // 2 for n in grid_output.shape[-d:])
    index: tuple[Any, ...] = (Ellipsis, *centre)
    picked = grid_output[index]
    if not picked.requires_grad:
        raise InvalidArgument(
            "margin='auto' measures the receptive field by differentiating the output with "
            "respect to the input, but the output does not depend on x through autograd; pass margin="
        )
    (grad,) = torch.autograd.grad(picked.sum(), leaf, allow_unused=True)
    if grad is None:
        support = torch.zeros(leaf.shape[2:], dtype=torch.bool)
    else:
        support = (grad != 0).flatten(0, 1).any(0).cpu()
    if not bool(support.any()):
        raise InvalidArgument(
            "margin='auto' found no input sample that the output at the centre of the map depends on "
            "(a zero gradient: dead units or a constant output), so it cannot measure the receptive "
            "field; pass margin= explicitly"
        )
    return support


def receptive_margin(support: torch.Tensor, strides: tuple[int, ...], zeros: Sequence[str] = ()) -> Inferred:
    """The receptive-field radius of the centre output, in output samples, from its input support."""
    margins, widths = [], []
    for i in range(support.dim()):
        along = support.movedim(i, 0).reshape(support.shape[i], -1).any(1)
        idx = along.nonzero().flatten()
        width = int(idx.max() - idx.min()) + 1
        widths.append(width)
        margins.append(math.ceil((width - 1) / 2 / strides[i]))
    note = (
        f"margin {shown_per_dim(margins)}: the output at the centre of the map depends on "
        f"{' x '.join(map(str, widths))} input samples (one backward pass), a radius of "
        f"{shown_per_dim(margins)} output samples at stride {shown_per_dim(strides)}"
    )
    if zeros:
        shown = ", ".join(zeros[:3]) + (f" and {len(zeros) - 3} more" if len(zeros) > 3 else "")
        note += (
            f"; measured with the all-zero weights ({shown}) set to ones, so that it is the "
            "architecture's reach, not the initial weights' (which hide the branches they zero)"
        )
    return Inferred(tuple(margins), note)


def zero_weights(model: object) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's weights that are all zero (a zero-initialised BatchNorm or last convolution).

    Biases are left out: many start at zero without hiding anything.
    """
    module = owning_module(model)  # type: ignore[arg-type]
    if module is None:
        return []
    return [
        (name, p)
        for name, p in module.named_parameters()
        if name.rsplit(".", 1)[-1].startswith("weight")
        and p.numel() > 0
        and p.is_floating_point()
        and p.device.type != "meta"
        and not p.any()
    ]


def architecture_support(
    runner: Runner,
    forward: Forward,
    x: torch.Tensor,
    layout: Layout,
    zeros: list[tuple[str, torch.nn.Parameter]],
) -> torch.Tensor:
    """The centre output's receptive support with the zero weights set to ones, then restored.

    A branch whose weights start at zero contributes nothing to the gradient,
    so the support measured with the initial weights is that of the other
    paths (a residual block's shortcut); with ones in their place, it is the
    architecture's.
    """
    d = x.dim() - 2
    try:
        with torch.no_grad():
            for _, p in zeros:
                p.fill_(1.0)
        with runner.differentiable(forward, x) as (leaf, output, _):
            return receptive_support(leaf, layout.to_grid(output, d), d)
    finally:
        with torch.no_grad():
            for _, p in zeros:
                p.zero_()
