"""Shift-invariance metrics of classifiers, defined as in the literature so numbers compare.

[`consistency`][equivariance.invariance.consistency] (Zhang 2019),
[`prediction_change`][equivariance.invariance.prediction_change] (Azulay and Weiss 2019) and
[`logit_change`][equivariance.invariance.logit_change] each return an
[`InvarianceMetric`][equivariance.invariance.InvarianceMetric] with a 95% interval clustered by sample; the
definitions and the intervals are in docs/diagnosing.md ("Classifiers: invariance metrics from the
literature").
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from equivariance._engine.arguments import check_batch_size, check_input
from equivariance._engine.copies import Copies
from equivariance._engine.forward import Forward, OutputSelector
from equivariance._engine.memory import chunk_size, default_batch_size
from equivariance._engine.runner import ModelConsumer, Runner, Sink
from equivariance._engine.sinks import RelativeChange, Top1
from equivariance._engine.validation import as_int, per_dim
from equivariance.actions import Boundary, Grid
from equivariance.crops import Crop, CropOf, as_boundary
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.shifts import Shift, shifted_rows

IntOrTuple = int | Sequence[int]
Bounds = tuple[tuple[int, ...], tuple[int, ...]]
"""The lowest and the highest shift drawn, per dim."""
BatchSize = int | Literal["auto"] | None

__all__ = ["InvarianceMetric", "consistency", "logit_change", "prediction_change"]

_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class InvarianceMetric:
    """One invariance number, how many comparisons it rests on, and its 95% confidence interval.

    Attributes:
        name: ``"consistency"``, ``"prediction_change"`` or ``"logit_change"``.
        value: the estimate.
        n: the number of comparisons (pairs of predictions or of logits).
        low: lower end of the 95% confidence interval.
        high: upper end of the 95% confidence interval.
        interval: how the interval was computed: ``"wilson, clustered by sample"`` (the proportions) or
            ``"normal, clustered by sample"`` (the mean); see docs/diagnosing.md.
        boundary: ``"circular"``, ``"zeros"``, or the crop protocol's ``"crop 224x224 of 256x256 at (16,
            16)"``.
        shifts: which shifts were drawn, in words.
        samples: the number of samples the comparisons come from, the interval's independent units (None where
            a caller built the metric without it).
        distinct: how many distinct top-1 predictions the compared inputs got (the proportions; None for
            ``logit_change``). With 1, every input got the same class and the proportion says nothing about
            invariance: the metric warns.
    """

    name: str
    value: float
    n: int
    low: float
    high: float
    interval: str
    boundary: str
    shifts: str
    samples: int | None = None
    distinct: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        over = "" if self.samples is None else f" over {self.samples} samples"
        classes = "" if self.distinct is None else f"; {self.distinct} distinct predictions"
        return (
            f"{self.name} {self.value:.4f} (95% CI {self.low:.4f} to {self.high:.4f}, {self.interval}; "
            f"n={self.n}{over}{classes}; {self.shifts}, boundary {self.boundary})"
        )


def consistency(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    pairs: int = 1,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary | Crop = "circular",
    seed: int = 0,
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """How often the top-1 prediction agrees for two random shifts of the same input.

    Shifts are drawn uniformly from the box ``[-max_shift, max_shift]`` (default the whole image, circularly,
    as in Chaman and Dokmanic 2021); the interval is clustered by sample (see "Diagnosing").

    Args:
        model: a classifier returning logits ``(N, classes)``.
        x: a batch ``(N, C, *spatial)``.
        pairs: pairs of shifts per sample.
        max_shift: the largest offset drawn (an int or one per dim); default ``size - 1``.
        boundary: ``"circular"`` (default), ``"zeros"``, or ``Crop(size)``: ``x`` is a larger image and each
            draw is a crop of it, uniform over every window of ``size`` (Zhang 2019; see
            [`equivariance.crops`][equivariance.crops]); with ``max_shift``, the windows within ``max_shift``
            of the reference crop.
        seed: seeds the local generator the shifts are drawn from (``-2**63`` to ``2**64 - 1``).
        output: picks the logits from a tuple or dict output.
        batch_size: samples per forward pass, or ``"auto"`` to fit them to the device's memory.

    Returns:
        An [`InvarianceMetric`][equivariance.invariance.InvarianceMetric] named ``"consistency"``.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(2)
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), torch.nn.ReLU(),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.randn(50, 1, 16, 16) * torch.linspace(0.1, 3, 50).view(-1, 1, 1, 1)
        >>> result = consistency(net, x, pairs=2)
        >>> result.value, result.n, result.samples, result.distinct
        (1.0, 100, 50, 2)
    """
    x, forward, where, bounds = _prepare(model, x, boundary, max_shift, output)
    count = as_int(pairs, "pairs")
    if count < 1:
        raise InvalidArgument(f"pairs must be positive, found {count}; pass pairs=1 or more")
    generator = _generator(seed)
    n = x.shape[0]
    drawn = _draw(bounds, 2 * count * n, generator)
    predicted = _predictions(forward, x, drawn, 2 * count, where, batch_size)
    first, second = predicted.view(2, -1)
    agree = (first == second).view(count, n).sum(dim=0)  # pair j of sample i is item j * n + i
    shifts = f"pairs of random {_box(bounds, where)}"
    return _proportion("consistency", agree, count, str(where), shifts, predicted)


def prediction_change(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    boundary: Boundary | Crop = "circular",
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """The probability that the top-1 prediction changes under a one-pixel shift.

    Every one-pixel shift of every sample (Azulay and Weiss 2019): ``n = 2 * d * N``; the interval is
    clustered by sample.

    Args:
        model: a classifier returning logits ``(N, classes)``.
        x: a batch ``(N, C, *spatial)``.
        boundary: ``"circular"`` (default), ``"zeros"``, or ``Crop(size)``: the reference crop of a larger
            ``x`` against the crops one pixel away.
        output: picks the logits from a tuple or dict output.
        batch_size: samples per forward pass, or ``"auto"``.

    Returns:
        An [`InvarianceMetric`][equivariance.invariance.InvarianceMetric] named ``"prediction_change"``.

    Examples:
        >>> import torch
        >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> prediction_change(dense, torch.randn(100, 1, 8, 8)).value > 0.2
        True
    """
    x, forward, where, _ = _prepare(model, x, boundary, None, output, random_shifts=False)
    n, d = x.shape[0], x.dim() - 2
    units = torch.cat([torch.eye(d, dtype=torch.long), -torch.eye(d, dtype=torch.long)])
    plan = torch.cat([torch.zeros(1, d, dtype=torch.long), units])
    predicted = _predictions(forward, x, plan, len(plan), where, batch_size).view(len(plan), n)
    changed = (predicted[1:] != predicted[0]).sum(dim=0)
    return _proportion(
        "prediction_change", changed, len(units), str(where), "every one-pixel shift", predicted
    )


def logit_change(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    repeats: int = 1,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary | Crop = "circular",
    seed: int = 0,
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """The mean relative change $||f(gx) - f(x)|| / ||f(x)||$ of the logits under a random shift.

    Shifts drawn as in [`consistency`][equivariance.invariance.consistency]; the interval is the normal one on
    the per-sample means.

    Args:
        model: a model returning logits ``(N, classes)`` (any output with a batch dim works).
        x: a batch ``(N, C, *spatial)``.
        repeats: random shifts per sample.
        max_shift: as in [`consistency`][equivariance.invariance.consistency], and so are the ``boundary``,
            ``seed``, ``output`` and ``batch_size``.

    Returns:
        An [`InvarianceMetric`][equivariance.invariance.InvarianceMetric] named ``"logit_change"``.

    Examples:
        >>> import torch
        >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> logit_change(dense, torch.randn(20, 1, 8, 8)).value > 0.5
        True
    """
    x, forward, where, bounds = _prepare(model, x, boundary, max_shift, output)
    count = as_int(repeats, "repeats")
    if count < 1:
        raise InvalidArgument(f"repeats must be positive, found {count}; pass repeats=1 or more")
    generator = _generator(seed)
    n = x.shape[0]
    drawn = _draw(bounds, count * n, generator)
    change = _relative_changes(forward, x, drawn, count, where, batch_size)
    per_sample = change.view(count, n).mean(dim=0)  # repeat j of sample i is item j * n + i
    mean = float(per_sample.mean())
    low, high = clustered_normal_interval(per_sample)
    return InvarianceMetric(
        "logit_change", mean, len(change), low, high, "normal, clustered by sample", str(where),
        f"random {_box(bounds, where)}", samples=n,
    )  # fmt: skip


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion ``successes / n`` of independent trials.

    Examples:
        >>> low, high = wilson_interval(50, 100)
        >>> round(low, 4), round(high, 4)
        (0.4038, 0.5962)
    """
    if n < 1 or not 0 <= successes <= n:
        raise InvalidArgument(f"a proportion needs 0 <= successes <= n and n >= 1, found {successes} of {n}")
    return _wilson(successes / n, n)


