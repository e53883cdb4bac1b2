"""The convolution theorem, executable: linear shift-equivariant maps are convolutions.

[`impulse_response`][equivariance.linear.impulse_response],
[`as_convolution`][equivariance.linear.as_convolution] and
[`nearest_equivariant`][equivariance.linear.nearest_equivariant] run the seed article's argument on any linear
(or affine) operator on a finite grid, with circular shifts; an operator that is not linear is refused. The
argument, the linearity test and the cost are in docs/theorem.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.isolation import exact_float32
from equivariance._engine.validation import as_int, describe
from equivariance.errors import InvalidArgument

__all__ = [
    "CircularConvolution",
    "ConvolutionFit",
    "LinearOperator",
    "Projection",
    "as_convolution",
    "impulse_response",
    "nearest_equivariant",
]

LinearOperator = Callable[[torch.Tensor], torch.Tensor] | nn.Linear | torch.Tensor
"""A callable ``(N, C_in, *spatial) -> (N, C_out, *spatial)``, an ``nn.Linear`` or a 2-D matrix."""

# Elements of the impulse batch and its response per call of the operator.
_BATCH_ELEMENTS = 2**21

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# The linearity check: L(a u + b v) = a L(u) + b L(v) and L(c u) = c L(u), with c < 0 so that a
# positively homogeneous map (ReLU) fails too. Its bound on the relative differences is far above
# rounding (a deep float32 stack stays near 1e-6) and far below a nonlinearity (ReLU gives about 0.5).
_COEFFICIENTS = (0.75, -1.25, -1.5)
_LINEARITY_BOUND = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}


class CircularConvolution(nn.Module):
    """The circular convolution of a batch with a full-size kernel, plus an optional offset.

    ``y[o, q] = sum_c sum_d kernel[o, c, d] * x[c, (q - d) mod n] + offset[o, q]``: the kernel is not flipped,
    so it is the layer's impulse response.

    Args:
        kernel: ``(C_out, C_in, *spatial)`` with 1 to 3 spatial dims, the grid's size.
        offset: ``(C_out, *spatial)``, added to the output, or None.

    Examples:
        >>> import torch
        >>> kernel = torch.zeros(1, 1, 5)
        >>> kernel[0, 0, 1] = 1.0                       # a shift by one sample
        >>> conv = CircularConvolution(kernel)
        >>> conv(torch.arange(5.0).view(1, 1, 5)).flatten().tolist()
        [4.0, 0.0, 1.0, 2.0, 3.0]
    """

    kernel: torch.Tensor
    offset: torch.Tensor | None

    def __init__(self, kernel: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(kernel, torch.Tensor) or not 3 <= kernel.dim() <= 5:
            found = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else describe(kernel)
            raise InvalidArgument(
                f"kernel must be a tensor (C_out, C_in, *spatial) with 1 to 3 spatial dims, found {found}"
            )
        expected = (kernel.shape[0], *kernel.shape[2:])
        if offset is not None and (not isinstance(offset, torch.Tensor) or tuple(offset.shape) != expected):
            found = tuple(offset.shape) if isinstance(offset, torch.Tensor) else describe(offset)
            raise InvalidArgument(
                f"offset must be None or a tensor (C_out, *spatial) = {expected} matching the kernel, "
                f"found {found}"
            )
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("offset", None if offset is None else offset.detach().clone())

    @property
    def spatial(self) -> tuple[int, ...]:
        """The grid the layer acts on, the kernel's trailing dims."""
        return tuple(self.kernel.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial)``."""
        expected = (self.kernel.shape[1], *self.spatial)
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != expected or x.dim() != len(expected) + 1:
            found = tuple(x.shape) if isinstance(x, torch.Tensor) else describe(x)
            raise InvalidArgument(
                f"this CircularConvolution takes batches (N, {', '.join(map(str, expected))}), found {found}"
            )
        ndim = len(self.spatial)
        # Circular padding by n - 1 before each dim and a flipped kernel turn torch's
        # cross-correlation into y[q] = sum_d kernel[d] x[q - d mod n].
        pad: list[int] = []
        for n in reversed(self.spatial):
            pad += [n - 1, 0]
        padded = F.pad(x, pad, mode="circular") if any(pad) else x
        flipped = self.kernel.flip(tuple(range(2, 2 + ndim))).to(x.dtype)
        out: torch.Tensor = _CONV[ndim](padded, flipped)
        if self.offset is not None:
            out = out + self.offset.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        c_out, c_in = self.kernel.shape[:2]
        offset = "none" if self.offset is None else "yes"
        return f"{c_in} -> {c_out} channels, grid {self.spatial}, offset {offset}"


@dataclass(frozen=True, eq=False)
class ConvolutionFit:
    """How well an operator is rebuilt as the circular convolution with its impulse response.

    ``error`` is the relative Frobenius distance $||A - C(h)|| / ||A||$ between the operator's linear part and
    the circulant matrix of its impulse response; the offset ``op(0)`` is not part of it.

    Attributes:
        kernel: the impulse response ``(C_out, C_in, *spatial)``.
        offset: ``op(0)``, ``(C_out, *spatial)``, or None when it is zero (a linear operator).
        error: the relative Frobenius distance of the rebuild, a float.
        operator: the rebuild, a [`CircularConvolution`][equivariance.linear.CircularConvolution] with
            ``kernel`` and ``offset``.
    """

    kernel: torch.Tensor
    offset: torch.Tensor | None
    error: float
    operator: CircularConvolution

    def __repr__(self) -> str:
        return f"ConvolutionFit(kernel={tuple(self.kernel.shape)}, error={self.error:.2e})"


@dataclass(frozen=True, eq=False)
class Projection:
    """The nearest circular convolution to a linear operator, by group averaging.

    ``distance`` is $||A - P(A)|| / ||A||$ in the Frobenius norm: 0 for a convolution, near 1 for a generic
    dense map.

    Attributes:
        kernel: the projection's kernel ``(C_out, C_in, *spatial)``.
        offset: the projected offset, ``op(0)`` averaged over the grid per channel, ``(C_out, *spatial)`` and
            constant; None for a linear operator.
        distance: the relative Frobenius distance of the operator from its projection.
        operator: the projection, a [`CircularConvolution`][equivariance.linear.CircularConvolution].
    """

    kernel: torch.Tensor
    offset: torch.Tensor | None
    distance: float
    operator: CircularConvolution

    def __repr__(self) -> str:
        return f"Projection(kernel={tuple(self.kernel.shape)}, distance={self.distance:.2e})"


def impulse_response(
    op: LinearOperator,
    shape: Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The operator's response to a Dirac impulse at the origin, one per input channel.

    ``h[:, c] = op(delta_c) - op(0)``: the convolution kernel of a linear, shift-equivariant ``op``. A
    nonlinear ``op`` is refused (see "The theorem").

    Args:
        op: a callable ``(N, C_in, *spatial) -> (N, C_out, *spatial)``, an ``nn.Linear`` or a matrix acting on
            the flattened input.
        shape: one input's shape ``(C_in, *spatial)``, 1 to 3 spatial dims.
        dtype: the impulses' dtype (default: the dtype of ``op``'s first floating parameter, or of the matrix,
            else torch's default).
        device: the impulses' device (default: that of ``op``'s parameters, else the CPU).

    Returns:
        ``(C_out, C_in, *spatial)``.

    Raises:
        InvalidArgument: ``op`` is not linear (nor affine), or does not map the grid to itself.

    Examples:
        >>> import torch
        >>> blur = torch.nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular", bias=False)
        >>> with torch.no_grad():
        ...     _ = blur.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]]]))
        >>> impulse_response(blur, (1, 6)).flatten().tolist()   # the kernel, flipped and wrapped
        [2.0, 1.0, 0.0, 0.0, 0.0, 3.0]
    """
    operator = _Operator(op, shape, dtype, device)
    with torch.no_grad(), exact_float32():
        offset = operator.offset()
        operator.check_linear(offset, "impulse_response")
        return operator.impulse_response(offset)


