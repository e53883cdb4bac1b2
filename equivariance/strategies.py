"""Hypothesis strategies for property tests of shift equivariance (docs/strategies.md).

Shifts, inputs, equivariant convolution stacks and non-equivariant dense networks, with keyword-only options
that take a value or a strategy. This is the only module that imports Hypothesis.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from equivariance._engine.validation import describe
from equivariance.errors import InvalidArgument
from equivariance.euclidean import Rotation, Translation, quaternion_matrices
from equivariance.fields import Adjacency, EdgeIndex, Field, Irreps, Positions
from equivariance.permutations import NodePermutation, Permutation
from equivariance.shifts import Boundary, Shift

__all__ = [
    "ConvStack",
    "DenseNet",
    "Graph",
    "conv_stacks",
    "graph_batches",
    "graphs",
    "images",
    "mlps",
    "node_permutations",
    "permutations",
    "point_clouds",
    "rotations",
    "shifts",
    "signals",
    "translations",
]

T = TypeVar("T")
Count = int | tuple[int, int] | st.SearchStrategy[int]
PerDim = int | Sequence[int] | st.SearchStrategy[int] | st.SearchStrategy[Sequence[int]]

CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
PADDINGS = ("valid", "circular")
# Pointwise, so they keep equivariance; the first is what a shrunk example shows.
NONLINEARITIES: tuple[Callable[[], nn.Module], ...] = (nn.ReLU, nn.Tanh, nn.Identity, nn.GELU, nn.LeakyReLU)
SEEDS = st.integers(0, 2**32 - 1)


# -- shifts --------------------------------------------------------------------------------------


def shifts(
    *,
    ndim: int | st.SearchStrategy[int] = 2,
    max_shift: PerDim = 3,
    multiple_of: PerDim = 1,
    nonzero: bool | st.SearchStrategy[bool] = False,
) -> st.SearchStrategy[Shift]:
    """Shifts with offsets in ``[-max_shift, max_shift]`` that are multiples of ``multiple_of``.

    Offsets shrink toward zero. Pass a conv stack's ``stack.stride`` as ``multiple_of`` to draw the shifts it
    can follow.

    Args:
        ndim: number of spatial dims, at least 1.
        max_shift: largest absolute offset, one for all dims or one per dim.
        multiple_of: every offset is a multiple of it (one for all dims or one per dim).
        nonzero: leave out the identity.

    Examples:
        >>> from hypothesis import given
        >>> @given(shifts(ndim=2, max_shift=4, multiple_of=2, nonzero=True))
        ... def test_even_shifts(shift):
        ...     assert shift.ndim == 2 and not shift.is_identity
        ...     assert shift.divisible_by(2) and max(map(abs, shift)) <= 4
        >>> test_even_shifts()
    """
    ndims = _count(ndim, "ndim", minimum=1)
    bounds = _per_dim(max_shift, "max_shift", minimum=0)
    steps = _per_dim(multiple_of, "multiple_of", minimum=1)
    nonzeros = _flag(nonzero, "nonzero")
    fixed = [_fixed(v) for v in (ndim, max_shift, multiple_of, nonzero)]
    if all(v is not None for v in fixed):
        _shift_box(*fixed)  # fail now rather than at the first draw

    @st.composite
    def draw_shift(draw: st.DrawFn) -> Shift:
        d, k, m, nz = draw(ndims), draw(bounds), draw(steps), draw(nonzeros)
        reach, step = _shift_box(d, k, m, nz)
        offsets = [draw(st.integers(-r, r)) * s for r, s in zip(reach, step)]
        if nz:
            assume(any(offsets))
        return Shift(offsets)

    return draw_shift()


def _shift_box(
    ndim: int, max_shift: int | Sequence[int], multiple_of: int | Sequence[int], nonzero: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bounds = _expand(max_shift, ndim, "max_shift")
    steps = _expand(multiple_of, ndim, "multiple_of")
    reach = tuple(k // s for k, s in zip(bounds, steps))
    if nonzero and not any(reach):
        raise InvalidArgument(
            f"no nonzero shift has offsets within max_shift {max_shift} that are multiples of "
            f"{multiple_of}; raise max_shift to at least {min(steps)} or pass nonzero=False"
        )
    return reach, steps


# -- inputs --------------------------------------------------------------------------------------


def signals(
    *,
    ndim: int | st.SearchStrategy[int] = 1,
    batch: Count = (1, 4),
    channels: Count = (1, 3),
    size: Count | st.SearchStrategy[Sequence[int]] = (4, 32),
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float32,
    min_value: float | st.SearchStrategy[float] = -1.0,
    max_value: float | st.SearchStrategy[float] = 1.0,
    allow_nan: bool | st.SearchStrategy[bool] = False,
    allow_infinity: bool | st.SearchStrategy[bool] = False,
    border: int | st.SearchStrategy[int | None] | None = None,
    device: str | torch.device | st.SearchStrategy[str | torch.device] = "cpu",
) -> st.SearchStrategy[torch.Tensor]:
    """Batches ``(N, C, *spatial)`` of finite values in ``[min_value, max_value]``.

    Sizes shrink toward their minimum; values are drawn by torch from a drawn seed. ``border=b`` puts the
    content on a zero canvas with ``b`` zero samples at every edge.

    Args:
        ndim: number of spatial dims (1 for signals, 2 for images, 3 for volumes).
        batch: number of samples.
        channels: number of channels.
        size: spatial size of each dim, drawn per dim; a strategy of tuples gives the whole spatial shape.
        dtype: a floating-point dtype.
        min_value: smallest value.
        max_value: largest value.
        allow_nan: put a few NaNs in some draws.
        allow_infinity: put a few infinities in some draws.
        border: zero samples at every edge of every spatial dim (``None``: content everywhere).
        device: where the tensor is made.

    Examples:
        >>> from hypothesis import given
        >>> @given(signals(ndim=2, batch=2, channels=1, size=(8, 12), border=2))
        ... def test_canvas(x):
        ...     assert x.shape[:2] == (2, 1) and 8 <= x.shape[-1] <= 12
        ...     assert x[..., :2, :].abs().max() == 0 and x.abs().max() <= 1
        >>> test_canvas()
    """
    ndims = _count(ndim, "ndim", minimum=1, maximum=3)
    batches = _count(batch, "batch", minimum=1)
    widths = _count(channels, "channels", minimum=1)
    borders = _option(border, "border", _as_border)
    fixed_border = None if isinstance(border, st.SearchStrategy) else _as_border(border, "border")
    draw_size = _sizes(size, 1 if fixed_border is None else 2 * fixed_border + 1, fixed_border)
    dtypes = _option(dtype, "dtype", _as_float_dtype)
    lows = _option(min_value, "min_value", _as_finite)
    highs = _option(max_value, "max_value", _as_finite)
    if not isinstance(min_value, st.SearchStrategy) and not isinstance(max_value, st.SearchStrategy):
        _ordered(min_value, max_value)
    nans = _flag(allow_nan, "allow_nan")
    infinities = _flag(allow_infinity, "allow_infinity")
    devices = _option(device, "device", _as_device)

    @st.composite
    def draw_signal(draw: st.DrawFn) -> torch.Tensor:
        d, edge = draw(ndims), draw(borders)
        spatial = draw_size(draw, d)
        if edge and min(spatial) <= 2 * edge:
            raise InvalidArgument(
                f"spatial size {spatial} leaves nothing inside a border of {edge}; sizes must be at "
                f"least {2 * edge + 1}"
            )
        low, high = _ordered(draw(lows), draw(highs))
        nan, infinity = draw(nans), draw(infinities)
        shape = (draw(batches), draw(widths), *spatial)
        generator = torch.Generator().manual_seed(draw(SEEDS))
        x = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
        if edge:
            canvas = torch.zeros_like(x)
            inner: tuple[Any, ...] = (Ellipsis, *(slice(edge, n - edge) for n in spatial))
            canvas[inner] = x[inner]
            x = canvas
        specials = [v for v, ok in ((math.nan, nan), (math.inf, infinity), (-math.inf, infinity)) if ok]
        if specials:
            for _ in range(draw(st.integers(0, 3))):
                x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(specials))
        return x.to(device=draw(devices), dtype=draw(dtypes))

    return draw_signal()


def images(
    *,
    batch: Count = (1, 4),
    channels: Count = (1, 3),
    size: Count | st.SearchStrategy[Sequence[int]] = (4, 24),
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float32,
    min_value: float | st.SearchStrategy[float] = -1.0,
    max_value: float | st.SearchStrategy[float] = 1.0,
    allow_nan: bool | st.SearchStrategy[bool] = False,
    allow_infinity: bool | st.SearchStrategy[bool] = False,
    border: int | st.SearchStrategy[int | None] | None = None,
    device: str | torch.device | st.SearchStrategy[str | torch.device] = "cpu",
) -> st.SearchStrategy[torch.Tensor]:
    """Batches of images ``(N, C, H, W)``: [`signals`][equivariance.strategies.signals] with two spatial dims,
    the same arguments (``size``: height and width, drawn separately).

    Examples:
        >>> from hypothesis import given
        >>> @given(images(batch=1, channels=3, size=16))
        ... def test_rgb(x):
        ...     assert x.shape == (1, 3, 16, 16)
        >>> test_rgb()
    """
    return signals(
        ndim=2, batch=batch, channels=channels, size=size, dtype=dtype, min_value=min_value,
        max_value=max_value, allow_nan=allow_nan, allow_infinity=allow_infinity, border=border,
        device=device,
    )  # fmt: skip


# -- models --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ConvStack:
    """A random stack of convolutions, drawn by ``conv_stacks``, and what a check needs to know.

    Exactly equivariant for every shift that is a multiple of ``stride``, under ``boundary``: pass both to a
    check.

    Attributes:
        model: the ``nn.Sequential`` of convolutions and pointwise nonlinearities.
        ndim: number of spatial dims.
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: total stride per dim: the output is subsampled by it.
        padding: ``"valid"`` (no padding; each layer shrinks the map) or ``"circular"`` (each layer keeps the
            size, up to its stride).
        min_size: smallest spatial size the stack accepts.
    """

    model: nn.Sequential
    ndim: int
    in_channels: int
    out_channels: int
    stride: tuple[int, ...]
    padding: str
    min_size: int

    @property
    def boundary(self) -> Boundary:
        """The boundary under which the stack is equivariant: ``"circular"`` or ``"zeros"``."""
        return "circular" if self.padding == "circular" else "zeros"

    def input_size(self, output_size: int) -> int:
        """The smallest input size (per dim) whose output has ``output_size`` samples."""
        n = _as_int(output_size, "output_size", minimum=1)
        if self.padding == "circular":
            return max(n * self.stride[0], self.min_size)
        for conv in reversed([m for m in self.model if isinstance(m, nn.modules.conv._ConvNd)]):
            n = (n - 1) * conv.stride[0] + conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        return n

    def inputs(
        self, *, output_size: Count = (2, 6), batch: Count = (1, 3), **options: Any
    ) -> st.SearchStrategy[torch.Tensor]:
        """Inputs this stack accepts, from ``signals``, sized by the output they give.

        Circular stacks get sizes that are multiples of the stride; valid ones any size giving ``output_size``
        samples per dim.

        Args:
            output_size: samples per dim of the output (an int, a ``(min, max)`` pair or a strategy).
            batch: number of samples.
            **options: the other options of [`signals`][equivariance.strategies.signals] (dtype, values,
                border, device).
        """
        if "size" in options or "ndim" in options or "channels" in options:
            raise InvalidArgument(
                "the stack sets size, ndim and channels of its inputs; pass output_size= instead"
            )
        outputs = _count(output_size, "output_size", minimum=1)
        extra = st.just(0) if self.padding == "circular" else st.integers(0, self.stride[0] - 1)
        spatial = st.tuples(*[st.builds(lambda n, e: self.input_size(n) + e, outputs, extra)] * self.ndim)
        return signals(ndim=self.ndim, batch=batch, channels=self.in_channels, size=spatial, **options)

    def shifts(self, *, max_shift: PerDim | None = None, nonzero: bool = False) -> st.SearchStrategy[Shift]:
        """Shifts this stack follows: multiples of its stride, up to ``max_shift`` (default twice the stride).

        Keep them smaller than the input (for valid stacks, smaller than the output times the stride) for a
        check to have something to compare.
        """
        bound = 2 * self.stride[0] if max_shift is None else max_shift
        return shifts(ndim=self.ndim, max_shift=bound, multiple_of=self.stride, nonzero=nonzero)


@dataclass(frozen=True, eq=False)
class DenseNet:
    """A random dense network, drawn by ``mlps``: the family that is not equivariant.

    It maps ``(N, in_channels, *input_size)`` to ``(N, out_channels, *input_size)`` through dense layers, so a
    check of a nonzero shift fails.

    Attributes:
        model: the ``nn.Sequential``.
        ndim: number of spatial dims.
        in_channels: channels of the input.
        out_channels: channels of the output.
        input_size: the only spatial shape the network accepts.
    """

    model: nn.Sequential
    ndim: int
    in_channels: int
    out_channels: int
    input_size: tuple[int, ...]

    def inputs(self, *, batch: Count = (1, 3), **options: Any) -> st.SearchStrategy[torch.Tensor]:
        """Inputs this network accepts, from ``signals`` (``options`` as there, less the shape)."""
        shape = st.just(self.input_size)
        return signals(ndim=self.ndim, batch=batch, channels=self.in_channels, size=shape, **options)


def conv_stacks(
    *,
    ndim: int | st.SearchStrategy[int] = 2,
    depth: Count = (1, 3),
    channels: Count = (1, 4),
    kernel_sizes: Count = (1, 5),
    dilations: Count = 1,
    padding: str | Sequence[str] | st.SearchStrategy[str] = PADDINGS,
    strides: Count = 1,
) -> st.SearchStrategy[ConvStack]:
    """Random stacks of convolutions with pointwise nonlinearities, drawn as a ``ConvStack``.

    The ground truth: every stack is exactly equivariant for every multiple of ``stack.stride`` under
    ``stack.boundary`` (draw its shifts with ``stack.shifts()``). Stacks shrink toward one small layer.

    Args:
        ndim: number of spatial dims, 1 to 3.
        depth: number of convolutions.
        channels: channels of the input and of each layer's output.
        kernel_sizes: kernel size of each layer (the same in every dim).
        dilations: dilation of each layer (the same in every dim).
        padding: ``"valid"``, ``"circular"``, or a sequence to choose from (one per stack).
        strides: stride of each layer (the same in every dim).

    Examples:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> from equivariance import check_equivariance
        >>> @settings(max_examples=10, deadline=None)
        ... @given(conv_stacks(ndim=1), shifts(ndim=1, max_shift=3, nonzero=True))
        ... def test_conv_stacks_are_equivariant(stack, shift):
        ...     x = torch.randn(2, stack.in_channels, stack.min_size + 4)
        ...     report = check_equivariance(stack.model, x, [shift], boundary=stack.boundary)
        ...     assert report.within_tolerance  # passed, or vacuous: a drawn stack of dead ReLUs
        >>> test_conv_stacks_are_equivariant()
    """
    ndims = _count(ndim, "ndim", minimum=1, maximum=3)
    depths = _count(depth, "depth", minimum=1)
    widths = _count(channels, "channels", minimum=1)
    kernels = _count(kernel_sizes, "kernel_sizes", minimum=1)
    spacings = _count(dilations, "dilations", minimum=1)
    layer_strides = _count(strides, "strides", minimum=1)
    paddings = _padding(padding)

    @st.composite
    def draw_stack(draw: st.DrawFn) -> ConvStack:
        d, n_layers, mode = draw(ndims), draw(depths), draw(paddings)
        widths_ = [draw(widths) for _ in range(n_layers + 1)]
        specs = [
            (draw(kernels), draw(spacings), draw(layer_strides), draw(st.booleans())) for _ in range(n_layers)
        ]
        activations = [draw(st.sampled_from(NONLINEARITIES)) for _ in range(n_layers)]
        layers: list[nn.Module] = []
        for i, (spec, activation) in enumerate(zip(specs, activations)):
            layers.append(_convolution(d, widths_[i], widths_[i + 1], *spec, mode))
            layers.append(activation())
        model = _initialised(nn.Sequential(*layers), draw(SEEDS))
        total = math.prod(spec[2] for spec in specs)
        return ConvStack(
            model=model,
            ndim=d,
            in_channels=widths_[0],
            out_channels=widths_[-1],
            stride=(total,) * d,
            padding=mode,
            min_size=_min_size(specs, mode),
        )

    return draw_stack()


def mlps(
    *,
    ndim: int | st.SearchStrategy[int] = 2,
    depth: Count = (1, 2),
    channels: Count = (1, 3),
    size: Count = (2, 8),
    hidden: Count = (4, 32),
) -> st.SearchStrategy[DenseNet]:
    """Random dense networks with as many outputs as inputs, drawn as a ``DenseNet``.

    The negative control: every output has its own weights for every input sample, so a check of a nonzero
    shift fails.

    Args:
        ndim: number of spatial dims, 1 to 3.
        depth: number of hidden layers.
        channels: channels of the input and of the output.
        size: spatial size of each dim of the one input shape the network takes.
        hidden: width of each hidden layer.

    Examples:
        >>> from hypothesis import given, settings
        >>> from equivariance import check_equivariance
        >>> @settings(max_examples=10, deadline=None)
        ... @given(st.data())
        ... def test_mlps_fail(data):
        ...     net = data.draw(mlps(ndim=1, size=(4, 8)))
        ...     x = data.draw(net.inputs())
        ...     assert not check_equivariance(net.model, x, [(1,)]).passed
        >>> test_mlps_fail()
    """
    ndims = _count(ndim, "ndim", minimum=1, maximum=3)
    depths = _count(depth, "depth", minimum=1)
    widths = _count(channels, "channels", minimum=1)
    sizes = _count(size, "size", minimum=1)
    hiddens = _count(hidden, "hidden", minimum=1)

    @st.composite
    def draw_mlp(draw: st.DrawFn) -> DenseNet:
        d = draw(ndims)
        spatial = tuple(draw(sizes) for _ in range(d))
        c_in, c_out = draw(widths), draw(widths)
        features = [c_in * math.prod(spatial)]
        features += [draw(hiddens) for _ in range(draw(depths))]
        features.append(c_out * math.prod(spatial))
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(itertools.pairwise(features)):
            layers.append(nn.Linear(a, b, device="meta"))
            if i < len(features) - 2:
                layers.append(nn.Tanh())
        layers.append(nn.Unflatten(1, (c_out, *spatial)))
        return DenseNet(_initialised(nn.Sequential(*layers), draw(SEEDS)), d, c_in, c_out, spatial)

    return draw_mlp()


def _convolution(
    ndim: int, c_in: int, c_out: int, kernel: int, dilation: int, stride: int, bias: bool, padding: str
) -> nn.Module:
    common = {"stride": stride, "dilation": dilation, "bias": bias, "device": "meta"}
    if padding == "valid":
        return CONVOLUTIONS[ndim](c_in, c_out, kernel, **common)
    # 'same' pads an even span asymmetrically but refuses strides; with a stride s that
    # divides the size, a symmetric (span - 1) // 2 gives size / s for odd and even spans.
    pad: str | int = "same" if stride == 1 else dilation * (kernel - 1) // 2
    return CONVOLUTIONS[ndim](c_in, c_out, kernel, padding=pad, padding_mode="circular", **common)


def _initialised(model: nn.Sequential, seed: int) -> nn.Sequential:
    """``model``, built on the meta device, with weights drawn from ``seed``.

    PyTorch's default initialisation (uniform within 1/sqrt(fan_in)) from a local generator: the same draw
    gives the same weights, and the global RNG is never touched, nor reseeded (which is slow).
    """
    generator = torch.Generator().manual_seed(seed)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
                bound = 1 / math.sqrt(layer.weight[0].numel())
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)
    return model


def _min_size(specs: Sequence[tuple[int, int, int, bool]], padding: str) -> int:
    spans = [(dilation * (kernel - 1) + 1, stride) for kernel, dilation, stride, _ in specs]
    if padding == "valid":
        n = 1
        for span, stride in reversed(spans):
            n = (n - 1) * stride + span
        return n
    # circular: the size must be a multiple of the total stride, and each layer's
    # circular padding must not exceed its input
    total = math.prod(stride for _, stride in spans)
    n = total
    while True:
        size, fits = n, True
        for span, stride in spans:
            fits = fits and size >= span // 2
            size //= stride
        if fits:
            return n
        n += total


# -- point clouds, sets and graphs ------------------------------------------------------------------


ROTATION_GROUPS = ("SO2", "O2", "SO3", "O3")
POSITIONS = Positions()  # the default field of a point cloud


def rotations(
    *, group: str | st.SearchStrategy[str] = "SO3", nonzero: bool | st.SearchStrategy[bool] = False
) -> st.SearchStrategy[Rotation]:
    """Rotations of ``group`` (``"SO2"``, ``"O2"``, ``"SO3"`` or ``"O3"``), shrinking toward the identity.

    Every rotation can be drawn, though not uniformly; for Haar draws use ``SO3(64, seed=0)`` and the like
    ([`equivariance.euclidean`][equivariance.euclidean]).

    Args:
        group: the group to draw from.
        nonzero: leave out the identity (a check refuses it, as one that cannot fail).

    Examples:
        >>> from hypothesis import given
        >>> @given(rotations(group="O3"))
        ... def test_orthogonal(r):
        ...     m = r.matrix
        ...     assert (m @ m.T - torch.eye(3, dtype=m.dtype)).abs().max() < 1e-12 and r.det in (1, -1)
        >>> test_orthogonal()
    """
    groups = _option(group, "group", _as_rotation_group)
    nonzeros = _flag(nonzero, "nonzero")

    @st.composite
    def draw_rotation(draw: st.DrawFn) -> Rotation:
        name, nz = draw(groups), draw(nonzeros)
        if name.endswith("2"):
            rotation = Rotation.planar(draw(st.floats(-math.pi, math.pi)))
        else:
            q = torch.tensor([draw(st.floats(-1.0, 1.0, allow_subnormal=False)) for _ in range(4)])
            norm = float(q.to(torch.float64).norm())
            q = q.to(torch.float64) / norm if norm > 1e-6 else torch.tensor([1.0, 0.0, 0.0, 0.0]).double()
            rotation = Rotation(quaternion_matrices(q))
        if name.startswith("O") and draw(st.booleans()):
            mirror = Rotation.reflection([0.0, 1.0]) if rotation.dim == 2 else Rotation.inversion()
            product = mirror * rotation
            assert isinstance(product, Rotation)
            rotation = product
        assume(not (nz and rotation.is_identity))
        return rotation

    return draw_rotation()


def translations(
    *, dim: int | st.SearchStrategy[int] = 3, scale: float | st.SearchStrategy[float] = 1.0
) -> st.SearchStrategy[Translation]:
    """Translations of ``dim``-D space (2 or 3) with components in ``[-scale, scale]``, shrinking toward 0.

    Args:
        dim: 2 or 3.
        scale: the largest component.
    """
    dims = _count(dim, "dim", minimum=2, maximum=3)
    scales = _option(scale, "scale", _as_positive)

    @st.composite
    def draw_translation(draw: st.DrawFn) -> Translation:
        d, bound = draw(dims), draw(scales)
        return Translation([draw(st.floats(-bound, bound)) for _ in range(d)])

    return draw_translation()


def permutations(
    *, n: Count = (1, 8), nonzero: bool | st.SearchStrategy[bool] = False
) -> st.SearchStrategy[Permutation]:
    """Permutations of ``n`` points, shrinking toward the identity and few points.

    Args:
        n: the number of points.
        nonzero: leave out the identity (a check refuses it, as one that cannot fail); needs 2 points or more.

    Examples:
        >>> from hypothesis import given
        >>> @given(permutations(n=5))
        ... def test_inverse(p):
        ...     assert (p * p.inverse()).is_identity
        >>> test_inverse()
    """
    sizes = _count(n, "n", minimum=1)
    nonzeros = _flag(nonzero, "nonzero")
    if _fixed(n) == 1 and _fixed(nonzero) is True:
        raise InvalidArgument(
            "the one permutation of 1 point is the identity; pass n=2 or more, or nonzero=False"
        )

    @st.composite
    def draw_permutation(draw: st.DrawFn) -> Permutation:
        n, nz = draw(sizes), draw(nonzeros)
        assume(not (nz and n == 1))
        order = draw(st.permutations(range(n)))
        if nz and order == sorted(order):  # the identity: swap the first two instead (no rejection)
            order[0], order[1] = order[1], order[0]
        return Permutation(order)

    return draw_permutation()


def point_clouds(
    *,
    fields: Field | Sequence[Field] = POSITIONS,
    batch: Count | None = (1, 3),
    points: Count = (1, 8),
    channels: Count = (1, 4),
    dim: int | st.SearchStrategy[int] = 3,
    scale: float | st.SearchStrategy[float] = 1.0,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float32,
    device: str | torch.device | st.SearchStrategy[str | torch.device] = "cpu",
) -> st.SearchStrategy[Any]:
    """Point clouds: one tensor per field type, all with the same batch and number of points.

    A draw is ``(pos, h)`` for ``fields=(Positions(), Scalars())`` (the tensor alone for one field type), each
    part shaped by its field type, values uniform in ``[-scale, scale]``; counts shrink toward one cloud of
    one point.

    Args:
        fields: a field type or a sequence of them (``nodes`` of -2, -3 or None).
        batch: the number of clouds ``B``; None for one cloud without a batch axis.
        points: the number of points ``N``.
        channels: the channels ``C`` of scalar features (drawn per part).
        dim: the components of vectors and positions, 2 or 3.
        scale: the largest absolute value.
        dtype: a floating-point dtype.
        device: where the tensors are made.

    Examples:
        >>> from hypothesis import given
        >>> from equivariance.fields import Scalars, Vectors
        >>> @given(point_clouds(fields=(Positions(), Scalars(), Vectors(nodes=None)), batch=2, points=(3, 5)))
        ... def test_shapes(cloud):
        ...     pos, h, v = cloud
        ...     assert pos.shape[::2] == (2, 3) and 3 <= pos.shape[1] <= 5 and h.shape[:2] == pos.shape[:2]
        ...     assert v.shape == (2, 3)
        >>> test_shapes()
    """
    parts = _as_cloud_fields(fields)
    batches = None if batch is None else _count(batch, "batch", minimum=1)
    counts = _count(points, "points", minimum=1)
    widths = _count(channels, "channels", minimum=1)
    dims = _count(dim, "dim", minimum=2, maximum=3)
    scales = _option(scale, "scale", _as_positive)
    dtypes = _option(dtype, "dtype", _as_float_dtype)
    devices = _option(device, "device", _as_device)

    @st.composite
    def draw_cloud(draw: st.DrawFn) -> Any:
        lead = () if batches is None else (draw(batches),)
        n, d, bound = draw(counts), draw(dims), draw(scales)
        generator = torch.Generator().manual_seed(draw(SEEDS))
        made = []
        for field in parts:
            shape = (*lead, *_cloud_shape(field, n, d, lambda: draw(widths)))
            x = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            if isinstance(field, Adjacency):
                x = (x > 0).to(torch.float64)
            made.append(x.to(device=draw(devices), dtype=draw(dtypes)))
        return made[0] if isinstance(fields, Field) else tuple(made)

    return draw_cloud()


def _cloud_shape(field: Field, n: int, d: int, width: Callable[[], int]) -> tuple[int, ...]:
    if isinstance(field, Adjacency):
        return (n, n)
    last = field.dim if isinstance(field, Irreps) else d if field.components else width()
    if field.nodes is None:
        return (last,)
    return (n, last) if field.nodes == -2 else (n, width(), last)


def _as_cloud_fields(fields: object) -> list[Field]:
    parts = [fields] if isinstance(fields, Field) else fields
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
        raise InvalidArgument(
            f"fields must be a field type or a non-empty sequence of them, found {describe(fields)}; pass "
            "e.g. fields=(Positions(), Scalars())"
        )
    for field in parts:
        if isinstance(field, EdgeIndex) or not isinstance(field, Field):
            raise InvalidArgument(
                f"point_clouds draws tensors of Scalars, Vectors, Positions, Irreps and the like, found "
                f"{describe(field)}; draw edges with graphs()"
            )
        if isinstance(field, Adjacency):
            if field.axes != (-2, -1):
                raise InvalidArgument(f"point_clouds draws adjacencies (..., N, N), found {field!r}")
        elif field.nodes not in (-2, None) and not (field.nodes == -3 and field.components):
            raise InvalidArgument(
                f"point_clouds draws points on axis -2 (or -3 for several vectors a point), found {field!r}; "
                "move the axis of the drawn tensor yourself"
            )
    return list(parts)


@dataclass(frozen=True, eq=False)
class Graph:
    """A random graph drawn by ``graphs`` or ``graph_batches``: ``num_nodes`` nodes, the edges
    ``edge_index`` and, where asked for, node features.

    Attributes:
        num_nodes: the number of nodes.
        edge_index: ``(2, E)`` long tensor, sources in row 0, targets in row 1 (an undirected graph holds each
            edge both ways).
        features: one tensor per name given in ``features=``, nodes on axis 0.
    """

    num_nodes: int
    edge_index: torch.Tensor
    features: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def adjacency(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(N, N)`` adjacency matrix: 1 at ``[source, target]`` of every edge."""
        a = torch.zeros(self.num_nodes, self.num_nodes, dtype=dtype)
        a[self.edge_index[0], self.edge_index[1]] = 1
        return a

    def data(self, **node_fields: torch.Tensor) -> Any:
        """This graph as a torch_geometric ``Data``: ``edge_index``, ``num_nodes``, its features and
        ``node_fields`` (tensors with the nodes on axis 0). Needs torch_geometric (``pip install
        equivariance[geometric]``); ``Batch.from_data_list`` batches them.
        """
        for name, value in node_fields.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or len(value) != self.num_nodes:
                raise InvalidArgument(
                    f"node field {name!r} must be a tensor with the {self.num_nodes} nodes on axis 0, "
                    f"found {describe(value)}"
                )
        try:
            module = importlib.import_module("torch_geometric.data")
        except ImportError:
            raise ModuleNotFoundError(
                "Graph.data() builds a torch_geometric Data, and torch_geometric is not installed; "
                "pip install equivariance[geometric], or use g.edge_index and g.features as tensors"
            ) from None
        return module.Data(
            edge_index=self.edge_index, num_nodes=self.num_nodes, **{**self.features, **node_fields}
        )


