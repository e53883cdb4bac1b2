"""The arguments of every measurement, checked once, before any forward pass.

The checks, ``equivariance_error``, the invariance metrics and the audit (``validate``, a ``Request``),
the profiles (``validate_layers`` and ``choose_layers``, one rule for the layers measured), the Lie
derivative and the penalty each validate here, with the same rules and the same messages: what was
expected, what was found and how to fix it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from equivariance._engine.copies import Copies
from equivariance._engine.forward import Forward, find_layer
from equivariance._engine.isolation import submodules
from equivariance._engine.parts import (
    Arguments,
    Call,
    Graphs,
    OutputParts,
    Part,
    as_arguments,
    as_field,
    is_graph,
)
from equivariance._engine.sinks import OutputAction, all_finite
from equivariance._engine.validation import as_int, describe, per_dim, shown_per_dim
from equivariance.actions import Action, Boundary, Grid, check_boundary
from equivariance.crops import Crop, CropOf, as_boundary
from equivariance.errors import InvalidArgument
from equivariance.fields import Adjacency, EdgeIndex, Field
from equivariance.generators import Generator, PointGenerator
from equivariance.layouts import Layout, as_layout
from equivariance.permutations import Permutation
from equivariance.regular import Regular
from equivariance.shifts import Shift, as_shift

Mode = Literal["equivariance", "invariance"]
Auto = Literal["auto"]
BatchSize = int | Literal["auto"] | None
LayerFields = Field | tuple[Field | None, ...]
"""What ``fields=`` names for one layer: the field type of its output, or one for each item of a tuple
it returns (None: as if not named)."""
AUTO: Auto = "auto"

DEFAULT_MAX_SHIFT = 2
"""Default box of shifts, in units of the stride: every multiple of the stride in [-2s, 2s]^d."""
IDENTITY_BOX = " (with stride=k, max_shift must be at least k)"


@dataclass(frozen=True)
class Request:
    """What the caller asked for, validated, before any forward pass: ``elements`` None is the default box
    of shifts; ``arguments`` the model's several inputs with their field types (``x`` then their first
    floating-point tensor, standing for the call's dtype and device), None for one tensor on a grid."""

    forward: Forward
    x: torch.Tensor
    mode: Mode
    elements: tuple[Action, ...] | None
    max_shift: tuple[int, ...] | None
    stride: tuple[int, ...] | Auto
    margin: tuple[int, ...] | Auto
    boundary: Boundary
    layout: Layout | None
    output_action: OutputAction | None
    batch_size: BatchSize
    noise_floor: bool
    crop: CropOf | None = None
    fields: Regular | None = None
    arguments: Call | None = None

    @property
    def spatial_dims(self) -> int:
        return self.x.dim() - 2

    @property
    def inputs(self) -> torch.Tensor | Call:
        """What the model is called with: the one tensor, or the several arguments."""
        return self.x if self.arguments is None else self.arguments


def validate(
    model: Callable[..., Any],
    x: object,
    mode: Mode,
    elements: Sequence[Action] | None,
    *,
    max_shift: object = None,
    stride: object = 1,
    margin: object = 0,
    boundary: object = "zeros",
    layout: object = None,
    output_action: object = None,
    batch_size: object = None,
    layer: str | None = None,
    output: Any = None,
    noise_floor: bool = True,
) -> Request:
    """Every argument checked, with a message that says how to fix it, before the model runs."""
    forward = Forward(model, layer, output)
    tensor = check_input(x, model)
    d = tensor.dim() - 2
    the_boundary = as_boundary(boundary)
    strides = _auto_or_per_dim(stride, d, "stride", minimum=1)
    margins = _auto_or_per_dim(margin, d, "margin", minimum=0)
    fields = output_action if isinstance(output_action, Regular) else None
    if fields is not None:
        output_action = None  # not a callable replacing the stride: the rows' elements on regular fields
    elif output_action is not None:
        _check_output_action(output_action, strides, elements)
    crop = None
    if isinstance(the_boundary, Crop):
        crop = the_boundary.of(tensor)
        max_shift = _crop_shifts(crop, elements, max_shift, strides)
        tensor, the_boundary = crop.reference(), "zeros"  # the model sees crops; overlaps compare as zeros
    if elements is not None:
        if not elements:
            raise InvalidArgument("no shifts to check; pass at least one shift")
        for element in elements:
            if crop is None or not isinstance(element, Shift):
                check_fits(element, tensor)
        if strides == AUTO and not all(isinstance(e, Shift) for e in elements):
            raise InvalidArgument(
                f"stride='auto' infers how shifts move the output, but {elements[0]} is a "
                f"{elements[0].noun}, which acts alike on the input and the output; drop stride="
            )
    bound = None if max_shift is None else as_max_shift(max_shift, tensor)
    return Request(
        forward, tensor, mode, None if elements is None else tuple(elements), bound, strides, margins,
        the_boundary, None if layout is None else as_layout(layout),
        output_action,  # type: ignore[arg-type]
        check_batch_size(batch_size), noise_floor, crop, fields,
    )  # fmt: skip