def clustered_wilson_interval(successes: torch.Tensor, draws: int) -> tuple[float, float]:
    """Wilson's 95% interval for a proportion of ``draws`` comparisons per sample, samples as clusters.

    Wilson's interval at the effective sample size $N p (1 - p) / s^2$, kept between ``N`` and ``N * draws``
    (see "Diagnosing").

    Args:
        successes: ``(N,)`` counts, each between 0 and ``draws``.
        draws: comparisons per sample.

    Returns:
        The interval's low and high ends.

    Examples:
        >>> import torch
        >>> alike = torch.tensor([3, 3, 0, 0] * 25)       # each sample: all 3 comparisons alike
        >>> [round(v, 4) for v in clustered_wilson_interval(alike, 3)] == [
        ...     round(v, 4) for v in wilson_interval(50, 100)]
        True
    """
    samples, total = len(successes), int(successes.sum())
    p = total / (samples * draws)
    effective = float(samples)
    if samples > 1 and 0 < total < samples * draws:
        spread = float((successes.double() / draws).var())
        independent = float(samples * draws)
        effective = (
            independent if spread == 0 else min(max(samples * p * (1 - p) / spread, samples), independent)
        )
    return _wilson(p, effective)


def clustered_normal_interval(means: torch.Tensor) -> tuple[float, float]:
    """The normal 95% interval of a mean over samples, from each sample's own mean.

    ``mean +- 1.96 * sd / sqrt(N)`` over the per-sample means, the low end kept at 0 or above (a relative
    change is never negative); with one sample there is no spread to estimate, and the interval is ``[0,
    inf)``.

    Examples:
        >>> import torch
        >>> low, high = clustered_normal_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> round(low, 3), round(high, 3)
        (1.235, 3.765)
    """
    mean = float(means.double().mean())
    if len(means) < 2:
        return 0.0, math.inf
    half = _Z95 * float(means.double().std()) / math.sqrt(len(means))
    return max(mean - half, 0.0), mean + half


