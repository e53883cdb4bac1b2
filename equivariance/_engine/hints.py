"""The check's hints: which causes a failed check's numbers point to, ranked by their evidence.

What the failing shifts and the error's place say comes first; where every shift fails and they say
nothing, one more pass reads the model's layers (`equivariance._engine.anatomy`); a guess (a dense
layer) only where nothing else explains the failure. Each cause is worded by
`equivariance._engine.causes`, as the profile's are.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from equivariance._engine import anatomy as _anatomy
from equivariance._engine import causes
from equivariance._engine.anatomy import Structure
from equivariance._engine.judge import KEEP_FRACTION, margin_that_passes
from equivariance._engine.plan import Plan
from equivariance._engine.sinks import Sums
from equivariance._engine.validation import shown_per_dim
from equivariance.actions import Action
from equivariance.layouts import Tokens, other_readings, plausible
from equivariance.shifts import Shift
from equivariance.tolerances import Tolerance

ReadStructure = Callable[[], Structure | None]
"""Reads the checked model's layers (one more pass), or None where they cannot be hooked."""


@dataclass(frozen=True)
class Verdicts:
    """A check's outcome per element checked (the noise floor's identity aside), and its noise floor."""

    passed: Sequence[bool]
    errors: Sequence[float]
    sums: Sums
    tolerance: Tolerance
    noise_floor: float


def hints_for(plan: Plan, verdicts: Verdicts, structure: ReadStructure | None = None) -> tuple[str, ...]:
    """The hints for a failed check (none for a passed one), ranked by their evidence.

    ``structure`` reads the model's layers; it is called at most once, and
    only where the failing shifts leave the cause open.
    """
    if all(verdicts.passed):
        return ()
    read: ReadStructure = functools.cache(structure) if structure is not None else lambda: None
    hints: list[str] = []
    noisy = verdicts.noise_floor > verdicts.tolerance.rtol
    if noisy:
        hints.append(
            f"the identity shift alone measures an error of {verdicts.noise_floor:.1e} through the batched "
            f"path, above rtol={verdicts.tolerance.rtol:.0e}: the output depends on the batch it is computed "
            f"in, not only on the sample: {causes.BATCH_INTERACTION}, or kernels whose rounding depends on "
            "the batch size and reduced precision; for the numerics, pass a looser rtol or use float64"
        )
    transformed = not all(isinstance(e, Shift) for e in plan.elements)
    if transformed:
        hints.extend(_alignment_hints(plan))
    if plan.grid is None:
        if transformed:
            return (*hints, causes.NOT_POOLED_OVER_THE_GROUP)
        return (*hints, *_invariance_hints(plan, verdicts, noisy, read))
    if transformed:
        return (*hints, *_transform_hints(verdicts, plan.margins, noisy, plan))
    return (*hints, *_shift_hints(plan, verdicts, noisy, read))


def _invariance_hints(plan: Plan, verdicts: Verdicts, noisy: bool, read: ReadStructure) -> list[str]:
    """Shifts that change a pooled output: the stride pattern first, then what the layers say; that
    the model lacks global pooling only where no layer was seen to pool globally."""
    shifts = [e for e in plan.elements if isinstance(e, Shift)]
    failing = [s for s, ok in zip(shifts, verdicts.passed) if not ok and not s.is_identity]
    pattern = _divisibility_hint(shifts, verdicts.passed, subsampled=True, invariance=True)
    if pattern:
        return [pattern]  # every multiple of k passes: the stride explains every failure
    if noisy or not failing:
        return []
    structure = read()
    if structure is None or not (structure.pooled or structure.attention):
        return [causes.NOT_POOLED]  # attention gathers every token too (a class token's read-out)
    ones = (1,) * plan.request.spatial_dims
    found = [
        _positional_hint(structure),
        _subsampling_hint(structure, failing, ones, invariance=True),
        _pooled_borders_hint(plan, structure, failing) if structure.pooled else None,
        _attention_hint(plan, structure),
    ]
    hints = [h for h in found if h]
    if not hints:
        hints.append(
            f"the model pools the whole map (at {_pooling(structure)}), but the pooled value "
            "changes when the input moves: a layer before the pooling does not commute with "
            f"translations; profile_equivariance(model, x, shift={tuple(failing[0])}) names it"
        )
    return hints


