"""Model surgery: a copy of a model whose layers follow shifts better, its weights kept.

[`antialias`][equivariance.surgery.antialias], [`polyphase`][equivariance.surgery.polyphase] and
[`circular_padding`][equivariance.surgery.circular_padding] each return a converted deep copy whose
``state_dict`` is the original's; what each does and what cannot be converted are in docs/fixing.md ("The
three conversions").
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from equivariance._engine.forward import find_layer
from equivariance._engine.validation import as_int, describe
from equivariance.downsampling import BlurPool, PadType, PolyphaseSampling, converted_class
from equivariance.errors import EquivarianceWarning, InvalidArgument

__all__ = ["antialias", "circular_padding", "padded_layers", "polyphase", "subsampling_layers"]

M = TypeVar("M", bound=nn.Module)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd)
_POOL_DIMS = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.LPPool3d),
}
_PADS = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
)
_CIRCULAR_PADS: dict[int, type[nn.Module]] = {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d}
# what may stand between a convolution and its activation, and the activations a blur may follow
_POINTWISE = (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.modules.dropout._DropoutNd)
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Softsign, nn.Tanhshrink,
)  # fmt: skip


def antialias(
    model: M, layers: Sequence[str] | None = None, *, filter_size: int = 4, pad_type: PadType = "reflect"
) -> M:
    """A copy of ``model`` that blurs before it subsamples (Zhang, ICML 2019), its weights kept.

    Each strided convolution runs at stride 1, then its activation, then a
    [`BlurPool`][equivariance.downsampling.BlurPool] subsamples; a strided pooling runs at stride 1, then the
    blur (see "Fixing what the profile finds" for the placement and the output sizes). Blurring lowers the
    error a shift causes; it does not remove it.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from equivariance import profile_equivariance
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...                       nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        >>> fixed = antialias(model)  # docs/fixing.md prints it
        >>> x = torch.zeros(4, 1, 48, 48)
        >>> x[..., 8:40, 8:40] = torch.rand(4, 1, 32, 32)
        >>> before = profile_equivariance(model, x, (1, 0))["4"].error
        >>> after = profile_equivariance(fixed, x, (1, 0))["4.1"].error
        >>> after < before / 2
        True

    Args:
        model: any ``nn.Module``; it is deep-copied, never changed.
        layers: names (``model.named_modules()``) of the layers to convert, or of containers whose strided
            layers to convert; default every strided convolution and pooling layer.
        filter_size: taps of the binomial filter per dim (Zhang's default 4; 3 is ``[1, 2, 1]``).
        pad_type: the blur's padding: ``"reflect"`` (Zhang's default), ``"replicate"``, ``"zeros"`` or
            ``"circular"`` (for a circularly padded model).

    Returns:
        The converted copy, of the model's own class.

    Raises:
        InvalidArgument: a name that is no layer, or a layer named that does not subsample or cannot be
            converted (the message says why).
    """
    blur = BlurPool(1, filter_size, pad_type)  # checks the options before the model is copied
    options = _Options(blur.filter_size, blur.pad_type)
    return _converted(model, layers, _Conversion("antialias", _subsamples, _why_not_blur, _blurred, options))


def polyphase(
    model: M, layers: Sequence[str] | None = None, *, filter_size: int = 1, pad_type: PadType = "circular"
) -> M:
    """A copy of ``model`` whose every subsampling keeps the grid of largest norm (Chaman and Dokmanic, 2021).

    Each strided layer runs at stride 1, then a
    [`PolyphaseSampling`][equivariance.downsampling.PolyphaseSampling] keeps, per sample, the polyphase
    component of largest norm; two layers subsampling one tensor keep one grid. With
    [`circular_padding`][equivariance.surgery.circular_padding] and sizes every stride divides, a globally
    pooled classifier is exactly invariant to circular shifts.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from equivariance import check_invariance, circular_group
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.MaxPool2d(2),
        ...     nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> x = torch.rand(2, 1, 16, 16)
        >>> every = circular_group((16, 16))
        >>> check_invariance(model, x, every, boundary="circular").passed
        False
        >>> check_invariance(polyphase(model), x, every, boundary="circular").passed
        True

    Args:
        model: any ``nn.Module``; it is deep-copied, never changed.
        layers: names of the layers (or containers) to convert; default every strided convolution, pooling and
            blur pooling layer.
        filter_size: taps of a binomial blur before the sampling (1, the default: none; the paper's "APS with
            a low-pass filter" uses 2 to 5).
        pad_type: that blur's padding, ``"circular"`` by default.

    Returns:
        The converted copy, of the model's own class.

    Raises:
        InvalidArgument: a name that is no layer, or a layer named that does not subsample or cannot be
            converted (the message says why).
    """
    sampling = PolyphaseSampling(1, filter_size, pad_type)
    options = _Options(sampling.filter_size, sampling.pad_type)
    conversion = _Conversion("polyphase", _subsamples_or_blurs, _why_not_polyphase, _polyphased, options)
    return _converted(model, layers, conversion)


def circular_padding(model: M, layers: Sequence[str] | None = None) -> M:
    """A copy of ``model`` in which every padded layer pads circularly (the model of ``boundary="circular"``).

    Convolutions, padded poolings, padding layers and blurs pad circularly; what cannot (a transposed
    convolution, a layer that pads in its own ``forward``) is named in a warning, or an error when named in
    ``layers``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from equivariance import check_equivariance
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        >>> x = torch.rand(2, 1, 16, 16)
        >>> check_equivariance(model, x, boundary="circular").passed
        False
        >>> check_equivariance(circular_padding(model), x, boundary="circular").passed
        True

    Args:
        model: any ``nn.Module``; it is deep-copied, never changed.
        layers: names of the layers (or containers) to convert; default every padded layer.

    Returns:
        The converted copy, of the model's own class.

    Raises:
        InvalidArgument: a name that is no layer, or a layer named that does not pad or cannot be converted
            (the message says why).
    """
    conversion = _Conversion(
        "circular_padding", _pads, _why_not_circular, _made_circular, _Options(1, "circular")
    )
    return _converted(model, layers, conversion)


def subsampling_layers(model: nn.Module) -> dict[str, str | None]:
    """Every layer of ``model`` that subsamples, by name: None where ``antialias`` and ``polyphase``
    can convert it, else why not.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.PixelUnshuffle(2))
        >>> subsampling_layers(model)  # doctest: +ELLIPSIS
        {'0': None, '2': 'a PixelUnshuffle subsamples ...'}
    """
    return {
        name: _why_not_polyphase(module)
        for name, module in model.named_modules()
        if name and _subsamples_or_blurs(module) and not isinstance(module, BlurPool)
    }


def padded_layers(model: nn.Module) -> dict[str, str | None]:
    """Every layer of ``model`` that pads, and not circularly, by name: None where ``circular_padding``
    can convert it, else why not.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ConvTranspose2d(4, 1, 2, stride=2))
        >>> padded_layers(model)  # doctest: +ELLIPSIS
        {'0': None, '1': "a transposed convolution cannot pad circularly in torch ..."}
    """
    return {
        name: _why_not_circular(module) for name, module in model.named_modules() if name and _pads(module)
    }


# -- the conversions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """The downsampling layer's options: its filter's taps and padding."""

    filter_size: int
    pad_type: PadType


@dataclass(frozen=True)
class _Conversion:
    """One conversion: which layers it is about, why one cannot be converted, and how one is."""

    name: str
    applies: Callable[[nn.Module], bool]
    why_not: Callable[[nn.Module], str | None]
    convert: Callable[[_Tree, str, nn.Module, _Options], None]
    options: _Options

    @property
    def about(self) -> str:
        return {
            "antialias": "strided convolutions and pooling layers",
            "polyphase": "strided convolutions, pooling and blur pooling layers",
            "circular_padding": "padded convolutions, pooling, padding layers and blurs",
        }[self.name]


class _Tree:
    """The copy's modules by name, and where each module is held (a module may sit under several names)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.modules = dict(root.named_modules())
        self.holders: dict[int, list[tuple[nn.Module, str]]] = {}
        self.uses: dict[int, int] = {}
        for _, parent in root.named_modules(remove_duplicate=False):
            for key, child in parent._modules.items():
                if child is not None:
                    self.holders.setdefault(id(child), [])
                    if (parent, key) not in self.holders[id(child)]:
                        self.holders[id(child)].append((parent, key))
        for _, module in root.named_modules(remove_duplicate=False):
            self.uses[id(module)] = self.uses.get(id(module), 0) + 1

    def replace(self, old: nn.Module, new: nn.Module) -> None:
        if old is self.root:
            self.root = new
        for parent, key in self.holders.get(id(old), []):
            parent._modules[key] = new