def validate_parts(
    model: Callable[..., Any],
    x: object,
    mode: Mode,
    elements: Sequence[Action] | None,
    *,
    inputs: object,
    outputs: object,
    batch_size: object = None,
    layer: str | None = None,
    output: Any = None,
    noise_floor: bool = True,
) -> Request:
    """The arguments of a measurement of several inputs and outputs, each with its field type
    (``inputs=``, ``outputs=``): checked, and every element tried on every input, before the model runs."""
    if mode == "equivariance" and outputs is None:
        raise InvalidArgument(
            "inputs= says how the elements move the model's arguments; pass outputs= too, the field type "
            "of each output (e.g. outputs=(Scalars(nodes=None), Vectors())), or use check_invariance for "
            "outputs that must not change"
        )
    if elements is None:
        raise InvalidArgument(
            "inputs= needs the elements to check: pass transforms=, e.g. transforms=SO3(64, seed=0) or "
            "transforms=Permutations(16, n=points)"
        )
    if not elements:
        raise InvalidArgument("no elements to check; pass at least one in transforms=")
    forward = Forward(model, layer, output, OutputParts(outputs if mode == "equivariance" else None))
    arguments = checked_call(model, x, inputs, elements, "check", "a check that cannot fail")
    first = arguments.first
    return Request(
        forward, first, mode, tuple(elements), None, (), (), "zeros", None, None,
        check_batch_size(batch_size), noise_floor, arguments=arguments,
    )  # fmt: skip


def checked_call(
    model: object, x: object, inputs: object, elements: Sequence[Action], verb: str, purpose: str
) -> Call:
    """The call ``x`` with its field types ``inputs``, checked (``_call``), every element acting on every
    input it moves, not all the identity (``verb``, ``purpose``: as in ``check_not_identity``)."""
    arguments = _call(model, x, inputs)
    if isinstance(arguments, Graphs):
        for element in elements:
            _check_acts_on_graphs(element, arguments)
    elif not _all_act(elements, arguments):
        for element in elements:
            _check_acts(element, arguments)  # one at a time: the one that fails is named
    check_not_identity(elements, verb, purpose)
    return arguments


def validate_call(
    model: Callable[..., Any], x: object, mode: Mode, *, inputs: object, outputs: object,
    layer: str | None = None, output: Any = None,
) -> tuple[Forward, Call]:  # fmt: skip
    """The model's call and its outputs' field types (``outputs`` unused for invariance), checked: the
    part of ``validate_parts`` that does not depend on the elements (the Lie derivative shares it)."""
    forward = Forward(model, layer, output, OutputParts(outputs if mode == "equivariance" else None))
    return forward, _call(model, x, inputs)


def _call(model: object, x: object, inputs: object) -> Call:
    """The call ``x`` with its field types ``inputs``: finite floating tensors, on the model's device."""
    arguments = as_arguments(x, inputs, model)
    for part, tensor in zip(arguments.parts, arguments.tensors):
        if tensor.is_floating_point():
            _check_values(tensor, f"input {part.name}")
    if isinstance(model, nn.Module):
        _check_model_matches(model, arguments.first)
    return arguments


