"""The forward-mode pass of the Lie derivative: a Jacobian-vector product that must really flow.

`forward_mode` runs attention on the math kernel (the fused kernels have no forward-mode formula);
`TangentWatch`, a ``TorchFunctionMode``, refuses an output that a cut of the tangent (``.detach()``,
``.data``, ``inference_mode``, NumPy) reaches or that no tangent reaches, measures how much of a
normalization's derivative comes from constant groups, gives plain operands dense zero tangents
(PyTorch's efficient-zero tangents cost about 0.5 ms an op), and pushes an eval batch norm,
convolutions and linear layers by plain weights and products by plain tensors by hand (primal and
tangent as plain ops). What users see is in docs/lie.md ("Inputs", "What it runs like"); the timings
in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from equivariance.errors import InvalidArgument

_CUTS = {
    torch.Tensor.detach: ".detach()",
    torch.Tensor.detach_: ".detach_()",
    torch.Tensor.data.__get__: ".data",  # type: ignore[attr-defined]
}
_NUMBERS = {torch.Tensor.item: ".item()", torch.Tensor.tolist: ".tolist()", torch.Tensor.__float__: "float()"}
_FLAT_SHARE = 0.1
"""The share of a normalization's output derivative from constant groups above which it is reported."""


@contextlib.contextmanager
def forward_mode() -> Iterator[None]:
    """Within the block, models run as forward-mode AD needs: attention on its math kernel, no fast path.

    Also silences the deprecation warning torch raises from its own code the
    first time it loads its forward-mode decompositions (registered with
    ``torch.jit.script``): not the caller's concern, and a test suite that
    turns warnings into errors would fail on it.
    """
    fast_path = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), _math_attention():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_path)


def _math_attention() -> contextlib.AbstractContextManager[Any]:
    """``scaled_dot_product_attention`` on its math kernel, the one with a forward-mode formula."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: fused kernels are refused by name instead
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@dataclass(frozen=True)
class Cut:
    """Where the tangent was cut: how (``.detach()``), in which layer, at which line of code."""

    how: str
    layer: str | None
    place: str | None

    def __str__(self) -> str:
        where = [self.how]
        if self.layer is not None:
            where.append(f"in layer {self.layer!r}" if self.layer else "in the model's own forward")
        if self.place is not None:
            where.append(f"at {self.place}")
        return " ".join(where)


@dataclass
class FlatGroups:
    """A normalization's groups that are constant over what it normalizes, across the calls watched."""

    layer: str
    type: str
    eps: float
    groups: int = 0
    of: int = 0
    share: float = 0.0  # the largest share of the output's derivative they carried in one call


GRID_LIMIT = "fractional_equivariance_error(model, x, (0, t)) / t"
"""The finite-difference limit of a grid's Lie derivative, which the errors suggest where it cannot run."""


