"""The one loop that sends copies of an input through models: chunks, memory, isolation, progress.

A ``Runner`` is a context in which the models are isolated (`equivariance._engine.isolation`); it
runs the unshifted pass once (``Runner.base``), then the copies chunk by chunk (``Runner.run``),
each chunk made by one `Copies` call and handed to every consumer, which runs its model and feeds
its sinks.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from equivariance._engine.copies import ArgumentCopies, Copies, GraphCopies
from equivariance._engine.forward import Forward
from equivariance._engine.isolation import isolated, snapshot
from equivariance._engine.memory import ActivationMeter, metered, release_cached_memory
from equivariance._engine.parts import Call, nbytes
from equivariance._engine.progress import Progress
from equivariance._engine.sinks import Describe, check_floating
from equivariance.errors import InvalidArgument
from equivariance.layouts import Layout


class Sink(Protocol):
    """What a consumer feeds each chunk's outputs to (see `equivariance._engine.sinks`)."""

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None: ...

    def retry(self) -> None: ...


Inputs = torch.Tensor | Call
"""A chunk of copies: one tensor, or a model's several arguments (``Arguments``)."""


class Consumer(Protocol):
    """Takes a chunk of copies: runs a model on them and feeds what it measures to its sinks."""

    def consume(
        self, inputs: Inputs, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None: ...

    def retry(self) -> None: ...


class ModelConsumer:
    """A model's output (or a layer's), checked, viewed in its layout and fed to sinks.

    Args:
        forward: the model (and layer, output selector) under test.
        sinks: what the outputs are fed to.
        shape: the per-sample shape every output must have (that of ``f(x)``);
            None for any (a sink of predictions checks its own).
        layout: views the output as a grid; None feeds it as it is.
        spatial_dims: the number of spatial dims of the grid.
        note: appended to the message when the model raises on a chunk.
    """

    def __init__(
        self,
        forward: Forward,
        sinks: Sequence[Sink],
        shape: tuple[int, ...] | None,
        layout: Layout | None = None,
        spatial_dims: int = 0,
        note: str = "",
    ) -> None:
        self.forward, self.sinks, self.shape = forward, list(sinks), shape
        self.layout, self.spatial_dims, self.note = layout, spatial_dims, note

    def consume(
        self, inputs: Inputs, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        outputs = self.forward(inputs, self.note)
        check_floating(outputs, what)
        if self.shape is not None and tuple(outputs.shape[1:]) != self.shape:
            raise InvalidArgument(
                f"the output for {what()} has shape {tuple(outputs.shape[1:])} per sample but "
                f"{self.shape} for x; the model must map inputs of one shape to outputs of one shape: "
                "check that its output does not depend on the batch size, or pass batch_size=len(x)"
            )
        if self.layout is not None:
            outputs = self.layout.to_grid(outputs, self.spatial_dims)
        for sink in self.sinks:
            sink.add(outputs, items, sample, row, what)

    def retry(self) -> None:
        for sink in self.sinks:
            sink.retry()


@dataclass(frozen=True)
class Base:
    """The unshifted pass: ``f(x)`` and the activation bytes it took per sample (0 if not metered)."""

    output: torch.Tensor
    bytes_per_sample: int


class Runner:
    """The context every measurement runs in, and its loop (see the module docstring).

    Args:
        models: the models (callables) the measurement runs; each is isolated.
        progress: show a progress bar: True, False, or None for a bar on
            stderr when it is a terminal, outside pytest, drawn once a sweep
            has run for ``PROGRESS_DELAY_S`` (unless `progress_off` is in force).
    """

    def __init__(self, *models: Callable[..., Any], progress: bool | None = None) -> None:
        self.models = [m for i, m in enumerate(models) if all(m is not other for other in models[:i])]
        self.progress = progress
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Runner:
        for model in self.models:
            self._stack.enter_context(isolated(model))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def base(self, forward: Forward, x: Inputs, *, meter: bool = False) -> Base:
        """``f(x)`` for the unshifted input, once: a copy of the output, the caller's ``x`` untouched."""
        with metered(forward.model, enabled=meter) as bytes_seen:
            output = forward(snapshot(x) if isinstance(x, torch.Tensor) else x.snapshot())
        # a snapshot: a model may hand out the same output buffer on every call
        return Base(snapshot(output), _per_sample(bytes_seen, x, output))

    @contextlib.contextmanager
    def differentiable(
        self, forward: Forward, x: torch.Tensor, *, meter: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Base]]:
        """The unshifted pass with autograd on: ``(leaf, output, base)``, for one backward pass.

        The model gets a copy of a leaf that requires grad, so a model that
        writes to its input in place is differentiated like any other.
        """
        with torch.enable_grad(), metered(forward.model, enabled=meter) as bytes_seen:
            leaf = x.detach().clone().requires_grad_(True)
            output = forward(leaf.clone())
            yield leaf, output, Base(output.detach().clone(), _per_sample(bytes_seen, x, output))

    def run(
        self,
        copies: Copies | ArgumentCopies | GraphCopies,
        rows: int,
        consumers: Sequence[Consumer],
        batch_size: int,
        describe: Callable[[torch.Tensor], str],
        resize: Callable[[int], int] | None = None,
        elements: torch.Tensor | None = None,
        skip: int = 0,
    ) -> int:
        """Every (row, sample) copy through every consumer, in chunks; returns the chunk size that fitted.

        Items are ordered row by row, samples within a row, so consecutive
        items share an element and read consecutive samples (the cheapest
        copies). Row ``k`` moves every sample by element ``k`` of ``copies``,
        or, with ``elements`` (a ``(rows, n)`` table), sample ``s`` by element
        ``elements[k, s]`` (random shifts drawn per sample). With ``resize``,
        the first chunk is metered and the rest are sized by
        ``resize(bytes_per_sample)``. The first ``skip`` items are not sent
        (the noise floor's identity row, measured on its last samples only).
        """
        n = copies.n
        total = rows * n
        table = None if elements is None else elements.reshape(-1).cpu()
        shown = self._show()
        delay = 0.0 if self.progress else PROGRESS_DELAY_S
        bar = Progress(-(-(total - skip) // batch_size), "equivariance sweep", enabled=shown, delay=delay)
        start = skip
        while start < total:
            stop = min(start + batch_size, total)
            items = torch.arange(start, stop)
            row, sample = items // n, items % n
            inputs = copies.take(sample, row if table is None else table[start:stop])
            what = lambda row=row: describe(row)  # noqa: E731  (for messages only)
            try:
                with metered(_owner(consumers), enabled=resize is not None and start == skip) as seen:
                    for consumer in consumers:
                        consumer.consume(inputs, slice(start, stop), sample, row, what)
            except torch.cuda.OutOfMemoryError:
                if stop - start == 1:
                    raise
                batch_size = (stop - start) // 2
                for consumer in consumers:
                    consumer.retry()
                release_cached_memory(copies.device)
                bar.total = bar.count + -(-(total - start) // batch_size)
                continue
            if resize is not None and start == skip:
                batch_size = resize(max(1, (seen.bytes + nbytes(inputs)) // len(items)))
                bar.total = 1 + -(-(total - stop) // batch_size)
            start = stop
            bar.update()
        bar.close()
        return batch_size

    def _show(self) -> bool:
        if self.progress is not None:
            return self.progress
        if _PROGRESS_OFF.get():
            return False
        return sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ


PROGRESS_DELAY_S = 1.0
"""A sweep shows its progress bar (on a terminal) once it has run this long: quick checks stay silent."""

_PROGRESS_OFF = contextvars.ContextVar("equivariance_progress_off", default=False)


@contextlib.contextmanager
def progress_off() -> Iterator[None]:
    """No progress bars from runners made with ``progress=None`` inside (``equivariance check -q``)."""
    token = _PROGRESS_OFF.set(True)
    try:
        yield
    finally:
        _PROGRESS_OFF.reset(token)


def _per_sample(meter: ActivationMeter, x: Inputs, output: torch.Tensor) -> int:
    """Activations (or 4 outputs' worth where no leaf module reported any), input and output, a sample."""
    if not meter.enabled:
        return 0
    measured = meter.bytes if meter.bytes else 4 * output.numel() * output.element_size()
    total = measured + nbytes(x) + output.numel() * output.element_size()
    return max(1, total // len(x))


def _owner(consumers: Sequence[Consumer]) -> Any:
    """The model of the first consumer, whose leaf modules a metered first chunk counts."""
    forward = getattr(consumers[0], "forward", None) if consumers else None
    return getattr(forward, "model", None)
