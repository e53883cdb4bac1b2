"""Watching equivariance while a model trains: one measurement on a fixed batch every few steps.

[`EquivarianceMonitor`][equivariance.monitor.EquivarianceMonitor] measures a model on the same batch
every ``every`` steps of a plain loop, by one of the library's measurements (the Lie derivative by
default) or a callable, and leaves the model as training left it (docs/fixing.md, "Watching
equivariance during training").
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._engine import arguments as _arguments
from equivariance._engine.isolation import isolated
from equivariance._engine.parts import is_graph
from equivariance._engine.validation import as_int, describe
from equivariance.check import check_equivariance, check_invariance
from equivariance.errors import InvalidArgument
from equivariance.fields import ModelInput
from equivariance.invariance import InvarianceMetric, consistency, logit_change, prediction_change
from equivariance.lie import lie_derivative_error
from equivariance.metric import equivariance_error, invariance_error
from equivariance.report import EquivarianceReport

__all__ = ["MEASURES", "EquivarianceMonitor", "MonitorRecord"]

Measure = Callable[..., Any]
Log = Callable[[str, float, int], Any]

MEASURES: dict[str, Measure] = {
    "lie_derivative": lie_derivative_error,
    "equivariance_error": equivariance_error,
    "invariance_error": invariance_error,
    "check_equivariance": check_equivariance,
    "check_invariance": check_invariance,
    "consistency": consistency,
    "prediction_change": prediction_change,
    "logit_change": logit_change,
}
"""The measurements a monitor takes by name: each is called as ``measure(model, x, **options)``."""


@dataclass(frozen=True)
class MonitorRecord:
    """One measurement of a monitor.

    Attributes:
        step: the training step it was taken after (``monitor.step()`` calls so far, or the step given).
        epoch: the epoch, where the caller said.
        value: the number: the error, the worst error of a check, or the metric's value.
        seconds: the time the measurement took.
        result: what the measurement returned (a tensor, an
            [`EquivarianceReport`][equivariance.EquivarianceReport], an
            [`InvarianceMetric`][equivariance.invariance.InvarianceMetric]).
    """

    step: int
    epoch: int | None
    value: float
    seconds: float
    result: Any = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the result left out)."""
        return {"step": self.step, "epoch": self.epoch, "value": self.value, "seconds": self.seconds}


class EquivarianceMonitor:
    """Measures a model's equivariance on a fixed batch every ``every`` training steps, and logs it.

    Call [`step`][equivariance.monitor.EquivarianceMonitor.step] once per
    training step (after the optimizer's step): every ``every``-th call
    measures, appends a [`MonitorRecord`][equivariance.monitor.MonitorRecord]
    to ``history`` and calls ``log(name, value, step)``.
    [`measure`][equivariance.monitor.EquivarianceMonitor.measure] measures now
    (before training, at the end of an epoch). A measurement is one batched
    check of ``x`` at most, run on the model itself (no copy); the model's
    training flags, buffers, gradients and the RNG are as they were after it.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...     torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
        >>> monitor = EquivarianceMonitor(model, x[:4], "invariance_error", shift=(1, 0), every=2)
        >>> for _ in range(4):
        ...     loss = torch.nn.functional.cross_entropy(model(x), y)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        ...     _ = monitor.step()
        >>> [record.step for record in monitor.history], model.training
        ([2, 4], True)

    Args:
        model: the model being trained.
        x: the fixed batch ``(N, C, *spatial)`` every measurement uses (kept
            as a copy; moved to the model's device when measured); or, for a
            model of point clouds, sets or graphs, its several inputs (a tuple,
            a dict or a torch_geometric ``Data``/``Batch``) with their field
            types in ``inputs=`` (and ``outputs=``), passed to the measurement
            as the checks take them (docs/point_clouds.md).
        measure: a name in [`MEASURES`][equivariance.monitor.MEASURES], or a
            callable ``(model, x) -> number`` (a float, a 0-dim tensor, a
            report or a metric).
        every: measure on every ``every``-th call of ``step``.
        name: the name the values are logged under; default
            ``"equivariance/<measure>"``.
        log: called as ``log(name, value, step)`` after each measurement,
            e.g. ``lambda n, v, s: writer.add_scalar(n, v, s)``.
        **options: passed to the measurement, e.g. ``shift=(1, 0)``, or
            ``generator=Rotation3D("z"), inputs=..., outputs=...`` for points.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor | ModelInput,
        measure: str | Measure = "lie_derivative",
        *,
        every: int = 1,
        name: str | None = None,
        log: Log | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgument(
                f"the monitor watches an nn.Module, found {describe(model)}; pass the model"
            )
        self.function, label = _measure(measure)
        several = _arguments.several_inputs(x, options.get("inputs"), options.get("outputs"))
        if several:
            _check_several(x, measure, label, options)
        elif not isinstance(x, torch.Tensor) or x.dim() < 3:
            shown = tuple(x.shape) if isinstance(x, torch.Tensor) else describe(x)
            raise InvalidArgument(
                f"x must be a batch (N, C, *spatial), found {shown}; pass a fixed batch, e.g. x[:16], or "
                "a model's several inputs with their field types (inputs=)"
            )
        self.model, self.x = model, _kept(x)
        self.every = as_int(every, "every")
        if self.every < 1:
            raise InvalidArgument(f"every must be positive, found {self.every}; pass every=1 or more")
        if log is not None and not callable(log):
            raise InvalidArgument(f"log must be callable as log(name, value, step), found {describe(log)}")
        self.name = name if name is not None else f"equivariance/{label}"
        self.log, self.options = log, options
        self.steps = 0
        self.history: list[MonitorRecord] = []

    def step(self, epoch: int | None = None) -> MonitorRecord | None:
        """One training step done: measures if it is the ``every``-th, and returns the record (else None)."""
        self.steps += 1
        if self.steps % self.every:
            return None
        return self.measure(step=self.steps, epoch=epoch)

    def measure(self, *, step: int | None = None, epoch: int | None = None) -> MonitorRecord:
        """Measures now, records and logs the value; ``step`` defaults to the ``step`` calls so far."""
        x = self._on_device()
        started = time.perf_counter()
        with isolated(self.model), _grads_kept(self.model):
            result = self.function(self.model, x, **self.options)
        seconds = time.perf_counter() - started
        record = MonitorRecord(self.steps if step is None else step, epoch, _value(result), seconds, result)
        self.history.append(record)
        if self.log is not None:
            self.log(self.name, record.value, record.step)
        return record

    @property
    def steps_measured(self) -> list[int]:
        """The steps of the history."""
        return [record.step for record in self.history]

    @property
    def values(self) -> list[float]:
        """The values of the history."""
        return [record.value for record in self.history]

    def __str__(self) -> str:
        lines = [f"{self.name} on a batch of {_shapes(self.x)}, every {self.every} steps"]
        lines += [f"  step {r.step:6d}  {r.value:.4e}  ({r.seconds * 1e3:.1f} ms)" for r in self.history]
        return "\n".join(lines)

    def _on_device(self) -> Any:
        parameter = next(iter(self.model.parameters()), None)
        if parameter is not None and _first(self.x).device != parameter.device:
            self.x = _moved(self.x, parameter.device)
        return self.x


class _grads_kept:
    """Puts each parameter's ``.grad`` back (the same tensor, its values) if a measurement touched it."""

    def __init__(self, model: nn.Module) -> None:
        self.grads = [(p, p.grad, None if p.grad is None else p.grad._version) for p in model.parameters()]

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for parameter, grad, version in self.grads:
            if parameter.grad is not grad:
                parameter.grad = grad
            if grad is not None and grad._version != version:
                raise InvalidArgument(
                    "the monitor's measurement wrote to a parameter's gradient in place; a measurement "
                    "must not run backward on the model"
                )