def graphs(
    *,
    nodes: Count = (1, 8),
    edges: Count | None = None,
    undirected: bool | st.SearchStrategy[bool] = False,
    self_loops: bool | st.SearchStrategy[bool] = False,
    features: Mapping[str, Field] | None = None,
    channels: Count = (1, 4),
    dim: int | st.SearchStrategy[int] = 3,
    scale: float | st.SearchStrategy[float] = 1.0,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float32,
) -> st.SearchStrategy[Graph]:
    """Random graphs as ``edge_index`` (a [`Graph`][equivariance.strategies.Graph]), shrinking toward few
    nodes and few edges; with ``features=``, node features shaped by their field types as in
    [`point_clouds`][equivariance.strategies.point_clouds].

    Args:
        nodes: the number of nodes.
        edges: the number of edges (pairs, for an undirected graph); default any number.
        undirected: hold every edge both ways.
        self_loops: allow edges from a node to itself.
        features: node features to draw, a field type per name (``nodes`` of -2, or -3 for vectors).
        channels: the channels ``C`` of each feature without components.
        dim: the components of vectors and positions, 2 or 3.
        scale: the largest absolute feature value.
        dtype: a floating-point dtype of the features.

    Examples:
        >>> from hypothesis import given
        >>> @given(graphs(nodes=4, undirected=True))
        ... def test_symmetric(g):
        ...     a = g.adjacency()
        ...     assert torch.equal(a, a.T) and a.diagonal().sum() == 0
        >>> test_symmetric()
    """
    return graph_batches(
        batch=1, nodes=nodes, edges=edges, undirected=undirected, self_loops=self_loops, features=features,
        channels=channels, dim=dim, scale=scale, dtype=dtype,
    ).map(lambda batch: batch[0])  # fmt: skip


