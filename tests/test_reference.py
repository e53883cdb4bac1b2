"""Every fast path held against the slow reference loop (tests/_reference.py), over drawn models,
elements, boundaries, strides, margins, layouts and dtypes.

The library batches copies, slices references instead of moving them, sums squares in float32
where it can, pools the profile's layers and scales float64 outputs; the reference does none of
that. Where both run in float64 they must agree to rounding; in float32 to float32's rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch
from _reference import (
    as_grid,
    compare,
    equivariance_errors,
    in_float64,
    invariance_errors,
    layer_outputs,
    moved,
    region,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from equivariance import (
    Flip,
    Rot90,
    Shift,
    check_equivariance,
    check_invariance,
    equivariance_error,
    invariance_error,
    profile_equivariance,
)
from equivariance.layouts import ChannelsLast, Layout, Tokens
from equivariance.lie import profile_lie_derivative
from equivariance.tolerances import default_tolerance

SETTINGS = settings(
    max_examples=int(os.environ.get("REFERENCE_EXAMPLES", 30)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize="REFERENCE_EXAMPLES" not in os.environ,
)

# -- drawn models -------------------------------------------------------------------------------


class Ramp(nn.Module):
    """Adds a ramp along the last dim: a model that knows absolute positions (not equivariant)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[-1]
        return y + torch.arange(n, dtype=y.dtype) / n