def _check_several(x: object, measure: object, label: str, options: dict[str, Any]) -> None:
    """A model's several inputs (``x`` a tuple, dict or graph): the measurement must take their field
    types (``inputs=``), and they must be given."""
    if isinstance(measure, str) and "inputs" not in inspect.signature(MEASURES[measure]).parameters:
        takes = ", ".join(repr(n) for n, f in MEASURES.items() if "inputs" in inspect.signature(f).parameters)
        raise InvalidArgument(
            f"measure {label!r} takes one tensor on a grid, but x holds a model's several inputs "
            f"{_shapes(x)}; pass one of {takes} with inputs= and outputs="
        )
    if isinstance(measure, str) and options.get("inputs") is None:  # a callable of one's own reads x itself
        raise InvalidArgument(
            f"x holds a model's several inputs {_shapes(x)}, so the measurement needs their field types: "
            "pass inputs= (and outputs=), e.g. EquivarianceMonitor(model, (pos, h), "
            "generator=Rotation3D('z'), inputs=(Positions(), Scalars()), outputs=(Scalars(nodes=None), "
            "Vectors()))"
        )


def _kept(x: Any) -> Any:
    """A detached copy of the fixed batch: a tensor, a tuple, list or dict of arguments, or a graph."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_kept(v) for v in x)
    if isinstance(x, Mapping):
        return {k: _kept(v) for k, v in x.items()}
    if is_graph(x):
        return x.clone()
    return x


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    if is_graph(x):
        return [v for v in x.to_dict().values() if isinstance(v, torch.Tensor)]
    return []


def _first(x: Any) -> torch.Tensor:
    return _tensors(x)[0]


def _moved(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_moved(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _moved(v, device) for k, v in x.items()}
    if is_graph(x):
        return x.to(device)
    return x


def _shapes(x: Any) -> str:
    """The fixed batch in words: ``(8, 1, 12, 12)``, or its tensors' shapes."""
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in x) + ")"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in x.items()) + "}"
    if is_graph(x):
        return f"{type(x).__name__} of {int(x.num_nodes)} nodes"
    return describe(x)


def _measure(measure: object) -> tuple[Measure, str]:
    if isinstance(measure, str):
        if measure not in MEASURES:
            raise InvalidArgument(
                f"measure must be one of {', '.join(map(repr, MEASURES))} or a callable (model, x) -> "
                f"number, found {measure!r}"
            )
        return MEASURES[measure], measure
    if not callable(measure):
        raise InvalidArgument(
            f"measure must be a name ('lie_derivative', ...) or a callable (model, x) -> number, found "
            f"{describe(measure)}"
        )
    return measure, getattr(measure, "__name__", type(measure).__name__)


def _value(result: object) -> float:
    """The number of a measurement's result."""
    if isinstance(result, EquivarianceReport):
        return result.max_error
    if isinstance(result, InvarianceMetric):
        return result.value
    if isinstance(result, torch.Tensor):
        if result.numel() != 1:
            raise InvalidArgument(
                f"the measurement returned a tensor of shape {tuple(result.shape)}; a monitor logs one "
                "number a measurement (use reduction='mean' or 'max')"
            )
        return float(result)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result)
    raise InvalidArgument(
        f"the measurement returned {describe(result)}; a monitor logs one number: a float, a 0-dim tensor, "
        "a report or a metric"
    )