def _converted(model: M, layers: Sequence[str] | None, conversion: _Conversion) -> M:
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"{conversion.name} converts an nn.Module's layers, found {describe(model)}; pass the model"
        )
    names = _layer_names(model, layers, conversion)
    fixed = copy.deepcopy(model)
    tree = _Tree(fixed)
    chosen, left = _chosen(tree, names, conversion)
    if not chosen and not left and names is None:
        warnings.warn(
            f"{conversion.name} found nothing to convert in {type(model).__name__}: no "
            f"{conversion.about} among its modules. A subsampling or padding written in forward "
            "(F.max_pool2d, x[..., ::2], F.pad) cannot be converted by surgery; the profile shows it",
            EquivarianceWarning,
            stacklevel=3,
        )
    for name, module in chosen:
        conversion.convert(tree, name, module, conversion.options)
    if left:
        warnings.warn(
            f"{conversion.name} left {len(left)} layer{'s' if len(left) > 1 else ''} of "
            f"{type(model).__name__} as {'they were' if len(left) > 1 else 'it was'}: {_listed(left)}. "
            "Pass layers= without them to convert the others only, or replace them by hand",
            EquivarianceWarning,
            stacklevel=3,
        )
    return tree.root  # type: ignore[return-value]  # the model itself where it was a layer replaced


