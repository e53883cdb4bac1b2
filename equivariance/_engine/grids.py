"""The stride of every map a model computes, relative to its input: followed module by module.

The Lie derivative applies a generator to maps on their own grids: a map
subsampled by 2 moves half as many of its samples. The stride is followed
through the leaf modules as they run, each map's spatial shape remembered
with its stride:

- a module with a ``stride`` attribute (convolutions, pooling) multiplies
  its input's stride by it;
- a module that keeps its input's spatial shape keeps its stride;
- any other module that changes the spatial shape (an upsampling, an
  adaptive pooling) scales it by the ratio of the sizes (rounded when it
  shrinks, exact when it grows).

A map whose spatial shape no module produced (the input of a functional op)
is read against the model's input the same way. Maps are read channels
first, ``(N, C, *spatial)`` with the input's number of spatial dims; any
other shape has no spatial dims (logits, a flattened map) and no stride.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from equivariance._engine.isolation import owning_module, submodules

Stride = tuple[float, ...]


def ratio_stride(spatial: Sequence[int], reference: Sequence[int]) -> Stride:
    """The stride of a grid of size ``spatial`` read against one of size ``reference``.

    Examples:
        >>> ratio_stride((16, 16), (32, 32)), ratio_stride((30, 15), (32, 32)), ratio_stride((8,), (4,))
        ((2, 2), (1, 2), (0.5,))
    """
    strides: list[float] = []
    for n, n_ref in zip(spatial, reference):
        ratio = n_ref / n
        strides.append(max(1, round(ratio)) if ratio >= 1 else ratio)
    return tuple(strides)


class Grids:
    """The strides of the maps seen so far in passes of one model on inputs of one shape.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Conv2d(2, 2, 5), nn.Conv2d(2, 2, 3, stride=2))
        >>> grids = Grids((12, 12))
        >>> with grids.following(net):
        ...     _ = net(torch.zeros(1, 1, 12, 12))
        >>> grids.stride((1, 2, 4, 4)), grids.stride((1, 2, 1, 1)), grids.stride((1, 10))
        ((1, 1), (2, 2), None)
    """

    def __init__(self, input_spatial: Sequence[int]) -> None:
        self.input_spatial = tuple(input_spatial)
        self.known: dict[tuple[int, ...], Stride] = {self.input_spatial: (1,) * len(self.input_spatial)}

    def stride(self, shape: Sequence[int]) -> Stride | None:
        """The stride of a tensor of ``shape``; None where it has no spatial dims."""
        d = len(self.input_spatial)
        if len(shape) != d + 2:
            return None
        spatial = tuple(shape[2:])
        return self.known.get(spatial) or ratio_stride(spatial, self.input_spatial)

    def record(self, module: nn.Module, before: Sequence[int], after: Sequence[int]) -> None:
        """What a module did to the grid: from a tensor of shape ``before`` to one of ``after``."""
        given, made = self.stride(before), self.stride(after)
        if given is None or made is None or tuple(after[2:]) in self.known:
            return
        own = getattr(module, "stride", None)
        d = len(self.input_spatial)
        if isinstance(own, int) and not isinstance(own, bool):
            own = (own,) * d
        if isinstance(own, tuple) and len(own) == d and all(isinstance(s, int) for s in own):
            self.known[tuple(after[2:])] = tuple(g * s for g, s in zip(given, own))
            return
        scaled = ratio_stride(after[2:], before[2:])
        self.known[tuple(after[2:])] = tuple(g * r for g, r in zip(given, scaled))

    @contextlib.contextmanager
    def following(self, model: Callable[..., Any]) -> Iterator[None]:
        """Within the block, every leaf module of ``model`` that runs records what it did to the grid."""
        owner = owning_module(model)
        leaves = [] if owner is None else [m for m in submodules(owner) if not m._modules]

        def record(module: nn.Module, args: Any, out: Any) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                self.record(module, tuple(args[0].shape), tuple(out.shape))

        handles = [leaf.register_forward_hook(record) for leaf in leaves]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