def graph_batches(
    *,
    batch: Count = (1, 4),
    nodes: Count = (1, 8),
    edges: Count | None = None,
    undirected: bool | st.SearchStrategy[bool] = False,
    self_loops: bool | st.SearchStrategy[bool] = False,
    features: Mapping[str, Field] | None = None,
    channels: Count = (1, 4),
    dim: int | st.SearchStrategy[int] = 3,
    scale: float | st.SearchStrategy[float] = 1.0,
    dtype: torch.dtype | st.SearchStrategy[torch.dtype] = torch.float32,
) -> st.SearchStrategy[list[Graph]]:
    """Lists of graphs of different sizes, ready for one torch_geometric ``Batch``
    (``Batch.from_data_list([g.data() for g in graphs])``), shrinking toward one graph of one node.

    Each graph draws its own nodes and edges; what a batch must share (``undirected``, ``self_loops``, each
    feature's ``channels``, ``dim``, ``scale``, ``dtype``) is drawn once per list. See "Graphs of different
    sizes in one Batch" in "Point clouds, sets and graphs".

    Args:
        batch: the number of graphs.
        nodes: the number of nodes of each graph.
        edges: the number of edges of each graph.
        undirected: hold every edge both ways.
        self_loops: allow edges from a node to itself.
        features: node features to draw, a field type per name.
        channels: the channels ``C`` of each feature without components, one draw per list.
        dim: the components of vectors and positions, 2 or 3.
        scale: the largest absolute feature value.
        dtype: a floating-point dtype of the features.

    Examples:
        >>> from hypothesis import given
        >>> from equivariance.fields import Positions, Scalars
        >>> @given(graph_batches(batch=3, nodes=(2, 6), features={"x": Scalars(), "pos": Positions()}))
        ... def test_shared_channels(graphs):
        ...     assert len(graphs) == 3 and len({g.features["x"].shape[1] for g in graphs}) == 1
        ...     assert all(g.features["pos"].shape == (g.num_nodes, 3) for g in graphs)
        >>> test_shared_channels()
    """
    sizes = _count(batch, "batch", minimum=1)
    draw_one = _GraphDrawer(nodes, edges, undirected, self_loops, features, channels, dim, scale, dtype)

    @st.composite
    def draw_batch(draw: st.DrawFn) -> list[Graph]:
        shared = draw_one.shared(draw)
        return [draw_one(draw, shared) for _ in range(draw(sizes))]

    return draw_batch()