def _wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion ``p`` observed over ``n`` (possibly effective) trials."""
    denominator = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denominator
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denominator
    # at 0 and 1 the interval touches the end exactly; rounding would leave it a hair inside
    low = 0.0 if p == 0 else max(centre - half, 0.0)
    high = 1.0 if p == 1 else min(centre + half, 1.0)
    return low, high


def _proportion(
    name: str, successes: torch.Tensor, draws: int, boundary: str, shifts: str, predicted: torch.Tensor
) -> InvarianceMetric:
    """A proportion from per-sample counts of ``draws`` comparisons, its interval clustered by sample.

    Warns where every prediction is the same class: the proportion is then trivial.
    """
    n = len(successes) * draws
    low, high = clustered_wilson_interval(successes, draws)
    value = int(successes.sum()) / n
    classes = torch.unique(predicted)
    if len(classes) == 1:
        warnings.warn(
            f"{name} {value:.2f} is trivial: every one of the {predicted.numel()} inputs compared got "
            f"the same prediction (class {int(classes[0])}), so no shift could change it. The classifier "
            "is degenerate on these inputs (untrained, a constant head, inputs it cannot tell apart); "
            "measure it on inputs it tells apart, or use logit_change",
            EquivarianceWarning,
            stacklevel=3,
        )
    return InvarianceMetric(
        name, value, n, low, high, "wilson, clustered by sample", boundary, shifts,
        samples=len(successes), distinct=len(classes),
    )  # fmt: skip


def _prepare(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    boundary: Boundary | Crop,
    max_shift: IntOrTuple | None,
    output: OutputSelector,
    *,
    random_shifts: bool = True,
) -> tuple[torch.Tensor, Forward, Boundary | CropOf, Bounds]:
    """The checked input, model, boundary (a crop bound to ``x``) and the lowest and highest shift to draw."""
    forward = Forward(model, None, output)
    x = check_input(x, model)
    given = as_boundary(boundary)
    the_boundary: Boundary | CropOf = given.of(x) if isinstance(given, Crop) else given
    spatial = tuple(x.shape[2:])
    ones = (1,) * len(spatial)
    if isinstance(the_boundary, CropOf):
        return x, forward, the_boundary, _crop_bounds(the_boundary, max_shift, random_shifts)
    if not random_shifts:
        return x, forward, the_boundary, (ones, ones)  # the one-pixel shifts: no box to draw from
    if max_shift is None:
        if the_boundary == "zeros":
            raise InvalidArgument(
                "with boundary='zeros' a random shift must keep the content on the canvas, so pass "
                "max_shift= (the room around the content), or use boundary='circular'"
            )
        bounds = tuple(n - 1 for n in spatial)
    else:
        bounds = per_dim(max_shift, len(spatial), "max_shift", minimum=0)
        if any(b >= n for b, n in zip(bounds, spatial)):
            raise InvalidArgument(
                f"max_shift {max_shift} is as large as the signal or larger (spatial size {spatial}); "
                f"pass max_shift below {min(spatial)}"
            )
    return x, forward, the_boundary, (tuple(-b for b in bounds), bounds)


def _crop_bounds(crop: CropOf, max_shift: IntOrTuple | None, random_shifts: bool) -> Bounds:
    """The shifts to draw crops at: every window of the image by default, else ``[-max_shift,
    max_shift]`` about the reference crop; InvalidArgument where they would leave the image."""
    if not random_shifts:
        ones = (1,) * len(crop.size)
        try:
            crop.check_shift(Shift(ones))
            crop.check_shift(Shift(tuple(-1 for _ in ones)))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"prediction_change moves the reference crop by one pixel each way, but {exc}"
            ) from None
        return ones, ones
    if max_shift is None:
        if not any(crop.room):
            raise InvalidArgument(
                f"the image {tuple(crop.x.shape[2:])} holds a single window of {crop.size}, so every "
                "random crop is the same one and the metric cannot fail; pass a larger x or a smaller crop"
            )
        return crop.shifts_allowed()
    bounds = per_dim(max_shift, len(crop.size), "max_shift", minimum=0)
    crop.check_shift(Shift(bounds))
    crop.check_shift(Shift(tuple(-b for b in bounds)))
    return tuple(-b for b in bounds), bounds


def _generator(seed: object) -> torch.Generator:
    """A local generator seeded with ``seed``: the caller's RNG is not touched."""
    value = as_int(seed, "seed")
    if not -(2**63) <= value < 2**64:
        raise InvalidArgument(
            f"seed must be an integer from -2**63 to 2**64 - 1 (what a torch.Generator takes), found "
            f"{value}; pass a smaller one, e.g. seed % 2**64"
        )
    return torch.Generator().manual_seed(value)


