"""The plan of a measurement (``make_plan``): ``f(x)`` computed once, its layout read, ``"auto"`` resolved
once, and the rows the runner sends fixed: the noise floor's first, then the elements checked; ``measure``
runs them and returns the sums."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from equivariance._engine import auto as _auto
from equivariance._engine.alignment import Strided, strided_layers
from equivariance._engine.arguments import (
    DEFAULT_MAX_SHIFT,
    IDENTITY_BOX,
    Request,
    check_fits,
    check_not_identity,
)
from equivariance._engine.copies import ArgumentCopies, Copies, GraphCopies
from equivariance._engine.memory import CPU_MIN_CHUNK, chunk_size
from equivariance._engine.part_sums import PartSums
from equivariance._engine.parts import Arguments, OutputParts, RoundTrip
from equivariance._engine.runner import Base, Consumer, ModelConsumer, Runner
from equivariance._engine.sinks import FlatSums, GridSums, Sums, check_finite
from equivariance._engine.validation import shown_per_dim
from equivariance.actions import Action, Grid, Identity
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst, Layout, Tokens
from equivariance.regular import Regular
from equivariance.shifts import Shift, multiples_of

FLOOR_SAMPLES = 1
"""How many samples (the last of ``x``) the noise floor's identity sends (docs/concepts.md)."""


def floor_samples(request: Request) -> int:
    """How many samples the noise floor sends: the last ``FLOOR_SAMPLES`` of ``x``, or all of them
    where the caller chose the batch size (a model that needs batches of ``len(x)`` then gets whole
    rows in every chunk); none without a noise floor."""
    if not request.noise_floor:
        return 0
    n = len(request.inputs)
    return n if isinstance(request.batch_size, int) else min(FLOOR_SAMPLES, n)


@dataclass(frozen=True)
class Plan:
    """A request resolved against the model: ``base`` is ``f(x)`` (a copy; for several outputs their parts
    side by side, ``outputs``), ``grid`` and ``grid_base`` the output's grid and ``base`` on it (None for
    invariance), ``rows`` what the runner sends (the noise floor's first), ``inferred`` a sentence for
    each ``"auto"`` resolved, ``stride_clean`` False where ``stride="auto"`` fell back on the size ratio,
    ``strided`` the strided layers met (for rotations and flips), and ``acting`` the element each row
    expects of several outputs (the identity for the floor's rows and for invariance)."""

    request: Request
    base: torch.Tensor
    grid: Grid | None
    grid_base: torch.Tensor | None
    strides: tuple[int, ...]
    margins: tuple[int, ...]
    elements: tuple[Action, ...]
    rows: tuple[Action, ...]
    batch_size: int
    inferred: tuple[str, ...] = field(default=())
    stride_clean: bool = True
    strided: tuple[Strided, ...] = field(default=())
    outputs: OutputParts | None = None
    acting: tuple[Action, ...] = field(default=())

    @property
    def noise_rows(self) -> int:
        """How many rows come before the elements checked (1 with a noise floor)."""
        return len(self.rows) - len(self.elements)

    @property
    def skipped(self) -> int:
        """How many items of the noise floor's rows are not sent: the runner skips them, the first
        items of all; each floor row sends ``floor_samples`` items (all with a batch size the caller
        chose), the last ones before the elements checked (see ``table``)."""
        return self.noise_rows * (len(self.request.inputs) - floor_samples(self.request))

    @property
    def sent(self) -> int:
        """How many items the runner sends: those of the elements checked and the floor's."""
        return len(self.rows) * len(self.request.inputs) - self.skipped

    def table(self) -> torch.Tensor | None:
        """Which row's element each item sends, ``(rows, samples)``; None where each sends its own.

        The floor's items sent are the last of its rows (see ``skipped``), so
        with several floor rows (the identity, round trips) they lie in the
        last rows: they are given the floor's elements in turn, ``floor_samples``
        items each, on the last samples of ``x`` (one each by default).
        """
        n, k = len(self.request.inputs), self.noise_rows
        table = torch.arange(len(self.rows)).repeat_interleave(n)
        floor = torch.arange(k).repeat_interleave(floor_samples(self.request))
        if torch.equal(table[self.skipped : k * n], floor):
            return None
        table[self.skipped : k * n] = floor
        return table.reshape(len(self.rows), n)