@dataclass(frozen=True)
class _Shared:
    """What the graphs of one batch share."""

    symmetric: bool
    looped: bool
    widths: dict[str, int]
    dim: int
    scale: float
    dtype: torch.dtype


class _GraphDrawer:
    """Draws one graph; options checked when the strategy is built."""

    def __init__(
        self, nodes: Count, edges: Count | None, undirected: object, self_loops: object,
        features: Mapping[str, Field] | None, channels: Count, dim: object, scale: object, dtype: object,
    ) -> None:  # fmt: skip
        self.sizes = _count(nodes, "nodes", minimum=1)
        self.counts = None if edges is None else _count(edges, "edges", minimum=0)
        self.both_ways, self.loops = _flag(undirected, "undirected"), _flag(self_loops, "self_loops")
        self.features = _as_node_fields(features)
        self.widths = _count(channels, "channels", minimum=1)
        self.dims = _count(dim, "dim", minimum=2, maximum=3)
        self.scales = _option(scale, "scale", _as_positive)
        self.dtypes = _option(dtype, "dtype", _as_float_dtype)

    def shared(self, draw: st.DrawFn) -> _Shared:
        symmetric, looped = draw(self.both_ways), draw(self.loops)
        if not self.features:
            return _Shared(symmetric, looped, {}, 3, 1.0, torch.float32)
        widths = {name: draw(self.widths) for name in self.features}
        return _Shared(symmetric, looped, widths, draw(self.dims), draw(self.scales), draw(self.dtypes))

    def __call__(self, draw: st.DrawFn, shared: _Shared) -> Graph:
        n = draw(self.sizes)
        pairs = [
            (i, j)
            for i in range(n)
            for j in range(n)
            if (i < j if shared.symmetric else i != j) or (shared.looped and i == j)
        ]
        wanted = None if self.counts is None else draw(self.counts)
        if wanted is not None and wanted > len(pairs):
            raise InvalidArgument(
                f"a graph of {n} node{'s' if n != 1 else ''} has at most {len(pairs)} such edges, asked for "
                f"{wanted}; draw more nodes or fewer edges"
            )
        chosen = (
            draw(st.lists(st.sampled_from(pairs), unique=True, min_size=wanted or 0, max_size=wanted))
            if pairs
            else []
        )
        chosen = sorted(chosen)
        if shared.symmetric:
            chosen = sorted(chosen + [(j, i) for i, j in chosen if i != j])
        edge_index = torch.tensor(chosen, dtype=torch.long).reshape(-1, 2).T.contiguous()
        made: dict[str, torch.Tensor] = {}
        if self.features:
            generator = torch.Generator().manual_seed(draw(SEEDS))
            for name, field in self.features.items():
                width = shared.widths[name]
                shape = _cloud_shape(field, n, shared.dim, lambda: width)  # noqa: B023 (called at once)
                x = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * shared.scale
                made[name] = x.to(shared.dtype)
        return Graph(n, edge_index, made)


