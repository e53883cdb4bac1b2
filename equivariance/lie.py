"""The Lie derivative: a model's local equivariance error under a continuous transformation.

[`lie_derivative`][equivariance.lie.lie_derivative] computes
$L f(x) = J_f(x) L_{in} x - L_{out} f(x)$ for a one-parameter group (a sub-pixel translation, a
rotation; [`equivariance.generators`][equivariance.generators]) with one Jacobian-vector product,
[`lie_derivative_error`][equivariance.lie.lie_derivative_error] its size per sample, and
[`profile_lie_derivative`][equivariance.lie.profile_lie_derivative] its split over the layers (Gruver,
Finzi, Goldblum and Wilson, ICLR 2023). The documentation's "The Lie derivative" page explains how it
runs and what it refuses.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from equivariance._engine import arguments as _arguments
from equivariance._engine.diagnosis import JUNCTION, junction_name
from equivariance._engine.distances import DistanceRules, Wrap
from equivariance._engine.forward import Forward, OutputSelector
from equivariance._engine.grids import Stride, shown
from equivariance._engine.judge import relative_sizes, sample_scale, scaled, squared_norms
from equivariance._engine.jvp import GRID_LIMIT, TangentWatch, forward_mode, not_implemented, pushforward
from equivariance._engine.layers import CHANNELS_FIRST_OPS, Follower, Recorded
from equivariance._engine.parts import Arguments, Call, Graphs
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import all_finite, check_finite
from equivariance._engine.validation import describe
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.fields import FieldSpec, ModelInput
from equivariance.generators import Generator, PointGenerator, Rotation, Translation
from equivariance.layouts import ChannelsFirst, Layout, LayoutLike

__all__ = [
    "LayerContribution",
    "LieProfile",
    "lie_derivative",
    "lie_derivative_error",
    "profile_lie_derivative",
]

GeneratorLike = Generator | PointGenerator | Literal["translation", "rotation"]
LieDerivative = Any
"""What ``lie_derivative`` returns: a tensor shaped like ``f(x)``; with ``outputs=`` a tuple (or dict) of
tensors, one per output as ``outputs=`` lists them."""
Reduction = Literal["mean", "max", "none"]
OTHER = "(other operations)"


def as_generator(generator: object, x: torch.Tensor) -> Generator:
    """A generator from a Generator or a name; checked against ``x``'s spatial dims.

    ``"translation"`` is the unit translation along the last spatial dim (the
    width of an image), ``"rotation"`` the rotation of the last two dims.
    """
    d = x.dim() - 2
    if generator == "translation":
        return Translation.along(-1, d)
    if generator == "rotation":
        generator = Rotation()
    if not isinstance(generator, Generator):
        raise InvalidArgument(
            f"generator must be 'translation', 'rotation' or an equivariance.generators.Generator, found "
            f"{describe(generator)}; pass e.g. generator=Translation(0, 1)"
        )
    if generator.ndim is not None and generator.ndim != d:
        raise InvalidArgument(
            f"{generator!r} acts on {generator.ndim} spatial dims but x of shape {tuple(x.shape)} has {d}; "
            f"pass a generator for {d} spatial dims"
        )
    return generator


def _moved(generator: Generator, h: torch.Tensor, stride: Stride | None) -> torch.Tensor:
    """The generator applied to ``h`` on its grid, zero where ``h`` has no spatial dims."""
    return torch.zeros_like(h) if stride is None else generator.apply(h, stride)


def floating(output: torch.Tensor) -> torch.Tensor:
    """``output``, if it is floating point: a Lie derivative needs one."""
    if not output.dtype.is_floating_point:
        raise InvalidArgument(
            f"the output has dtype {output.dtype}; a Lie derivative needs a floating-point output: "
            "pass output=lambda y: y.float()"
        )
    return output


def check_derivative(
    base: torch.Tensor, derivative: torch.Tensor, what: str = "x", limit: str = GRID_LIMIT
) -> None:
    """InvalidArgument for a non-finite output (as the checks refuse one) or derivative; ``limit``: the
    finite difference to measure instead."""
    check_finite(base, what)
    if not all_finite(derivative):
        bad = int((~torch.isfinite(derivative)).reshape(len(derivative), -1).any(1).sum())
        raise InvalidArgument(
            f"the Lie derivative is not finite (nan or inf) for {bad} of {len(derivative)} samples of {what} "
            "although the output is: the model is not differentiable there (a sqrt or a norm at exactly "
            f"0, a division by an exact zero) or the derivative overflows; measure {limit} for a small t "
            "instead"
        )


def warn_cuts(watch: TangentWatch, stacklevel: int) -> None:
    """EquivarianceWarnings for what the forward-mode pass saw but could not judge: a tensor carrying the
    derivative turned into a Python number, and normalizations that amplified it on constant groups."""
    if watch.numbers:
        warnings.warn(
            f"the model turns a tensor that carries the derivative of x into a Python number "
            f"({watch.numbers[0]}), which forward-mode AD cannot follow: if that number feeds the output "
            "(a scale, a threshold), the Lie derivative misses its dependence on x; compute it with "
            "torch operations",
            EquivarianceWarning,
            stacklevel=stacklevel,
        )
    _warn_amplified(watch, stacklevel + 1)


def _warn_amplified(watch: TangentWatch, stacklevel: int) -> None:
    """An EquivarianceWarning naming the first normalization that amplified the tangent on constant
    groups (and the others that did)."""
    found = watch.amplified()
    if not found:
        return
    first, others = found[0], [f"{f.layer!r} ({f.share:.0%})" for f in found[1:]]
    kind = f" ({first.type})" if first.type else ""
    also = f"; so do {', '.join(others)}" if others else ""
    warnings.warn(
        f"layer {first.layer!r}{kind} normalizes {first.groups} of {first.of} groups that are constant "
        f"over what it normalizes (zero on a zero canvas?), where its eps={first.eps:g} amplifies the "
        f"derivative up to {1 / math.sqrt(first.eps):.0f}x: they carry {first.share:.0%} of its output's "
        f"derivative{also}. The Lie derivative then measures the band-limited translation ringing into "
        "the constant border, not the model; put the content on a canvas that is not zero (docs/lie.md, "
        "'Inputs')",
        EquivarianceWarning,
        stacklevel=stacklevel,
    )


def lie_derivative(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    generator: GeneratorLike = "translation",
    *,
    stride: int | Sequence[int] | Literal["auto"] = "auto",
    invariant: bool | None = None,
    layer: str | None = None,
    output: OutputSelector = None,
    batch_size: int | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> LieDerivative:
    """The Lie derivative ``L f(x) = J_f(x) L_in x - L_out f(x)`` itself, a tensor shaped like ``f(x)``.

    One forward pass with a Jacobian-vector product (forward-mode AD)
    whose tangent is the generator applied to ``x``; the output's generator
    is then subtracted (nothing for an invariant output).

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular", dtype=torch.float64)
        >>> x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
        >>> float(lie_derivative(conv, x).abs().max()) < 1e-12
        True

        A point cloud, with the field types of its inputs and outputs:

        >>> from equivariance.fields import Positions, Scalars
        >>> from equivariance.generators import Rotation3D
        >>> def spread(pos, h):  # an invariant: the features weighted by the distances to the centroid
        ...     return (h * (pos - pos.mean(-2, keepdim=True)).norm(dim=-1, keepdim=True)).sum(-2)
        >>> pos, h = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
        >>> d = lie_derivative(spread, (pos, h), Rotation3D("z"), inputs=(Positions(), Scalars()),
        ...                    outputs=Scalars(nodes=None))
        >>> d.shape, float(d.abs().max()) < 1e-12
        (torch.Size([2, 4]), True)

    Args:
        model: the function under test (an ``nn.Module`` or a callable).
        x: a batch ``(N, C, *spatial)``; with ``inputs=``, the model's
            arguments (a tuple, a dict, a torch_geometric ``Data``/``Batch``),
            as in [`check_equivariance`][equivariance.check_equivariance].
        generator: ``"translation"`` (along the last spatial dim),
            ``"rotation"`` (of the last two), or a
            [`Generator`][equivariance.generators.Generator] such as
            ``Translation(1, 0)``; for tensors of points, a
            [`PointGenerator`][equivariance.generators.PointGenerator]:
            ``Rotation3D("z")``, ``Rotation2D()``, ``Translation3D("x")``.
        stride: the output's stride relative to the input, per dim;
            ``"auto"`` follows it through the model's modules as they run,
            by the rule the profile reads strides with (a module's stated
            ``stride``, else the sizes; for a plain callable, the sizes of
            the input and the output).
        invariant: compare the output unmoved (True), moved (False), or
            decide by its shape (None: an output ``(N, C, *spatial)`` with
            the input's number of spatial dims moves, anything else does not).
        layer: measure this named submodule's output instead.
        output: picks the tensor from a tuple or dict output.
        batch_size: samples per pass (default: the whole batch at once).
        inputs: for tensors of points, the field type of ``x`` or of each
            of its parts ([`equivariance.fields`][equivariance.fields]), as in
            [`check_equivariance`][equivariance.check_equivariance]; the
            generator moves each by its type (scalars not at all). The grid's
            ``stride`` does not apply.
        outputs: with ``inputs=``, the field type of the output or of each
            output (a tuple, or a dict for a dict output), whose generator is
            subtracted; or pass ``invariant=True`` for outputs that must not
            change.

    Returns:
        ``L f(x)``, with the output's shape and dtype. With ``inputs=``, one
        ``L f(x)`` per output, structured as ``outputs=`` (a tensor for one
        field type, a tuple for a tuple, a dict for a dict), in the outputs'
        common dtype; per-node outputs of a torch_geometric ``Batch`` keep
        their nodes on axis 0.
    """
    if _points(x, generator, inputs, outputs):
        points = _Points.of(
            model, x, generator, inputs, outputs, stride, invariant, layer, output, batch_size
        )
        _, derivatives = points.run()
        return points.structured(derivatives)
    setup = _Setup.of(model, x, generator, stride, invariant, layer, output, batch_size)
    _, derivative = setup.run()
    return derivative


def lie_derivative_error(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    generator: GeneratorLike = "translation",
    *,
    relative: bool = True,
    reduction: Reduction = "mean",
    stride: int | Sequence[int] | Literal["auto"] = "auto",
    invariant: bool | None = None,
    layer: str | None = None,
    output: OutputSelector = None,
    batch_size: int | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> torch.Tensor:
    """The size of the Lie derivative per sample: $||L f(x)|| / ||f(x)||$ (or $||L f(x)||$).

    The relative form is the limit of the library's relative error per unit
    of the group parameter: for ``Translation(0, 1)``,
    ``fractional_equivariance_error(model, x, (0, t)) / t`` for small ``t``.
    Where ``f(x)`` is all zero it is the RMS of ``L f(x)`` instead, with an
    [`EquivarianceWarning`][equivariance.EquivarianceWarning]. Arguments as
    in [`lie_derivative`][equivariance.lie.lie_derivative].

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), torch.nn.ReLU(),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4))
        >>> x = torch.randn(8, 1, 16, 16)
        >>> float(lie_derivative_error(net, x)) < float(lie_derivative_error(dense, x))
        True

    Args:
        relative: divide by $||f(x)||$ (default) or report $||L f(x)||$,
            the paper's absolute form.
        reduction: ``"mean"`` (default) or ``"max"`` over the batch, or
            ``"none"`` for one value per sample (float64).
        inputs: for tensors of points, as in [`lie_derivative`][equivariance.lie.lie_derivative].
        outputs: with ``inputs=``, the field types of the outputs. A sample's
            value is the largest of its outputs' (each relative to its own
            size), as ``equivariance_error`` takes the largest of its outputs'
            errors; a torch_geometric ``Batch``'s samples are its graphs.

    Raises:
        InvalidArgument: for bad arguments, a non-finite output or derivative,
            a model whose output depends on x through a tensor it detaches
            (or on nothing differentiable at all), and an op that has no
            forward-mode derivative, each with the reason.
    """
    if reduction not in ("mean", "max", "none"):
        raise InvalidArgument(
            f"reduction must be 'mean', 'max' or 'none', found {describe(reduction)}; pass "
            "reduction='none' for the value of every sample"
        )
    if _points(x, generator, inputs, outputs):
        points = _Points.of(
            model, x, generator, inputs, outputs, stride, invariant, layer, output, batch_size
        )
        bases, derivatives = points.run()
        by_output = [sizes(d, b if relative else None) for b, d in zip(bases, derivatives)]
        errors = torch.stack(by_output).amax(0)
    else:
        setup = _Setup.of(model, x, generator, stride, invariant, layer, output, batch_size)
        base, derivative = setup.run()
        errors = sizes(derivative, base if relative else None)
    if reduction == "none":
        return errors
    return errors.max() if reduction == "max" else errors.mean()


def sizes(derivative: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """Per-sample $||d|| / ||b||$ of the derivative $d$ and the base $b$ (float64); $||d||$ without a base.

    The checks' rule and precision (``_engine.judge.relative_sizes``):
    relative where ``base`` is nonzero, else the RMS of the derivative, with a
    warning.
    """
    if base is None:
        flat = derivative.detach().flatten(1)
        own = sample_scale(flat)
        norms = squared_norms(scaled(flat, own), 1).sqrt()
        return norms if own is None else norms / own
    errors, absolute = relative_sizes(derivative, base)
    if bool(absolute.any()):
        warnings.warn(
            f"{int(absolute.sum())} of {len(absolute)} samples have an all-zero output (dead features?); "
            "their Lie derivative is the RMS of L f(x), not relative to ||f(x)||",
            EquivarianceWarning,
            stacklevel=3,
        )
    return errors


@dataclass(frozen=True)
class _Setup:
    """Validated arguments of a Lie derivative, before any forward pass."""

    forward: Forward
    x: torch.Tensor
    generator: Generator
    stride: Stride | None
    invariant: bool | None
    batch_size: int

    @classmethod
    def of(
        cls,
        model: Callable[[torch.Tensor], Any],
        x: object,
        generator: object,
        stride: object,
        invariant: object,
        layer: str | None,
        output: OutputSelector,
        batch_size: object,
    ) -> _Setup:
        forward = Forward(model, layer, output)
        tensor = _arguments.check_input(x, model)
        the_generator = as_generator(generator, tensor)
        strides = _arguments.as_stride(stride, tensor.dim() - 2)
        if invariant not in (None, True, False):
            raise InvalidArgument(
                f"invariant must be True, False or None (decide by the output's shape), found "
                f"{describe(invariant)}; pass invariant=True for logits"
            )
        size = _arguments.check_batch_size(batch_size, auto=False)
        assert not isinstance(size, str)
        fixed = None if strides == "auto" else strides
        return cls(forward, tensor, the_generator, fixed, invariant, size or len(tensor))

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), L f(x))``, chunk by chunk, isolated like a check."""
        outputs, derivatives = [], []
        watch, rules = TangentWatch(self.forward.model), DistanceRules()
        with Runner(self.forward.model), forward_mode():
            for start in range(0, len(self.x), self.batch_size):
                base, derivative = self._chunk(self.x[start : start + self.batch_size], watch, rules)
                outputs.append(base)
                derivatives.append(derivative)
        warn_cuts(watch, stacklevel=4)
        return torch.cat(outputs), torch.cat(derivatives)

    def _chunk(
        self, x: torch.Tensor, watch: TangentWatch, rules: DistanceRules
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = tuple(x.shape[2:])
        tangent = self.generator.apply(x, (1,) * len(spatial))

        def attempt(wrap: Wrap) -> tuple[torch.Tensor, torch.Tensor, Follower]:
            given_x = x.clone()
            with Follower(given_x).following(self.forward.model) as follower:
                pushed = pushforward(wrap(lambda v: floating(self.forward(v))), given_x, tangent, watch)
            return (*pushed, follower)

        base, pushed, follower = rules.run(attempt)
        stride = self._output_stride(tuple(base.shape), follower.stride(base))
        derivative = (pushed - _moved(self.generator, base, stride)).detach()
        check_derivative(base.detach(), derivative)
        return base.detach(), derivative

    def _output_stride(self, shape: tuple[int, ...], inferred: Stride | None) -> Stride | None:
        """The output grid's stride, None for an output compared unmoved."""
        if self.invariant is True:
            return None
        if inferred is None:
            if self.invariant is False:
                raise InvalidArgument(
                    f"invariant=False moves the output with the input, but the output of shape {shape} "
                    f"has no {self.x.dim() - 2} spatial dims (expected (N, C, *spatial)); pass "
                    "invariant=None or True, or layer= to measure a layer with spatial output"
                )
            return None
        return self.stride if self.stride is not None else inferred


# -- tensors of points ---------------------------------------------------------------------------

POINT_LIMIT = "equivariance_error(model, x, Rotation.about(axis, t), inputs=..., outputs=...) / t"
"""The finite-difference limit of a Lie derivative of tensors of points (a rotation's; a translation's
likewise), which its errors suggest where it cannot run."""


def _points(x: object, generator: object, inputs: object, outputs: object) -> bool:
    """Whether a Lie derivative takes the model's several inputs with field types rather than a grid."""
    return isinstance(generator, PointGenerator) or _arguments.several_inputs(x, inputs, outputs)


@dataclass(frozen=True)
class _Points:
    """Validated arguments of a Lie derivative of tensors of points, before any forward pass: the call,
    the generator, which of the call's parts it moves, the chunk size, and how ``outputs=`` is laid out."""

    forward: Forward
    arguments: Call
    generator: PointGenerator
    moving: tuple[bool, ...]
    batch_size: int
    layout: Literal["tensor", "tuple", "dict", "auto"]

    @classmethod
    def of(
        cls, model: Callable[..., Any], x: object, generator: object, inputs: object, outputs: object,
        stride: object, invariant: object, layer: str | None, output: OutputSelector, batch_size: object,
    ) -> _Points:  # fmt: skip
        _arguments.no_grid_options(stride=stride != "auto")
        if isinstance(generator, PointGenerator) and inputs is None:
            raise InvalidArgument(
                f"{generator!r} moves tensors of points by their field type; pass inputs= the field type of "
                "x (or of each of the model's arguments, x a tuple), e.g. inputs=(Positions(), Scalars()), "
                "and outputs= that of each output"
            )
        if invariant not in (None, True, False):
            raise InvalidArgument(
                f"invariant must be True, False or None, found {describe(invariant)}; pass invariant=True "
                "for outputs that must not change"
            )
        if invariant is True and outputs is not None:
            raise InvalidArgument(
                "pass either outputs= (the field type of each output) or invariant=True (every output "
                "unchanged), not both; an invariant output is Scalars(nodes=None) in outputs="
            )
        if invariant is not True and outputs is None:
            raise InvalidArgument(
                "inputs= says how the generator moves the model's arguments; pass outputs= too, the field "
                "type of each output (e.g. outputs=(Scalars(nodes=None), Vectors())), or invariant=True for "
                "outputs that must not change"
            )
        mode: _arguments.Mode = "invariance" if invariant is True else "equivariance"
        forward, arguments = _arguments.validate_call(
            model, x, mode, inputs=inputs, outputs=outputs, layer=layer, output=output
        )
        the_generator, moving = _arguments.point_generator(generator, arguments)
        size = _arguments.check_batch_size(batch_size, auto=False)
        assert not isinstance(size, str)
        layout: Literal["tensor", "tuple", "dict", "auto"] = "auto"
        if outputs is not None:
            layout = (
                "dict"
                if isinstance(outputs, Mapping)
                else "tuple"
                if isinstance(outputs, (tuple, list))
                else "tensor"
            )
        return cls(forward, arguments, the_generator, moving, size or len(arguments), layout)

    def run(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``f(x)`` and ``L f(x)`` of each output, a sample a row (a graph's per-node outputs in one
        row), chunk by chunk, isolated like a check."""
        bases: list[list[torch.Tensor]] = []
        derivatives: list[list[torch.Tensor]] = []
        watch, rules = TangentWatch(self.forward.model), DistanceRules()
        with Runner(self.forward.model), forward_mode():
            for start in range(0, len(self.arguments), self.batch_size):
                chunk = self.arguments.select(slice(start, start + self.batch_size)).snapshot()
                base, derivative = self._chunk(chunk, watch, rules)
                bases.append(base)
                derivatives.append(derivative)
        warn_cuts(watch, stacklevel=4)
        return [torch.cat(p) for p in zip(*bases)], [torch.cat(p) for p in zip(*derivatives)]

    def _chunk(
        self, call: Call, watch: TangentWatch, rules: DistanceRules
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tensors, tangents, rebuild = _duals(call, self.moving, self.generator)
        base, pushed = rules.run(
            lambda wrap: pushforward(
                wrap(lambda duals: floating(self.forward(rebuild(duals), detach=False))), tensors, tangents,
                watch, POINT_LIMIT,
            )
        )  # fmt: skip
        parts = self.forward.parts
        assert parts is not None
        bases, derivatives = [], []
        for part, kind, b, p in zip(
            parts.parts, parts.acting, parts.unflatten(base), parts.unflatten(pushed)
        ):
            try:
                moves = kind is not None and self.generator.moves(kind)
                derivative = p - self.generator.apply(b, kind) if moves else p  # type: ignore[arg-type]
            except InvalidArgument as exc:
                raise InvalidArgument(f"output {part.name}: {exc}") from None
            check_derivative(b, derivative, call.describe(), POINT_LIMIT)
            bases.append(b)
            derivatives.append(derivative)
        return bases, derivatives

    def structured(self, derivatives: list[torch.Tensor]) -> LieDerivative:
        """The derivatives as the model returns its outputs (a graph's per-node outputs: nodes on axis 0)."""
        parts = self.forward.parts
        assert parts is not None
        per_node = parts.per_node or (False,) * len(parts.parts)
        shaped = [d.flatten(0, 1) if node else d for d, node in zip(derivatives, per_node)]
        layout = self.layout
        if layout == "auto":  # invariant=True: as the model returned them
            keys = [part.path for part in parts.parts]
            layout = "tensor" if keys[0][0] == "whole" else "dict" if isinstance(keys[0][1], str) else "tuple"
        if layout == "tensor":
            return shaped[0]
        if layout == "tuple":
            return tuple(shaped)
        return {part.path[1]: d for part, d in zip(parts.parts, shaped)}


def _duals(
    call: Call, moving: Sequence[bool], generator: PointGenerator
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], Callable[[list[torch.Tensor]], Call]]:
    """The call's tensors, the tangent of each (None for those the generator does not move), and how to
    make the call of the dual tensors (a graph's attributes each on its own, joined by the model's call)."""
    if isinstance(call, Arguments):
        tensors = call.tensors
        tangents = [
            generator.apply(t, part.field) if moves else None  # type: ignore[arg-type]
            for t, part, moves in zip(tensors, call.parts, moving)
        ]
        return tensors, tangents, call.with_tensors
    keys = [str(part.path[1]) for part in call.parts]
    tensors, tangents = [], []
    for graph in call.graphs:
        for key, part, moves in zip(keys, call.parts, moving):
            tensor = getattr(graph, key)
            tensors.append(tensor)
            tangents.append(generator.apply(tensor, part.field) if moves else None)  # type: ignore[arg-type]

    def rebuild(duals: list[torch.Tensor]) -> Call:
        graphs = []
        for i, graph in enumerate(call.graphs):
            graph = copy.copy(graph)
            for j, key in enumerate(keys):
                setattr(graph, key, duals[i * len(keys) + j])
            graphs.append(graph)
        return Graphs(graphs, call.fields, call.batch)

    return tensors, tangents, rebuild


# -- the per-layer profile ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayerContribution:
    """One layer's part of the model's Lie derivative: ``J_{>i} L f_i``, carried to the output.

    Attributes:
        name: the layer's name in ``model.named_modules()``, or
            ``"(other operations)"`` for what no profiled layer accounts for.
        type: the layer's class name (``""`` for the remainder).
        output_shape: the shape of the layer's output (``()`` for the remainder).
        stride: the stride of the layer's output grid relative to the
            input, followed through the modules; None without spatial dims
            (its generator is zero).
        error: the mean over the batch of $||c|| / ||f(x)||$ ($c$ the layer's contribution), on
            the scale of ``lie_derivative_error``.
        share: the fraction of $||L f(x)||^2$ (summed over the batch) the
            layer accounts for, the inner product of $c$ and $L f(x)$ over $||L f(x)||^2$;
            the shares of all rows sum to 1. Signed: a layer can undo part of
            another's error. NaN when the total is zero.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    stride: Stride | None
    error: float
    share: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict of the fields (NaN shares as None)."""
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "stride": None if self.stride is None else list(self.stride),
            "error": self.error,
            "share": None if self.share != self.share else self.share,
        }


@dataclass(frozen=True)
class LieProfile:
    """The Lie derivative of a model and each layer's contribution to it; ``str()`` is a table.

    Made by [`profile_lie_derivative`][equivariance.lie.profile_lie_derivative].

    Attributes:
        subject: the model's class name.
        generator: the generator measured.
        invariant: whether the output was compared unmoved (no spatial dims).
        error: the model's mean relative Lie derivative, as ``lie_derivative_error``.
        layers: one row per profiled layer in the order they first ran, then
            ``(other operations)``.
    """

    subject: str
    generator: Generator
    invariant: bool
    error: float
    layers: tuple[LayerContribution, ...]

    def __getitem__(self, name: str) -> LayerContribution:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict: the fields, the largest part's name and every row."""
        return {
            "subject": self.subject,
            "generator": repr(self.generator),
            "unit": self.generator.unit,
            "invariant": self.invariant,
            "error": self.error,
            "largest": self.largest.name,
            "layers": [row.to_dict() for row in self.layers],
        }

    @property
    def largest(self) -> LayerContribution:
        """The row with the largest contribution (``error``)."""
        return max(self.layers, key=lambda row: row.error)

    def __str__(self) -> str:
        kind = "invariance" if self.invariant else "equivariance"
        head = (
            f"Lie derivative of {self.subject} under {self.generator!r} ({kind}): "
            f"{self.error:.3e} per {self.generator.unit}; largest part: {self.largest.name}"
        )
        rows = [("layer", "type", "stride", "contribution", "share")]
        for row in self.layers:
            stride = "-" if row.stride is None else "x".join(map(shown, row.stride))
            share = "-" if row.share != row.share else f"{row.share:.1%}"
            rows.append((row.name, row.type, stride, f"{row.error:.3e}", share))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def profile_lie_derivative(
    model: nn.Module,
    x: torch.Tensor,
    generator: GeneratorLike = "translation",
    *,
    layers: Sequence[str] | None = None,
    up_to: str | None = None,
    layouts: Mapping[str, LayoutLike] | None = None,
) -> LieProfile:
    """The model's Lie derivative split into the contributions of its layers.

    Every profiled layer ``i`` is conjugated by the transformation with its
    own parameter ``s_i`` (its first tensor input moved by ``T_{s_i}``, its
    output by ``T'_{-s_i}``); the derivative of the model's output with
    respect to ``s_i`` at 0 is layer ``i``'s contribution, and they sum to
    ``L f(x)`` up to what no profiled layer accounts for. All of them are
    one forward-mode pass vectorized over the layers (``torch.func.vmap`` of
    ``torch.func.jvp``): about the work of one forward pass per layer, in
    one call, after a plain pass that applies the generator once to every
    profiled layer's input and output (kept: about twice the activations of
    one pass). Each layer's input and output are read in the layout the
    equivariance profile infers for them (channels first, channels last
    after a ``Permute``, tokens on a grid; `equivariance._engine.layers`), their
    strides followed through the modules that made them by the same rule
    (a module's ``stride`` attribute, else the sizes); a layer whose layout
    is ambiguous is left out with an ``EquivarianceWarning`` (its part
    counted in ``(other operations)``) until ``layouts`` names it. A module
    called twice is one layer with both calls.

    Examples:
        >>> import torch
        >>> circular = dict(padding=1, padding_mode="circular")
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, **circular), torch.nn.Tanh(),
        ...                           torch.nn.Conv2d(4, 4, 3, stride=2, **circular))
        >>> profile = profile_lie_derivative(net, torch.randn(2, 1, 16, 16))
        >>> [row.name for row in profile.layers]
        ['0', '1', '2', '(other operations)']
        >>> profile.largest.name in ("1", "2"), profile["0"].error < 1e-5
        (True, True)

    Args:
        model: an ``nn.Module``.
        x: a batch ``(N, C, *spatial)``.
        generator: as in [`lie_derivative`][equivariance.lie.lie_derivative].
        layers: names of the submodules to profile; default every leaf
            submodule that runs (the model itself where it has none).
        up_to: the name of a submodule after whose output the forward pass
            stops: the Lie derivative of that output, split over the layers
            that ran up to it, as ``up_to`` does in
            [`profile_equivariance`][equivariance.profile_equivariance].
        layouts: layouts of layers whose shapes leave them ambiguous, by name:
            ``{"blocks.0.norm": "channels_last"}``, as in
            [`profile_equivariance`][equivariance.profile_equivariance].

    Returns:
        A [`LieProfile`][equivariance.lie.LieProfile].
    """
    if _points(x, generator, None, None):
        raise InvalidArgument(
            "profile_lie_derivative splits the Lie derivative over the layers of a model on a grid, reading "
            "each layer's grid from its shapes, and cannot tell the field types of the tensors of points "
            "inside a model; measure a layer's own Lie derivative with lie_derivative_error(model, x, "
            "generator, inputs=..., outputs=..., layer=name), outputs= the field types of that layer's "
            "outputs"
        )
    module = _arguments.hooked(model, "profile_lie_derivative", "lie_derivative_error")
    tensor = _arguments.check_input(x, module)
    the_generator = as_generator(generator, tensor)
    chosen = _arguments.choose_layers(module, layers, up_to, layouts)
    forward = Forward(module, chosen.up_to)
    with Runner(module), forward_mode():
        plain = _layers_that_run(forward, tensor, chosen, the_generator)
        found = _contributions(forward, tensor, plain)
    for name, why in plain.ambiguous.items():
        warnings.warn(
            f"layer {name!r} is left out of the Lie profile (its part is in {OTHER!r}): {why}",
            EquivarianceWarning,
            stacklevel=2,
        )
    return _profile(module, the_generator, plain.invariant, plain.layers, found)


@dataclass(frozen=True)
class _Ran:
    """A profiled layer that ran: its name, module, type, output shape and the stride of its output's
    grid (None without one), and for each call the generator applied to its first tensor input and to
    its output (None where there is no such tensor)."""

    name: str
    module: nn.Module
    type: str
    output_shape: tuple[int, ...]
    stride: Stride | None
    moves: list[list[torch.Tensor | None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Pass:
    """The plain pass of a profile: the layers that ran, the generator applied to ``x`` and ``f(x)``,
    and the layers left out because their layout is ambiguous (with why and the fix)."""

    layers: list[_Ran]
    moved_input: torch.Tensor
    moved_output: torch.Tensor
    ambiguous: dict[str, str]
    invariant: bool  # the output has no spatial dims: compared unmoved


_Place = tuple[Layout, tuple[int, ...], Stride] | None  # a tensor's layout, grid, stride; None without any


class _Plain:
    """The hooks of the plain pass: each profiled layer's input and output read in the layout the
    equivariance profile infers for them (`equivariance._engine.layers.LayerInference`: channels first, a
    permuted view of it such as channels last, tokens), the generator applied on that grid.

    A tensor is known by ``id`` while a weak reference says it lives, as in the equivariance profile;
    an input no profiled layer returned (a residual sum) is read as that profile reads it.
    """

    def __init__(self, x: torch.Tensor, generator: Generator, given: dict[str, Layout]) -> None:
        self.generator, self.d = generator, x.dim() - 2
        self.follower = Follower(x, given)
        self.inference, self.seen = self.follower.inference, self.follower.seen
        self.order: dict[str, _Ran] = {}
        self.pending: dict[str, torch.Tensor | None] = {}
        self.ambiguous: dict[str, str] = {}

    def before(self, name: str, module: nn.Module, args: Any) -> None:
        h = args[0] if args and isinstance(args[0], torch.Tensor) else None
        place = None if h is None else self._input_place(name, module, h)
        self.pending[name] = None if h is None else self._move(h, place)

    def after(self, name: str, module: nn.Module, inputs: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        spec = self.follower.add(name, module, inputs, out)
        if spec.ambiguous is not None:
            self.ambiguous.setdefault(name, spec.ambiguous)
        place = None
        if spec.layout is not None and spec.spatial is not None and spec.stride is not None:
            place = (spec.layout, spec.spatial, spec.stride)
        if name not in self.order:
            stride = None if place is None else place[2]
            self.order[name] = _Ran(name, module, type(module).__name__, tuple(out.shape), stride)
        self.order[name].moves.append([self.pending.pop(name, None), self._move(out, place)])

    def _input_place(self, name: str, module: nn.Module, h: torch.Tensor) -> _Place:
        """Where a layer's input keeps its spatial dims: channels first for a module that takes them so,
        else as inferred for the tensor (a junction record where no profiled layer returned it)."""
        if isinstance(module, CHANNELS_FIRST_OPS) and h.dim() == self.d + 2:
            stride = self.follower.stride(h)
            assert stride is not None
            return ChannelsFirst(), tuple(h.shape[2:]), stride
        if not self.follower.known(h):
            shape = tuple(h.shape)
            record = Recorded(
                junction_name(name), JUNCTION, shape, id(h), None, shape, None, keeps_layout=True
            )
            spec = self.inference.add(record)
            self.seen[id(h)] = weakref.ref(h)
            if spec.ambiguous is None:
                if spec.layout is None or spec.spatial is None or spec.stride is None:
                    return None
                return spec.layout, spec.spatial, spec.stride
        elif id(h) not in self.inference.known:
            return None  # an output whose spatial dims are gone
        else:
            known = self.inference.known[id(h)]
            if known is not None:
                return known
        self.ambiguous.setdefault(
            name, "its input's layout is ambiguous; name the layout of the layer before it"
        )
        return None

    def _move(self, h: torch.Tensor, place: _Place) -> torch.Tensor | None:
        """The generator applied to ``h`` on its grid; zero without one."""
        if not h.dtype.is_floating_point:
            return None
        if place is None:
            return torch.zeros_like(h)
        layout, _, stride = place
        grid = layout.to_grid(h, self.d)
        moved = self.generator.apply(grid, stride)
        if grid is h:
            return moved
        result = torch.zeros(h.shape, dtype=h.dtype, device=h.device)  # dense: its grid view is a view
        layout.to_grid(result, self.d).copy_(moved)
        return result

    def result(self, x: torch.Tensor, base: torch.Tensor) -> _Pass:
        if not self.order:
            raise InvalidArgument(_arguments.NONE_RAN)
        layers = [ran for name, ran in self.order.items() if name not in self.ambiguous]
        moved_input = self.generator.apply(x, (1,) * (x.dim() - 2))
        stride = self.follower.stride(base)
        moved_output = _moved(self.generator, base, stride)
        return _Pass(layers, moved_input, moved_output, dict(self.ambiguous), stride is None)


def _layers_that_run(
    forward: Forward, x: torch.Tensor, chosen: _arguments.Layers, generator: Generator
) -> _Pass:
    """The profiled layers in the order they first run, from one plain pass, with the generator applied
    to what each call took and returned (as the pass computes them: a later in-place op cannot change
    them). The conjugated passes add these, scaled, instead of applying the generator again."""
    given_x = x.clone()
    plain = _Plain(given_x, generator, chosen.layouts)

    def before(name: str) -> Callable[[nn.Module, Any], None]:
        return lambda module, args: plain.before(name, module, args)

    def after(name: str) -> Callable[[nn.Module, Any, Any], None]:
        return lambda module, inputs, out: plain.after(name, module, inputs, out)

    handles = [m.register_forward_pre_hook(before(name)) for name, m in chosen.modules.items()]
    handles += [m.register_forward_hook(after(name)) for name, m in chosen.modules.items()]
    try:
        base = forward(given_x)
    finally:
        for handle in handles:
            handle.remove()
    return plain.result(x, floating(base))


def _conjugated(
    forward: Forward, x: torch.Tensor, plain: _Pass, s: torch.Tensor, watch: TangentWatch
) -> torch.Tensor:
    """The model's output with every profiled layer ``i`` conjugated by the transformation ``s[i]``, and
    the whole model by ``s[-1]``.

    To first order, which is all the derivative at ``s = 0`` sees: a layer's
    input ``h`` becomes ``h + s_i L h`` and its output ``y`` becomes
    ``y - s_i L' y``, ``L h`` and ``L' y`` taken from the plain pass (at
    ``s = 0`` the pass is the plain one). The values are exactly the model's own.
    The model's own output must carry the derivative (``watch``) before the
    whole model's conjugation is undone on it.
    """

    def conjugate(h: torch.Tensor, t: torch.Tensor, move: torch.Tensor | None) -> torch.Tensor:
        return h if move is None or move.shape != h.shape else h + t * move

    calls = [0] * len(plain.layers)
    handles = []
    for i, layer in enumerate(plain.layers):

        def before(_m: nn.Module, args: Any, i: int = i, layer: _Ran = layer) -> Any:
            if calls[i] >= len(layer.moves) or not args or not isinstance(args[0], torch.Tensor):
                return None
            return (conjugate(args[0], s[i], layer.moves[calls[i]][0]), *args[1:])

        def after(_m: nn.Module, _args: Any, out: Any, i: int = i, layer: _Ran = layer) -> Any:
            calls[i] += 1
            if calls[i] > len(layer.moves) or not isinstance(out, torch.Tensor):
                return None
            move = layer.moves[calls[i] - 1][1]
            return conjugate(out, -s[i], move)

        handles.append(layer.module.register_forward_pre_hook(before))
        handles.append(layer.module.register_forward_hook(after))
    try:
        out = floating(forward(conjugate(x, s[-1], plain.moved_input)))
        watch.check(out, flows=True)
        return conjugate(out, -s[-1], plain.moved_output)
    finally:
        for handle in handles:
            handle.remove()


def _contributions(
    forward: Forward, x: torch.Tensor, plain: _Pass
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(x)``, the layers' contributions ``(layers, *f(x).shape)`` and ``L f(x)``: one jvp vmapped
    over the layers and the whole model."""
    count = len(plain.layers) + 1
    s = torch.zeros(count, dtype=x.dtype, device=x.device)
    basis = torch.eye(count, dtype=x.dtype, device=x.device)

    watch = TangentWatch(forward.model, normalizations=False)  # under vmap: no branching on values

    def along(wrap: Wrap) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        def jvp(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            result: tuple[torch.Tensor, torch.Tensor] = torch.func.jvp(  # type: ignore[assignment]
                wrap(lambda t: _conjugated(forward, x.clone(), plain, t, watch)), (s,), (direction,)
            )
            return result

        return jvp

    try:
        with watch:
            bases, parts = DistanceRules().run(lambda wrap: torch.func.vmap(along(wrap))(basis))
    except InvalidArgument as exc:
        raise not_implemented(exc) from exc.__cause__
    except Exception as exc:
        raise InvalidArgument(
            f"the per-layer Lie derivative runs the model under torch.func.vmap and jvp, and it raised "
            f"{type(exc).__name__}: {exc}; use lie_derivative_error for the model's total instead"
        ) from exc
    check_derivative(bases[0], parts[-1])
    if not all_finite(parts):
        raise InvalidArgument(
            "a layer's contribution to the Lie derivative is not finite (nan or inf) although the total "
            "is: the layers' parts overflow; profile fewer layers with layers="
        )
    return bases[0].detach(), parts[:-1].detach(), parts[-1].detach()


def _profile(
    model: nn.Module, generator: Generator, invariant: bool, ran: list[_Ran],
    found: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> LieProfile:  # fmt: skip
    base, parts, total = found
    rest = total - parts.sum(0)
    shares = _shares(torch.cat([parts, rest.unsqueeze(0)]), total)
    rows = []
    for layer, part, share in zip([*ran, None], [*parts, rest], shares):
        error = float(sizes(part, base).mean())
        if layer is None:
            rows.append(LayerContribution(OTHER, "", (), None, error, share))
        else:
            rows.append(
                LayerContribution(layer.name, layer.type, layer.output_shape, layer.stride, error, share)
            )
    overall = float(sizes(total, base).mean())
    return LieProfile(type(model).__name__, generator, invariant, overall, tuple(rows))


def _shares(parts: torch.Tensor, total: torch.Tensor) -> list[float]:
    """``<part, total> / ||total||^2`` for each part (NaN where the total is zero), in float64 scaled by
    one power of two so that no product overflows or underflows at any finite scale."""
    work = torch.cat([parts.flatten(1), total.reshape(1, -1)]).double()
    peak = float(work.abs().max())
    if peak == 0:
        return [float("nan")] * len(parts)
    _, exponent = math.frexp(peak)
    work = work * math.ldexp(1.0, -max(exponent, -1022))
    energy = float(work[-1].square().sum())
    return (work[:-1] @ work[-1] / energy).tolist() if energy > 0 else [float("nan")] * len(parts)
