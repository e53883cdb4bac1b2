"""A plain, slow reference for the errors the library measures: the tests' oracle.

One element and one sample at a time, in float64, with torch's own ``roll``,
``rot90`` and ``flip`` and nothing from the library's engine: ``f(g.x)`` and
``g'.f(x)`` are computed as the definitions read (docs/concepts.md) and
compared over the region where both are defined, less the margins. Every fast
path of the library is held against it (tests/test_reference.py).

Elements are read through their public attributes only (``Shift.offsets``,
``Rot90.k``/``dims``, ``Flip.dim``); layouts through ``Tokens.grid``/``prefix``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from equivariance import Flip, Rot90, Shift
from equivariance.layouts import ChannelsFirst, ChannelsLast, Layout, Tokens

Model = Callable[[torch.Tensor], torch.Tensor]


def in_float64(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode (the model itself is left alone)."""
    return copy.deepcopy(model).double().eval()


def shifted(x: torch.Tensor, offsets: Sequence[int], boundary: str) -> torch.Tensor:
    """``x`` translated by ``offsets`` along its trailing dims: a roll, with the wrapped part zeroed
    under the zeros boundary."""
    d = len(offsets)
    dims = tuple(range(x.dim() - d, x.dim()))
    out = torch.roll(x, tuple(offsets), dims)
    if boundary == "circular":
        return out
    for dim, o in zip(dims, offsets):
        n = x.shape[dim]
        index = torch.arange(n)
        keep = (index >= o) if o >= 0 else (index < n + o)
        shape = [1] * x.dim()
        shape[dim] = n
        out = out * keep.view(shape).to(out.dtype)
    return out


def moved(
    x: torch.Tensor, element: object, boundary: str, stride: Sequence[int] | None = None
) -> torch.Tensor:
    """The element acting on ``x`` (spatial dims last); a shift divided by ``stride`` on an output grid."""
    if isinstance(element, Shift):
        offsets = list(element.offsets)
        if stride is not None:
            assert all(o % s == 0 for o, s in zip(offsets, stride)), (offsets, stride)
            offsets = [o // s for o, s in zip(offsets, stride)]
        return shifted(x, offsets, boundary)
    if isinstance(element, Rot90):
        return torch.rot90(x, element.k, element.dims)
    if isinstance(element, Flip):
        return torch.flip(x, (element.dim,))
    raise TypeError(f"the reference does not know {element!r}")


def region(
    element: object,
    spatial: Sequence[int],
    boundary: str,
    stride: Sequence[int],
    margins: Sequence[int],
) -> tuple[slice, ...]:
    """Where ``g'.f(x)`` is defined on an output grid of ``spatial``, less ``margins`` at each edge."""
    box = []
    for i, n in enumerate(spatial):
        a, b = 0, n
        if isinstance(element, Shift) and boundary == "zeros":
            o = element.offsets[i] // stride[i]
            a, b = max(o, 0), n + min(o, 0)
        box.append(slice(a + margins[i], max(a + margins[i], b - margins[i])))
    return tuple(box)


def as_grid(y: torch.Tensor, layout: Layout | None, d: int) -> torch.Tensor:
    """An output ``(N, ...)`` as ``(N, C, *spatial)``."""
    if layout is None or isinstance(layout, ChannelsFirst):
        return y
    if isinstance(layout, ChannelsLast):
        return y.permute(0, y.dim() - 1, *range(1, y.dim() - 1))
    assert isinstance(layout, Tokens)
    assert layout.grid is not None
    tokens = y[:, layout.prefix :, :]
    return tokens.transpose(1, 2).reshape(len(y), y.shape[-1], *layout.grid)


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    """The error of one sample: ``||out - ref|| / ||ref||``, or the RMS of ``out - ref`` where ``ref``
    is all zero (then ``True``). Both sides are divided by their largest magnitude before squaring,
    so the result is right at every finite scale."""
    diff = out - ref
    peak = float(ref.abs().max()) if ref.numel() else 0.0
    if peak > 0:
        return _norm(diff / peak) / _norm(ref / peak), False
    top = float(diff.abs().max()) if diff.numel() else 0.0
    if top == 0:
        return 0.0, True
    return top * _norm(diff / top) / math.sqrt(diff.numel()), True


def _norm(t: torch.Tensor) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in t.reshape(-1).tolist()))


def equivariance_errors(
    model: Model,
    x: torch.Tensor,
    elements: Sequence[object],
    *,
    stride: Sequence[int] | None = None,
    boundary: str = "zeros",
    margin: Sequence[int] | None = None,
    layout: Layout | None = None,
) -> list[list[tuple[float, bool]]]:
    """``[element][sample] -> (error, absolute)``: ``f(g.x)`` against ``g'.f(x)``, one sample at a time.

    ``model`` runs on the float64 ``x`` as given (pass a float64 model for a float64 truth).
    """
    d = x.dim() - 2
    stride = tuple(stride or (1,) * d)
    margins = tuple(margin or (0,) * d)
    table = []
    for element in elements:
        row = []
        for n in range(len(x)):
            xn = x[n : n + 1]
            with torch.no_grad():
                base = as_grid(model(xn), layout, d)
                out = as_grid(model(moved(xn, element, boundary)), layout, d)
            ref = moved(base, element, boundary, stride)
            box = (slice(None), slice(None), *region(element, base.shape[2:], boundary, stride, margins))
            row.append(compare(out[box].double(), ref[box].double()))
        table.append(row)
    return table


def invariance_errors(
    model: Model, x: torch.Tensor, elements: Sequence[object], *, boundary: str = "zeros"
) -> list[list[tuple[float, bool]]]:
    """``[element][sample] -> (error, absolute)``: ``f(g.x)`` against ``f(x)``, whole."""
    table = []
    for element in elements:
        row = []
        for n in range(len(x)):
            xn = x[n : n + 1]
            with torch.no_grad():
                row.append(compare(model(moved(xn, element, boundary)).double(), model(xn).double()))
        table.append(row)
    return table


def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every leaf submodule's output for ``x`` (the first call of each), by name."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: seen.setdefault(name, out.detach().clone())
                )
            )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen
