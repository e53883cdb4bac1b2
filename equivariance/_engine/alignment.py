"""Where strided layers sample: each strided convolution's and pooling's input size, kernel, stride and
padding, as the unshifted pass of a rotation or flip check meets them, so that a failed check can name
the layer whose sampling grid the rotation does not map onto itself and the size that would (the
condition is in docs/group_convolutions.md; a stride is the one its module states, ``grids.stated_stride``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from equivariance._engine.grids import each_dim, stated_stride
from equivariance._engine.isolation import owning_module

_SAMPLING = {
    1: (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d),
    2: (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d),
    3: (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d),
}


@dataclass(frozen=True)
class Strided:
    """A strided layer as the unshifted pass met it: its name, input size and sampling, per spatial dim."""

    name: str
    size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    def misaligned(self) -> list[int]:
        """The spatial dims (indices) where ``(n + 2p - k) mod s`` is not zero."""
        return [i for i, (n, k, s, p) in enumerate(self._dims()) if (n + 2 * p - k) % s]

    def aligned_size(self, dim: int) -> int:
        """The smallest input size at least the one seen for which the dim is aligned."""
        n, k, s, p = self._dims()[dim]
        return n + (-(n + 2 * p - k)) % s

    def _dims(self) -> list[tuple[int, int, int, int]]:
        return list(zip(self.size, self.kernel, self.stride, self.padding))


@contextlib.contextmanager
def strided_layers(model: Callable[..., Any], *, enabled: bool) -> Iterator[list[Strided]]:
    """Record each strided convolution or pooling layer's first input, in the order they run."""
    seen: list[Strided] = []
    owner = owning_module(model) if enabled else None
    if owner is None:
        yield seen
        return
    handles = []
    names: set[str] = set()
    for name, module in owner.named_modules():
        if _sampling(module) is not None:
            handles.append(module.register_forward_pre_hook(_recorder(name, seen, names)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _recorder(name: str, seen: list[Strided], names: set[str]) -> Callable[[nn.Module, Any], None]:
    def record(module: nn.Module, args: Any) -> None:
        sampling = _sampling(module)
        if name in names or sampling is None or not args or not hasattr(args[0], "shape"):
            return
        kernel, stride, padding = sampling
        d = len(kernel)
        names.add(name)
        seen.append(
            Strided(name or type(module).__name__, tuple(args[0].shape[-d:]), kernel, stride, padding)
        )

    return record


def _sampling(module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """The effective kernel, stride and padding per dim of a layer with a stride above 1, else None."""
    d = next((d for d, kinds in _SAMPLING.items() if isinstance(module, kinds)), None)
    stride = None if d is None else stated_stride(module, d)
    padding = getattr(module, "padding", 0)
    if d is None or stride is None or all(s == 1 for s in stride) or isinstance(padding, str):
        return None  # a string padding ("same", "valid") only goes with stride 1 in torch
    kernel, dilation = each_dim(module.kernel_size, d), each_dim(getattr(module, "dilation", 1), d)
    effective = tuple(q * (k - 1) + 1 for k, q in zip(kernel, dilation))
    return effective, stride, each_dim(padding, d)
