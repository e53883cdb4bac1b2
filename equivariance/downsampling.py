"""Downsampling that keeps (more of) a shift: blur pooling and adaptive polyphase sampling.

[`BlurPool`][equivariance.downsampling.BlurPool] (Zhang, ICML 2019) low-pass filters before it subsamples;
[`PolyphaseSampling`][equivariance.downsampling.PolyphaseSampling] (Chaman and Dokmanic, CVPR 2021) keeps, per
sample, the subsampling grid of largest norm. [`equivariance.surgery`][equivariance.surgery] puts them into a
model as subclasses of its own layers' classes; the details that matter in practice are in docs/fixing.md
("The three conversions").
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.validation import as_int, describe
from equivariance.errors import InvalidArgument

__all__ = [
    "BlurPool",
    "PolyphaseSampling",
    "binomial_filter",
    "converted_class",
]

PadType = Literal["reflect", "replicate", "zeros", "circular"]
PAD_TYPES: tuple[str, ...] = ("reflect", "replicate", "zeros", "circular")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def binomial_filter(size: int) -> torch.Tensor:
    """The normalized binomial filter of ``size`` taps: row ``size - 1`` of Pascal's triangle over its sum.

    Zhang (2019) blurs with these (the outer product of the taps in 2-D): ``[1]``, ``[1, 1] / 2``, ``[1, 2, 1]
    / 4``, ``[1, 3, 3, 1] / 8``, ...

    Examples:
        >>> binomial_filter(4).tolist()
        [0.125, 0.375, 0.375, 0.125]
    """
    size = _filter_size(size)
    taps = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    return (taps / taps.sum()).to(torch.float32)


class BlurPool(nn.Module):
    """Blur each channel with a binomial filter, then keep every ``stride``-th sample (Zhang, ICML 2019).

    The filter is the outer product of [`binomial_filter`][equivariance.downsampling.binomial_filter]; ``n``
    samples give ``ceil(n / stride)``, as ``antialiased_cnns.BlurPool`` does. The filter is a buffer left out
    of the ``state_dict``.

    Examples:
        >>> import torch
        >>> blur = BlurPool(stride=2, filter_size=3)
        >>> x = torch.zeros(1, 1, 8)
        >>> x[..., 3] = 1.0
        >>> blur(x).squeeze().tolist()
        [0.0, 0.25, 0.25, 0.0]
        >>> BlurPool()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3, 16, 16])

    Args:
        stride: the subsampling step, an int or one per spatial dim.
        filter_size: taps of the binomial filter per dim (Zhang's default 4; 1 subsamples without blurring).
        pad_type: how the input is padded before blurring: ``"reflect"`` (Zhang's default), ``"replicate"``,
            ``"zeros"`` or ``"circular"`` (the exact model of circular shifts).
    """

    filter: torch.Tensor

    def __init__(
        self, stride: int | Sequence[int] = 2, filter_size: int = 4, pad_type: PadType = "reflect"
    ) -> None:
        super().__init__()
        self.stride = _stride(stride)
        self.filter_size = _filter_size(filter_size)
        self.pad_type: PadType = _pad_type(pad_type)
        # shaped like a 1-D depthwise kernel, (1, 1, taps): a fixed kernel, as the profile knows blurs by
        self.register_buffer("filter", binomial_filter(self.filter_size)[None, None], persistent=False)

    def extra_repr(self) -> str:
        stride = self.stride if isinstance(self.stride, int) else tuple(self.stride)
        return f"stride={stride}, filter_size={self.filter_size}, pad_type={self.pad_type!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = _spatial_dims(x, self)
        stride = _per_dim(self.stride, d, self)
        if self.filter_size == 1:
            return x[tuple([slice(None), slice(None), *(slice(None, None, s) for s in stride)])]
        before, after = (self.filter_size - 1) // 2, self.filter_size // 2
        padded = _pad(x, (before, after) * d, self.pad_type, self)
        taps = self.filter.reshape(-1).to(dtype=x.dtype, device=x.device)
        kernel = taps
        for _ in range(d - 1):
            kernel = kernel[..., None] * taps
        channels = x.shape[1]
        kernel = kernel.expand(channels, 1, *kernel.shape)
        out: torch.Tensor = _CONV[d](padded, kernel, stride=stride, groups=channels)
        return out


class PolyphaseSampling(nn.Module):
    """Adaptive polyphase sampling: per sample, keep the subsampling grid of largest norm.

    Of the ``s**d`` grids each sample keeps the one of largest L2 norm (Chaman and Dokmanic, CVPR 2021), so
    the output follows a circular shift exactly where the stride divides the sizes. ``filter_size > 1`` blurs
    first. ``forward(x, source=None)``: layers given the same ``source`` keep the same grid (see "Fixing what
    the profile finds").

    Examples:
        >>> import torch
        >>> sampling = PolyphaseSampling(2)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> y = sampling(x)
        >>> y.shape
        torch.Size([1, 4, 4, 4])
        >>> moved = sampling(x.roll((3, 5), dims=(-2, -1)))
        >>> any(torch.equal(moved, y.roll((a, b), dims=(-2, -1))) for a in range(4) for b in range(4))
        True

    Args:
        stride: the subsampling step, an int or one per spatial dim.
        filter_size: taps of a binomial blur applied first (1: none, the default).
        pad_type: the blur's padding, ``"circular"`` by default.
    """

    def __init__(
        self, stride: int | Sequence[int] = 2, filter_size: int = 1, pad_type: PadType = "circular"
    ) -> None:
        super().__init__()
        self.stride = _stride(stride)
        self.filter_size = _filter_size(filter_size)
        self.pad_type: PadType = _pad_type(pad_type)
        self.blur: nn.Module | None = None
        if self.filter_size > 1:
            self.blur = BlurPool(1, self.filter_size, pad_type)

    def extra_repr(self) -> str:
        stride = self.stride if isinstance(self.stride, int) else tuple(self.stride)
        return f"stride={stride}"

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        d = _spatial_dims(x, self)
        stride = _per_dim(self.stride, d, self)
        if self.blur is not None:
            x = self.blur(x)
        if all(s == 1 for s in stride):
            return x
        grid = _on_grid(x, stride)
        phases = _shared_phases(source, stride)
        if phases is None or phases.shape[0] != x.shape[0]:
            phases = _largest(grid, d)
            _remember(source, stride, phases)
        return _component(grid, phases, stride)


def _on_grid(x: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """``x`` viewed as ``(N, C, m_1, s_1, m_2, s_2, ...)``: component ``(q_1, q_2, ...)`` is ``[..., q_1, :,
    q_2, ...]``; a size the stride does not divide is continued circularly to the next multiple."""
    d = len(stride)
    for dim, s in enumerate(stride):
        n = x.shape[2 + dim]
        extra = -n % s
        if extra:
            index = torch.arange(n + extra, device=x.device) % n
            x = x.index_select(2 + dim, index)
    shape = [x.shape[0], x.shape[1]]
    for dim, s in enumerate(stride):
        shape += [x.shape[2 + dim] // s, s]
    return x.reshape(shape) if d else x


def _largest(grid: torch.Tensor, d: int) -> torch.Tensor:
    """Per sample, the index (flattened over the ``s**d`` components) of the component of largest norm."""
    with torch.no_grad():
        summed = (1, *(2 + 2 * k for k in range(d)))  # channels and the positions within each component
        energy = grid.detach().pow(2).sum(dim=summed, dtype=torch.float64)  # (N, s_1, s_2, ...)
        return energy.flatten(1).argmax(dim=1)


def _component(grid: torch.Tensor, phases: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """Each sample's component ``phases[i]`` (an index over the strides) of ``grid``, ``(N, C, m_1, ...)``."""
    per_dim, rest = [], phases.to(grid.device)
    for s in reversed(stride):
        per_dim.append(rest % s)
        rest = rest // s
    index: list[Any] = [torch.arange(grid.shape[0], device=grid.device), slice(None)]
    for q in reversed(per_dim):
        index += [slice(None), q]
    # advanced indices separated by slices: their (N,) goes first, then C and the m_k in order
    out: torch.Tensor = grid[tuple(index)]
    return out


# -- the grid two converted layers share when they subsample the same tensor -----------------------

_PHASES: dict[int, tuple[weakref.ref[torch.Tensor], int, tuple[int, ...], torch.Tensor]] = {}


def _version(tensor: torch.Tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # an inference-mode tensor has no version counter
        return -1


def _shared_phases(source: torch.Tensor | None, stride: tuple[int, ...]) -> torch.Tensor | None:
    if source is None:
        return None
    found = _PHASES.get(id(source))
    if found is None:
        return None
    ref, version, remembered_stride, phases = found
    if ref() is not source or version != _version(source) or remembered_stride != stride:
        return None
    return phases


def _remember(source: torch.Tensor | None, stride: tuple[int, ...], phases: torch.Tensor) -> None:
    if source is None:
        return
    key = id(source)
    try:
        ref = weakref.ref(source, lambda _, key=key: _PHASES.pop(key, None))  # type: ignore[misc]
    except TypeError:
        return
    _PHASES[key] = (ref, _version(source), stride, phases)


# -- the classes the surgery makes: a layer at stride 1, then the downsampling ----------------------


class _Antialiased(nn.Module):
    """The layer at stride 1, then its ``blur`` (a [`BlurPool`][equivariance.downsampling.BlurPool])."""

    blur: BlurPool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.blur(super().forward(x))
        return out


class _Polyphase(nn.Module):
    """The layer at stride 1, then its ``sampling`` (a
    [`PolyphaseSampling`][equivariance.downsampling.PolyphaseSampling]) told the layer's input.

    Where the layer's window reaches past its padding (a 2x2 pooling of stride 2, unpadded), its stride-1 map
    is shorter than its input, and the grids of odd phase would lack their last window: the input is padded
    after its end, circularly (or as the layer pads), by what is missing, where that keeps the output's size
    (as the paper's ResNet pads before its 2x2 max pooling).
    """

    sampling: PolyphaseSampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, mode = _missing(self, x)
        y = super().forward(F.pad(x, pads, mode=mode) if pads else x)
        out: torch.Tensor = self.sampling(y, x)
        return out


def _missing(layer: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """The padding after the end of each spatial dim (F.pad's order) that gives ``layer`` at stride 1 an
    output as long as ``x``, where the strided output's length stays what it was; and its mode."""
    window = _window(layer, x.dim() - 2)
    if window is None:
        return (), "circular"
    sampling = layer.sampling
    assert isinstance(sampling, PolyphaseSampling)
    strides = _per_dim(sampling.stride, x.dim() - 2, layer)
    pads: list[int] = []
    for n, (reach, padded), s in zip(x.shape[2:], window, strides):
        missing = max(0, reach - padded)
        strided = (n + padded - reach - 1) // s + 1  # the original layer's output length
        pads += [0, missing if missing and -(-n // s) == strided else 0]
    mode = getattr(layer, "padding_mode", "circular")
    mode = "constant" if mode == "zeros" and window and any(p for _, p in window) else "circular"
    flat = tuple(p for pair in reversed(list(zip(pads[::2], pads[1::2]))) for p in pair)
    return (flat if any(flat) else ()), mode


def _window(layer: nn.Module, d: int) -> list[tuple[int, int]] | None:
    """Per spatial dim: how far the layer's window reaches (``dilation * (kernel - 1)``) and its total
    padding; None for a layer of another kind."""
    if isinstance(layer, BlurPool):
        return None
    kernel = getattr(layer, "kernel_size", None)
    padding: object = getattr(layer, "circular_padding", None) or getattr(layer, "padding", 0)
    dilation = getattr(layer, "dilation", 1)
    if kernel is None or isinstance(padding, str):
        return None

    def per_dim(value: object) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * d  # type: ignore[call-overload]

    return [(dl * (k - 1), 2 * p) for k, p, dl in zip(per_dim(kernel), per_dim(padding), per_dim(dilation))]


class _Circular(nn.Module):
    """A pooling layer whose padding is circular: the input padded by ``circular_padding`` first."""

    circular_padding: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [p for p in reversed(self.circular_padding) for _ in range(2)]
        out: torch.Tensor = super().forward(_pad(x, tuple(pads), "circular", self))
        return out


MIXINS: dict[str, type[nn.Module]] = {
    "Antialiased": _Antialiased,
    "Polyphase": _Polyphase,
    "Circular": _Circular,
}
_MADE: dict[tuple[str, type[nn.Module]], type[nn.Module]] = {}


def converted_class(kind: str, base: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``base`` that the surgery turns a layer into: ``kind`` is ``"Antialiased"``,
    ``"Polyphase"`` or ``"Circular"``.

    ``converted_class("Antialiased", nn.Conv2d)`` is ``AntialiasedConv2d``, made once per base class
    (picklable for torch's own layers).

    Examples:
        >>> from torch import nn
        >>> cls = converted_class("Polyphase", nn.MaxPool2d)
        >>> cls.__name__, issubclass(cls, nn.MaxPool2d)
        ('PolyphaseMaxPool2d', True)
        >>> converted_class("Circular", cls).__name__
        'PolyphaseCircularMaxPool2d'
    """
    if kind not in MIXINS:
        raise InvalidArgument(f"kind must be one of {sorted(MIXINS)}, found {describe(kind)}")
    made_from = {cls: key for key, cls in _MADE.items()}
    if kind == "Circular" and base in made_from:  # under the other conversions, next to the layer
        outer, inner = made_from[base]
        return converted_class(outer, converted_class(kind, inner))
    made = _MADE.get((kind, base))
    if made is None:
        name = f"{kind}{base.__name__}"
        made = type(name, (MIXINS[kind], base), {"__module__": __name__, "__qualname__": name})
        made.__doc__ = (
            f"A ``{base.__module__}.{base.__qualname__}`` made by the surgery: {MIXINS[kind].__doc__}"
        )
        _MADE[kind, base] = made
    return made


def __getattr__(name: str) -> type[nn.Module]:
    """The converted classes of torch's own layers by name, so that a pickled model loads again."""
    rest, kinds = name, []
    while True:
        kind = next((k for k in MIXINS if rest.startswith(k) and rest != k), None)
        if kind is None:
            break
        kinds.append(kind)
        rest = rest[len(kind) :]
    base = getattr(nn, rest, None)
    if not kinds or not (isinstance(base, type) and issubclass(base, nn.Module)):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made: type[nn.Module] = base
    for kind in reversed(kinds):
        made = converted_class(kind, made)
    return made


# -- shared checks ----------------------------------------------------------------------------------


def _stride(stride: object) -> int | tuple[int, ...]:
    if isinstance(stride, (tuple, list)):
        values = tuple(as_int(s, "stride") for s in stride)
        if not values or any(s < 1 for s in values):
            raise InvalidArgument(
                f"stride must be positive ints, found {tuple(stride)!r}; pass e.g. stride=2"
            )
        return values
    value = as_int(stride, "stride")
    if value < 1:
        raise InvalidArgument(f"stride must be positive, found {value}; pass e.g. stride=2")
    return value


def _filter_size(size: object) -> int:
    value = as_int(size, "filter_size")
    if value < 1:
        raise InvalidArgument(
            f"filter_size must be 1 or more (the taps of the binomial filter), found {value}; "
            "pass Zhang's default filter_size=4, or 1 for no blur"
        )
    return value


def _pad_type(pad_type: object) -> PadType:
    if pad_type not in PAD_TYPES:
        raise InvalidArgument(
            f"pad_type must be one of {', '.join(map(repr, PAD_TYPES))}, found {describe(pad_type)}; "
            "pass pad_type='reflect' (Zhang's default) or 'circular' for a circularly padded model"
        )
    return pad_type  # type: ignore[return-value]


def _spatial_dims(x: object, layer: nn.Module) -> int:
    if not isinstance(x, torch.Tensor) or not 3 <= x.dim() <= 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else describe(x)
        raise InvalidArgument(
            f"{type(layer).__name__} takes (N, C, *spatial) with 1 to 3 spatial dims, found {shape}"
        )
    return x.dim() - 2


def _per_dim(stride: int | tuple[int, ...], d: int, layer: nn.Module) -> tuple[int, ...]:
    if isinstance(stride, int):
        return (stride,) * d
    if len(stride) != d:
        raise InvalidArgument(
            f"{type(layer).__name__} has stride {stride} for {len(stride)} spatial dims but its input has "
            f"{d}; give it one stride per spatial dim of its input"
        )
    return stride


def _pad(x: torch.Tensor, pads: tuple[int, ...], pad_type: str, layer: nn.Module) -> torch.Tensor:
    """``x`` padded by ``pads`` (F.pad's order: the last dim first) the ``pad_type`` way."""
    if not any(pads):
        return x
    if pad_type == "zeros":
        return F.pad(x, pads)
    sizes = x.shape[2:]
    needed = [max(pads[2 * i], pads[2 * i + 1]) for i in range(len(pads) // 2)][::-1]
    small = [(n, p) for n, p in zip(sizes, needed) if (p >= n if pad_type == "reflect" else p > n)]
    if small:
        _, p = small[0]
        raise InvalidArgument(
            f"{type(layer).__name__} pads by {p} samples with pad_type {pad_type!r}, which needs maps "
            f"of more than {p} samples, found a map of {tuple(sizes)}; use a larger input, or "
            "pad_type='zeros' or 'replicate'"
        )
    return F.pad(x, pads, mode=pad_type)
