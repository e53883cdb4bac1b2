"""A differentiable equivariance penalty, to train a model towards the symmetry the checks measure.

[`equivariance_loss`][equivariance.loss.equivariance_loss] is the mean, over the batch and a few group
elements ``g``, of the *squared* relative error of the library's metric,
$||f(g.x) - g'.f(x)||^2 / ||g'.f(x)||^2$ (the mean square where $g'.f(x)$ is all zero), with
autograd on. Unlike the checks it runs inside a training step: in the model's own mode, nothing
restored but the input. The documentation's "Training with an equivariance penalty" page explains the
chunks, the reference and the random shifts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance._engine import arguments as _arguments
from equivariance._engine.arguments import DEFAULT_MAX_SHIFT
from equivariance._engine.copies import ArgumentCopies, Copies, GraphCopies
from equivariance._engine.forward import Forward, OutputSelector
from equivariance._engine.isolation import owning_module
from equivariance._engine.judge import squared_errors
from equivariance._engine.part_sums import GraphReferences
from equivariance._engine.parts import Arguments, Call, Graphs, OutputParts
from equivariance._engine.validation import as_int, describe, per_dim
from equivariance.actions import Action, Boundary, Grid, Identity, check_boundary, guarded_act
from equivariance.errors import InvalidArgument
from equivariance.fields import FieldSpec, ModelInput
from equivariance.sampling import GroupSample
from equivariance.shifts import Shift, ShiftLike, multiples_of
from equivariance.transforms import as_transform_list

__all__ = ["equivariance_loss"]


def equivariance_loss(
    model: Callable[..., Any],
    x: torch.Tensor | ModelInput,
    shifts: Sequence[ShiftLike | Action] | None = None,
    *,
    samples: int | None = None,
    max_shift: int | Sequence[int] | None = None,
    boundary: Boundary = "circular",
    stride: int | Sequence[int] = 1,
    layer: str | None = None,
    output: OutputSelector = None,
    batch_size: int | None = None,
    rng: torch.Generator | None = None,
    reference: torch.Tensor | None = None,
    transforms: Sequence[Action] | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> torch.Tensor:
    """The mean squared relative equivariance error over a few elements: a penalty to train with.

    An output ``(N, C, *spatial)`` with the input's number of spatial dims
    is compared with the reference moved by ``g'`` (the shift divided by
    ``stride``; a transform acts alike), over the region where both sides
    are defined; any other output (logits) with the reference unmoved. For
    a model in eval mode its value is the mean of
    ``equivariance_error(model, x, g, reduction="none") ** 2`` over the
    elements. It runs in the model's own mode, inside a training step (the
    documentation's penalty page says how). A model of several inputs and
    outputs (``inputs=``, ``outputs=``: point clouds, molecules, graphs) is
    penalized the same way, every output part compared with ``f(x)``'s moved
    by its field type, and its value in eval mode is the mean of
    ``equivariance_error(model, x, g, inputs=..., outputs=..., reduction="none") ** 2``.

    Both equalities assume that a sample's output does not depend on where
    it sits in the batch. ``equivariance_error`` runs ``x`` and each
    element's copies in passes laid out as ``x``; the loss runs ``x`` and
    all ``k`` elements' copies in one pass of ``(k + 1) N`` samples, copy
    ``j`` of sample ``i`` at place ``(j + 1) N + i``. A model that reads a
    sample's place (a node's index in the whole torch_geometric ``Batch``,
    ``torch.arange`` over the batch) sees other places in the loss's pass,
    so its loss is larger than the mean squared error, and nonzero even
    where that error is zero (a rotation, which leaves the indices as they
    are). ``batch_size=len(x)`` runs each element's copies in a pass of
    their own, laid out as ``x``, and gives ``equivariance_error``'s value
    again, at ``k + 1`` passes.

    Examples:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(4, 10))
        >>> x = torch.randn(8, 1, 12, 12)
        >>> equivariance_loss(net, x, samples=2).item() < 1e-10  # circular conv + global pooling
        True
        >>> positional = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
        >>> loss = equivariance_loss(positional, x, [(0, 3), (2, -1)])
        >>> loss.backward()
        >>> loss.item() > 0.1, positional[1].weight.grad is not None
        (True, True)

        Point clouds, with the field types of the inputs and outputs, and
        four fresh rotations each call:

        >>> from equivariance.euclidean import SO3
        >>> from equivariance.fields import Positions, Scalars, Vectors
        >>> def centred(pos, h):  # an invariant (B, N, C) and an equivariant (B, N, 3)
        ...     offset = pos - pos.mean(1, keepdim=True)
        ...     return h * offset.norm(dim=-1, keepdim=True), offset
        >>> pos, h = torch.randn(2, 5, 3), torch.randn(2, 5, 4)
        >>> loss = equivariance_loss(centred, (pos, h), transforms=SO3(1), samples=4,
        ...                          inputs=(Positions(), Scalars()), outputs=(Scalars(), Vectors()))
        >>> loss.item() < 1e-10
        True

    Args:
        model: the model being trained (an ``nn.Module`` for ``batch_size=``), or a callable.
        x: a batch ``(N, C, *spatial)``; it is not changed.
        shifts: the elements, each a [`Shift`][equivariance.Shift] or a tuple
            of ints, or a transform ([`Rot90`][equivariance.Rot90],
            [`Flip`][equivariance.Flip],
            [`FractionalShift`][equivariance.fractional.FractionalShift], an
            [`Action`][equivariance.actions.Action] of your own). Pass either
            this or ``samples``.
        samples: draw this many shifts per call, uniformly among the nonzero
            multiples of ``stride`` in $[-m, m]^d$ ($m$ = ``max_shift``) (default:
            1 when ``shifts`` is not given).
        max_shift: the box the random shifts are drawn from (an int or one per dim; default 2).
        boundary: ``"circular"`` (default: on a torus, nothing is cut off) or ``"zeros"``.
        stride: the output's subsampling factor; random shifts are multiples of it.
        layer: penalize this named submodule's output instead.
        output: picks the tensor from a tuple or dict output.
        batch_size: the most copies per forward pass; default all copies and
            ``x`` in one pass. Refused for a model with a BatchNorm in train
            mode (or without running statistics), whose chunks would be
            normalized each by its own statistics.
        rng: draws the random shifts (default: torch's global RNG).
        reference: the output for ``x`` (``f(x)``, or the ``layer``'s, as
            selected by ``output``) if the training step has computed it
            already, say as the logits of its task loss, with autograd on:
            it is used instead of a pass of its own, and its graph is kept
            for the task loss's backward. Default: ``x`` runs through the
            model in the same pass as its copies.
        transforms: the elements, as in
            [`check_equivariance`][equivariance.check_equivariance]: a list of
            transforms, or a sample of a group (``SO3(4, seed=0)``, ``E3``,
            ``Permutations``, ``NodePermutations``). With ``samples=k``,
            ``k`` fresh elements of the sample's group are drawn with ``rng``
            each call (``k`` of the list's elements, for a list): a new
            draw each training step. Needed with ``inputs=``.
        inputs: for a model of point clouds, sets or graphs, the field type of
            ``x`` or of each of its arguments (``x`` a tuple, a dict or a
            torch_geometric ``Data``/``Batch``), as in
            [`check_equivariance`][equivariance.check_equivariance]. The
            options of a grid (``shifts``, ``max_shift``, ``stride``,
            ``boundary``) are refused beside it; ``reference`` is then what
            the model returned for ``x`` (after ``output=``), e.g.
            ``reference=(energy, forces)``, and ``batch_size`` counts
            copies (a torch_geometric graph is one).
        outputs: with ``inputs=``, the field type of each output. A sample's
            squared error is the largest of its outputs' (each relative to
            its own size), as ``equivariance_error``'s is.

    Returns:
        A 0-dim tensor that gradients flow through.
    """
    if _arguments.several_inputs(x, inputs, outputs):
        _arguments.no_grid_options(
            shifts=shifts is not None, max_shift=max_shift is not None, stride=stride != 1,
            boundary=boundary != "circular",
        )  # fmt: skip
        return _points_loss(
            model, x, transforms, samples, rng, layer, output, inputs, outputs, reference, batch_size
        )
    if transforms is not None:
        if shifts is not None:
            raise InvalidArgument(
                "pass either shifts= or transforms= (the elements to penalize), not both; transforms "
                "such as Rot90(1) may go in either"
            )
        shifts = as_transform_list(transforms)
    bound = DEFAULT_MAX_SHIFT if max_shift is None else max_shift
    setup = _Setup.of(model, x, shifts, samples, bound, boundary, stride, layer, output, batch_size)
    given = _check_reference(reference, setup.x)
    elements = setup.elements if setup.elements is not None else setup.draw(rng)
    total = len(elements) * len(setup.x)
    if setup.batch_size is not None and setup.batch_size < total:
        return _accumulated(setup, elements, setup.batch_size, given)
    if given is not None:
        outputs = setup.forward(setup.copies(elements, 0, total))
        return setup.penalty(outputs, given, elements, 0, total) / total
    n = len(setup.x)
    both = setup.forward(torch.cat([setup.x, setup.copies(elements, 0, total)]))  # a new tensor
    return setup.penalty(both[n:], both[:n], elements, 0, total) / total


@dataclass(frozen=True)
class _Setup:
    """The loss's validated arguments."""

    forward: Forward
    x: torch.Tensor
    elements: tuple[Action, ...] | None
    samples: int
    bound: tuple[int, ...]
    boundary: Boundary
    stride: tuple[int, ...]
    batch_size: int | None

    @classmethod
    def of(
        cls, model: Callable[[torch.Tensor], Any], x: object, shifts: object, samples: object,
        max_shift: object, boundary: object, stride: object, layer: str | None, output: OutputSelector,
        batch_size: object,
    ) -> _Setup:  # fmt: skip
        forward = Forward(model, layer, output)
        tensor = _arguments.check_input(x, model)
        the_boundary = check_boundary(boundary)
        strides = per_dim(stride, tensor.dim() - 2, "stride", minimum=1)
        bound = _arguments.as_max_shift(max_shift, tensor)
        size = _arguments.check_batch_size(batch_size, auto=False)
        assert not isinstance(size, str)
        if shifts is not None and samples is not None:
            raise InvalidArgument(
                "pass either shifts= (the elements to penalize) or samples= (how many random shifts to "
                "draw each call), not both"
            )
        elements = None if shifts is None else _elements(shifts, tensor, strides)
        count = 1 if samples is None else as_int(samples, "samples")
        if count < 1:
            raise InvalidArgument(f"samples must be positive, found {count}; pass e.g. samples=2")
        if elements is None and all(b < s for b, s in zip(bound, strides)):
            raise InvalidArgument(
                f"max_shift {bound} holds no nonzero multiple of the stride {strides} to draw; pass "
                f"max_shift={max(strides)} or more"
            )
        return cls(forward, tensor, elements, count, bound, the_boundary, strides, size)

    @property
    def n(self) -> int:
        return len(self.x)

    def outputs(self, elements: Sequence[Action], start: int, stop: int) -> torch.Tensor:
        """The outputs for items ``start:stop`` of the copies."""
        return self.forward(self.copies(elements, start, stop))

    def reference(self) -> torch.Tensor:
        return self.forward(self.x.clone())

    def draw(self, rng: torch.Generator | None) -> tuple[Action, ...]:
        """``samples`` random nonzero shifts from the box, multiples of the stride."""
        if rng is not None and not isinstance(rng, torch.Generator):
            raise InvalidArgument(f"rng must be a torch.Generator, found {describe(rng)}; pass None or one")
        box = [s for s in multiples_of(self.stride, self.bound, ndim=len(self.stride)) if not s.is_identity]
        picks = torch.randint(len(box), (self.samples,), generator=rng).tolist()
        return tuple(box[k] for k in picks)

    def copies(self, elements: Sequence[Action], start: int, stop: int) -> torch.Tensor:
        """Items ``start:stop`` of the copies, element by element: ``elements[i]`` acting on ``x[sample]``."""
        grid = Grid.of_input(self.x.dim() - 2, self.boundary)
        pieces = [guarded_act(e, self.x[a:b], grid) for e, a, b in _spans(len(self.x), elements, start, stop)]
        return torch.cat(pieces)

    def penalty(
        self, outputs: torch.Tensor, reference: torch.Tensor, elements: Sequence[Action], start: int,
        stop: int,
    ) -> torch.Tensor:  # fmt: skip
        """The sum of the squared errors of items ``start:stop`` (``reference`` indexed by sample)."""
        d = self.x.dim() - 2
        spatial = outputs.dim() == self.x.dim()
        grid = Grid(d, self.stride, self.boundary)
        total = outputs.new_zeros((), dtype=torch.promote_types(outputs.dtype, torch.float32))
        done = 0
        for element, a, b in _spans(len(self.x), elements, start, stop):
            got, expected = outputs[done : done + b - a], reference[a:b]
            done += b - a
            if spatial:
                expected = guarded_act(element, expected, grid)
                region: tuple[Any, ...] = (..., *element.region(tuple(expected.shape[-d:]), grid))
                got, expected = got[region], expected[region]
            total = total + _squared_errors(got, expected).sum()
        return total


def _points_loss(
    model: Callable[..., Any], x: object, transforms: object, samples: object, rng: object,
    layer: str | None, output: OutputSelector, inputs: object, outputs: object, reference: object = None,
    batch_size: object = None,
) -> torch.Tensor:  # fmt: skip
    """The penalty of a model of several inputs and outputs, each with its field type: ``x`` and its
    copies moved by the elements in one pass, each output part compared with ``f(x)``'s part moved by its
    field type, a sample's error the largest of its parts' (as ``equivariance_error``'s)."""
    if outputs is None:
        raise InvalidArgument(
            "inputs= says how the elements move the model's arguments; pass outputs= too, the field type "
            "of each output (e.g. outputs=(Scalars(nodes=None), Vectors())), which the penalty compares "
            "with the outputs for the moved inputs"
        )
    size = _arguments.check_batch_size(batch_size, auto=False)
    assert not isinstance(size, str)
    elements = _point_elements(transforms, samples, rng)
    arguments = _arguments.checked_call(
        model, x, inputs, elements, "penalize", "a penalty that is always zero"
    )
    setup = _PointSetup(Forward(model, layer, output, OutputParts(outputs)), arguments)
    n, total = len(arguments), len(elements) * len(arguments)
    given = None if reference is None else setup.laid_out(reference)
    if size is not None and size < total:
        return _accumulated(setup, tuple(elements), size, given)
    if given is not None:
        return setup.penalty(setup.outputs(elements, 0, total), given, elements, 0, total) / total
    both = setup.run(setup.copies((Identity(), *elements), 0, total + n))  # x first, then its copies
    return setup.penalty(both[n:], both[:n], elements, 0, total) / total


class _PointSetup:
    """The penalty's call of several inputs: copies of items (element-major over elements x samples),
    the model's outputs laid side by side (``OutputParts``), and the penalty of each item."""

    def __init__(self, forward: Forward, arguments: Call) -> None:
        self.forward, self.arguments = forward, arguments
        self.n = len(arguments)
        self.x = arguments.first  # its device and dtype stand for the call's

    def copies(self, elements: Sequence[Action], start: int, stop: int) -> Call:
        """Items ``start:stop`` of ``elements`` x samples: the call, each tensor moved by its field type."""
        arguments, rows = self.arguments, list(elements)
        copies = (
            ArgumentCopies(arguments, rows)
            if isinstance(arguments, Arguments)
            else GraphCopies(arguments, rows)
        )
        items = torch.arange(start, stop)
        return copies.take(items % self.n, items // self.n)

    def run(self, call: Call) -> torch.Tensor:
        """The outputs for ``call``, side by side, with autograd's graph."""
        return self.forward(call, detach=False)

    def outputs(self, elements: Sequence[Action], start: int, stop: int) -> torch.Tensor:
        """The outputs for items ``start:stop`` of the copies."""
        return self.run(self.copies(elements, start, stop))

    def reference(self) -> torch.Tensor:
        """``f(x)``, in a pass of its own."""
        return self.run(
            self.arguments.snapshot() if isinstance(self.arguments, Arguments) else self.arguments
        )

    def laid_out(self, reference: object) -> torch.Tensor:
        """What the model returned for ``x`` (``reference=``), laid out as the outputs are (its graph
        kept); before any pass, its own outputs fix the parts."""
        parts = self.forward.parts
        assert parts is not None
        nodes = self.arguments.nodes() if isinstance(self.arguments, Graphs) else None
        if not parts.parts:
            self.forward.parts = parts = parts.measured(reference, "reference=", nodes)
        return parts.flatten(reference, self.n, "reference=", nodes, detach=False)

    def penalty(
        self, outputs: torch.Tensor, reference: torch.Tensor, elements: Sequence[Action], start: int,
        stop: int,
    ) -> torch.Tensor:  # fmt: skip
        """The sum of the squared errors of items ``start:stop`` (``reference``: ``f(x)`` by sample)."""
        parts = self.forward.parts
        assert parts is not None
        items = torch.arange(start, stop)
        sample, element = items % self.n, items // self.n
        errors = []
        dtype = torch.promote_types(outputs.dtype, torch.float32)
        for got, base, part, field, per_node, size in zip(
            parts.unflatten(outputs.to(dtype)), parts.unflatten(reference.to(dtype)), parts.parts,
            parts.acting, parts.per_node or (False,) * len(parts.parts), parts.sizes,
        ):  # fmt: skip
            if field is None:
                expected = base.index_select(0, sample.to(base.device))
            elif per_node and parts.mixed:
                assert part.field is not None
                nodes = parts.nodes[: self.n]
                expected = GraphReferences(base, elements, part.field, nodes).take(sample, element)
            else:
                expected = Copies(base, elements, field).take(sample, element)
            diff = (got - expected).reshape(len(items), -1).pow(2).sum(1)
            errors.append(squared_errors(diff, expected.reshape(len(items), -1).pow(2).sum(1), max(1, size)))
        worst = errors[0] if len(errors) == 1 else torch.stack(errors).amax(0)
        return worst.sum()


def _point_elements(transforms: object, samples: object, rng: object) -> list[Action]:
    """The elements of a penalty of points: all of ``transforms``, or ``samples`` of them drawn with
    ``rng``: fresh elements of a group sample's group (``SO3(4, seed=0)``), else picked from the list."""
    if transforms is None:
        raise InvalidArgument(
            "inputs= needs the elements to penalize: pass transforms=, e.g. transforms=SO3(4, seed=0) (the "
            "same rotations each step) or transforms=SO3(1), samples=4 (four fresh rotations each step)"
        )
    given = as_transform_list(transforms)
    if samples is None:
        return given
    count = as_int(samples, "samples")
    if count < 1:
        raise InvalidArgument(f"samples must be positive, found {count}; pass e.g. samples=2")
    if rng is not None and not isinstance(rng, torch.Generator):
        raise InvalidArgument(f"rng must be a torch.Generator, found {describe(rng)}; pass None or one")
    if isinstance(transforms, GroupSample):
        generator = rng
        if generator is None:  # torch's global RNG seeds the draw, as it draws the shifts of a grid
            seed = int(torch.randint(2**62, ()).item())
            generator = torch.Generator().manual_seed(seed)
        return list(transforms.draw(count, generator))
    moving = [e for e in given if not e.is_identity] or given
    picks = torch.randint(len(moving), (count,), generator=rng).tolist()
    return [moving[p] for p in picks]


def _elements(shifts: object, x: torch.Tensor, strides: tuple[int, ...]) -> tuple[Action, ...]:
    if isinstance(shifts, (Action, str)) or not isinstance(shifts, Sequence) or not shifts:
        raise InvalidArgument(
            f"shifts must be a non-empty list of shifts or transforms, found {describe(shifts)}; pass "
            "e.g. shifts=[(0, 1), (2, -1)], or samples=k for random ones"
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in shifts):
        raise InvalidArgument(
            f"shifts {tuple(shifts)!r} is one shift, not a list of them; pass shifts=[{tuple(shifts)!r}]"
        )
    elements = _arguments.as_elements(shifts, x, "penalize", "a penalty that is always zero")
    for element in elements:
        if isinstance(element, Shift) and not element.divisible_by(strides):
            raise InvalidArgument(
                f"shift {element} is not a multiple of the stride {strides}, so the subsampled output "
                "cannot follow it; pass multiples of the stride"
            )
    return elements


def _spans(n: int, elements: Sequence[Action], start: int, stop: int) -> list[tuple[Action, int, int]]:
    """Items ``start:stop`` (element-major over elements x samples) as spans of consecutive items that
    share an element: ``(element, first sample, last sample + 1)``."""
    spans = []
    item = start
    while item < stop:
        index, sample = divmod(item, n)
        end = min(stop, (index + 1) * n)
        spans.append((elements[index], sample, sample + end - item))
        item = end
    return spans


def _squared_errors(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per sample, the checks' error squared (``_engine.judge.squared_errors``): a smooth penalty."""
    diff = (got - expected).flatten(1).pow(2).sum(1)
    return squared_errors(diff, expected.flatten(1).pow(2).sum(1), got[0].numel() if len(got) else 1)


def _check_reference(reference: object, x: torch.Tensor) -> torch.Tensor | None:
    if reference is None:
        return None
    if not isinstance(reference, torch.Tensor) or not reference.dtype.is_floating_point:
        raise InvalidArgument(
            f"reference must be the model's floating-point output for x, found {describe(reference)}; "
            "pass the tensor the training step computed, e.g. reference=logits, or drop it"
        )
    if reference.dim() == 0 or len(reference) != len(x):
        raise InvalidArgument(
            f"reference of shape {tuple(reference.shape)} is not an output for x of batch {len(x)}; pass "
            "the model's output for this very x (not a slice of it), or drop it"
        )
    return reference


def _accumulated(
    setup: _Setup | _PointSetup, elements: tuple[Action, ...], size: int, given: torch.Tensor | None
) -> torch.Tensor:
    """The loss in chunks of ``size`` copies, each chunk's gradient taken at once (docs/penalty.md)."""
    module = owning_module(setup.forward.model)
    params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
    if module is None:
        raise InvalidArgument(
            f"batch_size= runs the copies in chunks and accumulates the gradient of the model's "
            f"parameters, but {describe(setup.forward.model)} is not an nn.Module; pass the module, or "
            "drop batch_size= to run every copy in one pass"
        )
    total = len(elements) * setup.n
    _check_chunkable(module, total, size)
    reference = setup.reference() if given is None else given
    tracked = torch.is_grad_enabled() and reference.requires_grad
    held = reference.detach().requires_grad_(tracked)
    value = torch.zeros((), dtype=torch.float64, device=setup.x.device)
    grads: list[torch.Tensor | None] = [None] * (len(params) + 1)
    for start in range(0, total, size):
        stop = min(total, start + size)
        outputs = setup.outputs(elements, start, stop)
        part = setup.penalty(outputs, held, elements, start, stop) / total
        value += part.detach().double()
        if tracked:
            found = torch.autograd.grad(part, [held, *params], allow_unused=True)
            grads = [_add(g, f) for g, f in zip(grads, found)]
    if not tracked:
        return value.to(reference.dtype)
    if grads[0] is not None:
        # a reference the caller computed keeps its graph for the caller's own backward
        back = torch.autograd.grad(
            reference, params, grads[0], allow_unused=True, retain_graph=given is not None
        )
        grads[1:] = [_add(g, f) for g, f in zip(grads[1:], back)]
    carried = [(p * g).sum() for p, g in zip(params, grads[1:]) if g is not None]
    dot = torch.stack(carried).sum() if carried else value.new_zeros(())
    # the value of the loss, with the gradient of the accumulated chunks for the parameters
    return (value + (dot - dot.detach())).to(reference.dtype)


def _check_chunkable(module: nn.Module, total: int, size: int) -> None:
    """Refuse chunks where a layer normalizes with the statistics of the batch it is given (BatchNorm
    in train mode, or without running statistics) or updates running statistics at every pass: the
    chunks would give another value than the one pass, or update the statistics once per chunk."""
    found = [(name, layer, why) for name, layer in module.named_modules() if (why := _batch_dependent(layer))]
    if not found:
        return
    name, layer, why = found[0]
    chunks = -(-total // size)
    more = f" (and {len(found) - 1} more such layers)" if len(found) > 1 else ""
    raise InvalidArgument(
        f"batch_size={size} runs the {total} copies in {chunks} chunks, but {type(layer).__name__} "
        f"{name!r}{more} {why}: chunked, the penalty would not be the one-pass penalty. Drop batch_size= "
        "to run the copies in one pass, compute the penalty in eval mode (model.eval()) where the layer "
        "has running statistics, or normalize each sample alone (GroupNorm, LayerNorm)"
    )


def _batch_dependent(layer: nn.Module) -> str:
    """Why a layer's output or state depends on the chunks its batch is cut into; "" if it does not."""
    if not isinstance(layer, nn.modules.batchnorm._NormBase):
        return ""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        if layer.training:
            return (
                "normalizes with the statistics of the batch it is given and updates its running "
                "statistics at every pass (train mode): each chunk would be normalized by its own "
                "statistics, and the running statistics updated once per chunk"
            )
        if layer.running_mean is None:
            return (
                "normalizes with the statistics of the batch it is given, also in eval mode (it has no "
                "running statistics): each chunk would be normalized by its own"
            )
    if layer.training and layer.track_running_stats:
        return "updates its running statistics at every pass (train mode): once per chunk instead of once"
    return ""


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