def several_inputs(x: object, inputs: object, outputs: object) -> bool:
    """Whether a measurement takes the model's several inputs (``validate_parts``) rather than one tensor on
    a grid: field types given, or ``x`` a tuple, list or dict holding a tensor, or a torch_geometric
    graph. Anything else goes the way of a grid, whose validation refuses what is not a tensor."""
    if inputs is not None or outputs is not None or is_graph(x):
        return True
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    return any(isinstance(v, torch.Tensor) or is_graph(v) for v in values)


def no_grid_options(**given: bool) -> None:
    """inputs= measures tensors of points: the options of a grid (those ``given`` True) are refused."""
    clash = [name for name, present in given.items() if present]
    if clash:
        one = len(clash) == 1
        raise InvalidArgument(
            f"{', '.join(clash)} {'is an option' if one else 'are options'} of tensors on a grid, which a "
            "measurement of several inputs and outputs (inputs=, outputs=) does not take; drop "
            f"{'it' if one else 'them'}, and pass the elements as transforms="
        )


def _check_values(tensor: torch.Tensor, name: str) -> None:
    """An input (``name``: how messages call it) must hold finite values, not only a shape."""
    if tensor.device.type == "meta":
        raise InvalidArgument(f"{name} is on the meta device, which holds shapes but no values; pass data")
    if not all_finite(tensor):
        raise InvalidArgument(
            f"{name} contains {int((~torch.isfinite(tensor)).sum())} non-finite values (nan or inf); "
            "equivariance is only measurable on finite inputs: replace them, e.g. torch.nan_to_num(x)"
        )


def _check_acts_on_graphs(element: Action, graphs: Graphs) -> None:
    """``element`` must move a graph of each size, every attribute by its field type (with the fields'
    messages); a permutation of a fixed number of nodes meeting graphs of several sizes is told the fix."""
    sizes = sorted(set(graphs.nodes()))
    for index in graphs.of_each_size():
        try:
            graphs.moved(element, index)
        except InvalidArgument as exc:
            if len(sizes) == 1 or not _has_fixed_size(element):
                raise
            shown = ", ".join(map(str, sizes[:-1])) + f" and {sizes[-1]}"
            n = graphs.nodes()[index]
            raise InvalidArgument(
                f"{exc} (graph {index} of x has {n} nodes; the graphs of x have {shown}): "
                "to permute the nodes of graphs of different sizes, pass NodePermutations(16, seed=0) "
                "(equivariance.permutations), which permutes each graph's own nodes"
            ) from None


def _has_fixed_size(element: Action) -> bool:
    """Whether ``element`` is, or has a factor that is, a permutation of a fixed number of points."""
    factors = getattr(element, "factors", (element,))
    return any(isinstance(f, Permutation) for f in factors)


def _all_act(elements: Sequence[Action], arguments: Arguments) -> bool:
    """Whether every element moves one sample of every input with a field type, keeping its shape, tried
    the way the copies move them (each class's batched path at once: one einsum for 64 rotations); False
    where anything fails, for ``_check_acts`` to name it."""
    count = len(elements)
    for part, tensor in zip(arguments.parts, arguments.tensors):
        if part.field is None:
            continue
        try:
            moved = Copies(tensor[:1], elements, part.field).take(
                torch.zeros(count, dtype=torch.long), torch.arange(count)
            )
        except Exception:
            return False
        if tuple(moved.shape) != (count, *tensor.shape[1:]):
            return False
    return True


def _check_acts(element: Action, arguments: Arguments) -> None:
    """``element`` must act on every input with a field type, keeping its shape (tried on one sample)."""
    for part, tensor in zip(arguments.parts, arguments.tensors):
        if part.field is not None:

            def act(one: torch.Tensor, field: Field = part.field, whole: torch.Tensor = tensor) -> object:
                try:
                    return element.act(one, field)
                except InvalidArgument:
                    element.act(
                        whole, field
                    )  # again on the whole tensor, so that the message shows its shape
                    raise

            fix = (
                "check points with the elements of equivariance.euclidean and equivariance.permutations, "
                "or define act for field types in your own Action"
            )
            _acting_on(element, part, tensor[:1], act, fix)