class TangentWatch(TorchFunctionMode):
    """Sees where the tangent of a forward-mode pass is cut and where a normalization amplifies it.

    Args:
        model: the model (or callable) whose modules name the layers.
        normalizations: whether to measure normalizations of constant groups
            (not under ``vmap``, where their test cannot branch on values).
    """

    def __init__(self, model: Callable[..., Any], *, normalizations: bool = True) -> None:
        super().__init__()
        self.model, self.normalizations = model, normalizations
        self.cuts: list[Cut] = []
        self.numbers: list[Cut] = []  # tensors that carry the tangent turned into Python numbers
        self.flat: dict[str, FlatGroups] = {}
        self._marked: dict[int, tuple[weakref.ref[torch.Tensor], Cut]] = {}  # by id: what a cut reached
        self._names: dict[int, tuple[str, str]] | None = None  # by id of a module: its name and type

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _WATCHED and not self._marked:  # the common case: one lookup
            if func in _SCALINGS and not kwargs:
                scaled = _scaled(func, args)
                if scaled is not None:
                    return scaled
            return func(*_densified(func, args), **kwargs)
        carries = bool(args) and _carries_tangent(args[0])
        if func is torch.Tensor.numpy and carries:
            raise InvalidArgument(
                f"the model converts a tensor that carries the derivative of x to NumPy "
                f"({self._cut('.numpy()')}), which forward-mode AD cannot follow; compute the output "
                "with torch operations"
            )
        by_hand = _BY_HAND.get(func) if carries else None
        result = func(*args, **kwargs) if by_hand is None else by_hand(func, args, kwargs)
        if func in _CUTS and carries:
            cut = self._cut(_CUTS[func])
            self.cuts.append(cut)
            self._mark(result, cut)
        elif func in _NUMBERS and carries:
            self.numbers.append(self._cut(_NUMBERS[func]))
        elif func in _NORMS and carries and self.normalizations:
            self._normalization(func, args, kwargs)
        elif self._marked:
            self._follow(func, args, kwargs, result)
        return result

    def check(self, output: torch.Tensor, *, flows: bool = False) -> None:
        """InvalidArgument if ``output`` depends on a tensor whose tangent was cut (or, with ``flows``,
        carries no tangent at all)."""
        cut = self._cut_of(output)
        if flows and cut is None and not _carries_tangent(output):
            raise self.independent()
        if cut is not None:
            raise InvalidArgument(
                f"the model's output depends on x through a tensor whose derivative it drops ({cut}), so "
                "forward-mode AD misses that path and the Lie derivative would be wrong; compute the "
                "output from x without .detach() or .data on that path (check_equivariance measures "
                "such a model by its outputs alone)"
            )

    def independent(self, limit: str = GRID_LIMIT) -> InvalidArgument:
        """The error for an output that no tangent reaches, with the cut seen, if any, and ``limit``, the
        finite difference to measure instead."""
        cuts = self.cuts + self.numbers
        seen = f"; the tangent was cut {cuts[0]}" if cuts else ""
        return InvalidArgument(
            f"the model's output does not depend on x through autograd, so no derivative reaches it{seen}. "
            "A Lie derivative pushes the derivative of x through the model's operations: a .detach(), "
            ".data, torch.inference_mode, a round trip through NumPy or Python numbers, or an integer "
            "op (argmax) cuts it. Compute the output from x with differentiable torch operations, or "
            f"measure it by its outputs alone (check_equivariance, or {limit} for a small t)"
        )

    # -- cuts ------------------------------------------------------------------------------------

    def _cut(self, how: str) -> Cut:
        layer, place = self._where()
        return Cut(how, None if layer is None else layer[0], place)

    def _mark(self, result: Any, cut: Cut) -> None:
        # an integer or bool result (argmax, a comparison) has no derivative to miss: a cut that only
        # chooses (the phase of a polyphase sampling, a mask) is piecewise constant, so it is not followed
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
                self._marked[id(tensor)] = (weakref.ref(tensor), cut)

    def _cut_of(self, tensor: object) -> Cut | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        found = self._marked.get(id(tensor))
        return found[1] if found is not None and found[0]() is tensor else None

    def _follow(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """What is computed from a cut tensor is cut too; so is a tensor written in place with one."""
        cut = next((c for c in map(self._cut_of, tree_leaves((args, kwargs))) if c is not None), None)
        if cut is None:
            return
        self._mark(result, cut)
        name = getattr(func, "__name__", "")
        if args and (name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))):
            self._mark(args[0], cut)
        if "out" in kwargs:
            self._mark(kwargs["out"], cut)

    def _where(self) -> tuple[tuple[str, str] | None, str | None]:
        """The innermost module of the model running (its name and type) and the first line of code
        outside torch and this package, from the call stack (walked only when something is found)."""
        if self._names is None:
            model = self.model
            modules = model.named_modules() if isinstance(model, nn.Module) else ()
            self._names = {id(m): (name, type(m).__name__) for name, m in modules}
        layer: tuple[str, str] | None = None
        place: str | None = None
        frame = sys._getframe(1)
        while frame is not None and (layer is None or place is None):
            file = frame.f_code.co_filename
            if place is None and not file.startswith(_LIBRARIES):
                place = f"{os.path.basename(file)}:{frame.f_lineno}"
            owner = frame.f_locals.get("self") if layer is None else None
            if isinstance(owner, nn.Module) and id(owner) in self._names:
                layer = self._names[id(owner)]
            frame = frame.f_back  # type: ignore[assignment]
        return layer, place

    # -- normalizations --------------------------------------------------------------------------

    def _normalization(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Record the groups a normalization finds constant where the tangent is not zero, and the share
        of its output's derivative they carry (about ``||centred tangent||^2 / (var + eps)`` a group)."""
        primal, tangent = fwAD.unpack_dual(args[0])  # type: ignore[no-untyped-call]
        if not primal.dtype.is_floating_point or primal.numel() == 0:
            return
        view, dims, centred, eps = _NORMS[func](primal, args, kwargs)
        values = primal if view is None else primal.reshape(view)
        # (almost) constant groups: a range within 2 sqrt(eps) (a magnitude within sqrt(eps) without
        # centring) bounds the variance by eps; two reductions, about a tenth of what var costs
        high, low = values.amax(dims), values.amin(dims)
        flat = high - low <= 2 * math.sqrt(eps) if centred else torch.maximum(high, -low) <= math.sqrt(eps)
        if not bool(flat.any()):
            return
        spread = values.var(dims, unbiased=False) if centred else values.square().mean(dims)
        moves = tangent if view is None else tangent.reshape(view)
        if centred:
            moves = moves - moves.mean(dims, keepdim=True)
        energy = moves.double().square().sum(dims) / (spread.double() + eps)
        total = float(energy.sum())
        if total == 0 or not math.isfinite(total):
            return
        layer, _ = self._where()
        name, kind = layer if layer is not None and layer[0] else ("(the model's own forward)", "")
        found = self.flat.setdefault(name, FlatGroups(name, kind, eps))
        found.groups, found.of = found.groups + int(flat.sum()), found.of + flat.numel()
        found.share = max(found.share, float(energy[flat].sum()) / total)

    def amplified(self) -> list[FlatGroups]:
        """The normalizations whose constant groups carried a large share of their output's derivative."""
        return [found for found in self.flat.values() if found.share >= _FLAT_SHARE]


def _carries_tangent(tensor: object) -> bool:
    return isinstance(tensor, torch.Tensor) and fwAD.unpack_dual(tensor).tangent is not None  # type: ignore[no-untyped-call]


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


# how a normalization groups its input: a shape to view it in (None: as it is), the dims of a group,
# whether it subtracts the mean, its eps
Groups = tuple[tuple[int, ...] | None, tuple[int, ...], bool, float]


def _last_dims(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    shape = _argument(args, kwargs, 1, "normalized_shape", ())
    count = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    return tuple(range(-count, 0))


def _layer_norm(x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Groups:
    return None, _last_dims(args, kwargs), True, float(_argument(args, kwargs, 4, "eps", 1e-5))


def _rms_norm(x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Groups:
    eps = _argument(args, kwargs, 3, "eps", None)
    return None, _last_dims(args, kwargs), False, float(torch.finfo(x.dtype).eps if eps is None else eps)


def _group_norm(x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Groups:
    groups = int(_argument(args, kwargs, 1, "num_groups", 1))
    return (len(x), groups, -1), (-1,), True, float(_argument(args, kwargs, 4, "eps", 1e-5))


_NORMS: dict[Any, Callable[[torch.Tensor, tuple[Any, ...], dict[str, Any]], Groups]] = {
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
}
if hasattr(F, "rms_norm"):
    _NORMS[F.rms_norm] = _rms_norm
_CONVOLUTIONS = (F.conv1d, F.conv2d, F.conv3d, F.linear)
_WATCHED = {*_CUTS, *_NUMBERS, *_NORMS, torch.Tensor.numpy, F.batch_norm, *_CONVOLUTIONS}


def _densified(func: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args``, where a dual tensor meets plain floating tensors in an op that does not write to them,
    with those given dense zero tangents: PyTorch's forward mode gives a plain operand an *efficient
    zero* tangent whose shape it computes through Python reference decompositions, about half a
    millisecond an op (twenty times a small ``mul``), which dominates the Lie derivative of a small
    model. Not for convolutions and matrix products, where a zero tangent costs a whole product."""
    if len(args) < 2 or func in _PRODUCTS or getattr(func, "__name__", "").endswith("_"):
        return args
    tensors = [isinstance(a, torch.Tensor) and a.is_floating_point() for a in args]
    if sum(tensors) < 2:
        return args
    duals = [t and _carries_tangent(a) for t, a in zip(tensors, args)]
    if not any(duals) or all(d for d, t in zip(duals, tensors) if t):
        return args
    return tuple(
        fwAD.make_dual(a, torch.zeros_like(a)) if t and not d else a  # type: ignore[no-untyped-call]
        for a, t, d in zip(args, tensors, duals)
    )


_PRODUCTS = {
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm, torch.einsum,
}  # fmt: skip


def _batch_norm(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A batch norm with running statistics, in eval mode, is a per-channel affine map: its primal is
    the op itself on the primal, its tangent the tangent times the map's scale (PyTorch's own formula
    for ``batch_norm`` runs through Python reference decompositions, ten times a forward pass on
    mobilenet_v3_small). In training mode, without running statistics, or with statistics or
    parameters that carry a tangent themselves, the op itself."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    given = dict(zip(names, args)) | kwargs
    mean, var, weight = given.get("running_mean"), given.get("running_var"), given.get("weight")
    if given.get("training", False) or mean is None or var is None:
        return func(*args, **kwargs)
    if any(_carries_tangent(given.get(name)) for name in names[1:5]):
        return func(*args, **kwargs)
    primal, tangent = fwAD.unpack_dual(given["input"])  # type: ignore[no-untyped-call]
    scale = torch.rsqrt(var + given.get("eps", 1e-5))
    if weight is not None:
        scale = scale * weight
    shape = (1, -1) + (1,) * (primal.dim() - 2)
    out = func(**(given | {"input": primal}))
    return fwAD.make_dual(out, tangent * scale.reshape(shape))  # type: ignore[no-untyped-call]


def _convolution(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A convolution (or a linear layer) of an input that carries the tangent by weights that do not:
    the primal and the tangent (without the bias) as two plain ops, exactly its forward-mode
    derivative (PyTorch's own formula ran 1.5 to 3 times slower on this CPU, depthwise convolutions
    the most; a linear layer's ran two matrix products for the tangent). Where the weights or the bias
    carry a tangent, the op itself."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = dict(zip(names, args)) | kwargs
    if _carries_tangent(given.get("weight")) or _carries_tangent(given.get("bias")):
        return func(*args, **kwargs)
    primal, tangent = fwAD.unpack_dual(given.pop("input"))  # type: ignore[no-untyped-call]
    out = func(primal, **given)
    return fwAD.make_dual(out, func(tangent, **(given | {"bias": None})))  # type: ignore[no-untyped-call]


_BY_HAND: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = {
    F.batch_norm: _batch_norm,
    **{conv: _convolution for conv in _CONVOLUTIONS},
}


def _scaled(func: Any, args: tuple[Any, ...]) -> Any:
    """A product of a tensor that carries the tangent and a plain floating tensor (a layer scale, a
    gain), or the quotient of one by a plain tensor: the primal and the tangent as two plain ops,
    exactly its forward-mode derivative, where a dense zero tangent for the plain operand would cost
    a product and a sum more. None where it is not such an op (the caller runs it)."""
    if len(args) != 2 or not all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
        return None
    duals = [_carries_tangent(a) for a in args]
    if duals[0] == duals[1] or (func in _QUOTIENTS and not duals[0]):
        return None
    k = duals.index(True)
    primal, tangent = fwAD.unpack_dual(args[k])  # type: ignore[no-untyped-call]
    out = func(*(primal if j == k else a for j, a in enumerate(args)))
    pushed = func(*(tangent if j == k else a for j, a in enumerate(args)))
    if pushed.shape != out.shape or pushed.dtype != out.dtype:
        return None
    return fwAD.make_dual(out, pushed)  # type: ignore[no-untyped-call]


_QUOTIENTS = {torch.div, torch.Tensor.div, torch.Tensor.__truediv__}
_SCALINGS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__, *_QUOTIENTS}


_LIBRARIES = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(contextlib.__file__) + os.sep,
)


_NOT_IMPLEMENTED = re.compile(r"Trying to use forward AD with (\S+) that does not support it")


def pushforward(
    function: Callable[[Any], torch.Tensor],
    x: torch.Tensor | Sequence[torch.Tensor],
    tangent: torch.Tensor | Sequence[torch.Tensor | None],
    watch: TangentWatch,
    limit: str = GRID_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(function(x), J tangent)`` by forward-mode AD's dual tensors, watched; InvalidArgument where the
    tangent cannot flow (cut, or an op without a forward-mode formula). ``x`` may be a sequence of
    tensors, each with its tangent (None: it carries none); ``function`` then takes the list. ``limit``:
    the finite difference an error suggests instead.

    Dual tensors rather than ``torch.func.jvp``: the same derivative, through
    PyTorch's own forward-mode formulas, where functorch reaches some ops (a
    batch norm) through slower decompositions.
    """
    try:
        with watch, fwAD.dual_level():
            dual: Callable[[torch.Tensor, Any], torch.Tensor] = fwAD.make_dual
            if isinstance(x, torch.Tensor):
                out = function(dual(x, tangent))
            else:
                out = function([a if t is None else dual(a, t) for a, t in zip(x, tangent)])
            watch.check(out)
            primal, pushed = fwAD.unpack_dual(out)  # type: ignore[no-untyped-call]
            if pushed is None:
                raise watch.independent(limit)
            return primal.detach().clone(), pushed.detach().clone()
    except InvalidArgument as exc:
        raise not_implemented(exc, limit) from exc.__cause__


def not_implemented(exc: InvalidArgument, limit: str = GRID_LIMIT) -> InvalidArgument:
    """``exc``, or where its cause is an op without a forward-mode formula, an error that names it."""
    found = _NOT_IMPLEMENTED.search(str(exc.__cause__ or ""))
    if found is None:
        return exc
    return InvalidArgument(
        f"the model calls {found.group(1)}, which has no forward-mode derivative in PyTorch "
        f"{torch.__version__}, and the Lie derivative runs the model under forward-mode AD (attention "
        f"already runs on the math kernel, which has one); replace that op with differentiable ones, or "
        f"measure {limit} for a small t, its finite-difference limit"
    )
