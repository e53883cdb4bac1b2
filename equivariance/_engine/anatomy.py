"""A model's anatomy as the check's hints and the profile's causes both read it: the borders' reach
through padded and strided layers, global poolings, self-attention and position embeddings
(docs/diagnosing.md)."""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._engine.grids import each_dim, stated_stride, stride_of
from equivariance._engine.isolation import owning_module
from equivariance._engine.validation import shown_per_dim

_MODES = {
    "zeros": "zero padding",
    "constant": "constant padding",
    "reflect": "reflection padding",
    "replicate": "replication padding",
    "circular": "circular padding",
    "-inf": "padding with -inf",
}
KEEP_ANY = 0.0
"""An error that vanishes beyond a margin names the borders however little the margin keeps."""
_SAMPLING = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


@dataclass(frozen=True)
class Padded:
    """A layer that pads (the larger side per dim; ``mode`` a key of ``_MODES``) or subsamples (its own
    ``step``) its input, which is at ``stride`` relative to the model's input."""

    name: str
    type: str
    padding: tuple[int, ...]
    mode: str
    stride: tuple[int, ...]
    step: tuple[int, ...] = ()

    @property
    def pads(self) -> bool:
        return any(self.padding)

    def reach(self) -> tuple[int, ...]:
        """How far in it carries a difference at the edge, in input samples: its padding, and the
        rounding to whole samples of its output where it subsamples."""
        step = self.step or (1,) * len(self.padding)
        return tuple((p + k - 1) * s for p, k, s in zip(self.padding, step, self.stride))

    def describe(self) -> str:
        return f"{self.name!r} ({self.type}, padding {shown_per_dim(self.padding)}, {_MODES[self.mode]})"


def sampling(name: str, module: nn.Module, d: int, stride: tuple[int, ...]) -> Padded | None:
    """The layer as the reach rule reads it, given its input's stride: where it pads or subsamples."""
    padded = padding_of(module, d)
    step = module_stride(module, d)
    if padded is None and all(k == 1 for k in step):
        return None
    padding, mode = padded if padded is not None else ((0,) * d, "zeros")
    return Padded(name, type(module).__name__, padding, mode, stride, step)


