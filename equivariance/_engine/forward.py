"""Calling the model under test: a named layer's output, an output selector, clear failures.

``call_until`` stops a forward pass once a named layer has returned (a forward hook that raises a
private exception), so a check's ``layer=`` and a profile's ``up_to=`` never run the rest of the model:
a head that takes one input size does not stop its convolutions from being checked on a larger canvas.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from equivariance._engine.parts import Arguments, Call, Graphs, OutputParts
from equivariance._engine.validation import describe, kind_of
from equivariance.errors import InvalidArgument

OutputSelector = int | str | Callable[[Any], torch.Tensor] | None


class _StopForward(BaseException):
    """Raised by the layer hook once the layer's output is recorded.

    A BaseException, so that a model's own ``except Exception`` cannot swallow it.
    """


class Forward:
    """How to get the tensor under test from the model: which layer, which output.

    The layer name is looked up once, when the Forward is made, so a typo is
    reported before any forward pass runs. With ``parts`` (a model of several
    outputs, each with its field type), the outputs are laid side by side in
    one ``(N, total)`` tensor (see `equivariance._engine.parts`); the parts
    are read off the first call's result, ``f(x)``.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        layer: str | None = None,
        output: OutputSelector = None,
        parts: OutputParts | None = None,
    ) -> None:
        if not callable(model):
            raise InvalidArgument(
                f"model must be a torch.nn.Module or a callable from tensor to tensor, "
                f"found {describe(model)}; pass the model itself, e.g. check_equivariance(model, x)"
            )
        self.model = model
        self.layer = layer
        self.output = output
        self.parts = parts
        self.module = None if layer is None else find_layer(model, layer)

    def name(self) -> str:
        """How reports name what was measured, e.g. ``LeNet.conv4``."""
        model = self.model
        if isinstance(model, nn.Module):
            base = type(model).__name__
        else:
            base = getattr(model, "__name__", type(model).__name__)
        return f"{base}.{self.layer}" if self.layer else base

    def __call__(self, x: torch.Tensor | Call, batch_note: str = "", *, detach: bool = True) -> torch.Tensor:
        """The tensor under test (the parts side by side, detached unless ``detach=False``)."""
        result = self._call_model(x, batch_note)
        if self.parts is not None:
            if self.output is not None:
                result = pick_output(result, self.output, self.layer)
            nodes = x.nodes() if isinstance(x, Graphs) else None
            if not self.parts.parts:  # the first call, f(x): its outputs fix the parts
                self.parts = self.parts.measured(result, self._subject(), nodes)
            return self.parts.flatten(result, len(x), self._subject(), nodes, detach=detach)
        selected = select_output(result, self.output, self.layer)
        if selected.dim() == 0 or selected.shape[0] != len(x):
            raise InvalidArgument(
                f"{self._subject()} returned a tensor of shape {tuple(selected.shape)} for an input "
                f"batch of {len(x)}; the first dim of the output must be the batch dim: pass output= "
                "to pick or reshape the tensor to check"
            )
        if selected.device.type == "meta":
            raise InvalidArgument(
                f"{self._subject()} returned a tensor on the meta device, which holds shapes but no values; "
                "load the model's weights (e.g. model.to_empty(device='cpu') and load_state_dict) first"
            )
        return selected

    def _subject(self) -> str:
        return f"layer {self.layer!r}" if self.layer else "the model"

    def _call_model(self, x: torch.Tensor | Call, batch_note: str) -> Any:
        try:
            result, reached = call_until(self.model, x, self.module)
        except (InvalidArgument, torch.cuda.OutOfMemoryError):
            raise  # out of memory: the engine retries with a smaller chunk
        except Exception as exc:
            first = x.first if isinstance(x, (Arguments, Graphs)) else x
            shown = (
                x.describe() if isinstance(x, (Arguments, Graphs)) else f"an input of shape {tuple(x.shape)}"
            )
            raise InvalidArgument(
                f"the model raised {type(exc).__name__} on {shown} "
                f"({first.dtype}, {first.device}): {exc}{batch_note}"
            ) from exc
        if not reached:
            raise InvalidArgument(
                f"layer {self.layer!r} was never called during the forward pass, so its output "
                "cannot be measured; pass the name of a layer that the model's forward uses"
            )
        return result


def call_until(
    model: Callable[..., Any], x: torch.Tensor | Call, module: nn.Module | None
) -> tuple[Any, bool]:
    """``model(x)`` (``model(*args, **kwargs)`` for ``Arguments``), stopped as soon as ``module``
    returns; and whether ``module`` ran.

    With ``module``, a forward hook records its first output and raises
    ``_StopForward``, so the rest of the model never runs, and that
    output is returned. Without one, or if it is never called, the model's
    own result is returned. Hooks registered on ``module`` before this call
    run before the one that stops the pass. What the model raises propagates.
    """
    if module is None:
        return _invoke(model, x), True
    captured: list[Any] = []

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        captured.append(out)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        return _invoke(model, x), False
    except _StopForward:
        return captured[0], True
    finally:
        handle.remove()