def _as_node_fields(features: object) -> dict[str, Field]:
    if features is None:
        return {}
    if not isinstance(features, Mapping) or not all(isinstance(k, str) for k in features):
        raise InvalidArgument(
            f"features must map names to field types, found {describe(features)}; pass e.g. "
            "features={'x': Scalars(), 'pos': Positions()}"
        )
    for name, field in features.items():
        if isinstance(field, (EdgeIndex, Adjacency)) or not isinstance(field, Field):
            raise InvalidArgument(
                f"features[{name!r}] must be a field type of node features (Scalars, Vectors, Positions, "
                f"Irreps and the like), found {describe(field)}; the edges are the graph's edge_index"
            )
        if field.nodes != -2 and not (field.nodes == -3 and field.components):
            raise InvalidArgument(
                f"features[{name!r}] is {field!r}, but a graph's features hold one row a node: pass "
                f"nodes=-2 (the default; or -3 for several vectors a node), and a per-graph value yourself"
            )
    return dict(features)


def node_permutations(*, seed: Count = (0, 2**63 - 1)) -> st.SearchStrategy[NodePermutation]:
    """[`NodePermutation`][equivariance.permutations.NodePermutation]s: a permutation of every graph's own
    nodes, for a batch of graphs of different sizes.

    An element is its seed, so draws shrink toward seed 0, not toward the identity (which a check refuses).
    One-node graphs are left as they are by every element.

    Args:
        seed: the seeds to draw from: an int, an inclusive ``(min, max)`` pair or a strategy of ints, in
            ``0..2**63 - 1``.

    Examples:
        >>> from hypothesis import given
        >>> from equivariance.fields import Scalars
        >>> @given(node_permutations())
        ... def test_inverse_puts_every_node_back(g):
        ...     x = torch.arange(5.0)[:, None]
        ...     assert torch.equal(g.inverse().act(g.act(x, Scalars()), Scalars()), x)
        >>> test_inverse_puts_every_node_back()
    """
    seeds = _count(seed, "seed", minimum=0, maximum=2**63 - 1)
    return seeds.map(NodePermutation)