# -- the plan: one unshifted pass, "auto" resolved ---------------------------------------------------


def make_plan(runner: Runner, request: Request) -> Plan:
    """The unshifted pass, the layout, the stride and margin, the elements and the rows (see module)."""
    if request.arguments is not None:
        return _parts_plan(runner, request)
    elements = request.elements or ()
    transformed = any(not isinstance(e, Shift) for e in elements)
    with strided_layers(request.forward.model, enabled=transformed) as seen:
        plan = _make_plan(runner, request)
    return dataclasses.replace(plan, strided=tuple(seen)) if seen else plan


def _make_plan(runner: Runner, request: Request) -> Plan:
    x, d, forward = request.x, request.spatial_dims, request.forward
    meter = _needs_meter(request)
    support = None
    if request.margin == _auto.AUTO and request.mode == "equivariance":
        with runner.differentiable(forward, x, meter=meter) as (leaf, output, base):
            check_finite(base.output, "the unshifted input x")
            layout, notes = _resolve_layout(request, base.output)
            support = _auto.receptive_support(leaf, layout.to_grid(output, d), d)
    else:
        base = runner.base(forward, x, meter=meter)
        check_finite(base.output, "the unshifted input x")
        layout, notes = _resolve_layout(request, base.output)
    if request.mode == "invariance":
        elements = request.elements or tuple(_shift_box(request, (1,) * d))
        return _finish(request, base, None, (1,) * d, (0,) * d, elements, notes)
    strides, notes, clean = _resolve_stride(runner, request, base, layout, notes)
    zeros = _auto.zero_weights(forward.model) if support is not None else []
    if zeros:
        support = _auto.architecture_support(runner, forward, x, layout, zeros)
    names = [name for name, _ in zeros]
    margins = request.margin if support is None else _auto.receptive_margin(support, strides, names)
    if isinstance(margins, _auto.Inferred):
        notes = (*notes, margins.note)
        margins = margins.value
    assert not isinstance(margins, str)
    grid = Grid(d, strides, request.boundary, layout)
    elements = request.elements or tuple(_shift_box(request, strides))
    plan = _finish(request, base, grid, strides, margins, elements, notes)
    return plan if clean else dataclasses.replace(plan, stride_clean=False)


FLOOR_ROUND_TRIPS = 2
"""How many elements that round (``Action.exact`` False) the noise floor moves there and back."""


def _parts_plan(runner: Runner, request: Request) -> Plan:
    """The plan of several inputs and outputs: ``f(x)`` once, its parts read, and the rows: the
    identity and the round trips of a few inexact elements (the noise floor), then the elements."""
    forward = request.forward
    base = runner.base(forward, request.inputs, meter=_needs_meter(request))
    check_finite(base.output, "the inputs x as given")
    assert forward.parts is not None
    elements = request.elements or ()
    floor: tuple[Action, ...] = ()
    if request.noise_floor:
        trips = [
            RoundTrip(e) for e in itertools.islice((e for e in elements if not e.exact), FLOOR_ROUND_TRIPS)
        ]
        floor = (Identity(), *trips)
    rows = (*floor, *elements)
    moving = request.mode == "equivariance"
    acting = tuple(Identity() for _ in floor) + (elements if moving else tuple(Identity() for _ in elements))
    plan = Plan(
        request, base.output, None, None, (), (), elements, rows, 0, outputs=forward.parts, acting=acting
    )
    size = chunk_size(request.batch_size, request.x, base.bytes_per_sample, plan.sent)
    return dataclasses.replace(plan, batch_size=size)


