"""Forward-mode rules for the distance ops PyTorch has none for (``torch.cdist``, ``torch.pdist``).

`DistanceRules` runs a Lie derivative's forward-mode passes as they are until one fails at such an op,
then again within a ``TorchFunctionMode`` (`with_distance_rules`) where ``torch.cdist`` and
``torch.pdist`` run as an ``autograd.Function``: PyTorch's own value, and as ``jvp`` (and a
``backward`` of plain ops, for a model that differentiates inside its forward) the derivative of a
distance, ``d||a - b||_p = <w, da - db>``, ``w`` the slope of the norm at ``a - b``. At a zero
distance (the diagonal of ``cdist(x, x)``) the norm has no derivative; its slope is taken as zero, as
PyTorch's backward of ``cdist`` does. That is exact for a Lie derivative: a generator moves two equal
points equally, so ``da - db`` is zero there too. Outside the pass nothing changes. What users see is
in docs/lie.md ("Distances").
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
from torch.overrides import TorchFunctionMode

from equivariance.errors import InvalidArgument

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]
"""How a pass wraps the model's call: as it is, or within the distance rules."""


def _slopes(x1: torch.Tensor, x2: torch.Tensor, p: float) -> torch.Tensor:
    """``d||v||_p / dv`` at each difference ``v = x1_i - x2_j`` (last dim), zero where ``v`` is. The
    distance is taken from ``v`` itself: ``cdist``'s matrix-product form loses the digits of a small one."""
    diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    distance = torch.linalg.vector_norm(diff, ord=p, dim=-1)
    zero = distance == 0
    kept = ~zero.unsqueeze(-1)
    if p == 2:
        slopes: torch.Tensor = diff / torch.where(zero, 1, distance).unsqueeze(-1) * kept
        return slopes
    if p == 1:
        return diff.sign()
    if p == 0:  # a count of nonzero components: piecewise constant
        return torch.zeros_like(diff)
    if math.isinf(p):  # the largest component's sign (the first of ties)
        largest = diff.abs().argmax(-1, keepdim=True)
        return torch.zeros_like(diff).scatter(-1, largest, diff.gather(-1, largest).sign())
    scale = torch.where(zero, 1, distance).pow(p - 1).unsqueeze(-1)
    slopes = diff.abs().pow(p - 1) * diff.sign() / scale * kept
    return slopes


class _Cdist(torch.autograd.Function):
    """``torch.cdist(x1, x2, p)`` with a forward-mode derivative (and a backward made of plain ops)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x1: torch.Tensor, x2: torch.Tensor, p: float, mode: str) -> torch.Tensor:
        return torch.cdist(x1, x2, p=p, compute_mode=mode)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x1, x2, p, _ = inputs
        ctx.p = p
        ctx.save_for_forward(x1, x2)
        ctx.save_for_backward(x1, x2)

    @staticmethod
    def jvp(ctx: Any, t1: torch.Tensor | None, t2: torch.Tensor | None, *_: Any) -> torch.Tensor:
        x1, x2 = ctx.saved_tensors
        slopes = _slopes(x1, x2, ctx.p)
        moved = torch.zeros((), dtype=x1.dtype, device=x1.device)
        if t1 is not None:
            moved = moved + t1.unsqueeze(-2)
        if t2 is not None:
            moved = moved - t2.unsqueeze(-3)
        return (slopes * moved).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x1, x2 = ctx.saved_tensors
        pulled = _slopes(x1, x2, ctx.p) * grad.unsqueeze(-1)
        return _summed_to(pulled.sum(-2), x1), _summed_to(-pulled.sum(-3), x2), None, None


def _summed_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``grad`` summed over the batch dims that ``like`` was broadcast along."""
    extra = grad.dim() - like.dim()
    if extra > 0:
        grad = grad.sum(tuple(range(extra)))
    dims = tuple(i for i, (g, n) in enumerate(zip(grad.shape, like.shape)) if n == 1 and g != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


def _norm_order(p: object, op: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or p < 0 or 0 < p < 1:
        raise InvalidArgument(
            f"the model calls {op} with p={p!r}; the Lie derivative differentiates {op} for p = 0 "
            "or p >= 1 (2, the Euclidean distance, by default), where a distance has a slope; below 1 it has "
            "none where two points share a coordinate. Use p=2, or measure the model by its outputs alone "
            "(equivariance_error, or its "
            "finite-difference limit equivariance_error(..., Rotation.about(axis, t)) / t for a small t)"
        )
    return float(p)


def _cdist(
    x1: torch.Tensor,
    x2: torch.Tensor,
    p: float = 2.0,
    compute_mode: str = "use_mm_for_euclid_dist_if_necessary",
) -> torch.Tensor:
    out: torch.Tensor = _Cdist.apply(x1, x2, _norm_order(p, "torch.cdist"), compute_mode)  # type: ignore[no-untyped-call]
    return out


def _pdist(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    rows, cols = torch.triu_indices(len(x), len(x), 1, device=x.device)
    return _cdist(x, x, _norm_order(p, "torch.pdist"), "donot_use_mm_for_euclid_dist")[rows, cols]


_RULES: dict[Any, Callable[..., torch.Tensor]] = {torch.cdist: _cdist, torch.pdist: _pdist}
_MISSING = re.compile(r"forward AD with (_cdist_forward|_euclidean_dist|_pdist_forward) that does not")


class DistanceRules:
    """Runs a run's forward-mode passes without the rules until one fails for want of them, then that
    pass again and the rest with them: even a pass-through mode costs a Python call an op, a quarter of
    the Lie derivative of a small model (a tiny EGNN and CNN, CPU time), while a model that computes
    distances mostly does so first, so its failed pass costs little."""

    def __init__(self) -> None:
        self.needed = False

    def run(self, attempt: Callable[[Wrap], T]) -> T:
        """``attempt(wrap)``, where ``wrap`` is how it must wrap the model's call: as it is, or within the
        rules (retried so where the model called a distance op that has no forward-mode formula)."""
        if not self.needed:
            try:
                return attempt(lambda function: function)
            except InvalidArgument as exc:
                if not _MISSING.search(str(exc.__cause__ or "")):
                    raise
                self.needed = True
        return attempt(with_distance_rules)


class _DistanceRules(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        rule = _RULES.get(func, func)
        return rule(*args, **(kwargs or {}))


def with_distance_rules(function: Callable[P, R]) -> Callable[P, R]:
    """``function``, within which ``torch.cdist`` and ``torch.pdist`` have a forward-mode derivative.

    The mode is entered inside the call, on top of any mode already running (the Lie derivative's
    ``TangentWatch``), so that only the model's own ops pass through it (below, it would see the
    watch's ops as well)."""

    @functools.wraps(function)
    def within(*args: P.args, **kwargs: P.kwargs) -> R:
        with _DistanceRules():
            return function(*args, **kwargs)

    return within