# -- option checking -----------------------------------------------------------------------------


def _fixed(value: object) -> Any:
    """The value when it is not a strategy, else None."""
    return None if isinstance(value, st.SearchStrategy) else value


def _option(value: Any, name: str, check: Callable[[Any, str], T]) -> st.SearchStrategy[T]:
    """``value`` checked now, or a strategy whose draws are checked as they are drawn."""
    if isinstance(value, st.SearchStrategy):
        return value.map(lambda drawn: check(drawn, name))
    return st.just(check(value, name))


def _count(value: object, name: str, *, minimum: int, maximum: int | None = None) -> st.SearchStrategy[int]:
    def check(v: object, what: str) -> int:
        return _as_int(v, what, minimum=minimum, maximum=maximum)

    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidArgument(
                f"{name} must be an int, a (min, max) pair or a strategy, found {describe(value)}"
            )
        low, high = check(value[0], f"{name}'s min"), check(value[1], f"{name}'s max")
        if low > high:
            raise InvalidArgument(f"{name} range {value!r} is empty: min > max; pass ({high}, {low})")
        return st.integers(low, high)
    return _option(value, name, check)


def _per_dim(value: object, name: str, *, minimum: int) -> st.SearchStrategy[int | tuple[int, ...]]:
    def check(v: object, what: str) -> int | tuple[int, ...]:
        if isinstance(v, (tuple, list)):
            if not v:
                raise InvalidArgument(f"{what} is empty; pass an int or one int per dim")
            return tuple(_as_int(item, what, minimum=minimum) for item in v)
        return _as_int(v, what, minimum=minimum)

    return _option(value, name, check)