def padding_of(module: nn.Module, d: int) -> tuple[tuple[int, ...], str] | None:
    """The padding per spatial dim of a convolution, pooling or padding layer, and its mode; None for
    a layer that does not pad, or that this rule does not read (a transposed convolution)."""
    padding: tuple[int, ...]
    mode: str
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.padding == "valid":
            return None
        if module.padding == "same":
            padding = tuple(q * (k - 1) // 2 for q, k in zip(module.dilation, module.kernel_size))
        else:
            padding = each_dim(module.padding, d)
        mode = module.padding_mode
    elif isinstance(module, nn.modules.pooling._MaxPoolNd):
        padding, mode = each_dim(module.padding, d), "-inf"
    elif isinstance(module, nn.modules.pooling._AvgPoolNd):
        padding, mode = each_dim(getattr(module, "padding", 0), d), "zeros"
    elif isinstance(module, nn.modules.padding._ConstantPadNd):
        padding, mode = _sides(module.padding, d), "zeros" if module.value == 0 else "constant"
    elif isinstance(module, nn.modules.padding._ReflectionPadNd):
        padding, mode = _sides(module.padding, d), "reflect"
    elif isinstance(module, nn.modules.padding._ReplicationPadNd):
        padding, mode = _sides(module.padding, d), "replicate"
    elif isinstance(module, nn.modules.padding._CircularPadNd):
        padding, mode = _sides(module.padding, d), "circular"
    else:
        return None
    if len(padding) != d or not any(padding):
        return None
    return padding, mode


def module_stride(module: nn.Module, d: int) -> tuple[int, ...]:
    """The stride a convolution or pooling layer states per dim (1 for any other layer)."""
    if isinstance(module, _SAMPLING) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return stated_stride(module, d) or (1,) * d
    return (1,) * d


def _sides(padding: Sequence[int], d: int) -> tuple[int, ...]:
    """``(left, right, top, bottom, ...)`` (last dim first, as ``F.pad``) as the larger side per dim."""
    pairs = [(padding[2 * i], padding[2 * i + 1]) for i in range(len(padding) // 2)]
    return tuple(max(pairs[d - 1 - i]) for i in range(d)) if len(pairs) == d else ()


def matches(mode: str, boundary: str) -> bool:
    """Whether a padding moves with the content under the boundary: circular padding on a torus."""
    return boundary == "circular" and mode == "circular"


def reaching(layers: Sequence[Padded], boundary: str) -> list[Padded]:
    """The padded layers that carry the borders in: from the first whose padding the boundary does not
    match, every padded layer after it."""
    first = next(
        (i for i, layer in enumerate(layers) if layer.pads and not matches(layer.mode, boundary)), None
    )
    return [] if first is None else list(layers[first:])


def reach(layers: Sequence[Padded], d: int) -> tuple[int, ...]:
    """The reach of the borders, in input samples per dim: ``padding x stride`` summed over the layers."""
    return tuple(map(sum, zip((0,) * d, *(layer.reach() for layer in layers))))


@dataclass(frozen=True)
class Cover:
    """A map whose compared region's ``side`` along the moved ``dim`` lies within the ``reach`` (in
    samples of the map, per dim) of the padded ``layers`` that carry the borders in."""

    layers: tuple[Padded, ...]
    reach: tuple[int, ...]
    stride: tuple[int, ...]
    side: int
    dim: int
    boundary: str


def covering(
    layers: Sequence[Padded],
    boundary: str,
    stride: Sequence[int],
    sides: Sequence[int],
    moved: Sequence[int],
) -> Cover | None:
    """The borders' reach where it covers a moved dim of a compared region (``sides``, on a map of
    ``stride``); None where some compared sample is out of it in every moved dim."""
    carrying = reaching(layers, boundary)
    if not carrying:
        return None
    pixels = reach(carrying, len(stride))
    samples = tuple(math.ceil(r / max(1, s)) for r, s in zip(pixels, stride))
    for dim in moved:
        if samples[dim] > 0 and 2 * samples[dim] >= sides[dim]:
            return Cover(tuple(carrying), samples, tuple(stride), sides[dim], dim, boundary)
    return None


def attends(module: nn.Module) -> bool:
    """Whether a layer is self-attention, which mixes every token with every other."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def varies_over_positions(tensor: torch.Tensor) -> bool:
    """Whether a map-shaped parameter holds different values at different positions, read with the
    channels first or last; one constant over positions in either reading is a per-channel bias."""
    t = tensor.detach()
    if t.dim() >= 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() < 2 or t.numel() == 0 or not t.is_floating_point():
        return False
    first = t.reshape(t.shape[0], -1)
    last = t.reshape(-1, t.shape[-1])
    return bool((first != first[:, :1]).any()) and bool((last != last[:1]).any())


def positional_parameter(
    owner: nn.Module, modules: Sequence[nn.Module], per_sample: Sequence[tuple[int, ...]]
) -> tuple[str, tuple[int, ...]] | None:
    """A parameter or buffer of ``modules`` shaped like one sample of a map (one of ``per_sample``,
    with or without a leading 1) whose values vary over positions: a position embedding. Its name is
    relative to ``owner``; parameters come first, then buffers."""
    shapes = {tuple(s) for s in per_sample if len(s) >= 2}
    if not shapes:
        return None
    for kind, named in (("_parameters", owner.named_parameters), ("_buffers", owner.named_buffers)):
        for module in modules:
            for tensor in getattr(module, kind).values():
                if tensor is None or tensor.device.type == "meta":
                    continue
                shape = tuple(tensor.shape)
                fits = shape in shapes or (len(shape) >= 3 and shape[0] == 1 and shape[1:] in shapes)
                if not fits or not varies_over_positions(tensor):
                    continue
                name = next((n for n, t in named() if t is tensor), None)
                if name is not None:
                    return name, shape
    return None


# -- what a failed check is read with: a pass of x (and of its moved copy) with hooks ----------------


@dataclass(frozen=True)
class Pooled:
    """A map pooled to one sample per dim (global pooling), and how much the shift changed it."""

    name: str
    change: float


@dataclass(frozen=True)
class Structure:
    """What a pass of a checked model met: the padded and strided layers in the order they ran, the
    first convolution or pooling at the coarsest stride (and that stride), the global poolings, the
    self-attention layers, and a position embedding (name and shape) if a parameter is one."""

    padded: tuple[Padded, ...]
    coarsest: tuple[str, tuple[int, ...]] | None
    pooled: tuple[Pooled, ...]
    attention: tuple[str, ...]
    positional: tuple[str, tuple[int, ...]] | None


def read_structure(
    forward: Callable[[torch.Tensor], Any], model: Any, x: torch.Tensor, moved: torch.Tensor | None
) -> Structure | None:
    """The structure of ``model``: one pass of ``x`` through ``forward`` with hooks, and, where the
    model pools globally, one of ``moved`` (``x`` moved by a failing element) for the change of the
    pooled values. ``model`` is an ``nn.Module``, a bound method of one, or a function that calls one
    module (``lambda x: model(x)["out"]``, found among the names it uses); None for any other
    callable, whose layers cannot be hooked."""
    owner = owning_module(model)
    if owner is None:  # not `or`: a module's truth value is its len(), where it has one
        owner = _called_module(model)
    if owner is None:
        return None
    seen = _Seen(tuple(x.shape[2:]))
    with seen.hooked(owner):
        try:
            forward(x.clone())
            if moved is not None and seen.pools:
                seen.moved = True
                forward(moved)
        except Exception:  # the check ran the model already; a hint is no reason to fail it
            return None
    modules = [module for _, module in owner.named_modules()]
    positional = positional_parameter(owner, modules, sorted(seen.shapes))
    pooled = tuple(Pooled(name, seen.change(name)) for name in seen.pools)
    return Structure(tuple(seen.padded), seen.coarsest, pooled, tuple(seen.attention), positional)


def _called_module(function: Any) -> nn.Module | None:
    """The one module a plain function uses, from its closure or its globals; None if not one."""
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    cells = [cell.cell_contents for cell in getattr(function, "__closure__", None) or () if _filled(cell)]
    names = getattr(function, "__globals__", {})
    used = [*cells, *(names[name] for name in code.co_names if name in names)]
    modules = {id(value): value for value in used if isinstance(value, nn.Module)}
    return next(iter(modules.values())) if len(modules) == 1 else None


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


class _Seen:
    """The hooks of ``read_structure`` and what they recorded: each layer's first call in the pass of
    ``x``; in the pass of the moved copy (``moved``), the global poolings only."""

    def __init__(self, spatial: tuple[int, ...]) -> None:
        self.spatial, self.d = spatial, len(spatial)
        self.padded: list[Padded] = []
        self.coarsest: tuple[str, tuple[int, ...]] | None = None
        self.attention: list[str] = []
        self.shapes: set[tuple[int, ...]] = set()
        self.pools: dict[str, list[torch.Tensor]] = {}
        # maps of one sample per dim that a layer returned or was given, by id while they live
        self.small: dict[int, weakref.ref[torch.Tensor]] = {}
        self.after_small = False  # whether the last layer returned such a map
        self.moved = False
        self.called: set[str] = set()

    @contextlib.contextmanager
    def hooked(self, owner: nn.Module) -> Iterator[None]:
        """Hooks on the leaf modules and the attention layers of ``owner``, while inside."""
        handles = [
            module.register_forward_hook(self._hook(name or type(module).__name__))
            for name, module in owner.named_modules()
            if not any(module.children()) or (name and attends(module))  # a leaf model is its own layer
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            source = inputs[0] if isinstance(inputs, tuple) and inputs else None
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            tensor_in = source if isinstance(source, torch.Tensor) else None
            tensor_out = out if isinstance(out, torch.Tensor) else None
            if self.moved:
                self._pool(name, tensor_in, tensor_out)
            elif name not in self.called:
                self.called.add(name)
                self._first(name, module, tensor_in, tensor_out)
            self.after_small = self._small(tensor_out)

        return record

    def _first(
        self, name: str, module: nn.Module, source: torch.Tensor | None, out: torch.Tensor | None
    ) -> None:
        if attends(module):
            self.attention.append(name)
            return
        if out is not None and out.dim() >= 2:
            self.shapes.add(tuple(out.shape[1:]))
        d = self.d
        if source is None or source.dim() != d + 2:
            return
        stride = tuple(stride_of(n, m) for n, m in zip(self.spatial, source.shape[2:]))
        layer = sampling(name, module, d, stride)
        if layer is not None:
            self.padded.append(layer)
        if isinstance(module, _SAMPLING) and out is not None and out.dim() == d + 2:
            self._subsampled(name, tuple(out.shape[2:]))
        self._pool(name, source, out)

    def _subsampled(self, name: str, spatial: tuple[int, ...]) -> None:
        """A convolution's or pooling's output map: the coarsest stride so far, where it is coarser
        (a map pooled to one sample is global pooling, not a stride)."""
        if all(m == 1 for m in spatial):
            return
        stride = tuple(stride_of(n, m) for n, m in zip(self.spatial, spatial))
        if self.coarsest is None or math.prod(stride) > math.prod(self.coarsest[1]):
            self.coarsest = (name, stride)

    def _pool(self, name: str, source: torch.Tensor | None, out: torch.Tensor | None) -> None:
        """A global pooling: a layer that returns a map of one sample per dim from a larger one, or a
        layer given such a map that no layer returned (pooled in ``forward``, as torchvision's
        squeeze-excite does)."""
        d = self.d
        if source is None or source.dim() != d + 2 or math.prod(self.spatial) <= 1:
            return
        one = [self._small(source), self._small(out)]
        key, pooled = name, None
        if one[1] and not one[0]:
            pooled = out
        elif one[0] and not self._seen_small(source) and not self.after_small:
            # pooled in forward, not computed in forward from the small map the last layer returned
            key, pooled = f"the input of {name!r}", source
        for tensor, small in zip((source, out), one):
            if small and tensor is not None:
                self.small[id(tensor)] = weakref.ref(tensor)
        if pooled is None:
            return
        if self.moved:
            if key in self.pools and len(self.pools[key]) == 1:
                self.pools[key].append(pooled.detach().clone())
        elif key not in self.pools:
            self.pools[key] = [pooled.detach().clone()]

    def _small(self, tensor: torch.Tensor | None) -> bool:
        """Whether a tensor is a map of one sample per dim."""
        return tensor is not None and tensor.dim() == self.d + 2 and all(m == 1 for m in tensor.shape[2:])

    def _seen_small(self, tensor: torch.Tensor) -> bool:
        """Whether a map of one sample per dim is one a layer returned or was given before: computed
        from a pooling, not a pooling of its own."""
        ref = self.small.get(id(tensor))
        return ref is not None and ref() is tensor

    def change(self, key: str) -> float:
        """The largest relative change of a pooled value over the samples (0 without a moved pass)."""
        values = self.pools[key]
        if len(values) < 2 or values[0].shape != values[1].shape:
            return 0.0
        a, b = (v.double().flatten(1) for v in values)
        norm, diff = a.norm(dim=1), (a - b).norm(dim=1)
        relative = torch.where(norm > 0, diff / norm.clamp_min(1e-300), diff)
        return float(relative.max())