def as_convolution(
    op: LinearOperator,
    shape: Sequence[int],
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ConvolutionFit:
    """Rebuild a linear operator as the circular convolution with its impulse response.

    The ``error`` covers the whole operator (every impulse), so it is a certificate rather than a sample; a
    nonlinear ``op`` is refused.

    Args:
        op: a callable ``(N, C_in, *spatial) -> (N, C_out, *spatial)``, an ``nn.Linear`` or a matrix acting on
            the flattened input.
        shape: one input's shape ``(C_in, *spatial)``, 1 to 3 spatial dims.
        batch_size: impulses per call of ``op`` (default: chosen from the sizes).
        dtype: the impulses' dtype (default: ``op``'s, as in
            [`impulse_response`][equivariance.linear.impulse_response]).
        device: the impulses' device (default: ``op``'s).

    Returns:
        A [`ConvolutionFit`][equivariance.linear.ConvolutionFit]: ``kernel``, ``offset``, ``error`` and the
        rebuilt ``operator``.

    Raises:
        InvalidArgument: ``op`` is not linear (nor affine), or does not map the grid to itself.

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
        >>> fit = as_convolution(conv, (2, 8, 8))
        >>> fit.kernel.shape, fit.error < 1e-12
        (torch.Size([3, 2, 8, 8]), True)
        >>> x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
        >>> bool(torch.allclose(fit.operator(x), conv(x)))
        True
        >>> as_convolution(torch.nn.Linear(16, 16).double(), (1, 4, 4)).error > 0.5   # a dense map
        True
        >>> as_convolution(torch.nn.ReLU(), (1, 8))
        Traceback (most recent call last):
        ...
        equivariance.errors.InvalidArgument: op is not linear: ...
    """
    _, stats = _statistics(op, shape, batch_size, dtype, device, "as_convolution")
    rebuilt = CircularConvolution(stats.impulse, stats.offset)
    return ConvolutionFit(stats.impulse, stats.offset, _ratio(stats.deviation_sq, stats.total_sq), rebuilt)


def _statistics(
    op: LinearOperator, shape: Sequence[int], batch_size: object, dtype: Any, device: Any, caller: str
) -> tuple[_Operator, _Statistics]:
    """The operator, checked, and its circulant statistics (``caller`` names it in the messages)."""
    operator = _Operator(op, shape, dtype, device)
    checked = _check_batch_size(batch_size)
    with torch.no_grad(), exact_float32():
        return operator, operator.circulant_statistics(checked, caller)


def nearest_equivariant(
    op: LinearOperator,
    shape: Sequence[int],
    *,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Projection:
    """Project a linear operator onto the circular convolutions by averaging it over the shifts.

    ``P(A) = mean_g g^-1 A g`` over the circular shifts, the nearest shift-equivariant linear map in the
    Frobenius norm (see "The theorem"); a nonlinear ``op`` is refused.

    Arguments and errors as in [`as_convolution`][equivariance.linear.as_convolution].

    Returns:
        A [`Projection`][equivariance.linear.Projection]: ``kernel``, ``offset``, ``distance`` and the
        projected ``operator``.

    Examples:
        >>> import torch
        >>> dense = torch.nn.Linear(36, 36)                      # on a flattened 6x6 image
        >>> projection = nearest_equivariant(dense, (1, 6, 6))
        >>> projection.kernel.shape, projection.distance > 0.5
        (torch.Size([1, 1, 6, 6]), True)
        >>> again = nearest_equivariant(projection.operator, (1, 6, 6))
        >>> again.distance < 1e-3, bool(torch.allclose(again.kernel, projection.kernel, atol=1e-6))
        (True, True)
    """
    operator, stats = _statistics(op, shape, batch_size, dtype, device, "nearest_equivariant")
    n = operator.points
    # Shifted sums: deviations from the impulse response keep the subtraction below
    # accurate when the operator is (nearly) a convolution already.
    mean_deviation = stats.deviation_sum / n
    kernel = (stats.impulse.to(torch.float64) + mean_deviation).to(stats.impulse.dtype)
    residual_sq = max(stats.deviation_sq - n * float(mean_deviation.square().sum()), 0.0)
    offset = None
    if stats.offset is not None:
        dims = tuple(range(1, stats.offset.dim()))
        offset = stats.offset.mean(dim=dims, keepdim=True).expand_as(stats.offset).clone()
    return Projection(
        kernel=kernel,
        offset=offset,
        distance=_ratio(residual_sq, stats.total_sq),
        operator=CircularConvolution(kernel, offset),
    )


# -- the operator as a matrix, one batch of columns at a time ---------------------------------------


@dataclass(frozen=True)
class _Statistics:
    impulse: torch.Tensor  # (C_out, C_in, *spatial), the operator's dtype
    offset: torch.Tensor | None
    deviation_sum: torch.Tensor  # (C_out, C_in, *spatial) float64: sum_p (aligned column - impulse)
    deviation_sq: float  # sum_p ||aligned column - impulse||^2
    total_sq: float  # ||A||_F^2


class _Operator:
    """A validated linear operator: its input shape, output channels and columns."""

    def __init__(
        self, op: object, shape: object, dtype: torch.dtype | None, device: torch.device | str | None
    ) -> None:
        self.shape = _check_shape(shape)
        self.channels = self.shape[0]
        self.spatial = self.shape[1:]
        self.points = math.prod(self.spatial)
        self.matrix: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.call: Callable[[torch.Tensor], Any] | None = None
        if isinstance(op, nn.Linear):
            self.matrix, self.bias = op.weight.detach(), None if op.bias is None else op.bias.detach()
        elif isinstance(op, torch.Tensor):
            if op.dim() != 2:
                raise InvalidArgument(
                    f"a matrix operator must be 2-D (C_out * n, C_in * n), found shape {tuple(op.shape)}; "
                    "pass a callable for anything else"
                )
            self.matrix = op.detach()
        elif callable(op):
            self.call = op
        else:
            raise InvalidArgument(
                f"op must be a callable (N, C_in, *spatial) -> (N, C_out, *spatial), an nn.Linear or a "
                f"2-D matrix, found {describe(op)}"
            )
        self.dtype, self.device = _dtype_device(op, dtype, device)
        if self.matrix is not None:
            self.out_channels = self._matrix_channels(self.matrix)
        else:
            self.out_channels = -1  # known after the first call

    def _matrix_channels(self, matrix: torch.Tensor) -> int:
        rows, columns = matrix.shape
        inputs = self.channels * self.points
        if columns != inputs or rows % self.points:
            raise InvalidArgument(
                f"a matrix operator on inputs of shape {self.shape} needs {inputs} columns and a multiple "
                f"of {self.points} rows (C_out * {self.points}), found a {rows}x{columns} matrix; "
                "check shape, or pass the operator as a callable"
            )
        return rows // self.points

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The operator on a batch ``(B, C_in, *spatial)``, checked to give ``(B, C_out, *spatial)``."""
        if self.matrix is not None:
            flat = x.flatten(1) @ self.matrix.to(x.dtype).T
            if self.bias is not None:
                flat = flat + self.bias.to(x.dtype)
            return flat.view(x.shape[0], self.out_channels, *self.spatial)
        assert self.call is not None
        try:
            out = self.call(x)
        except Exception as error:
            raise InvalidArgument(
                f"op failed on a batch of shape {tuple(x.shape)} ({type(error).__name__}: {error}); op must "
                f"take a batch (N, *shape) = (N, {', '.join(map(str, self.shape))}) and return (N, C_out, "
                f"{', '.join(map(str, self.spatial))})"
            ) from error
        if not isinstance(out, torch.Tensor):
            raise InvalidArgument(
                f"op must return a tensor, found {describe(out)}; return op's output tensor"
            )
        if out.dim() != x.dim() or out.shape[0] != x.shape[0] or tuple(out.shape[2:]) != self.spatial:
            raise InvalidArgument(
                f"op maps a batch of shape {tuple(x.shape)} to {tuple(out.shape)}, but the theorem here is "
                f"about maps from a grid to the same grid, (N, C_out, {', '.join(map(str, self.spatial))}); "
                "keep the size, e.g. with padding=k//2 and padding_mode='circular'"
            )
        self.out_channels = out.shape[1]
        return out

    def impulses(self, index: torch.Tensor) -> torch.Tensor:
        """Impulses ``(B, C_in, *spatial)``: number ``i`` is 1 at channel ``i // n``, point ``i % n``."""
        batch = torch.zeros(len(index), self.channels, self.points, dtype=self.dtype, device=self.device)
        batch[torch.arange(len(index), device=self.device), index // self.points, index % self.points] = 1
        return batch.view(len(index), *self.shape)

    def offset(self) -> torch.Tensor:
        """``op(0)``, ``(C_out, *spatial)``."""
        return self(torch.zeros(1, *self.shape, dtype=self.dtype, device=self.device))[0]

    def impulse_response(self, offset: torch.Tensor | None = None) -> torch.Tensor:
        """``op(delta_c) - op(0)`` for every input channel ``c``, ``(C_out, C_in, *spatial)``."""
        offset = self.offset() if offset is None else offset
        response = self(self.impulses(torch.arange(self.channels, device=self.device) * self.points))
        return (response - offset).transpose(0, 1).contiguous()

    def columns(
        self, batch_size: int | None, offset: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(index, column)`` of the linear part's columns, each response to the
        impulse at ``p`` shifted back by ``p``: ``(B, C_out, *spatial)``."""
        total = self.channels * self.points
        if batch_size is None:
            per_column = max(self.points * (self.channels + max(self.out_channels, self.channels)), 1)
            batch_size = max(1, min(total, _BATCH_ELEMENTS // per_column))
        for start in range(0, total, batch_size):
            index = torch.arange(start, min(start + batch_size, total), device=self.device)
            response = self(self.impulses(index)) - offset
            yield index, _roll_back(response, index % self.points, self.spatial)

    def check_linear(self, offset: torch.Tensor, caller: str) -> None:
        """Refuse a callable whose linear part ``L(x) = op(x) - op(0)`` breaks superposition or scaling.

        ``L(a u + b v)`` against ``a L(u) + b L(v)``, and ``L(c u)`` against ``c L(u)`` with ``c < 0``, on
        Gaussian random inputs (a local generator: the caller's RNG is untouched); each difference relative to
        the size of the terms, against a bound well above the dtype's rounding.
        """
        if self.call is None:
            return  # a matrix, or an nn.Linear, is linear
        generator = torch.Generator().manual_seed(0)
        u, v = torch.randn(2, *self.shape, generator=generator, dtype=torch.float64)
        a, b, c = _COEFFICIENTS
        inputs = torch.stack([u, v, a * u + b * v, c * u]).to(self.dtype).to(self.device)
        lu, lv, combined, scaled = (self(inputs) - offset).to(torch.float64)
        superposition = _relative(combined - (a * lu + b * lv), abs(a) * lu.norm() + abs(b) * lv.norm())
        scaling = _relative(scaled - c * lu, abs(c) * lu.norm())
        bound = _LINEARITY_BOUND.get(self.dtype, _LINEARITY_BOUND[torch.float32])
        if max(superposition, scaling) > bound:
            raise InvalidArgument(
                f"op is not linear: on random inputs u and v its linear part L(x) = op(x) - op(0) fails "
                f"superposition (L({a}u - {-b}v) is {superposition:.3g} away from {a}L(u) - {-b}L(v), "
                f"relative) or scaling (L({c}u) is {scaling:.3g} away from {c}L(u)), where "
                f"{str(self.dtype).removeprefix('torch.')} rounding stays below {bound:g}; {caller} is about "
                "linear (or affine) operators: pass the linear part alone, e.g. the convolution without its "
                "activation (and a module with dropout in eval mode)"
            )

    def circulant_statistics(self, batch_size: int | None, caller: str) -> _Statistics:
        offset = self.offset()
        self.check_linear(offset, caller)
        impulse = self.impulse_response(offset)  # (C_out, C_in, *spatial)
        per_channel = impulse.transpose(0, 1).to(torch.float64)  # (C_in, C_out, *spatial)
        deviation_sum = torch.zeros_like(per_channel)
        deviation_sq = 0.0
        total_sq = 0.0
        for index, aligned in self.columns(batch_size, offset):
            aligned = aligned.to(torch.float64)
            channel = index // self.points
            deviation = aligned - per_channel[channel]
            deviation_sum.index_add_(0, channel, deviation)
            deviation_sq += float(deviation.square().sum())
            total_sq += float(aligned.square().sum())
        return _Statistics(
            impulse=impulse,
            offset=None if not bool(offset.any()) else offset,
            deviation_sum=deviation_sum.transpose(0, 1).contiguous(),
            deviation_sq=deviation_sq,
            total_sq=total_sq,
        )


def _roll_back(y: torch.Tensor, points: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``y[b]`` circularly shifted by minus grid point ``points[b]``, every ``b`` in one gather.

    ``out[b, :, q] = y[b, :, q + p_b mod n]``, built as a flat index, one spatial dim at a time.
    """
    batch = y.shape[0]
    flat = torch.zeros(batch, *spatial, dtype=torch.long, device=y.device)
    remaining = points
    stride = math.prod(spatial)
    for axis, n in enumerate(spatial):
        stride //= n
        coordinate = remaining // stride
        remaining = remaining % stride
        grid = torch.arange(n, device=y.device).view(
            (1,) + (1,) * axis + (n,) + (1,) * (len(spatial) - axis - 1)
        )
        moved = (grid + coordinate.view((batch,) + (1,) * len(spatial))) % n
        flat = flat + moved * stride
    flat = flat.view(batch, 1, -1).expand(batch, y.shape[1], -1)
    return y.reshape(batch, y.shape[1], -1).gather(2, flat).view_as(y)


def _check_batch_size(batch_size: object) -> int | None:
    if batch_size is None:
        return None
    checked = as_int(batch_size, "batch_size")
    if checked < 1:
        raise InvalidArgument(f"batch_size must be positive, found {checked}; pass e.g. batch_size=64")
    return checked


def _check_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not 2 <= len(shape) <= 4:
        raise InvalidArgument(
            f"shape must be one input's shape (C_in, *spatial) with 1 to 3 spatial dims, found "
            f"{describe(shape)}; e.g. (1, 28, 28) for a grayscale image, without the batch dim"
        )
    sizes = tuple(as_int(s, "shape entry") for s in shape)
    if min(sizes) < 1:
        raise InvalidArgument(f"shape entries must be positive, found {sizes}; pass e.g. shape=(1, 16, 16)")
    return sizes


def _dtype_device(
    op: object, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    reference: torch.Tensor | None = None
    if isinstance(op, torch.Tensor):
        reference = op
    elif isinstance(op, nn.Module):
        reference = next((p for p in op.parameters() if p.is_floating_point()), None)
        if reference is None:
            reference = next((b for b in op.buffers() if b.is_floating_point()), None)
    if dtype is None:
        dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgument(
            f"dtype must be a floating torch.dtype, found {describe(dtype)}; pass e.g. dtype=torch.float64"
        )
    if device is None:
        return dtype, reference.device if reference is not None else torch.device("cpu")
    try:
        return dtype, torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument(
            f"device must be a torch.device or its name, found {describe(device)}"
        ) from None


def _relative(difference: torch.Tensor, scale: torch.Tensor) -> float:
    """``||difference|| / scale``; 0 where both are 0, inf where only the scale is."""
    size, total = float(difference.norm()), float(scale)
    if size == 0.0:
        return 0.0
    return size / total if total > 0 else math.inf


def _ratio(part_sq: float, total_sq: float) -> float:
    """``sqrt(part / total)``, 0 for the zero operator (a convolution with the zero kernel)."""
    return math.sqrt(part_sq / total_sq) if total_sq > 0 else 0.0