class ChannelsLastOut(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.movedim(1, -1)


class TokensOut(nn.Module):
    """``(N, C, *grid)`` as tokens ``(N, prefix + L, C)``, the prefix tokens the mean token."""

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        tokens = y.flatten(2).transpose(1, 2)
        mean = tokens.mean(1, keepdim=True).expand(-1, self.prefix, -1)
        return torch.cat([mean, tokens], 1)


@dataclass(frozen=True)
class Case:
    model: nn.Sequential
    x: torch.Tensor
    stride: tuple[int, ...]
    layout: Layout | None
    spatial_out: tuple[int, ...]
    strides: dict[str, tuple[int, ...]]  # each layer's true cumulative stride, by name


CONV = {1: nn.Conv1d, 2: nn.Conv2d}


@st.composite
def cases(draw: st.DrawFn, *, layouts: bool = True, square: bool = False) -> Case:
    d = 2 if square else draw(st.sampled_from([1, 2]))
    depth = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = draw(st.integers(1, 3))
    c_in = channels
    total = 1
    strides: dict[str, tuple[int, ...]] = {}
    for _ in range(depth):
        out = draw(st.integers(1, 4))
        kernel = draw(st.integers(1, 3))
        stride = draw(st.sampled_from([1, 1, 2]))
        padding = draw(st.sampled_from(["valid", "zeros", "circular"]))
        pad = 0 if padding == "valid" else kernel // 2
        mode = "circular" if padding == "circular" else "zeros"
        layers.append(CONV[d](c_in, out, kernel, stride=stride, padding=pad, padding_mode=mode))
        c_in, total = out, total * stride
        strides[str(len(layers) - 1)] = strides[str(len(layers))] = (total,) * d
        layers.append(draw(st.sampled_from([nn.Tanh, nn.Identity, nn.GELU]))())
    if draw(st.booleans()):
        strides[str(len(layers))] = (total,) * d
        layers.append(Ramp())
    size = draw(st.integers(4, 7)) * total if total > 1 else draw(st.integers(6, 14))
    spatial = (size,) * d
    x = torch.randn(draw(st.integers(1, 3)), channels, *spatial, dtype=torch.float64)
    if draw(st.booleans()):  # content on a zero canvas
        inner = tuple(slice(n // 4, n - n // 4) for n in spatial)
        canvas = torch.zeros_like(x)
        canvas[(slice(None), slice(None), *inner)] = x[(slice(None), slice(None), *inner)]
        x = canvas
    model = nn.Sequential(*layers).double().eval()
    try:
        with torch.no_grad():
            spatial_out = tuple(model(x[:1]).shape[2:])
    except RuntimeError:  # a kernel larger than the map it meets
        assume(False)
    assume(all(n >= 2 for n in spatial_out))
    layout: Layout | None = None
    if layouts:
        which = draw(st.sampled_from(["first", "first", "last", "tokens"]))
        if which == "last":
            model.append(ChannelsLastOut())
            layout = ChannelsLast()
        elif which == "tokens" and d == 2:
            prefix = draw(st.integers(0, 1))
            model.append(TokensOut(prefix))
            layout = Tokens(spatial_out, prefix=prefix)
    return Case(model, x, (total,) * d, layout, spatial_out, strides)


@st.composite
def shift_lists(draw: st.DrawFn, case: Case) -> list[Shift]:
    count = draw(st.integers(1, 3))
    shifts = []
    for _ in range(count):
        offsets = []
        for s, n in zip(case.stride, case.spatial_out):
            reach = min(2, n - 1)
            offsets.append(s * draw(st.integers(-reach, reach)))
        shifts.append(Shift(tuple(offsets)))
    assume(any(not s.is_identity for s in shifts))
    return shifts


def transforms_of(draw: st.DrawFn) -> list[object]:
    pool = [Rot90(1), Rot90(2), Rot90(3), Flip(-1), Flip(-2)]
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))


# -- how close the library must come ------------------------------------------------------------


def close(found: float, truth: float, dtype: torch.dtype) -> bool:
    if dtype == torch.float64:
        return math.isclose(found, truth, rel_tol=1e-7, abs_tol=1e-12)
    return math.isclose(found, truth, rel_tol=2e-3, abs_tol=2e-5)


def agrees(report_row: object, truth: list[tuple[float, bool]], dtype: torch.dtype) -> None:
    """A report's row (worst sample over the batch) against the reference's samples."""
    errors = [e for e, _ in truth]
    worst = max(range(len(errors)), key=errors.__getitem__)
    tolerance = default_tolerance(dtype)
    assert close(report_row.error, errors[worst], dtype), (report_row, truth)  # type: ignore[attr-defined]
    if hasattr(report_row, "absolute") and (dtype == torch.float64 or errors[worst] > 1e-3):
        assert report_row.absolute == truth[worst][1], (report_row, truth)  # type: ignore[attr-defined]
    clear = all(
        (e <= (tolerance.atol if a else tolerance.rtol) / 10)
        or (e >= (tolerance.atol if a else tolerance.rtol) * 10)
        for e, a in truth
    )
    if clear:  # a verdict is only pinned away from the threshold
        expected = all(e <= (tolerance.atol if a else tolerance.rtol) for e, a in truth)
        assert report_row.passed == expected, (report_row, truth)  # type: ignore[attr-defined]


def margins_leave_room(case: Case, elements: list[object], boundary: str, margin: tuple[int, ...]) -> bool:
    for element in elements:
        box = region(element, case.spatial_out, boundary, case.stride, margin)
        if any(b.stop <= b.start for b in box):
            return False
    return True


DTYPES = st.sampled_from([torch.float64, torch.float32])


def run_in(case: Case, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    return case.model.to(dtype), case.x.to(dtype)


# -- the checks ---------------------------------------------------------------------------------


@SETTINGS
@given(st.data(), DTYPES, st.sampled_from(["zeros", "circular"]))
def test_check_equivariance_under_shifts_matches_the_reference(
    data: st.DataObject, dtype: torch.dtype, boundary: str
) -> None:
    case = data.draw(cases())
    shifts = data.draw(shift_lists(case))
    margin = tuple(data.draw(st.integers(0, 1)) for _ in case.stride)
    assume(margins_leave_room(case, shifts, boundary, margin))
    truth = equivariance_errors(
        in_float64(case.model), case.x, shifts, stride=case.stride, boundary=boundary, margin=margin,
        layout=case.layout,
    )  # fmt: skip
    model, x = run_in(case, dtype)
    report = check_equivariance(
        model, x, shifts, stride=case.stride, boundary=boundary, margin=margin, layout=case.layout
    )
    assert [r.element for r in report.results] == shifts
    for row, samples in zip(report.results, truth):
        agrees(row, samples, dtype)


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_tokens_of_a_kernel_padded_by_half_its_width_match_the_reference(boundary: str) -> None:
    """A 2x2 convolution padded by 1 takes 6 samples to 7 at stride 1: one more than ``ceil(n / s)``,
    the most the token check allows (drawn by Hypothesis with ``REFERENCE_EXAMPLES=200``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2, padding=1), nn.Tanh(), TokensOut(1)).double().eval()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    shifts, layout = [Shift(0, 1), Shift(-1, 2)], Tokens((7, 7), prefix=1)
    truth = equivariance_errors(model, x, shifts, stride=(1, 1), boundary=boundary, layout=layout)
    report = check_equivariance(model, x, shifts, stride=1, boundary=boundary, layout=layout)
    assert report.output_shape == (2, 50, 2)
    for row, samples in zip(report.results, truth, strict=True):
        agrees(row, samples, torch.float64)


@SETTINGS
@given(st.data(), DTYPES)
def test_check_equivariance_under_transforms_matches_the_reference(
    data: st.DataObject, dtype: torch.dtype
) -> None:
    case = data.draw(cases(square=True))
    transforms = transforms_of(data.draw)
    margin = tuple(data.draw(st.integers(0, 1)) for _ in case.stride)
    assume(margins_leave_room(case, transforms, "zeros", margin))
    truth = equivariance_errors(in_float64(case.model), case.x, transforms, margin=margin, layout=case.layout)
    model, x = run_in(case, dtype)
    report = check_equivariance(model, x, transforms=transforms, margin=margin, layout=case.layout)  # type: ignore[arg-type]
    for row, samples in zip(report.results, truth):
        agrees(row, samples, dtype)


@SETTINGS
@given(st.data(), DTYPES, st.sampled_from(["zeros", "circular"]))
def test_equivariance_error_per_sample_matches_the_reference(
    data: st.DataObject, dtype: torch.dtype, boundary: str
) -> None:
    case = data.draw(cases())
    (shift,) = data.draw(shift_lists(case).filter(lambda s: len(s) == 1))
    assume(not shift.is_identity)
    truth = equivariance_errors(
        in_float64(case.model), case.x, [shift], stride=case.stride, boundary=boundary, layout=case.layout
    )[0]
    model, x = run_in(case, dtype)
    found = equivariance_error(
        model, x, shift, stride=case.stride, boundary=boundary, layout=case.layout, reduction="none"
    )
    assert found.shape == (len(x),)
    for value, (error, _) in zip(found.tolist(), truth):
        assert close(value, error, dtype), (found, truth)


class Pooled(nn.Module):
    def __init__(self, body: nn.Module, pool: bool) -> None:
        super().__init__()
        self.body, self.pool = body, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y.flatten(2).mean(-1) if self.pool else y.flatten(1)


@SETTINGS
@given(st.data(), DTYPES, st.sampled_from(["zeros", "circular"]), st.booleans())
def test_check_invariance_matches_the_reference(
    data: st.DataObject, dtype: torch.dtype, boundary: str, pool: bool
) -> None:
    case = data.draw(cases(layouts=False))
    shifts = data.draw(shift_lists(case))
    model = Pooled(case.model, pool).double().eval()
    truth = invariance_errors(in_float64(model), case.x, shifts, boundary=boundary)
    model, x = model.to(dtype), case.x.to(dtype)
    report = check_invariance(model, x, shifts, boundary=boundary)
    for row, samples in zip(report.results, truth):
        agrees(row, samples, dtype)
    found = invariance_error(model, x, shifts[-1], boundary=boundary, reduction="none")
    for value, (error, _) in zip(found.tolist(), truth[-1]):
        assert close(value, error, dtype), (found, truth)


# -- the profile --------------------------------------------------------------------------------


@SETTINGS
@given(st.data(), DTYPES, st.sampled_from(["zeros", "circular"]))
def test_profile_rows_match_the_reference_layer_by_layer(
    data: st.DataObject, dtype: torch.dtype, boundary: str
) -> None:
    case = data.draw(cases(layouts=False))
    (shift,) = data.draw(shift_lists(case).filter(lambda s: len(s) == 1))
    assume(not shift.is_identity)
    reference = in_float64(case.model)
    model, x = run_in(case, dtype)
    profile = profile_equivariance(model, x, shift, boundary=boundary)
    compared = 0
    for row in profile.layers:
        # every layer at its true cumulative stride (none where its layout is ambiguous: not compared)
        assert row.stride == (case.strides[row.name] if row.compared else None), (row, case.strides)
        if not row.compared or row.stride is None or not row.divisible or row.layout != "channels_first":
            continue
        truth = []
        for n in range(len(x)):
            xn = case.x[n : n + 1]
            base = layer_outputs(reference, xn)[row.name]
            out = layer_outputs(reference, moved(xn, shift, boundary))[row.name]
            ref = moved(base, shift, boundary, row.stride)
            d = len(row.stride)
            box = (slice(None), slice(None), *region(shift, base.shape[2:], boundary, row.stride, (0,) * d))

            truth.append(compare(as_grid(out, None, d)[box], ref[box]))
        agrees(row, truth, dtype)
        compared += 1
    assume(compared >= 1)


def test_the_reference_has_teeth() -> None:
    """The oracle itself tells an equivariant model from one that is not, and moves like the library."""
    conv = nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular").double()
    x = torch.randn(2, 1, 12, dtype=torch.float64)
    exact = equivariance_errors(conv, x, [Shift(3)], boundary="circular")
    assert max(e for e, _ in exact[0]) < 1e-14
    broken = equivariance_errors(nn.Sequential(conv, Ramp()), x, [Shift(3)], boundary="circular")
    assert min(e for e, _ in broken[0]) > 1e-2
    zeros = torch.zeros(1, 1, 6, dtype=torch.float64)
    unbiased = nn.Conv1d(1, 2, 3, padding=1, bias=False).double()
    assert equivariance_errors(unbiased, zeros, [Shift(1)]) == [[(0.0, True)]]
    assert torch.equal(moved(torch.arange(4.0), Shift(1), "zeros"), torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert torch.equal(moved(torch.arange(4.0), Shift(-1), "circular"), torch.tensor([1.0, 2.0, 3.0, 0.0]))


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_the_reference_is_right_at_extreme_scales(scale: float) -> None:
    ramp = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular"), Ramp()).double()
    x = torch.randn(1, 1, 10, dtype=torch.float64)
    plain = equivariance_errors(ramp, x, [Shift(2)], boundary="circular")[0][0][0]
    scaled = equivariance_errors(lambda t: ramp(t) * scale, x, [Shift(2)], boundary="circular")[0][0][0]
    assert math.isclose(plain, scaled, rel_tol=1e-12)


# -- the stride of every layer ------------------------------------------------------------------


class Halve(nn.Module):
    """Average pooling by 2 in ``forward``: a module with no ``stride`` attribute, read off the sizes."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(y, 2)


POOL = {1: (nn.MaxPool1d, nn.AvgPool1d), 2: (nn.MaxPool2d, nn.AvgPool2d)}
TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}
ADAPTIVE = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def grid_step(draw: st.DrawFn, d: int, sizes: tuple[int, ...]) -> tuple[nn.Module, Fraction]:
    """A layer that keeps, subsamples or upsamples the grid, and what it does to the stride."""
    kind = draw(st.sampled_from(["conv", "pool", "upsample", "transposed", "adaptive", "halve", "tanh"]))
    small = min(sizes)
    if kind == "conv":
        kernel, s = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        return CONV[d](1, 1, kernel, stride=s, padding=draw(st.integers(0, (kernel - 1) // 2))), Fraction(s)
    if kind == "pool":
        kernel, s = draw(st.integers(2, 3)), draw(st.integers(1, 3))
        pool = draw(st.sampled_from(POOL[d]))(
            kernel, s, padding=draw(st.integers(0, kernel // 2)), ceil_mode=draw(st.booleans())
        )
        return pool, Fraction(s)
    if kind in ("upsample", "transposed") and small <= 16:
        f = draw(st.integers(2, 3))
        if kind == "upsample":
            return nn.Upsample(scale_factor=f), Fraction(1, f)
        if draw(st.booleans()):
            return TRANSPOSED[d](1, 1, f, stride=f), Fraction(1, f)
        return TRANSPOSED[d](1, 1, 3, stride=2, padding=1), Fraction(1, 2)  # 2n - 1 samples
    q = draw(st.integers(2, 3))
    if kind == "adaptive" and all(n % q == 0 and n // q >= 2 for n in sizes):
        return ADAPTIVE[d](tuple(n // q for n in sizes)), Fraction(q)
    if kind == "halve" and d == 2 and small >= 4:
        return Halve(), Fraction(2)
    return nn.Tanh(), Fraction(1)


@st.composite
def stacks(draw: st.DrawFn) -> tuple[nn.Sequential, torch.Tensor, dict[str, Fraction]]:
    """Layers that keep, subsample or upsample the grid, with each one's true cumulative stride."""
    d = draw(st.sampled_from([1, 2]))
    x = torch.randn(draw(st.integers(1, 2)), 1, *(draw(st.integers(6, 30)) for _ in range(d)))
    model, strides, total = nn.Sequential(), {}, Fraction(1)
    y = x
    for _ in range(draw(st.integers(1, 5))):
        layer, step = grid_step(draw, d, tuple(y.shape[2:]))
        try:
            with torch.no_grad():
                out = layer(y)
        except RuntimeError:  # a kernel larger than the map it meets
            continue
        if min(out.shape[2:]) < 2:
            continue
        model.append(layer)
        y, total = out, total * step
        strides[str(len(model) - 1)] = total
    assume(len(model) > 0)
    return model.double().eval(), x.double(), strides


@SETTINGS
@given(stacks())
def test_both_profiles_read_every_layer_at_its_true_stride(
    stack: tuple[nn.Sequential, torch.Tensor, dict[str, Fraction]],
) -> None:
    """The true cumulative stride, known from the layers drawn (a stated stride, an upsampling factor, an
    adaptive pooling's exact ratio, a pooling in ``forward``), in the profile and the Lie profile alike."""
    model, x, strides = stack
    d = x.dim() - 2
    shift = Shift((0,) * (d - 1) + (1,))
    rows = {row.name: row.stride for row in profile_equivariance(model, x, shift).layers}
    lie = {row.name: row.stride for row in profile_lie_derivative(model, x).layers}
    for name, stride in strides.items():
        assert rows[name] == lie[name] == (float(stride),) * d, (name, rows, lie, strides, model)


# -- the one fast path kept, reached through the sizes that pick it ------------------------------


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
@pytest.mark.parametrize(("channels", "size", "by_runs"), [(1, 8, False), (16, 32, True)])
def test_shifted_copies_by_runs_and_by_gather_match_the_reference(
    boundary: str, channels: int, size: int, by_runs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU, shifted copies of the input are copied run by run from slices of x where the runs
    of samples that share a shift are long (16 channels of 32x32: 16,384 elements a sample), and
    gathered from one padded view where they are short (one channel of 8x8): each way matches the
    reference loop, in the check and in ``apply_shifts``. A spy (which changes nothing) says which
    way each size took."""
    from _reference import shifted

    from equivariance.shifts import ShiftedWindows, apply_shifts

    taken: list[bool] = []
    copy_by_runs = ShiftedWindows._by_runs

    def spy(self: ShiftedWindows, *args: object) -> torch.Tensor | None:
        out = copy_by_runs(self, *args)  # type: ignore[arg-type]
        taken.append(out is not None)
        return out

    monkeypatch.setattr(ShiftedWindows, "_by_runs", spy)
    torch.manual_seed(0)
    mode = "circular" if boundary == "circular" else "zeros"
    model = nn.Sequential(nn.Conv2d(channels, 2, 3, padding=1, padding_mode=mode), nn.Tanh(), Ramp())
    model = model.double().eval()
    x = torch.randn(3, channels, size, size, dtype=torch.float64)
    shifts = [Shift(1, 1), Shift(-2, 3), Shift(size - 1, -(size // 2))]  # the last wraps or empties
    truth = equivariance_errors(in_float64(model), x, shifts, boundary=boundary)
    report = check_equivariance(model, x, shifts, boundary=boundary)
    for row, samples in zip(report.results, truth):
        assert min(e for e, _ in samples) > 1e-3  # the ramp: errors that differ by shift
        agrees(row, samples, torch.float64)
    assert taken
    assert any(taken) == by_runs, taken  # the last chunk may be short: gathered
    copies = apply_shifts(x, shifts, boundary)  # type: ignore[arg-type]
    for copy, shift in zip(copies, shifts):
        assert torch.equal(copy, shifted(x, shift.offsets, boundary))