def _draw(bounds: Bounds, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` shifts drawn uniformly from the box ``[low, high]`` of ``bounds``, per dim."""
    low, high = (torch.tensor(b, dtype=torch.long) for b in bounds)
    unit = torch.rand(count, len(low), generator=generator, dtype=torch.float64)
    return (unit * (high - low + 1).double()).floor().long() + low


def _box(bounds: Bounds, boundary: Boundary | CropOf) -> str:
    low, high = bounds
    if isinstance(boundary, CropOf):
        corners = ", ".join(f"{a - h}..{a - lo}" for a, lo, h in zip(boundary.at, low, high))
        return f"crops with corners in [{corners}]"
    return "shifts in [" + ", ".join(f"{lo}..{h}" for lo, h in zip(low, high)) + "]"


def _run(
    forward: Forward,
    x: torch.Tensor,
    offsets: torch.Tensor,
    rows: int,
    boundary: Boundary | CropOf,
    batch_size: object,
    sink: Sink,
    runner: Runner,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Sample ``s`` of row ``k`` moved by ``offsets[k * n + s]``, through the model into ``sink``.

    Where every row moves all its samples alike (``offsets`` has one row per row), the rows are the elements;
    where the offsets are drawn per sample, the elements are the distinct shifts among them and the runner
    gets a table of which one each copy takes.
    """
    size = check_batch_size(batch_size)
    d, n = x.dim() - 2, len(x)
    which = None if len(offsets) == rows else torch.arange(len(offsets)).view(rows, n)
    if isinstance(boundary, CropOf):  # crops of the larger x: the shift moves the window
        rows_of = boundary.rows(offsets)
        grid = Grid.of_input(d)
    else:
        rows_of, grid = shifted_rows(x, offsets, boundary), Grid.of_input(d, boundary)
    copies = Copies.of(x, rows_of, len(offsets), grid)
    total = rows * n
    first = min(total, default_batch_size(x)) if size is None or size == "auto" else size
    resize = None
    if (size == "auto" or (size is None and x.device.type == "cpu")) and first < total:
        resize = lambda per_sample: chunk_size(size, x, per_sample, total)  # noqa: E731
    consumer = ModelConsumer(forward, [sink], shape)
    runner.run(copies, rows, [consumer], first, lambda row: "shifted inputs", resize, which)


def _predictions(
    forward: Forward,
    x: torch.Tensor,
    offsets: torch.Tensor,
    rows: int,
    boundary: Boundary | CropOf,
    batch_size: object,
) -> torch.Tensor:
    """The top-1 class of every copy, row by row."""
    sink = Top1(rows, len(x))
    with Runner(forward.model) as runner:
        _run(forward, x, offsets, rows, boundary, batch_size, sink, runner)
    return sink.predicted


def _relative_changes(
    forward: Forward,
    x: torch.Tensor,
    offsets: torch.Tensor,
    rows: int,
    boundary: Boundary | CropOf,
    batch_size: object,
) -> torch.Tensor:
    """$||f(gx) - f(x)|| / ||f(x)||$ for every copy; InvalidArgument where ``f(x)`` is all zero.

    ``f(x)`` goes through the same chunks as the copies, as row 0.
    """
    n, d = len(x), x.dim() - 2
    sink = RelativeChange(rows + 1, n)
    with Runner(forward.model) as runner:
        unshifted = torch.zeros(n, d, dtype=offsets.dtype)
        _run(forward, x, torch.cat([unshifted, offsets]), rows + 1, boundary, batch_size, sink, runner)
    return sink.table()[1:].flatten()