def _expand(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    if len(value) != ndim:
        raise InvalidArgument(
            f"{name} {tuple(value)!r} has {len(value)} entries but the shifts have {ndim} dims; "
            f"pass one int for all dims or a tuple of {ndim}"
        )
    return tuple(value)


def _sizes(value: object, smallest: int, border: int | None) -> Callable[[st.DrawFn, int], tuple[int, ...]]:
    """A function drawing a spatial shape of ``ndim`` sizes, each at least ``smallest``."""
    why = "" if border is None else f" (twice the border {border}, plus one)"

    def check(v: object, what: str) -> int:
        return _as_int(v, what, minimum=smallest, why=why)

    if isinstance(value, st.SearchStrategy):
        strategy: st.SearchStrategy[Any] = value

        def draw_given(draw: st.DrawFn, ndim: int) -> tuple[int, ...]:
            first = draw(strategy)
            if not isinstance(first, (tuple, list)):  # a strategy of sizes: one draw per dim
                return (check(first, "size"), *(check(draw(strategy), "size") for _ in range(ndim - 1)))
            if len(first) != ndim:
                raise InvalidArgument(
                    f"size {tuple(first)!r} has {len(first)} entries but there are {ndim} spatial dims"
                )
            return tuple(check(n, "size") for n in first)

        return draw_given
    one = _count(value, "size", minimum=1)
    check(
        value[0] if isinstance(value, tuple) else value, "size's min" if isinstance(value, tuple) else "size"
    )
    return lambda draw, ndim: tuple(draw(one) for _ in range(ndim))


def _padding(value: object) -> st.SearchStrategy[str]:
    def check(v: object, what: str) -> str:
        if not isinstance(v, str) or v not in PADDINGS:
            raise InvalidArgument(
                f"{what} must be 'valid' or 'circular', found {describe(v)}; zero 'same' padding is "
                "not exactly equivariant near the borders, so it is not in the ground-truth family"
            )
        return v

    if isinstance(value, (tuple, list)):
        if not value:
            raise InvalidArgument("padding is empty; pass 'valid', 'circular' or both")
        return st.sampled_from([check(v, "padding") for v in value])
    return _option(value, "padding", check)


def _flag(value: object, name: str) -> st.SearchStrategy[bool]:
    return _option(value, name, _as_bool)


def _as_rotation_group(value: object, what: str) -> str:
    if not isinstance(value, str) or value not in ROTATION_GROUPS:
        raise InvalidArgument(
            f"{what} must be one of {', '.join(map(repr, ROTATION_GROUPS))}, found {describe(value)}"
        )
    return value


def _as_positive(value: object, what: str) -> float:
    number = _as_finite(value, what)
    if number <= 0:
        raise InvalidArgument(f"{what} must be positive, found {number}")
    return number


def _as_int(
    value: object, what: str, *, minimum: int | None = None, maximum: int | None = None, why: str = ""
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, found {describe(value)}")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{what} must be at least {minimum}{why}, found {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{what} must be at most {maximum}, found {value}")
    return value


def _as_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, found {describe(value)}")
    return value


def _as_float_dtype(value: object, what: str) -> torch.dtype:
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise InvalidArgument(
            f"{what} must be a floating-point torch.dtype, found {describe(value)}; pass e.g. torch.float64"
        )
    return value


def _as_finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(
            f"{what} must be a finite number, found {describe(value)}; ask for NaN and infinity "
            "with allow_nan=True and allow_infinity=True"
        )
    return float(value)


def _ordered(low: object, high: object) -> tuple[float, float]:
    low, high = _as_finite(low, "min_value"), _as_finite(high, "max_value")
    if low > high:
        raise InvalidArgument(f"min_value {low} is above max_value {high}; swap them")
    return low, high


def _as_border(value: object, what: str) -> int | None:
    return None if value is None else _as_int(value, what, minimum=0)


def _as_device(value: object, what: str) -> torch.device:
    if not isinstance(value, (str, torch.device)):
        raise InvalidArgument(f"{what} must be a str or torch.device, found {describe(value)}")
    try:
        return torch.device(value)
    except RuntimeError:
        raise InvalidArgument(f"{what} {value!r} is not a device torch knows; pass e.g. 'cpu'") from None
