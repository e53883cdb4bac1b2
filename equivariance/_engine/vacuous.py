"""Checks that cannot fail: an output that does not move, or does not respond to its input.

The first is read off ``f(x)`` alone; the second from samples whose outputs differ, or else one
pass of a strongly perturbed sample. Such a check is not a pass (docs/diagnosing.md, "A check that
cannot fail").
"""

from __future__ import annotations

import math
from typing import Any

import torch

from equivariance._engine.judge import (
    accumulation_dtype,
    relative_sizes,
    sample_errors,
    sample_scale,
    scaled,
    squared_norms,
    within,
)
from equivariance._engine.plan import Plan
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import GridSums, _tiles
from equivariance.actions import Action
from equivariance.tolerances import Tolerance

PERTURBATION_SEED = 0
"""The seed of the perturbation's noise (a generator of its own: the global RNG is not touched)."""


def why_vacuous(runner: Runner, plan: Plan, tolerance: Tolerance) -> str | None:
    """Why a passing check could not have failed; None when it could."""
    elements = [e for e in plan.elements if not e.is_identity]
    if plan.grid is not None and elements:
        return _still(plan, elements, tolerance)
    if plan.grid is None:
        return _unresponsive(runner, plan, tolerance)
    return None


def _still(plan: Plan, elements: list[Action], tolerance: Tolerance) -> str | None:
    """The reference moved by each element against the reference itself: all alike is a still output.

    Stops at the first element that moves it (usually the first one checked).
    """
    largest = 0.0
    for element in elements:
        errors, absolute = _moved_errors(plan, element)
        if not bool(within(errors, absolute, tolerance).all()):
            return None
        largest = max(largest, float(errors.max()))
    noun = elements[0].noun
    return (
        f"the check cannot fail: the output does not change when it is moved (every {noun} checked "
        f"moves f(x) to within tolerance of f(x) itself, a difference of {largest:.1e} at most), so an "
        "output that ignored the input's moves would pass as well. The output is constant over its "
        "grid, or varies below the tolerance: a layer with zero weights leaves only its bias, and an "
        "input without structure (all zeros, a constant) gives a constant map; check an input with "
        "structure, or a layer whose output varies over space"
    )


def _moved_errors(plan: Plan, element: Action) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the error of ``f(x)`` against ``f(x)`` moved by ``element``, over its compared box.

    A translation compares slices of ``f(x)`` (its tiles) directly, a few operations; other
    elements go through the check's general comparison.
    """
    grid, base = plan.grid, plan.grid_base
    assert grid is not None
    assert base is not None
    offsets = element.translation(grid)
    if offsets is None or plan.request.output_action is not None:
        sink = GridSums(base, [element], grid, plan.margins, plan.request.output_action)
        n = len(base)
        sink.add(base, slice(0, n), torch.arange(n), torch.zeros(n, dtype=torch.long), lambda: "f(x)")
        sums = sink.sums()
        scale = None if sums.scale is None else sums.scale[0]
        return sample_errors(sums.diff_sq[0], sums.ref_sq[0], sums.count[0], scale)
    d = grid.spatial_dims
    spatial = tuple(base.shape[-d:])
    region = element.region(spatial, grid)
    lo = [r.start + m for r, m in zip(region, plan.margins)]
    hi = [r.stop - m for r, m in zip(region, plan.margins)]
    lead = (slice(None),) * (base.dim() - d)
    scale = sample_scale(base)
    base = scaled(base, scale)
    dims = tuple(range(1, base.dim()))
    diff = ref = torch.zeros(len(base), dtype=accumulation_dtype(base.device), device=base.device)
    for target, source in _tiles(lo, hi, offsets, spatial, grid.boundary):
        moved = base[lead + tuple(source)]
        diff = diff + squared_norms(base[lead + tuple(target)] - moved, dims)
        ref = ref + squared_norms(moved, dims)
    count = math.prod(max(b - a, 0) for a, b in zip(lo, hi)) * math.prod(base.shape[1 : base.dim() - d])
    return sample_errors(diff.cpu(), ref.cpu(), float(count), None if scale is None else scale.cpu())


def _unresponsive(runner: Runner, plan: Plan, tolerance: Tolerance) -> str | None:
    """Whether the output depends on the input: across the batch, else under one perturbation."""
    base = plan.base
    if len(base) > 1 and _differs(base[1:], base[:1].expand_as(base[1:]), tolerance):
        return None
    generator = torch.Generator().manual_seed(PERTURBATION_SEED)
    arguments = plan.request.arguments
    if arguments is None:
        perturbed: Any = _perturbed(plan.request.x[:1], generator)
    else:  # every floating-point input of the first sample
        first = arguments.select(slice(0, 1))
        perturbed = first.with_tensors(
            [_perturbed(t, generator) if t.is_floating_point() else t for t in first.tensors]
        )
    moved = runner.base(plan.request.forward, perturbed).output
    if _differs(moved, base[:1], tolerance):
        return None
    return (
        "the check cannot fail: the output does not respond to the input (the samples of x give the "
        "same output, and noise of the input's own size added to the first sample changes it by less "
        f"than rtol={tolerance.rtol:.0e}), so no shift can change it. The output is constant, or "
        "varies below the tolerance: a layer with zero weights leaves only its bias, and dead units "
        "(a ReLU that is never positive) cut the input off; check a model whose output depends on its input"
    )


def _perturbed(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` plus noise of its own RMS."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    rms = float(x.double().pow(2).mean().sqrt())
    return x + noise * (rms if rms > 0 else 1.0)


def _differs(outputs: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> bool:
    """Whether any output differs from its reference by more than the tolerance (relative, or RMS)."""
    errors, absolute = relative_sizes(outputs.double() - reference.double(), reference)
    return not bool(within(errors, absolute, tolerance).all())