def _acting_on(
    what: object, part: Part, one: torch.Tensor, act: Callable[[torch.Tensor], object], fix: str
) -> None:
    """``act`` (of ``what``, an element or a generator) on one sample of input ``part``: it must keep
    the shape; its refusals are prefixed with the input's name, anything else it raises is told ``fix``."""
    try:
        moved = act(one)
    except InvalidArgument as exc:
        raise InvalidArgument(f"input {part.name}: {exc}") from None
    except Exception as exc:
        raise InvalidArgument(
            f"{what!r} cannot act on input {part.name} of field type {part.field!r} "
            f"({type(exc).__name__}: {exc}); {fix}"
        ) from None
    if not isinstance(moved, torch.Tensor) or moved.shape != one.shape:
        raise InvalidArgument(
            f"{what!r} must keep the shape of input {part.name}, {tuple(one.shape)} for one sample, "
            f"found {describe(moved)}"
        )


def point_generator(generator: object, arguments: Call) -> tuple[PointGenerator, tuple[bool, ...]]:
    """``generator``, if it is a generator of motions of space that acts on every input with a field type
    (tried on one sample), and which inputs it moves; InvalidArgument naming the input and the fix."""
    if isinstance(generator, Generator) or generator in ("translation", "rotation"):
        raise InvalidArgument(
            f"generator {generator!r} moves the samples of a grid, but x holds tensors of points with field "
            "types (inputs=); pass a generator of motions of space from equivariance.generators: "
            "Rotation3D('z'), Rotation2D(), Translation3D('x') or Translation2D('x')"
        )
    if not isinstance(generator, PointGenerator):
        raise InvalidArgument(
            f"generator must be an equivariance.generators.PointGenerator for tensors of points, found "
            f"{describe(generator)}; pass e.g. Rotation3D('z')"
        )
    if isinstance(arguments, Graphs):  # the first graph's tensors
        ones = [getattr(arguments.graphs[0], str(part.path[1])) for part in arguments.parts]
    else:
        ones = [tensor[:1] for tensor in arguments.tensors]
    moving: list[bool] = []  # whether the generator moves each input, as it is tried on it

    def apply(t: torch.Tensor, field: Field | None) -> torch.Tensor:
        moving.append(field is not None and generator.moves(field))
        return generator.apply(t, field) if field is not None and moving[-1] else t

    fix = "define apply for that field type in your PointGenerator"
    for part, one in zip(arguments.parts, ones):
        _acting_on(generator, part, one, functools.partial(apply, field=part.field), fix)
    if not any(moving):
        raise InvalidArgument(
            f"{generator!r} moves none of the inputs ({arguments.shapes()}), so their derivative is zero and "
            "the Lie derivative would measure nothing of the model; give the coordinates the field type "
            "Positions() (a translation moves positions only), vectors Vectors(), or pass a generator "
            "that acts on them"
        )
    return generator, tuple(moving)