def _invoke(model: Callable[..., Any], x: torch.Tensor | Call) -> Any:
    return x.call(model) if isinstance(x, (Arguments, Graphs)) else model(x)


def find_layer(model: Callable[..., Any], name: str, argument: str = "layer") -> nn.Module:
    """The submodule called ``name``, or InvalidArgument listing the close names; ``argument``: the
    keyword that named it (``layer``, ``up_to``; ``layers`` and ``layouts`` name several)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"{argument}={name!r} needs an nn.Module to look the layer up in, found {describe(model)}; "
            f"pass the module itself or drop {argument}="
        )
    if not isinstance(name, str):
        several = argument in ("layers", "layouts")
        example = {"layers": "layers=['conv4']", "layouts": "layouts={'conv4': 'channels_last'}"}
        raise InvalidArgument(
            f"{argument} {'must name submodules' if several else 'must be a submodule name'} (str), found "
            f"{describe(name)}; pass {'names' if several else 'a name'} from model.named_modules(), e.g. "
            f"{example.get(argument, f'{argument}=' + repr('conv4'))}"
        )
    # torch.compile wraps the model in an OptimizedModule whose submodules are
    # named "_orig_mod.<name>"; the caller knows them by their own names
    original = getattr(model, "_orig_mod", None)
    lookup = original if isinstance(original, nn.Module) else model
    modules = dict(lookup.named_modules())
    modules.pop("", None)
    if name in modules:
        module: nn.Module = modules[name]
        return module
    names = list(modules)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    listing = close or names[:10]
    label = "close names" if close else "its layers include"
    found = ", ".join(map(repr, listing)) if listing else "none (it has no submodules)"
    raise InvalidArgument(
        f"{type(model).__name__} has no layer named {name!r}; {label}: {found}. "
        "Names are those of model.named_modules(); pass one of them"
    )


def select_output(result: Any, output: OutputSelector, layer: str | None) -> torch.Tensor:
    """The tensor under test from whatever the model (or layer) returned."""
    subject = f"layer {layer!r}" if layer else "the model"
    selected = pick_output(result, output, layer)
    if isinstance(selected, torch.Tensor):
        return selected
    if output is None and isinstance(result, (tuple, list, Mapping)):
        raise InvalidArgument(f"{subject} returned {kind_of(result)}, not a tensor; {_how_to_select(result)}")
    raise InvalidArgument(
        f"the selected output must be a torch.Tensor, found {describe(selected)}; "
        "pass output= to pick a tensor out of what the model returns"
    )


def pick_output(result: Any, output: OutputSelector, layer: str | None) -> Any:
    """What ``output=`` picks from whatever the model (or layer) returned (all of it for None)."""
    subject = f"layer {layer!r}" if layer else "the model"
    if output is None:
        selected = result
    elif callable(output):
        try:
            selected = output(result)
        except Exception as exc:
            raise InvalidArgument(
                f"output= raised {type(exc).__name__} on subject {subject} returned "
                f"({kind_of(result)}): {exc}"
            ) from exc
    elif isinstance(output, (int, str)) and not isinstance(output, bool):
        if isinstance(result, torch.Tensor):
            raise InvalidArgument(
                f"output={output!r} picks from a tuple or dict, but {subject} returned "
                f"{kind_of(result)}; drop output=, or pass a callable to transform the tensor"
            )
        try:
            selected = result[output]
        except (KeyError, IndexError, TypeError):
            raise InvalidArgument(
                f"output={output!r} does not select anything from subject {subject} returned "
                f"({kind_of(result)}); {_how_to_select(result)}"
            ) from None
    else:
        raise InvalidArgument(
            f"output must be an int index, a str key or a callable, found {describe(output)}; pass e.g. "
            "output=0, output='logits' or output=lambda y: y.logits"
        )
    return selected


def _how_to_select(result: Any) -> str:
    if isinstance(result, Mapping):
        keys = [k for k, v in result.items() if isinstance(v, torch.Tensor)]
        example = repr(keys[0]) if keys else "'key'"
        return f"pass output={example} (a key) or a callable to choose the tensor to check"
    if isinstance(result, (tuple, list)):
        return "pass output=0 (an index) or a callable to choose the tensor to check"
    return "pass output= (an index, a key or a callable) to choose the tensor to check"