def _needs_meter(request: Request) -> bool:
    """Whether the chunks are sized from the activations the unshifted pass meters.

    Not for a given batch size, nor off the CPU by default; nor for a sweep of
    at most ``CPU_MIN_CHUNK`` copies, which is one chunk whatever the
    activations (up to 32 MiB a sample), so the hooks would only cost time.
    """
    if request.batch_size == "auto":
        return True
    if request.batch_size is not None or request.x.device.type != "cpu":
        return False
    if request.stride == "auto" and request.elements is None:
        return True
    strides = (1,) * request.spatial_dims if request.stride == "auto" else request.stride
    rows = len(request.elements) if request.elements is not None else len(_shift_box(request, strides))
    return rows * len(request.inputs) + floor_samples(request) > CPU_MIN_CHUNK


def _resolve_layout(request: Request, base: torch.Tensor) -> tuple[Layout, tuple[str, ...]]:
    """The output's layout: the caller's (a tokens grid resolved against the input), else channels first."""
    if request.mode == "invariance":
        return ChannelsFirst(), ()
    d, spatial_in = request.spatial_dims, tuple(request.x.shape[2:])
    layout = request.layout or ChannelsFirst()
    notes: tuple[str, ...] = ()
    if isinstance(layout, Tokens) and layout.grid is None:
        layout = layout.resolved(tuple(base.shape), spatial_in)
        notes = (f"layout {layout.describe()}: the input's grid {spatial_in} over one patch size",)
    elif isinstance(layout, Tokens):
        stride = None if request.stride == _auto.AUTO else request.stride
        layout.check_grid(spatial_in, stride, "layout=")  # type: ignore[arg-type]
    if layout.spatial_shape(tuple(base.shape), d) is None:
        for name, fix in (
            ("stride", "pass layer= to measure a layer with spatial output, or use check_invariance"),
            ("margin", "a margin only applies to maps, pass layer= to measure one"),
        ):
            if getattr(request, name) == _auto.AUTO and isinstance(layout, ChannelsFirst):
                raise InvalidArgument(
                    f"{name}='auto' needs an output with {d} spatial dims, found an output of shape "
                    f"{tuple(base.shape)}; {fix}"
                )
        if isinstance(layout, ChannelsFirst):
            raise InvalidArgument(
                f"the output of shape {tuple(base.shape)} has no channel dim and {d} spatial dims to "
                f"carry a {_noun(request)} of the input's {d} spatial dims (expected (N, C, *spatial)); "
                "pass layout='channels_last' or layout=Tokens(grid, prefix=...) if its channels are "
                "last or it is a sequence of tokens, layer= to measure a layer with spatial output, "
                "or use check_invariance to test that it does not change"
            )
        layout.check(tuple(base.shape), d, "the output")
    return layout, notes


def _resolve_stride(
    runner: Runner, request: Request, base: Base, layout: Layout, notes: tuple[str, ...]
) -> tuple[tuple[int, ...], tuple[str, ...], bool]:
    if request.stride != "auto":
        return request.stride, notes, True
    d = request.spatial_dims
    candidates = sum(request.x.shape[2:]) * len(request.x)  # an upper bound on the copies it sends
    size = chunk_size(request.batch_size, request.x, base.bytes_per_sample, candidates)
    inferred = _auto.infer_stride(
        runner, request.forward, request.x, base.output, layout, request.boundary, size
    )
    assert len(inferred.value) == d
    return inferred.value, (*notes, inferred.note), inferred.clean