def _listed(left: list[tuple[str, nn.Module, str]]) -> str:
    """The layers left, grouped by why: ``'a', 'b' (StdConv2d): why``; at most 6 names a group."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, module, why in left:
        groups.setdefault((type(module).__name__, why), []).append(repr(name or "(the model)"))
    parts = []
    for (kind, why), names in groups.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        parts.append(f"{shown} ({kind}): {why}")
    return "; ".join(parts)


def _layer_names(model: nn.Module, layers: object, conversion: _Conversion) -> list[str] | None:
    """The names given, checked against the model before it is copied."""
    if layers is None:
        return None
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        shown = f"[{layers!r}]" if isinstance(layers, str) else "['layer2.0.conv1']"
        raise InvalidArgument(
            f"layers must be a list of layer names, found {describe(layers)}; pass e.g. "
            f"{conversion.name}(model, layers={shown})"
        )
    for name in layers:
        if not isinstance(name, str):
            raise InvalidArgument(
                f"layers must hold names from model.named_modules() (str), found {describe(name)}"
            )
        find_layer(model, name)  # an unknown name is refused with the close ones
    return list(layers)


def _chosen(
    tree: _Tree, names: list[str] | None, conversion: _Conversion
) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module, str]]]:
    """The layers to convert, and those the conversion is about but cannot convert (with why)."""
    chosen: list[tuple[str, nn.Module]] = []
    left: list[tuple[str, nn.Module, str]] = []
    seen: set[int] = set()

    def consider(name: str, module: nn.Module) -> None:
        if id(module) in seen or not conversion.applies(module):
            return
        seen.add(id(module))
        why = conversion.why_not(module)
        if why is None:
            chosen.append((name, module))
        else:
            left.append((name, module, why))

    if names is None:
        for name, module in tree.modules.items():
            consider(name, module)
        return chosen, left
    for name in names:
        module = find_layer(tree.root, name)
        if conversion.applies(module):
            why = conversion.why_not(module)
            if why is not None:
                raise InvalidArgument(
                    f"{conversion.name} cannot convert {name!r} ({type(module).__name__}): {why}"
                )
            consider(name, module)
            continue
        inside = [(f"{name}.{sub}", m) for sub, m in module.named_modules() if sub and conversion.applies(m)]
        if not inside:
            raise InvalidArgument(
                f"{name!r} ({type(module).__name__}) is not one of the {conversion.about} that "
                f"{conversion.name} converts, and holds none; pass the names of such layers, e.g. those "
                "a profile names"
            )
        for sub, m in inside:
            consider(sub, m)
    return chosen, left


# -- which layers subsample or pad ------------------------------------------------------------------


def _stride_of(module: nn.Module) -> tuple[int, ...] | None:
    """A convolution's, pooling's or blur's stride per dim (None for other layers)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return tuple(module.stride)
    if isinstance(module, _POOLS):
        stride: object = module.stride if module.stride is not None else module.kernel_size
        d = _pool_dims(module)
        return tuple(stride) if isinstance(stride, (tuple, list)) else (as_int(stride, "stride"),) * d
    if isinstance(module, BlurPool):
        return (module.stride,) if isinstance(module.stride, int) else tuple(module.stride)
    return None


