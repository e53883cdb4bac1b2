"""Shift-invariance metrics of classifiers, defined as in the literature so numbers compare.

An exact check asks whether the logits are unchanged; a classifier is used
through its top-1 prediction, and papers report how often that prediction
survives a shift:

:func:`consistency`
    how often the top-1 prediction is the same for two random shifts of the
    same input (Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again"; with circular shifts over the whole image as in Chaman and
    Dokmanic 2021, "Truly shift-invariant convolutional neural networks").
:func:`prediction_change`
    the probability that the top-1 prediction changes under a one-pixel shift
    (Azulay and Weiss 2019, "Why do deep convolutional networks generalize so
    poorly to small image transformations?").
:func:`logit_change`
    the mean relative change ``||f(g.x) - f(x)|| / ||f(x)||`` of the logits
    under a random shift.

Each returns an :class:`InvarianceMetric`: the value, the number of
comparisons ``n`` it is averaged over and a 95% confidence interval (Wilson's
score interval for the two proportions, a normal interval for the mean).
The shifted inputs go through the model on the checks' engine (the runner of
`equivariance._runner`): made by one vectorized gather
a chunk, in batches that halve and retry when they run out of CUDA memory,
each chunk's predictions taken before the next (so a model that hands back
the same output buffer on every call is measured right), non-finite logits
refused. Random shifts come from a local ``torch.Generator`` seeded with
``seed``, so the caller's RNG is untouched and a result is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from equivariance._copies import Copies
from equivariance._forward import Forward, OutputSelector
from equivariance._memory import chunk_size, default_batch_size
from equivariance._plan import check_batch_size, check_input
from equivariance._runner import ModelConsumer, Runner, Sink
from equivariance._sinks import RelativeChange, Top1
from equivariance._validation import as_int, per_dim
from equivariance.actions import Boundary, Grid, check_boundary
from equivariance.errors import InvalidArgument
from equivariance.shifts import Shift

IntOrTuple = int | Sequence[int]
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
        interval: how the interval was computed (``"wilson"`` or ``"normal"``).
        boundary: ``"circular"`` or ``"zeros"``.
        shifts: which shifts were drawn, in words.
    """

    name: str
    value: float
    n: int
    low: float
    high: float
    interval: str
    boundary: str
    shifts: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.name} {self.value:.4f} (95% CI {self.low:.4f} to {self.high:.4f}, {self.interval}; "
            f"n={self.n}; {self.shifts}, boundary {self.boundary})"
        )