def _crop_shifts(
    crop: CropOf, elements: Sequence[Action] | None, max_shift: object, strides: tuple[int, ...] | Auto
) -> object:
    """Shifts that move the crop window inside the image; the default box (``max_shift`` None and no
    elements) cut to the room the image leaves, returned as the ``max_shift`` to use."""
    if isinstance(strides, str):
        raise InvalidArgument(
            "stride='auto' is not available with boundary=Crop(...); pass the output's stride, e.g. stride=2"
        )
    if elements is not None:
        for element in elements:
            if not isinstance(element, Shift):
                raise InvalidArgument(
                    f"boundary=Crop(...) moves the crop window, which only shifts do, but {element} is a "
                    f"{element.noun} that maps the grid onto itself; check it on the crop itself "
                    "(x[..., i:i+h, j:j+w]) without boundary="
                )
            crop.check_shift(element)
        return max_shift
    if max_shift is not None:
        bound = per_dim(max_shift, len(crop.size), "max_shift", minimum=0)
        crop.check_shift(Shift(bound))
        crop.check_shift(Shift(tuple(-b for b in bound)))
        return bound
    wanted = tuple(min(DEFAULT_MAX_SHIFT * s, (n - 1) // s * s) for s, n in zip(strides, crop.size))
    bound = tuple(b // s * s for b, s in zip(crop.fitting_bound(wanted), strides))
    if not any(bound):
        raise InvalidArgument(
            f"the image {tuple(crop.x.shape[2:])} leaves no room to move a crop of {crop.size} at "
            f"{crop.at} by a multiple of the stride {strides}: pass a larger x, a smaller crop or shifts="
        )
    return bound


def _auto_or_per_dim(value: object, d: int, name: str, *, minimum: int) -> tuple[int, ...] | Auto:
    if isinstance(value, str):
        if value == AUTO:
            return "auto"
        raise InvalidArgument(
            f"{name} must be an int, one int per spatial dim or 'auto', found {value!r}; "
            f"pass e.g. {name}=2 or {name}='auto'"
        )
    return per_dim(value, d, name, minimum=minimum)


def _check_output_action(
    output_action: object, strides: tuple[int, ...] | Auto, elements: Sequence[Action] | None
) -> None:
    if not callable(output_action):
        raise InvalidArgument(
            f"output_action must be a callable (f(x), shift) -> tensor, found {describe(output_action)}; "
            "pass a function, or subclass equivariance.actions.Action for an element of your own"
        )
    if strides == AUTO:
        raise InvalidArgument(
            "pass either stride='auto' or output_action=, not both; an output action replaces the stride"
        )
    if any(s != 1 for s in strides):
        raise InvalidArgument(
            "pass either stride= or output_action=, not both; fold the stride into the output action"
        )
    if elements is not None and not all(isinstance(e, Shift) for e in elements):
        raise InvalidArgument(
            f"output_action= says how shifts move the output, but {elements[0]} is a transform, which "
            "acts alike on the input and the output; pass neither with transforms"
        )


def check_batch_size(batch_size: object, *, auto: bool = True) -> BatchSize:
    """``None``, ``"auto"`` (where ``auto``) or a positive int, else InvalidArgument."""
    if batch_size is None:
        return None
    if batch_size == "auto" and auto:
        return "auto"
    size = as_int(batch_size, "batch_size")
    if size < 1:
        also = ", or 'auto'" if auto else ""
        raise InvalidArgument(f"batch_size must be positive, found {size}; pass e.g. batch_size=8{also}")
    return size


def check_input(x: object, model: object) -> torch.Tensor:
    """``x`` if it is a usable batch for ``model``, else InvalidArgument saying why."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(
            f"x must be a torch.Tensor, found {describe(x)}; convert it, e.g. torch.as_tensor(x)"
        )
    shape = tuple(x.shape)
    if not 3 <= x.dim() <= 5:
        fix = (
            "add the missing batch and channel dims, e.g. x[None, None]"
            if x.dim() <= 2
            else "fold the extra dims into the batch or channel dim"
        )
        raise InvalidArgument(
            f"x must be a batch (N, C, L), (N, C, H, W) or (N, C, D, H, W), found a tensor of "
            f"shape {shape} ({x.dim()} dims); {fix}"
        )
    if not x.dtype.is_floating_point:
        raise InvalidArgument(
            f"x must have a floating-point dtype, found {x.dtype}; convert it, e.g. x.float()"
        )
    if x.shape[0] == 0:
        raise InvalidArgument(f"x is an empty batch (shape {shape}); pass at least one sample")
    if x.numel() == 0:
        raise InvalidArgument(
            f"x of shape {shape} has no elements; every dim must be nonzero: pass a batch with data"
        )
    _check_values(x, "x")
    if isinstance(model, nn.Module):
        _check_model_matches(model, x)
    return x


def _check_model_matches(model: nn.Module, x: torch.Tensor) -> None:
    tensors = [
        t
        for module in submodules(model)
        for t in (*module._parameters.values(), *module._buffers.values())
        if t is not None
    ]
    devices = {t.device for t in tensors}
    if len(devices) == 1 and next(iter(devices)) != x.device:
        (device,) = devices
        raise InvalidArgument(
            f"the model is on {device} but x is on {x.device}; move x with x.to({str(device)!r}) "
            f"or the model with model.to({str(x.device)!r})"
        )
    dtypes = {t.dtype for t in tensors if t.dtype.is_floating_point}
    if len(dtypes) == 1 and next(iter(dtypes)) != x.dtype:
        (dtype,) = dtypes
        raise InvalidArgument(
            f"the model's parameters are {dtype} but x is {x.dtype}; convert one to the "
            f"other, e.g. x.to({dtype}) or model.to({x.dtype})"
        )


def check_fits(element: Action, x: torch.Tensor, grid: Grid | None = None, subject: str = "x") -> None:
    """An element must act on ``x`` (on ``grid``; by default an input's) and map its grid onto itself."""
    if isinstance(element, Shift) and grid is None:
        check_shift_fits(element, x)
        return
    grid = grid or Grid.of_input(x.dim() - 2)
    ndim = getattr(element, "ndim", None)
    if isinstance(ndim, int) and ndim != grid.spatial_dims:
        raise InvalidArgument(
            f"{element!r} has {ndim} dims but {subject} of shape {tuple(x.shape)} has {grid.spatial_dims} "
            f"spatial dims; pass one offset per spatial dim"
        )
    try:
        moved: object = element.act(x[:1].clone(), grid)
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument(f"{element!r}.act raised {type(exc).__name__} on {subject}: {exc}") from exc
    if not isinstance(moved, torch.Tensor) or moved.shape != x[:1].shape:
        raise InvalidArgument(
            f"{element!r} must map the grid of {subject} onto itself, returning a tensor of shape "
            f"{tuple(x[:1].shape)} for one sample, found {describe(moved)}; a transform may only move "
            "the samples of the spatial dims"
        )


def check_shift_fits(shift: Shift, x: torch.Tensor) -> None:
    """A shift must have one offset per spatial dim and be smaller than the signal."""
    spatial = tuple(x.shape[2:])
    if shift.ndim != len(spatial):
        raise InvalidArgument(
            f"shift {shift} has {shift.ndim} dims but x of shape {tuple(x.shape)} has "
            f"{len(spatial)} spatial dims; pass a shift of length {len(spatial)}"
        )
    for offset, size in zip(shift, spatial):
        if abs(offset) >= size:
            raise InvalidArgument(
                f"shift {shift} is as large as the signal or larger (spatial size "
                f"{spatial}); a shift must be smaller than the size in every dim, so pass "
                f"offsets in ({-size}, {size})"
            )


def as_element(value: object) -> Action:
    """An element from an Action (a Shift, Rot90, Flip, ...) or an int / tuple of ints (a Shift)."""
    if isinstance(value, Action):
        return value
    return as_shift(value)


def as_elements(values: Sequence[object], x: torch.Tensor, verb: str, purpose: str) -> tuple[Action, ...]:
    """Elements from Actions or tuples of ints, each acting on ``x``, not all the identity
    (``verb``, ``purpose``: as in ``check_not_identity``)."""
    elements = tuple(as_element(value) for value in values)
    for element in elements:
        check_fits(element, x)
    check_not_identity(elements, verb, purpose)
    return elements


def check_not_identity(elements: Sequence[Action], verb: str, purpose: str, fix: str = "") -> None:
    """Elements that are all the identity measure nothing: refused. ``verb``: what is done with them
    (``"check"``); ``purpose``: what would result (``"a check that cannot fail"``); ``fix``: more to say."""
    if not elements or not all(e.is_identity for e in elements):
        return
    first, noun = elements[0], elements[0].noun
    if len(elements) == 1 and not fix:
        found = f"{noun} {first} is the identity"
    else:
        found = f"the {noun}s to {verb} are only the identity {first}"
    raise InvalidArgument(f"{found}, {purpose}; pass at least one nonzero {noun}{fix}")


def as_max_shift(max_shift: object, x: torch.Tensor) -> tuple[int, ...]:
    """A box of shifts, one bound per spatial dim, smaller than the signal."""
    spatial = tuple(x.shape[2:])
    bound = per_dim(max_shift, len(spatial), "max_shift", minimum=0)
    if any(b >= n for b, n in zip(bound, spatial)):
        raise InvalidArgument(
            f"max_shift {shown_per_dim(bound)} is as large as the signal or larger (spatial size "
            f"{spatial}); pass max_shift below {min(spatial)}"
        )
    return bound


def as_stride(stride: object, d: int) -> tuple[int, ...] | Auto:
    """``"auto"``, or one positive int per spatial dim."""
    return _auto_or_per_dim(stride, d, "stride", minimum=1)


# -- the layers a per-layer measurement taps: one rule for the profile and the Lie profile -----------

OUTPUT = "(output)"
"""The name of the model's own output where no profiled layer returns it."""
NONE_RAN = (
    "no profiled layer returned a tensor with the input's batch dim during the forward pass; pass layers= "
    "naming submodules that the forward pass calls"
)


@dataclass(frozen=True)
class Layers:
    """The layers a per-layer measurement taps, chosen once: those ``layers=`` named (``named``), else every
    leaf (which also get rows for the tensors computed in ``forward`` between them); the ``up_to`` layer
    after whose output the pass stops (``stop``), and the ``layouts=`` named by layer."""

    modules: dict[str, nn.Module]
    named: bool
    stop: nn.Module | None
    up_to: str | None
    layouts: dict[str, Layout]


def hooked(model: object, caller: str, instead: str) -> nn.Module:
    """``model``, if it is an ``nn.Module`` whose layers can be hooked; ``instead`` names the function
    for a plain callable."""
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"{caller} needs an nn.Module to hook its layers, found {describe(model)}; use {instead} for "
            "a plain callable"
        )
    return model


def choose_layers(model: nn.Module, layers: object, up_to: object, layouts: object) -> Layers:
    """The layers measured: ``layers`` by name, else every leaf submodule; the pass stopped after
    ``up_to``; ``layouts`` by layer name. Every name is looked up before the model runs."""
    stop = None if up_to is None else find_layer(model, up_to, "up_to")  # type: ignore[arg-type]
    examples = _by_layer(model, layouts, "layouts", "{'blocks.0.norm': 'channels_last'}").items()
    given = {name: as_layout(layout) for name, layout in examples}
    if layers is None:
        leaves = {name: m for name, m in model.named_modules() if name and not any(m.children())}
        return Layers(leaves or {OUTPUT: model}, False, stop, up_to, given)  # type: ignore[arg-type]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        example = repr([layers]) if isinstance(layers, str) else "['conv1']"
        raise InvalidArgument(
            f"layers must be a non-empty list of layer names, found {describe(layers)}; pass e.g. {example}"
        )
    chosen = {name: find_layer(model, name, "layers") for name in layers}
    return Layers(chosen, True, stop, up_to, given)  # type: ignore[arg-type]


def _by_layer(model: nn.Module, given: object, argument: str, example: str) -> Mapping[str, object]:
    """``layouts=`` or ``fields=``: a dict by layer name, each name looked up (refused with close ones)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidArgument(
            f"{argument} must be a dict from layer names to {argument.replace('fields', 'field types')}, "
            f"found {describe(given)}; pass e.g. {argument}={example}"
        )
    for name in given:
        find_layer(model, name, argument)
    return given


@dataclass(frozen=True)
class LayerRequest:
    """What a per-layer profile was asked for, validated, before any forward pass. For several inputs:
    the call (``arguments``, as in ``Request``), the field types named for layers (``fields``) and for
    the model's outputs, and the number of ``points`` the inputs show (None for none, or several)."""

    model: nn.Module
    x: torch.Tensor
    element: Action
    boundary: Boundary
    layers: Layers
    arguments: Call | None = None
    fields: Mapping[str, LayerFields] = dataclasses.field(default_factory=dict)
    outputs: Any = None
    points: int | None = None

    @property
    def inputs(self) -> torch.Tensor | Call:
        """What the model is called with: the one tensor, or the several arguments."""
        return self.x if self.arguments is None else self.arguments


def validate_layers(
    model: object, x: object, shift: object, *, layers: object, up_to: object, boundary: object,
    layouts: object,
) -> LayerRequest:  # fmt: skip
    """The arguments of ``profile_equivariance``, checked before the model runs."""
    module = hooked(model, "profile_equivariance", "check_equivariance")
    tensor = check_input(x, module)
    (element,) = as_elements([shift], tensor, "profile", "a profile that cannot fail")
    # a rotation or flip maps the grid onto itself: nothing is filled in
    checked = check_boundary(boundary)
    the_boundary = checked if type(element).uses_boundary else "circular"
    return LayerRequest(module, tensor, element, the_boundary, choose_layers(module, layers, up_to, layouts))


def validate_layer_parts(
    model: object, x: object, element: object, *, inputs: object, outputs: object, layers: object,
    up_to: object, fields: object,
) -> LayerRequest:  # fmt: skip
    """The arguments of ``profile_equivariance`` for several inputs (``inputs=``, ``outputs=``,
    ``fields=``), checked as a check's are (``validate_parts``) before the model runs."""
    module = hooked(model, "profile_equivariance", "check_equivariance")
    if inputs is None:
        raise InvalidArgument(
            "a profile of several inputs needs inputs=, the field type of each of the model's arguments, "
            "e.g. profile_equivariance(model, (pos, h), Permutation.cycle(5), "
            "inputs=(Positions(), Scalars()))"
        )
    if not isinstance(element, Action):
        several = isinstance(element, Sequence) and all(isinstance(e, Action) for e in element)
        fix = (
            "one of them, e.g. SO3(1, seed=0)[0], or the worst element of a failed check "
            "(report.worst_element)"
            if several
            else "an element of equivariance.permutations or equivariance.euclidean"
        )
        raise InvalidArgument(
            f"a profile follows one group element through the layers, found {describe(element)}; pass {fix}"
        )
    if up_to is not None and outputs is not None:
        raise InvalidArgument(
            f"outputs= gives the field types of the model's outputs, but up_to={up_to!r} stops the pass "
            "before them; name the field type of that layer's output in fields= instead"
        )
    chosen = choose_layers(module, layers, up_to, None)
    example = "{'encoder.2': Vectors(), 'head': Scalars(nodes=None)}"
    by_layer = _by_layer(module, fields, "fields", example).items()
    given = {name: _layer_fields(name, field) for name, field in by_layer}
    arguments = checked_call(module, x, inputs, [element], "profile", "a profile that cannot fail")
    return LayerRequest(
        module, arguments.first, element, "zeros", chosen, arguments, given, outputs, _points(arguments)
    )


def _layer_fields(name: str, field: object) -> LayerFields:
    """What ``fields=`` gives one layer: a field type, or a tuple of them (None: that item not named)."""
    if isinstance(field, (tuple, list)):  # one per item the layer returns
        return tuple(
            None if f is None else as_field(f, "fields", f"{name!r}[{i}]") for i, f in enumerate(field)
        )
    return as_field(field, "fields", repr(name), none=False)


def _points(arguments: Call) -> int | None:
    """The number of points on the axes of points of the inputs, where they show one number."""
    if isinstance(arguments, Graphs):
        sizes = set(arguments.nodes())
    else:
        sizes = set()
        for part, tensor in zip(arguments.parts, arguments.tensors):
            if isinstance(part.field, Adjacency):
                sizes.update(tensor.shape[a] for a in part.field.node_axes(tensor))
            elif part.field is not None and not isinstance(part.field, EdgeIndex):
                axis = part.field.node_axis(tensor)
                if axis is not None:
                    sizes.add(tensor.shape[axis])
    return next(iter(sizes)) if len(sizes) == 1 else None