def _shift_box(request: Request, strides: tuple[int, ...]) -> list[Shift]:
    """The default shifts: every multiple of the stride in the box ``[-max_shift, max_shift]``."""
    spatial = tuple(request.x.shape[2:])
    step = (1,) * len(spatial) if request.output_action is not None else strides
    if request.max_shift is None:
        bound = tuple(min(DEFAULT_MAX_SHIFT * s, (n - 1) // s * s) for s, n in zip(step, spatial))
    else:
        bound = request.max_shift
    shifts = multiples_of(step, bound, ndim=len(spatial))
    check_not_identity(shifts, "check", "a check that cannot fail", IDENTITY_BOX)
    return shifts


def _finish(
    request: Request,
    base: Base,
    grid: Grid | None,
    strides: tuple[int, ...],
    margins: tuple[int, ...],
    elements: tuple[Action, ...],
    notes: tuple[str, ...],
) -> Plan:
    rows = elements
    if request.noise_floor:
        identity: Action = (
            Shift.identity(request.spatial_dims) if isinstance(elements[0], Shift) else Identity()
        )
        rows = (identity, *elements)
    grid_base = None
    if grid is not None:
        grid_base = grid.layout.to_grid(base.output, grid.spatial_dims)
        if request.output_action is None:
            if request.fields is not None and grid_base.dim() >= 2:
                request.fields.fields_of(grid_base.shape[1], f"the output of shape {tuple(grid_base.shape)}")
            auto = request.margin == _auto.AUTO
            _check_output_fits(_acting(request, elements), grid, grid_base, margins, request.fields, auto)
    plan = Plan(request, base.output, grid, grid_base, strides, margins, elements, rows, 0, notes)
    size = chunk_size(request.batch_size, request.x, base.bytes_per_sample, plan.sent)
    return dataclasses.replace(plan, batch_size=size)


def _check_output_fits(
    elements: Sequence[Action],
    grid: Grid,
    grid_base: torch.Tensor,
    margins: tuple[int, ...],
    fields: Regular | None = None,
    auto: bool = False,
) -> None:
    """Every element acts on the output grid (a stride divides its shifts; a transform maps the
    grid onto itself) and leaves something to compare (``auto``: the margins were measured)."""
    d = grid.spatial_dims
    spatial = tuple(grid_base.shape[-d:])
    shown = f"the output of shape {tuple(grid_base.shape)}"
    how = "as on the input" if fields is None else f"through output_action={fields!r}"
    for element in elements:
        if not isinstance(element, Shift):
            try:
                check_fits(element, grid_base, grid, shown)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"the {element.noun}s act on {shown} {how}, and {exc}; pass layer= to measure a "
                    "layer whose output they map onto itself"
                ) from None
        region = element.region(spatial, grid)  # raises for a shift the stride does not divide
        if all(r.stop - r.start - 2 * m > 0 for r, m in zip(region, margins)):
            continue
        if auto:
            fix = "a larger input (a zero canvas)"
            fix += (
                ", smaller shifts, boundary='circular' with circular padding"
                if isinstance(element, Shift)
                else ""
            )
            raise InvalidArgument(
                f"margin='auto' measured a receptive-field radius of {shown_per_dim(margins)} output "
                f"samples, which leaves nothing of the output {spatial} to compare for {element.noun} "
                f"{element}; the model sees the whole input from every output, so it cannot be checked on "
                f"maps this small: use {fix}, or pass a smaller margin= explicitly"
            )
        margin_note = f" and margin {margins}" if any(margins) else ""
        if not isinstance(element, Shift):
            raise InvalidArgument(
                f"the output's spatial dims {spatial} cannot carry {element.noun} {element}{margin_note}: "
                "nothing of the output is left to compare; use a smaller margin, a larger input or "
                "a layer= with larger maps"
            )
        what = f"output shift {element / grid.stride}" if grid.subsampled else f"shift {element}"
        fix = "or a smaller margin" if any(margins) else ", a larger input or a layer= with larger maps"
        raise InvalidArgument(
            f"the output's spatial dims {spatial} cannot carry {what}{margin_note}: "
            f"nothing of the output is left to compare; use smaller shifts {fix}".replace(" ,", ",")
        )


def _noun(request: Request) -> str:
    elements = request.elements
    return "shift" if elements is None or all(isinstance(e, Shift) for e in elements) else "transform"


# -- running the plan -------------------------------------------------------------------------------


def measure(runner: Runner, plan: Plan, also: Sequence[Consumer] = ()) -> tuple[Sums, int]:
    """The plan's rows through the model, compared by the mode's sink; the sums and the chunk size.
    ``also`` are consumers that take the same copies (an audit's classifier)."""
    request = plan.request
    sink: GridSums | FlatSums
    if plan.grid is not None:
        assert plan.grid_base is not None
        sink = GridSums(
            plan.grid_base, plan.rows, plan.grid, plan.margins, request.output_action,
            None if request.fields is None else _acting(request, plan.rows),
        )  # fmt: skip
    else:
        sink = FlatSums(plan.base, len(plan.rows))
    return sink.sums(), _run(runner, plan, sink, _input_copies(request, plan.rows), also)


def measure_parts(runner: Runner, plan: Plan, also: Sequence[Consumer] = ()) -> tuple[list[Sums], int]:
    """The rows of a plan of several inputs and outputs through the model: the sums of each output
    part, and the chunk size. ``also``: consumers of the same copies (an audit's classifier)."""
    arguments = plan.request.arguments
    assert plan.outputs is not None
    assert arguments is not None
    sink = PartSums(plan.base, plan.outputs, plan.acting)
    copies = (
        ArgumentCopies(arguments, plan.rows)
        if isinstance(arguments, Arguments)
        else GraphCopies(arguments, plan.rows)
    )
    size = _run(runner, plan, sink, copies, also)
    return sink.sums(), size


def _run(runner: Runner, plan: Plan, sink: Any, copies: Any, also: Sequence[Consumer]) -> int:
    """The rows' ``copies`` through the model into ``sink``, in chunks; the chunk size."""
    request, n = plan.request, len(plan.request.inputs)
    note = (
        f" (the check sends {'shifted' if request.arguments is None else 'moved'} copies of x through the "
        f"model in batches of up to {plan.batch_size} samples; if the model needs a fixed batch size, pass "
        f"batch_size={n})"
        if plan.batch_size > n
        else ""
    )
    layout = plan.grid.layout if plan.grid is not None else None
    consumer = ModelConsumer(
        request.forward, [sink], tuple(plan.base.shape[1:]), layout, request.spatial_dims, note
    )
    return runner.run(
        copies, len(plan.rows), [consumer, *also], plan.batch_size, lambda row: moved_inputs(plan.rows, row),
        elements=plan.table(), skip=plan.skipped,
    )  # fmt: skip


def _acting(request: Request, elements: Sequence[Action]) -> list[Action]:
    """How the elements act on the output: as on the input, or on regular fields (``regular(...)``)."""
    fields = request.fields
    return list(elements) if fields is None else [fields.acting(e) for e in elements]


def _input_copies(request: Request, rows: Sequence[Action]) -> Copies:
    """The copies of the input each row sends: moved by the row's element, or crops of the larger image."""
    grid = Grid.of_input(request.spatial_dims, request.boundary)
    if request.crop is None:
        return Copies(request.x, rows, grid)
    offsets = torch.tensor([list(row) for row in rows if isinstance(row, Shift)], dtype=torch.long)
    return Copies.of(request.crop.x, request.crop.rows(offsets), len(rows), grid)


def moved_inputs(rows: Sequence[Action], row: torch.Tensor) -> str:
    """The inputs of a chunk in words: ``shifted inputs (shift (1, 0))``."""
    present = [rows[k] for k in torch.unique(row).tolist()]
    shifts = [str(p) for p in present if isinstance(p, Shift)]
    others = [str(p) for p in present if not isinstance(p, Shift)]
    parts = [_listed("shift", shifts)] if shifts else []
    parts += [_listed("transform", others)] if others else []
    moved = "shifted and transformed" if shifts and others else "shifted" if shifts else "transformed"
    return f"{moved} inputs ({', '.join(parts)})"


def _listed(noun: str, names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{noun} {shown}" if len(names) == 1 else f"{noun}s {shown}"