def consistency(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    pairs: int = 1,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary = "circular",
    seed: int = 0,
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """How often the top-1 prediction agrees for two random shifts of the same input.

    For each sample, ``pairs`` pairs of shifts are drawn independently and
    uniformly from the box ``[-max_shift, max_shift]`` (default: the whole
    image, ``size - 1``, with the circular boundary of Chaman and Dokmanic
    2021); the value is the fraction of pairs whose two predictions agree
    (Zhang 2019). A circularly padded CNN with global average pooling scores
    exactly 1.

    >>> import torch
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), torch.nn.ReLU(),
    ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> result = consistency(net, torch.randn(50, 1, 16, 16), pairs=2)
    >>> result.value, result.n
    (1.0, 100)

    Args:
        model: a classifier returning logits ``(N, classes)``.
        x: a batch ``(N, C, *spatial)``.
        pairs: pairs of shifts per sample.
        max_shift: the largest offset drawn (an int or one per dim); default ``size - 1``.
        boundary: ``"circular"`` (default) or ``"zeros"``.
        seed: seeds the local generator the shifts are drawn from.
        output: picks the logits from a tuple or dict output.
        batch_size: samples per forward pass, or ``"auto"`` to fit them to the device's memory.
    """
    x, forward, boundary, bounds = _prepare(model, x, boundary, max_shift, output)
    count = as_int(pairs, "pairs")
    if count < 1:
        raise InvalidArgument(f"pairs must be positive, found {count}; pass pairs=1 or more")
    generator = torch.Generator().manual_seed(as_int(seed, "seed"))
    n = x.shape[0]
    drawn = _draw(bounds, 2 * count * n, generator)
    predicted = _predictions(forward, x, drawn, 2 * count, boundary, batch_size)
    first, second = predicted.view(2, -1)
    agree = int((first == second).sum())
    return _proportion("consistency", agree, count * n, boundary, f"pairs of random shifts in {_box(bounds)}")


def prediction_change(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    boundary: Boundary = "circular",
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """The probability that the top-1 prediction changes under a one-pixel shift.

    Every one-pixel shift (one sample forwards or backwards along each
    spatial dim) of every sample is compared with the unshifted prediction
    (Azulay and Weiss 2019), so ``n`` is ``2 * d * N`` and no randomness is
    involved.

    >>> import torch
    >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> prediction_change(dense, torch.randn(100, 1, 8, 8)).value > 0.2
    True

    Args:
        model: a classifier returning logits ``(N, classes)``.
        x: a batch ``(N, C, *spatial)``.
        boundary: ``"circular"`` (default) or ``"zeros"``.
        output: picks the logits from a tuple or dict output.
        batch_size: samples per forward pass, or ``"auto"`` to fit them to the device's memory.
    """
    x, forward, boundary, _ = _prepare(model, x, boundary, None, output)
    n, d = x.shape[0], x.dim() - 2
    units = torch.cat([torch.eye(d, dtype=torch.long), -torch.eye(d, dtype=torch.long)])
    plan = torch.cat([torch.zeros(1, d, dtype=torch.long), units])
    predicted = _predictions(forward, x, plan.repeat_interleave(n, dim=0), len(plan), boundary, batch_size)
    table = predicted.view(len(plan), n)
    changed = int((table[1:] != table[0]).sum())
    return _proportion("prediction_change", changed, len(units) * n, boundary, "every one-pixel shift")


def logit_change(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    *,
    repeats: int = 1,
    max_shift: IntOrTuple | None = None,
    boundary: Boundary = "circular",
    seed: int = 0,
    output: OutputSelector = None,
    batch_size: BatchSize = None,
) -> InvarianceMetric:
    """The mean relative change ``||f(g.x) - f(x)|| / ||f(x)||`` of the logits under a random shift.

    ``repeats`` shifts per sample are drawn as in :func:`consistency`; the
    interval is the normal one, ``mean +- 1.96 * sd / sqrt(n)``.

    >>> import torch
    >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> logit_change(dense, torch.randn(20, 1, 8, 8)).value > 0.5
    True

    Args:
        model: a model returning logits ``(N, classes)`` (any output with a batch dim works).
        x: a batch ``(N, C, *spatial)``.
        repeats: random shifts per sample.
        max_shift: the largest offset drawn (an int or one per dim); default ``size - 1``.
        boundary: ``"circular"`` (default) or ``"zeros"``.
        seed: seeds the local generator the shifts are drawn from.
        output: picks the logits from a tuple or dict output.
        batch_size: samples per forward pass, or ``"auto"`` to fit them to the device's memory.
    """
    x, forward, boundary, bounds = _prepare(model, x, boundary, max_shift, output)
    count = as_int(repeats, "repeats")
    if count < 1:
        raise InvalidArgument(f"repeats must be positive, found {count}; pass repeats=1 or more")
    generator = torch.Generator().manual_seed(as_int(seed, "seed"))
    n = x.shape[0]
    drawn = _draw(bounds, count * n, generator)
    change = _relative_changes(forward, x, drawn, count, boundary, batch_size)
    mean = float(change.mean())
    spread = float(change.std()) if len(change) > 1 else 0.0
    half = _Z95 * spread / math.sqrt(len(change))
    return InvarianceMetric(
        "logit_change", mean, len(change), max(mean - half, 0.0), mean + half, "normal", boundary,
        f"random shifts in {_box(bounds)}",
    )  # fmt: skip


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion ``successes / n``.

    >>> low, high = wilson_interval(50, 100)
    >>> round(low, 4), round(high, 4)
    (0.4038, 0.5962)
    """
    if n < 1 or not 0 <= successes <= n:
        raise InvalidArgument(f"a proportion needs 0 <= successes <= n and n >= 1, found {successes} of {n}")
    p = successes / n
    denominator = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denominator
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denominator
    # at 0 and n the interval touches the end exactly; rounding would leave it a hair inside
    low = 0.0 if successes == 0 else max(centre - half, 0.0)
    high = 1.0 if successes == n else min(centre + half, 1.0)
    return low, high


def _proportion(name: str, successes: int, n: int, boundary: str, shifts: str) -> InvarianceMetric:
    low, high = wilson_interval(successes, n)
    return InvarianceMetric(name, successes / n, n, low, high, "wilson", boundary, shifts)


def _prepare(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    boundary: Boundary,
    max_shift: IntOrTuple | None,
    output: OutputSelector,
) -> tuple[torch.Tensor, Forward, Boundary, tuple[int, ...]]:
    forward = Forward(model, None, output)
    x = check_input(x, model)
    boundary = check_boundary(boundary)
    spatial = tuple(x.shape[2:])
    if max_shift is None:
        if boundary == "zeros":
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
    return x, forward, boundary, bounds


def _draw(bounds: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    high = torch.tensor(bounds, dtype=torch.long)
    unit = torch.rand(count, len(bounds), generator=generator, dtype=torch.float64)
    return (unit * (2 * high + 1).double()).floor().long() - high


def _box(bounds: tuple[int, ...]) -> str:
    return "[" + ", ".join(f"-{b}..{b}" for b in bounds) + "]"


def _run(
    forward: Forward,
    x: torch.Tensor,
    offsets: torch.Tensor,
    rows: int,
    boundary: Boundary,
    batch_size: object,
    sink: Sink,
    runner: Runner,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Sample ``s`` of row ``k`` moved by ``offsets[k * n + s]``, through the model into ``sink``.

    The offsets of the rows are drawn per sample, so the elements are the
    distinct shifts among them and the runner gets a table of which one each
    copy takes.
    """
    size = check_batch_size(batch_size)
    d, n = x.dim() - 2, len(x)
    distinct, which = torch.unique(offsets, dim=0, return_inverse=True)
    elements = [Shift(tuple(o)) for o in distinct.tolist()]
    copies = Copies(x, elements, Grid.of_input(d, boundary))
    total = rows * n
    first = min(total, default_batch_size(x)) if size is None or size == "auto" else size
    resize = None
    if size == "auto" or (size is None and x.device.type == "cpu"):
        resize = lambda per_sample: chunk_size(size, x, per_sample, total)  # noqa: E731
    consumer = ModelConsumer(forward, [sink], shape)
    runner.run(copies, rows, [consumer], first, lambda row: "shifted inputs", resize, which.view(rows, n))


def _predictions(
    forward: Forward,
    x: torch.Tensor,
    offsets: torch.Tensor,
    rows: int,
    boundary: Boundary,
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
    boundary: Boundary,
    batch_size: object,
) -> torch.Tensor:
    """``||f(g.x) - f(x)|| / ||f(x)||`` for every copy; InvalidArgument where ``f(x)`` is all zero.

    ``f(x)`` goes through the same chunks as the copies, as row 0.
    """
    n, d = len(x), x.dim() - 2
    sink = RelativeChange(rows + 1, n)
    with Runner(forward.model) as runner:
        unshifted = torch.zeros(n, d, dtype=offsets.dtype)
        _run(forward, x, torch.cat([unshifted, offsets]), rows + 1, boundary, batch_size, sink, runner)
    return sink.table()[1:].flatten()