def _shift_hints(plan: Plan, verdicts: Verdicts, noisy: bool, read: ReadStructure) -> list[str]:
    """What the sizes and the failing shifts say first; where they say nothing and every shift fails,
    what the layers say; a layout the output's shape also reads as, after them."""
    assert plan.grid_base is not None
    assert plan.grid is not None
    shifts = [e for e in plan.elements if isinstance(e, Shift)]
    d = plan.request.spatial_dims
    spatial_in = tuple(plan.request.x.shape[2:])
    spatial_out = tuple(plan.grid_base.shape[-d:])
    custom = plan.request.output_action is not None
    layout = _layout_hint(plan)
    if layout and not plausible(spatial_out, spatial_in):
        return [layout]  # channels first reads no grid the input's makes: the sizes would say nothing
    hints = []
    ratios = [n_in / n_out for n_in, n_out in zip(spatial_in, spatial_out)]
    stride_hint = _divisibility_hint(shifts, verdicts.passed, subsampled=min(ratios) >= 1.5)
    if stride_hint:
        hints.append(stride_hint)
    # the failing shifts' pattern names the stride better than the sizes, which valid convolutions shrink too
    size_hint = None if custom or stride_hint else _size_hint(plan.strides, ratios, spatial_in, spatial_out)
    if size_hint:
        hints.append(size_hint)
    if plan.grid.boundary == "circular" and not custom:
        expected = tuple(n // s for n, s in zip(spatial_in, plan.strides))
        if spatial_out != expected:
            hints.append(
                f"boundary='circular' but the output's spatial size {spatial_out} is not the "
                f"input's {spatial_in} divided by the stride: only circularly padded models "
                "are equivariant on the torus; use boundary='zeros' for valid or zero-padded "
                "convolutions"
            )
    border = _border_hint(verdicts, plan.margins, _boundary(plan))
    if border:
        hints.append(border)
    # stride='auto' found no clean stride: a symptom, after the causes the numbers or the layers name
    unclear = [] if plan.stride_clean or noisy else [_unclear_stride_hint(plan)]
    tail = [*unclear, *([layout] if layout else [])]  # a layout only the shape suggests comes last
    if hints or noisy:
        return [*hints, *tail]
    nonzero = [e for s, e in zip(shifts, verdicts.errors) if not s.is_identity]
    passing_nonzero = [p for s, p in zip(shifts, verdicts.passed) if not s.is_identity]
    if not nonzero or any(passing_nonzero):
        return tail
    found = _everywhere_hints(plan, verdicts, min(nonzero), spatial_out, read)
    if found or tail:
        return [*found, *tail]
    return [_everywhere_hint(plan, verdicts, min(nonzero), spatial_out)]


def _size_hint(
    strides: tuple[int, ...], ratios: list[float], spatial_in: tuple[int, ...], spatial_out: tuple[int, ...]
) -> str | None:
    """A stride that the sizes of the input and the output contradict.

    The size ratio bounds the stride but is not it (valid convolutions shrink
    the map too: 24 -> 18 -> stride 2 -> 8 is a ratio of 3), so the hint names
    the ratio and sends to ``stride="auto"``, which measures the stride.
    """
    ratio = min(ratios)
    if ratio < 1.5 or any(s > ratio * 1.05 for s in strides) or ratio < 2 * max(strides):
        return None
    shown_ratio = f"{ratio:.1f}".removesuffix(".0")
    what = (
        f"the output {spatial_out} is {shown_ratio} times smaller than the input {spatial_in}, so "
        "the model subsamples"
    )
    measure = (
        "pass stride='auto' to measure the stride (the size ratio bounds it, but valid convolutions "
        "shrink the map too), or stride= with the model's total stride"
    )
    if all(s == 1 for s in strides):
        return f"{what}, and a shift of the input moves its output by less; {measure}"
    shown = shown_per_dim(strides)
    return (
        f"stride={shown} was given, but {what} by more: a wrong stride expects the output to move by "
        f"the wrong amount, and every shift fails; {measure}"
    )


DECAY = 10.0
"""How many times the error density at the compared region's edge must exceed that at its centre for
errors everywhere to be put down to the borders."""


def _everywhere_hint(plan: Plan, verdicts: Verdicts, smallest: float, spatial_out: tuple[int, ...]) -> str:
    """Every nonzero shift fails all over the map: no symmetry, unless the error dies away from the edges
    (a boundary effect whose reach covers most of a small map fails everywhere too, but its error falls
    toward the centre, where a dense layer's or a position embedding's does not)."""
    decay = _decay(verdicts)
    if decay is not None:
        edge, centre = decay
        return (
            f"every nonzero shift fails, with errors of {smallest:.1e} or more, all over the output "
            f"{spatial_out}; but the error falls from the edges of the compared region toward its "
            f"centre ({edge:.1e} at the edge, {centre:.1e} at the centre, relative): "
            f"{causes.BOUNDARY_EFFECT} whose reach covers most of the map, not a layer without symmetry; "
            f"{causes.LARGER_INPUT} with margin='auto', or use circular padding with boundary='circular'"
        )
    return causes.no_symmetry(
        f"every nonzero shift fails, with errors of {smallest:.1e} or more, and the error is not confined "
        "to the borders"
    )


def _everywhere_hints(
    plan: Plan, verdicts: Verdicts, smallest: float, spatial_out: tuple[int, ...], read: ReadStructure
) -> list[str]:
    """Every nonzero shift fails: what the error's place and the model's layers say, ranked (a
    position embedding, subsampling the output was brought back from, a global pooling the shift
    changed, borders whose reach covers the map, attention under the zeros boundary)."""
    shifts = [e for e in plan.elements if isinstance(e, Shift)]
    failing = [s for s, ok in zip(shifts, verdicts.passed) if not ok and not s.is_identity]
    structure = read()
    found = []
    if structure is not None:
        found += [
            _positional_hint(structure),
            _subsampling_hint(structure, failing, plan.strides, invariance=False),
            _global_pool_hint(structure, verdicts.tolerance),
        ]
    found += [_reach_hint(plan, verdicts, structure, failing, spatial_out, smallest)]
    if structure is not None:
        found.append(_attention_hint(plan, structure))
    return [h for h in found if h]


def _positional_hint(structure: Structure) -> str | None:
    if structure.positional is None:
        return None
    return causes.positions(*structure.positional)


def _subsampling_hint(
    structure: Structure, failing: Sequence[Shift], strides: tuple[int, ...], *, invariance: bool
) -> str | None:
    """The model subsamples deeper than its output's stride, and a failing shift is not a multiple."""
    if structure.coarsest is None:
        return None
    name, coarsest = structure.coarsest
    if all(c <= s for c, s in zip(coarsest, strides)):
        return None
    odd = [s for s in failing if not s.divisible_by(coarsest)]
    if not odd:
        return None
    shown = shown_per_dim(coarsest)
    if invariance:
        lead = f"the model subsamples by {shown} before it pools (down to {name!r}; {odd[0]} fails)"
        return causes.pooled_after_subsampling(lead, coarsest)
    return causes.brought_back(
        f"the model subsamples by {shown} inside (down to {name!r}) and brings the map back to stride "
        f"{shown_per_dim(strides)} ({odd[0]} fails)",
        coarsest,
    )


def _global_pool_hint(structure: Structure, tolerance: Tolerance) -> str | None:
    """A global pooling whose value the failing shift changed."""
    changed = [p for p in structure.pooled if p.change > tolerance.rtol]
    if not changed:
        return None
    first = changed[0]
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return causes.global_pooling(
        f"{first.name}{more} pools the whole map into one value per channel, and the shift changes it "
        f"by a relative {first.change:.1e}"
    )


def _reach_hint(
    plan: Plan,
    verdicts: Verdicts,
    structure: Structure | None,
    failing: Sequence[Shift],
    spatial_out: tuple[int, ...],
    smallest: float,
) -> str | None:
    """Errors that vanish beyond some distance from the edges, however little that leaves; or a map
    the borders' reach covers."""
    cover = _cover(plan, structure, failing, spatial_out)
    confined = _margin_that_passes(verdicts, keep=_anatomy.KEEP_ANY)
    head = (
        f"every nonzero shift fails, with errors of {smallest:.1e} or more, all over the output {spatial_out}"
    )
    if confined is not None:
        kept = _kept(plan, failing, spatial_out, confined)
        boundary = plan.request.boundary
        carrying = [] if structure is None else _anatomy.reaching(structure.padded, boundary)
        if boundary == "circular" and carrying:
            why = f"{causes.not_circular(carrying[0])}: {causes.pad_circularly(carrying[0])}"
            return causes.beyond_the_borders(head, confined, kept, why)
        return causes.beyond_the_borders(head, confined, kept, "" if cover is None else causes.covered(cover))
    if cover is not None:
        return f"{head}; {causes.covered(cover)}"
    return None


def _cover(
    plan: Plan, structure: Structure | None, failing: Sequence[Shift], spatial_out: tuple[int, ...]
) -> _anatomy.Cover | None:
    """The borders' reach, where it covers the compared region of every failing shift."""
    if structure is None or not failing or plan.grid is None:
        return None
    covers = []
    for shift in sorted(failing, key=lambda s: sum(abs(o) for o in s)):  # the largest region first
        moved = tuple(round(o / s) for o, s in zip(shift, plan.strides))
        sides = [n - abs(o) - 2 * m for n, o, m in zip(spatial_out, moved, plan.margins)]
        dims = [i for i, o in enumerate(shift) if o]
        covers.append(_anatomy.covering(structure.padded, plan.grid.boundary, plan.strides, sides, dims))
    return covers[0] if all(c is not None for c in covers) else None


def _kept(plan: Plan, failing: Sequence[Shift], spatial_out: tuple[int, ...], margin: int) -> float:
    """The share of the smallest failing shift's compared region that a margin keeps."""
    shift = min(failing, key=lambda s: sum(abs(o) for o in s))
    moved = [round(o / s) for o, s in zip(shift, plan.strides)]
    sides = [max(0, n - abs(o) - 2 * m) for n, o, m in zip(spatial_out, moved, plan.margins)]
    return causes.kept_share(sides, margin)


def _attention_hint(plan: Plan, structure: Structure) -> str | None:
    """Self-attention under the zeros boundary: what enters and leaves at the edges reaches every token."""
    if not structure.attention or plan.request.boundary != "zeros":
        return None
    return causes.attention(structure.attention)


def _pooled_borders_hint(plan: Plan, structure: Structure, failing: Sequence[Shift]) -> str | None:
    """A pooled output that changes at the borders: content leaving under the zeros boundary, or a
    padding that is not circular under the circular one."""
    pooled = _pooling(structure)
    if plan.request.boundary == "circular":
        layers = _anatomy.reaching(structure.padded, "circular")
        if not layers:
            return None
        return causes.global_pooling(
            f"the model pools the whole map (at {pooled}), but {causes.not_circular(layers[0])}: the maps "
            f"before the pooling change at the edges, and the pooled value with them ("
            f"{causes.pad_circularly(layers[0])})"
        )
    if plan.request.crop is not None or not _content_at_edges(plan.request.x, failing):
        return None
    padded = sum(layer.pads for layer in structure.padded)
    padding = (
        f", and the padding of {padded} layer{'s' if padded > 1 else ''} sees the new edges" if padded else ""
    )
    return causes.global_pooling(
        f"the model pools the whole map (at {pooled}), but under boundary='zeros' a shift drops the content "
        f"at one edge and fills zeros in at the other{padding}, and the pooled value changes with what "
        "leaves and enters"
    )


def _pooling(structure: Structure) -> str:
    """Where a model pools the whole map: its first global pooling, else its first attention layer."""
    return structure.pooled[0].name if structure.pooled else repr(structure.attention[0])


def _content_at_edges(x: torch.Tensor, failing: Sequence[Shift]) -> bool:
    """Whether ``x`` is nonzero within the largest failing shift of an edge it moves across."""
    for i in range(x.dim() - 2):
        reach = max((abs(s.offsets[i]) for s in failing), default=0)
        if reach == 0:
            continue
        along = x.movedim(2 + i, -1)
        if bool(along[..., :reach].ne(0).any()) or bool(along[..., -reach:].ne(0).any()):
            return True
    return False


def _decay(verdicts: Verdicts) -> tuple[float, float] | None:
    """The relative error at the edge and at the centre of the compared regions, if it falls by ``DECAY``."""
    sums = verdicts.sums
    if sums.border_diff is None or sums.border_ref is None or sums.border_count is None:
        return None
    count = sums.border_count.unsqueeze(1)  # (K, 1, depth): positions at each distance
    diff = sums.border_diff.sum(dim=(0, 1)) / count.sum(dim=(0, 1)).clamp_min(1)
    ref = sums.border_ref.sum(dim=(0, 1)) / count.sum(dim=(0, 1)).clamp_min(1)
    present = (sums.border_count.sum(0) > 0).nonzero().flatten().tolist()
    if len(present) < 2 or float(ref.mean()) <= 0:
        return None
    scale = float(ref[present].mean())
    edge, centre = (math.sqrt(float(diff[r]) / scale) for r in (present[0], present[-1]))
    return (edge, centre) if edge > DECAY * centre else None


def _unclear_stride_hint(plan: Plan) -> str:
    """``stride="auto"`` found no shift that moves the output cleanly."""
    x = plan.request.x
    shift = tuple(1 if i == 0 else 0 for i in range(x.dim() - 2))
    return (
        "stride='auto' found no input shift that the output follows cleanly, so the output is "
        "not a map that moves with the input at any one stride: a model that subsamples and then "
        "upsamples back to full resolution (an FCN or U-Net head) follows only multiples of its "
        "coarsest stride, and a layer without symmetry follows none. "
        f"profile_equivariance(model, x, shift={shift}) names the layer where it breaks; then test "
        "multiples of that layer's stride (multiples_of(k, max_shift=...))"
    )


def _layout_hint(plan: Plan) -> str | None:
    """A default (channels first) reading of an output whose shape reads as another layout."""
    if plan.request.layout is not None:
        return None
    shape, spatial_in = tuple(plan.base.shape), tuple(plan.request.x.shape[2:])
    readings = other_readings(shape, spatial_in)
    if not readings:
        return None
    layout = readings[0]
    name = repr(layout) if isinstance(layout, Tokens) else repr(layout.name)
    return (
        f"the output of shape {shape} was read as channels first, but it reads as {layout.describe()} "
        f"on a grid of the input's {spatial_in} as well; if that is its layout, pass layout={name}"
    )


def _transform_hints(verdicts: Verdicts, margin: tuple[int, ...], noisy: bool, plan: Plan) -> list[str]:
    """Rotations and flips: a boundary effect, or no symmetry at all."""
    border = _border_hint(verdicts, margin, _boundary(plan))
    if border:
        return [border]
    if noisy:
        return []
    failing = [e for e, ok in zip(plan.elements, verdicts.passed) if not ok]
    own = list(dict.fromkeys(h for e in failing if (h := e.failure_hint("the output", None)) is not None))
    if own:  # the elements say what their failure means
        return own
    return [_orientation_hint(plan, failing)]


def _orientation_hint(plan: Plan, failing: Sequence[Action] = ()) -> str:
    """A map that does not rotate with the input: a group convolution's fields, or no symmetry.

    The advice of a group convolution's orientation fields is for elements that only move positions of
    the grid (rotations, flips); an element of the caller's own that moves anything else (a node
    permutation, a channel shuffle) gets no advice about p4."""
    fields = plan.request.fields
    if fields is not None:
        other = "p4m" if fields.group == "p4" else "p4"
        return (
            f"the output does not transform under the action given ({fields}): check the group "
            f"(regular({other!r})?), the number of fields, the numbering of the orientations "
            f"(direction={-fields.direction} numbers them the other way) and, for p4m, which dim the "
            f"reflection reverses (reflection={-3 - fields.reflection}); or check an earlier layer "
            "with layer="
        )
    assert plan.grid_base is not None
    channels = plan.grid_base.shape[1] if plan.grid_base.dim() == plan.request.spatial_dims + 2 else 0
    grid_moves = all(type(e).moves_positions_only for e in failing)
    if channels and channels % 4 == 0 and grid_moves:
        return causes.no_group_symmetry(
            f"the output does not rotate or flip with the input as a map of scalars. If it is a p4 / p4m "
            f"group-convolution layer (escnn, e2cnn), its {channels} channels are orientation fields that "
            "also permute: pass output_action=regular('p4') (4 channels a field) or regular('p4m') "
            f"(8, with reflections), from equivariance import regular. Otherwise"
        )
    if grid_moves:
        return causes.no_group_symmetry("the output does not rotate or flip with the input")
    nouns = sorted({e.noun for e in failing}) or ["transform"]
    return causes.not_followed(f"the output does not follow the {' or '.join(nouns)}s of the input")


def _alignment_hints(plan: Plan) -> list[str]:
    """Strided layers whose sampling grid a rotation or flip does not map onto itself, and the size to use."""
    hints = []
    spatial_in = tuple(plan.request.x.shape[2:])
    for index, layer in enumerate(plan.strided):
        for dim in layer.misaligned():
            n, k, s, p = layer.size[dim], layer.kernel[dim], layer.stride[dim], layer.padding[dim]
            wanted = layer.aligned_size(dim)
            if index == 0 and len(layer.size) == len(spatial_in):  # sizes before it differ by a constant
                size = spatial_in[dim] + wanted - n
                fix = f"use an input of size {size} in that dim (the layer then sees {wanted})"
            else:
                fix = f"change the input size so that this layer sees {wanted}"
            lead = (
                f"layer {layer.name!r} (kernel {k}, stride {s}, padding {p}) gets a map of size {n}, and "
                f"{n} + 2*{p} - {k} = {n + 2 * p - k} is not a multiple of {s}"
            )
            hints.append(causes.misaligned_grid(lead, fix))
            break  # one hint a layer
    return hints


def _divisibility_hint(
    shifts: Sequence[Shift], passed: Sequence[bool], *, subsampled: bool, invariance: bool = False
) -> str | None:
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
        pattern = (
            f"errors only at shifts that {k} does not divide ({failing[0]} fails, {multiples[0][0]} passes), "
            f"which looks like a stride-{k} layer"
        )
        if invariance:
            return causes.pooled_after_subsampling(f"{pattern} before the pooling", k)
        if subsampled:
            return causes.aliasing(pattern, k, also=f"pass stride={k} if the output is subsampled by {k}")
        return causes.brought_back(f"{pattern} followed by upsampling back to full resolution", k)
    return None


def _boundary(plan: Plan) -> str:
    """The boundary a fix may change: none for crops of a larger image."""
    return "crop" if plan.request.crop is not None else plan.request.boundary


def _border_hint(verdicts: Verdicts, margin: tuple[int, ...], boundary: str) -> str | None:
    """Errors that vanish once ``r`` more samples are dropped at each edge."""
    r = _margin_that_passes(verdicts, KEEP_FRACTION)
    return None if r is None else causes.borders(r, tuple(m + r for m in margin), boundary)


def _margin_that_passes(verdicts: Verdicts, keep: float) -> int | None:
    """``judge.margin_that_passes`` of the check's sums at the borders, where it kept them."""
    sums = verdicts.sums
    if sums.border_diff is None or sums.border_ref is None or sums.border_count is None:
        return None
    return margin_that_passes(
        sums.border_diff, sums.border_ref, sums.border_count, verdicts.tolerance, sums.scale, keep
    )