def _pool_dims(module: nn.Module) -> int:
    return next(d for d, kinds in _POOL_DIMS.items() if isinstance(module, kinds))


def _unknown_stride(module: nn.Module) -> bool:
    """A leaf of another kind that keeps a stride above 1 (or rearranges space into channels)."""
    if isinstance(module, nn.PixelUnshuffle):
        return True
    if isinstance(module, (PolyphaseSampling, nn.modules.conv._ConvNd, nn.Fold)) or any(module.children()):
        return False  # adaptive already, or a transposed convolution or a fold: they upsample
    stride = getattr(module, "stride", None)
    values = stride if isinstance(stride, (tuple, list)) else (stride,)
    return any(isinstance(s, int) and not isinstance(s, bool) and s > 1 for s in values)


def _subsamples(module: nn.Module) -> bool:
    """A layer antialias is about: it subsamples and does not blur first."""
    return not isinstance(module, BlurPool) and not _blurs(module) and _subsamples_or_blurs(module)


def _subsamples_or_blurs(module: nn.Module) -> bool:
    """A layer polyphase is about: it subsamples, blurring first or not."""
    stride = _stride_of(module)
    return any(s > 1 for s in stride) if stride is not None else _unknown_stride(module)


def _blurs(module: nn.Module) -> bool:
    """A layer of another library that low-pass filters with a fixed kernel before it subsamples."""
    if _stride_of(module) is not None or any(module.children()):
        return False
    kernels = [
        b for b in module._buffers.values() if b is not None and b.dim() >= 3 and b.is_floating_point()
    ]
    return bool(kernels) and not any(p is not None for p in module._parameters.values())


def _why_not_subsampled(module: nn.Module, attribute: str) -> str | None:
    if isinstance(module, nn.PixelUnshuffle):
        return (
            "a PixelUnshuffle subsamples by moving each grid into channels, and no blur or choice of "
            "grid applies to it; blur its input by hand (BlurPool(stride=1)) if you keep it"
        )
    if _stride_of(module) is None:
        return (
            f"a {type(module).__name__} with a stride is not a layer surgery knows how to run at stride "
            "1; put a BlurPool or PolyphaseSampling after a stride-1 version of it by hand"
        )
    if getattr(module, "return_indices", False):
        return "it returns the indices of its maxima (for MaxUnpool), which would index the stride-1 map"
    if attribute in vars(module) or attribute in module._modules or hasattr(type(module), attribute):
        return f"it already has an attribute {attribute!r}, which the converted layer needs"
    return None


def _why_not_blur(module: nn.Module) -> str | None:
    return _why_not_subsampled(module, "blur")


def _why_not_polyphase(module: nn.Module) -> str | None:
    return _why_not_subsampled(module, "sampling")


def _pads(module: nn.Module) -> bool:
    """A layer circular_padding is about: it pads, and not circularly."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return True
        padded = module.padding == "same" or (not isinstance(module.padding, str) and any(module.padding))
        if padded and module.padding_mode != "circular":
            return True
        # a subclass that computes its own forward may pad there ('same' padding per input size)
        reach = any(k > 1 for k in module.kernel_size)
        return reach and _own_forward(module, _CONVS, ("forward", "_conv_forward")) is not None
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        padding = module.padding
        return any(padding) if isinstance(padding, (tuple, list)) else bool(padding)
    if isinstance(module, _PADS):
        return True
    if isinstance(module, BlurPool):
        return module.filter_size > 1 and module.pad_type != "circular"
    if any(module.children()):
        return False
    found: object = getattr(module, "padding", None)
    values = found if isinstance(found, (tuple, list)) else (found,)
    return any(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in values)


def _why_not_circular(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return (
                "a transposed convolution cannot pad circularly in torch (padding_mode must be 'zeros'): "
                "its overlapping outputs would have to wrap around; replace it by hand (upsampling, then "
                "a circular convolution)"
            )
        return _own_forward(module, _CONVS, ("forward", "_conv_forward"))
    if isinstance(module, _POOLS):
        return _own_forward(module, tuple(k for kinds in _POOL_DIMS.values() for k in kinds), ("forward",))
    if isinstance(module, (*_PADS, BlurPool)):
        return None
    return (
        f"a {type(module).__name__} with padding pads in its own forward, which surgery cannot change; "
        "replace it by hand with a circularly padded layer"
    )


def _own_forward(module: nn.Module, bases: tuple[type, ...], methods: tuple[str, ...]) -> str | None:
    """Why a subclass of torch's layer that computes its own forward cannot be made to pad circularly."""
    for cls in type(module).__mro__:
        if cls in bases:
            return None
        if cls.__module__ == "equivariance.downsampling":
            continue
        defined = [m for m in methods if m in vars(cls)]
        if defined:
            return (
                f"{cls.__name__} defines its own {defined[0]}, which may pad its own way (with zeros, "
                "'same' padding computed per input); replace it by hand with a circularly padded layer"
            )
    return None


