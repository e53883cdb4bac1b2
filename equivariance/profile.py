"""Where a model loses equivariance: the error of every layer under one input shift.

:func:`profile_equivariance` sends the unshifted and the shifted input through
the model in one batched forward pass, with forward hooks on every leaf
submodule (or on the layers named). Each layer's output is compared with its
own expected output action: the input shift divided by the layer's
*cumulative stride*, inferred from the spatial sizes the hooks see (input
size / output size, rounded). The first layer whose error rises above the
tolerance is named, with the likely cause and a fix:

``aliasing``
    the cumulative stride does not divide the shift, so a subsampled map
    cannot follow it (a strided convolution or pooling layer);
``borders``
    the error sits within a few samples of the edges of the compared region
    (zero padding, or content leaving the canvas);
``spatial dims gone``
    the output has no spatial dims left (flatten, a dense head) and changes
    with the shift;
``no symmetry``
    the error is everywhere: a layer that does not commute with translations
    (a positional embedding, absolute coordinates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._forward import call_until, find_layer
from equivariance._hints import within
from equivariance._isolation import isolated
from equivariance._validation import describe
from equivariance.errors import InvalidArgument
from equivariance.metric import check_input, check_shift_fits, sample_errors, squared_distances
from equivariance.shifts import Boundary, Shift, ShiftLike, as_shift, check_boundary
from equivariance.tolerances import resolve_tolerance
from equivariance.transforms import Transform

__all__ = ["EquivarianceProfile", "LayerProfile", "profile_equivariance"]

CAUSES = ("aliasing", "borders", "spatial dims gone", "no symmetry")


@dataclass(frozen=True)
class LayerProfile:
    """The equivariance error of one layer's output under the input shift.

    Attributes:
        name: the layer's name in ``model.named_modules()``; ``"(output)"``
            for the model's output where no leaf returns it.
        type: the layer's class name, e.g. ``"Conv2d"``.
        output_shape: the shape of the layer's output for ``x``.
        stride: the cumulative stride inferred from the spatial sizes, per
            dim; ``None`` where the output has no spatial dims.
        output_shift: the shift the output is expected to make, the input
            shift divided by the stride (rounded where the stride does not
            divide it); ``None`` without spatial dims (compared unmoved).
        exact: whether the stride divides the shift.
        error: the worst relative error over the batch (RMS absolute error
            where the reference is all zero).
        passed: whether every sample is within tolerance.
        border: for a failing layer, the number of samples at the edges of
            the compared region that hold all of the error; ``None`` if the
            error is not confined to the borders.
        cause: for a failing layer, one of ``"aliasing"``, ``"borders"``,
            ``"spatial dims gone"`` or ``"no symmetry"``.
        fix: for a failing layer, what to do about it.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    stride: tuple[int, ...] | None
    output_shift: Shift | Transform | None
    exact: bool
    error: float
    passed: bool
    border: int | None = None
    cause: str | None = None
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields."""
        data = dataclasses.asdict(self)
        data["output_shape"] = list(self.output_shape)
        data["stride"] = None if self.stride is None else list(self.stride)
        data["output_shift"] = None if self.output_shift is None else _jsonable(self.output_shift)
        return data


@dataclass(frozen=True)
class EquivarianceProfile:
    """The per-layer errors of a model under one shift; ``str()`` is a table.

    Made by :func:`profile_equivariance`.

    Attributes:
        subject: the model's class name.
        shift: the input shift, or a transform (``Rot90``, ``Flip``).
        boundary: ``"zeros"`` or ``"circular"``.
        input_shape: the shape of ``x``.
        dtype: the dtype of ``x``.
        rtol: the relative tolerance a layer is held to.
        atol: the RMS absolute tolerance where a reference is all zero.
        tolerance_source: where the tolerance came from.
        layers: one :class:`LayerProfile` per layer, in the order they ran.
        up_to: the submodule after which the forward pass stopped; ``None``
            when the whole model ran.
    """

    subject: str
    shift: Shift | Transform
    boundary: str
    input_shape: tuple[int, ...]
    dtype: str
    rtol: float
    atol: float
    tolerance_source: str
    layers: tuple[LayerProfile, ...]
    up_to: str | None = None

    @property
    def passed(self) -> bool:
        """Whether every layer is within tolerance."""
        return all(layer.passed for layer in self.layers)

    @property
    def first_failure(self) -> LayerProfile | None:
        """The first layer (in the order they ran) whose error is above tolerance."""
        return next((layer for layer in self.layers if not layer.passed), None)

    def __getitem__(self, name: str) -> LayerProfile:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict: the fields, the verdict and the first failure's name."""
        first = self.first_failure
        return {
            "subject": self.subject,
            "up_to": self.up_to,
            "shift": _jsonable(self.shift),
            "boundary": self.boundary,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "tolerance_source": self.tolerance_source,
            "passed": self.passed,
            "first_failure": None if first is None else first.name,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def summary(self) -> str:
        """One line: the verdict and the first layer that fails, with its cause."""
        first = self.first_failure
        what = "shift" if isinstance(self.shift, Shift) else "transform"
        subject = self.subject if self.up_to is None else f"{self.subject} up to {self.up_to}"
        head = f"equivariance profile of {subject} under {what} {self.shift} ({self.boundary})"
        if first is None:
            return f"{head}: every layer within rtol {self.rtol:.0e}"
        return f"{head}: first failure at {first.name} ({first.type}), {first.cause}"

    def __str__(self) -> str:
        rows = [("layer", "type", "output", "stride", "out shift", "error", "verdict")]
        for layer in self.layers:
            stride = "-" if layer.stride is None else _tuple(layer.stride)
            moved = "none" if layer.output_shift is None else str(layer.output_shift)
            if not layer.exact:
                moved += " ~"
            verdict = "ok" if layer.passed else f"FAIL ({layer.cause})"
            shape = _tuple(layer.output_shape[1:])
            rows.append((layer.name, layer.type, shape, stride, moved, f"{layer.error:.2e}", verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [self.summary()]
        lines.append(
            f"  input {self.input_shape} {self.dtype}; tolerance rtol={self.rtol:.0e}, "
            f"atol={self.atol:.0e} ({self.tolerance_source})"
        )
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if any(not layer.exact for layer in self.layers):
            lines.append("  ~: the stride does not divide the shift; compared with the rounded shift")
        first = self.first_failure
        if first is not None:
            lines.append(f"  likely cause at {first.name}: {first.cause}; fix: {first.fix}")
        return "\n".join(lines)


def profile_equivariance(
    model: nn.Module,
    x: torch.Tensor,
    shift: ShiftLike | Transform,
    *,
    layers: Sequence[str] | None = None,
    up_to: str | None = None,
    boundary: Boundary = "zeros",
    atol: float | None = None,
    rtol: float | None = None,
) -> EquivarianceProfile:
    """The equivariance error of every layer of ``model`` under one input shift.

    ``x`` and its shifted copy run through the model together, in one
    batched forward pass, with forward hooks recording the output of every
    leaf submodule (or of the ``layers`` named). Each output is compared
    with the unshifted output moved by the input shift divided by the
    layer's cumulative stride, over the valid region of that output shift
    (zeros boundary). An output without spatial dims is compared unmoved.
    Failing layers get a likely cause and a fix; see the module docstring.
    With ``up_to``, the pass stops once that layer has returned, as a check's
    ``layer=`` does, so a model whose head refuses the input size can still
    be profiled up to it.

    >>> import torch
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...     torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    >>> x = torch.zeros(2, 1, 32, 32)
    >>> x[..., 8:24, 8:24] = torch.rand(2, 1, 16, 16)
    >>> profile = profile_equivariance(net, x, (1, 0))
    >>> profile.first_failure.name, profile.first_failure.cause
    ('2', 'aliasing')
    >>> profile_equivariance(net, x, (2, 0)).passed
    True

    The seed's LeNet only takes 28x28 digits whole; on a 38x38 canvas its
    convolutions are profiled up to ``conv4``:

    >>> from equivariance.models import LeNet
    >>> canvas = torch.zeros(2, 1, 38, 38)
    >>> canvas[..., 5:33, 5:33] = torch.rand(2, 1, 28, 28)
    >>> profile = profile_equivariance(LeNet(), canvas, (2, 1), up_to="conv4")
    >>> [layer.name for layer in profile.layers], profile.passed
    (['conv1', 'conv2', 'conv3', 'conv4'], True)

    Args:
        model: an ``nn.Module``.
        x: a batch ``(N, C, *spatial)`` with 1 to 3 spatial dims.
        shift: the input shift, a :class:`~equivariance.Shift` or a tuple of ints;
            or a transform (:class:`~equivariance.Rot90`, :class:`~equivariance.Flip`),
            which every spatial output is expected to undergo too.
        layers: names of the submodules to profile (``model.named_modules()``);
            default every leaf submodule that runs.
        up_to: the name of a submodule (``model.named_modules()``) after whose
            output the forward pass stops: only the layers that ran up to and
            including it are profiled (those of ``layers`` that would run
            later are left out), and its own output is a row of the profile
            if no profiled layer returned it. Default: the whole model runs.
        boundary: ``"zeros"`` or ``"circular"``, see :mod:`equivariance.shifts`.
        atol: tolerance on the RMS absolute error where the reference is zero.
        rtol: tolerance on the relative error; default by dtype
            (:mod:`equivariance.tolerances`).

    Returns:
        An :class:`EquivarianceProfile`.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"profile_equivariance needs an nn.Module to hook its layers, found {describe(model)}; "
            "use check_equivariance for a plain callable"
        )
    x = check_input(x, model)
    boundary = check_boundary(boundary)
    the_shift: Shift | Transform
    # A Shift has an apply() too, so it would satisfy the Transform protocol: test for it first.
    if not isinstance(shift, Shift) and isinstance(shift, Transform):
        the_shift = shift
        moved_x = shift.apply(x, x.dim() - 2)
        boundary = "circular"  # a rotation or flip maps the grid onto itself: nothing is filled in
    else:
        the_shift = as_shift(shift)
        check_shift_fits(the_shift, x)
        if the_shift.is_identity:
            raise InvalidArgument(
                f"shift {the_shift} is the identity, a profile that cannot fail; pass a nonzero shift"
            )
        moved_x = the_shift.apply(x, boundary)
    tolerance = resolve_tolerance(x.dtype, rtol=rtol, atol=atol)
    targets = _targets(model, layers)
    stop = _stop_layer(model, up_to)
    n = x.shape[0]
    captured: dict[str, torch.Tensor] = {}
    input_sizes: dict[str, tuple[int, ...] | None] = {}
    order: list[str] = []
    d = x.dim() - 2

    def recorder(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, inputs: Any, out: Any) -> None:
            tensor = _first_tensor(out)
            if name not in captured and tensor is not None and tensor.dim() >= 1 and len(tensor) == 2 * n:
                captured[name] = tensor.detach().clone()
                source = _first_tensor(inputs)
                spatial = source is not None and source.dim() >= 2 + d
                input_sizes[name] = tuple(source.shape[-d:]) if spatial else None  # type: ignore[union-attr]
                order.append(name)

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in targets.items()]
    try:
        with isolated(model):
            batch = torch.cat([x, moved_x])
            try:
                # the recorders were registered first, so an up_to layer that is profiled is recorded
                # before its hook stops the pass
                result, reached = call_until(model, batch, stop)
            except InvalidArgument:
                raise
            except Exception as exc:
                raise InvalidArgument(
                    f"the model raised {type(exc).__name__} on an input of shape {tuple(batch.shape)} "
                    f"(x and its shifted copy in one batch): {exc}"
                ) from exc
    finally:
        for handle in handles:
            handle.remove()
    if not reached:
        raise InvalidArgument(
            f"up_to={up_to!r} names a layer that was never called during the forward pass, so the "
            "profile cannot stop after it; pass the name of a layer that the model's forward uses"
        )
    # the model's output, or the up_to layer's where the pass stopped, unless it is the last one recorded
    last = "(output)" if up_to is None else up_to
    output = _first_tensor(result)
    new = output is not None and (not order or not torch.equal(output, captured[order[-1]]))
    if output is not None and new and output.dim() >= 1 and len(output) == 2 * n and last not in captured:
        captured[last] = output.detach().clone()
        input_sizes[last] = None
        order.append(last)
    if not order:
        raise InvalidArgument(
            "no profiled layer returned a tensor with the input's batch dim; pass layers= naming "
            "submodules that the forward pass calls"
        )
    types = {name: type(module).__name__ for name, module in targets.items()}
    types["(output)"] = type(model).__name__
    if stop is not None and up_to is not None:
        types[up_to] = type(stop).__name__
    strides = _cumulative_strides(order, captured, input_sizes, tuple(x.shape[2:]))
    profiles = tuple(
        _profile_layer(name, types[name], captured[name], strides[name], n, the_shift, boundary, tolerance)
        for name in order
    )
    return EquivarianceProfile(
        subject=type(model).__name__,
        shift=the_shift,
        boundary=boundary,
        input_shape=tuple(x.shape),
        dtype=str(x.dtype).removeprefix("torch."),
        rtol=tolerance.rtol,
        atol=tolerance.atol,
        tolerance_source=tolerance.source,
        layers=profiles,
        up_to=up_to,
    )


def _targets(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    if layers is None:
        leaves = {
            name: module for name, module in model.named_modules() if name and not any(module.children())
        }
        return leaves or {"(output)": model}
    if isinstance(layers, str):
        raise InvalidArgument(f"layers must be a list of layer names, found {layers!r}; pass [{layers!r}]")
    return {name: find_layer(model, name) for name in layers}


def _stop_layer(model: nn.Module, up_to: str | None) -> nn.Module | None:
    """The submodule named by ``up_to``, after which the forward pass stops; checked before it runs."""
    if up_to is None:
        return None
    if not isinstance(up_to, str):
        raise InvalidArgument(
            f"up_to must be a submodule name (str), found {describe(up_to)}; pass e.g. up_to='conv4'"
        )
    return find_layer(model, up_to)


def _cumulative_strides(
    order: Sequence[str],
    captured: dict[str, torch.Tensor],
    input_sizes: dict[str, tuple[int, ...] | None],
    spatial_in: tuple[int, ...],
) -> dict[str, tuple[int, ...] | None]:
    """Each output's stride relative to ``x``, from the spatial sizes the hooks saw.

    A layer's own stride is its input size over its output size, rounded,
    where that ratio is at least 1.5 (smaller ratios are the shrinkage of an
    unpadded convolution, stride 1). Its input's stride is that of the last
    output seen with the input's spatial size (``x`` itself: stride 1).
    """
    d = len(spatial_in)
    seen: dict[tuple[int, ...], tuple[int, ...]] = {spatial_in: (1,) * d}
    strides: dict[str, tuple[int, ...] | None] = {}

    def own(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(1 if i / o < 1.5 else round(i / o) for i, o in zip(a, b))

    for name in order:
        out = captured[name]
        if out.dim() < 2 + d:
            strides[name] = None
            continue
        size_out = tuple(out.shape[-d:])
        size_in = input_sizes.get(name)
        if size_in is not None and size_in in seen:
            stride = tuple(s * k for s, k in zip(seen[size_in], own(size_in, size_out)))
        else:
            stride = own(spatial_in, size_out)
        strides[name] = stride
        seen[size_out] = stride
    return strides


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _profile_layer(
    name: str,
    kind: str,
    both: torch.Tensor,
    stride: tuple[int, ...] | None,
    n: int,
    shift: Shift | Transform,
    boundary: Boundary,
    tolerance: Any,
) -> LayerProfile:
    if not both.dtype.is_floating_point:
        both = both.double()
    base, moved = both[:n], both[n:]
    d = len(stride) if stride is not None else 0
    shape = tuple(base.shape)
    if stride is None or base.dim() < 2 + d:
        diff, ref = squared_distances(moved.reshape(n, -1), base.reshape(n, -1), (1,))
        count = torch.tensor(float(base[0].numel()))
        errors, absolute = sample_errors(diff, ref, count)
        passed = bool(within(errors, absolute, tolerance).all())
        error = float(errors.max())
        cause = fix = None
        if not passed:
            cause = "spatial dims gone"
            fix = (
                "the spatial dims are gone (flatten, a dense head, or a pooling that keeps position), "
                "so nothing moves with the input: test the layer before it with layer=, pool over "
                "the whole map (global average pooling) for invariance, and use check_invariance "
                "with circular shifts or content inside a zero canvas"
            )
        return LayerProfile(name, kind, shape, None, None, True, error, passed, None, cause, fix)
    spatial_out = shape[-d:]
    if not isinstance(shift, Shift):
        return _transform_layer(name, kind, base, moved, stride, shift, tolerance)
    exact = shift.divisible_by(stride)
    out_shift = Shift(tuple(round(o / s) for o, s in zip(shift, stride)))
    reference = out_shift.apply(base, boundary)
    if boundary == "zeros":
        region = out_shift.valid_region(spatial_out)
    else:
        region = tuple(slice(0, size) for size in spatial_out)
    lead = (slice(None),) * (base.dim() - d)
    channel_dims = tuple(range(1, base.dim() - d))
    diff_map, ref_map = squared_distances(moved[lead + region], reference[lead + region], channel_dims)
    channels = int(torch.tensor(shape[1 : base.dim() - d]).prod()) if base.dim() > 1 + d else 1
    sides = tuple(r.stop - r.start for r in region)
    count = torch.tensor(float(channels * int(torch.tensor(sides).prod())))
    errors, absolute = sample_errors(diff_map.flatten(1).sum(1), ref_map.flatten(1).sum(1), count)
    passed = bool(within(errors, absolute, tolerance).all())
    border = None if passed else _border(diff_map, ref_map, sides, channels, tolerance)
    cause = fix = None
    if not passed:
        shown = stride[0] if len(set(stride)) == 1 else stride
        if not exact:
            cause = "aliasing"
            fix = (
                f"the output is subsampled by {shown}, which does not divide shift {shift}: test "
                f"multiples of the stride (multiples_of({shown}, max_shift=...), stride={shown}), or "
                "make the downsampling anti-aliased (blur before subsampling)"
            )
        elif border is not None:
            cause = "borders"
            fix = (
                f"the error lies within {border} sample{'s' if border > 1 else ''} of the borders: "
                f"zero padding or content leaving the canvas; pass margin={border} (or margin='auto'), "
                "use circular padding with boundary='circular', or put the content on a larger zero canvas"
            )
        else:
            cause = "no symmetry"
            fix = (
                "the error is everywhere, not only at the borders: this layer does not commute with "
                "translations (a positional embedding, absolute coordinates, a dense layer on a map); "
                "make it translation-equivariant or test the layers before it"
            )
    error = float(errors.max())
    return LayerProfile(name, kind, shape, stride, out_shift, exact, error, passed, border, cause, fix)


def _transform_layer(
    name: str,
    kind: str,
    base: torch.Tensor,
    moved: torch.Tensor,
    stride: tuple[int, ...],
    transform: Transform,
    tolerance: Any,
) -> LayerProfile:
    """A rotation or flip: the whole output, transformed alike, is the reference."""
    d, n = len(stride), len(base)
    shape = tuple(base.shape)
    reference = transform.apply(base, d)  # raises, saying so, if a layer's output is not square
    diff, ref = squared_distances(moved.reshape(n, -1), reference.reshape(n, -1), (1,))
    errors, absolute = sample_errors(diff, ref, torch.tensor(float(base[0].numel())))
    passed = bool(within(errors, absolute, tolerance).all())
    cause: str | None = None
    fix: str | None = None
    if not passed and any(s > 1 for s in stride):
        cause = "aliasing"
        fix = (
            f"the map is subsampled by {stride}, and the subsampling grid is not symmetric under "
            f"{transform!r} (it keeps samples 0, 2, 4, ... of an even size): use sizes for which the "
            "grid maps onto itself (odd sizes with centred sampling) or anti-aliased downsampling"
        )
    elif not passed:
        cause = "no symmetry"
        fix = (
            f"this layer does not commute with {transform!r}: average its kernels over the group "
            "(as in a p4 / p4m group convolution), or test the layers before it"
        )
    return LayerProfile(
        name, kind, shape, stride, transform, True, float(errors.max()), passed, None, cause, fix
    )


def _jsonable(shift: Shift | Transform) -> list[int] | str:
    return list(shift.offsets) if isinstance(shift, Shift) else repr(shift)


def _border(
    diff_map: torch.Tensor, ref_map: torch.Tensor, sides: tuple[int, ...], channels: int, tolerance: Any
) -> int | None:
    """The smallest ``r`` below half the region such that dropping ``r`` edge samples passes."""
    dist: torch.Tensor | None = None
    for i, side in enumerate(sides):
        view = [1] * len(sides)
        view[i] = side
        ar = torch.arange(side)
        edge = torch.minimum(ar, side - 1 - ar).view(view)
        dist = edge if dist is None else torch.minimum(dist, edge)
    assert dist is not None
    depth = (min(sides) + 1) // 2
    for r in range(1, depth):
        inside = dist >= r
        # keep at least a quarter of the region: a margin that leaves almost nothing proves nothing
        if int(inside.sum()) * 4 < inside.numel():
            return None
        diff = (diff_map * inside).flatten(1).sum(1)
        ref = (ref_map * inside).flatten(1).sum(1)
        count = torch.tensor(float(int(inside.sum()) * channels))
        errors, absolute = sample_errors(diff, ref, count)
        if bool(within(errors, absolute, tolerance).all()):
            return r
    return None


def _tuple(values: tuple[int, ...]) -> str:
    return f"({values[0]},)" if len(values) == 1 else "(" + ", ".join(map(str, values)) + ")"