# -- how a layer is converted -----------------------------------------------------------------------


def _stride_one(module: nn.Module) -> tuple[int, ...] | int:
    """Sets the layer to stride 1 and returns the stride it had (an int where it was one)."""
    stride = _stride_of(module)
    assert stride is not None
    old = getattr(module, "stride", None)
    if isinstance(module, nn.modules.conv._ConvNd) or not (isinstance(old, int) or old is None):
        setattr(module, "stride", (1,) * len(stride))  # noqa: B010  (an attribute torch's types declare otherwise)
    else:
        setattr(module, "stride", 1)  # noqa: B010
    return old if isinstance(old, int) else stride


def _blurred(tree: _Tree, name: str, module: nn.Module, options: _Options) -> None:
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        per_dim = _stride_of(module)
        assert per_dim is not None
        shown = per_dim[0] if len(set(per_dim)) == 1 else per_dim
        tree.replace(module, BlurPool(shown, options.filter_size, options.pad_type))
        return
    if isinstance(module, nn.modules.conv._ConvNd) and _blur_after_activation(tree, module, options):
        return
    stride = _stride_one(module)
    module.__class__ = converted_class("Antialiased", type(module))
    module.add_module("blur", BlurPool(stride, options.filter_size, options.pad_type))


def _blur_after_activation(tree: _Tree, conv: nn.Module, options: _Options) -> bool:
    """Zhang's ConvBlurPool: in an ``nn.Sequential``, a convolution followed by its activation (after a
    BatchNorm, say) runs at stride 1 and the blur follows the activation. False where that cannot be
    told from the structure (the convolution is then blurred right away)."""
    holders = tree.holders.get(id(conv), [])
    if len(holders) != 1 or not isinstance(holders[0][0], nn.Sequential) or tree.uses.get(id(conv), 0) != 1:
        return False
    parent, key = holders[0]
    keys = list(parent._modules)
    activation = None
    for following in keys[keys.index(key) + 1 :]:
        module = parent._modules[following]
        if isinstance(module, _ACTIVATIONS):
            activation = following
            break
        if not isinstance(module, _POINTWISE):
            return False
    act = parent._modules.get(activation) if activation is not None else None
    if act is None or tree.uses.get(id(act), 0) != 1 or _stateful(act):
        return False
    stride = _stride_one(conv)
    blur = BlurPool(stride, options.filter_size, options.pad_type)
    parent._modules[activation] = nn.Sequential(act, blur)  # type: ignore[index]
    return True


def _stateful(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _polyphased(tree: _Tree, name: str, module: nn.Module, options: _Options) -> None:
    stride = _stride_one(module)
    module.__class__ = converted_class("Polyphase", type(module))
    sampling = PolyphaseSampling(stride, options.filter_size, options.pad_type)
    module.add_module("sampling", sampling)


def _made_circular(tree: _Tree, name: str, module: nn.Module, options: _Options) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        module.padding_mode = "circular"
    elif isinstance(module, _POOLS):
        d = _pool_dims(module)
        padding = getattr(module, "padding", 0)
        per_dim = tuple(padding) if isinstance(padding, (tuple, list)) else (int(padding),) * d
        setattr(module, "padding", 0)  # noqa: B010
        module.__class__ = converted_class("Circular", type(module))  # type: ignore[assignment]
        setattr(module, "circular_padding", per_dim)  # noqa: B010
    elif isinstance(module, _PADS):
        padding = tuple(module.padding)
        tree.replace(module, _CIRCULAR_PADS[len(padding) // 2](padding))
    elif isinstance(module, BlurPool):
        module.pad_type = "circular"
