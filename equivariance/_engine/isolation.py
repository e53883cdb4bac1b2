"""Run a model for a check without leaving a trace on it or on torch's global state.

A check must leave the caller's world exactly as it found it: every module's
training flag, the model's parameters and buffers (BatchNorm running
statistics and anything a forward pass updates), the global RNG state on the
CPU and on CUDA, and the TF32 settings. Inside ``isolated`` the model
is in eval mode, autograd is
off and TF32 is disabled so float32 results are not silently rounded to
10-bit mantissas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

# The fp32_precision leaves introduced alongside the legacy allow_tf32 flags.
# torch refuses to read a legacy flag once the new API was used, so when the
# new API exists only it is touched.
_PRECISION_PATHS = (
    ("cuda", "matmul"),
    ("cudnn", "conv"),
    ("cudnn", "rnn"),
    ("mkldnn", "matmul"),
    ("mkldnn", "conv"),
    ("mkldnn", "rnn"),
)


def _precision_leaves() -> list[Any]:
    leaves = []
    for path in _PRECISION_PATHS:
        obj: Any = torch.backends
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "fp32_precision"):
            leaves.append(obj)
    return leaves


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disable TF32 (and other reduced-precision float32 paths) for the block, then restore."""
    leaves = _precision_leaves()
    if leaves:
        saved_new = [leaf.fp32_precision for leaf in leaves]
        try:
            for leaf in leaves:
                leaf.fp32_precision = "ieee"
            yield
        finally:
            for leaf, value in zip(leaves, saved_new):
                leaf.fp32_precision = value
        return
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[2])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global CPU and (if initialised) CUDA RNG states after the block."""
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def submodules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """``list(module.modules())``, each once, without building the dotted names ``modules()`` makes."""
    found: list[torch.nn.Module] = []
    seen: set[int] = set()
    stack = [module]
    while stack:  # depth first, in ``modules()``'s order; a list per parent, not a generator
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        if current._modules:
            stack.extend(reversed([child for child in current._modules.values() if child is not None]))
    return found


def owning_module(model: Callable[..., Any]) -> torch.nn.Module | None:
    """The module a callable runs: the model itself, or the module of a bound method (``model.features``)."""
    owner = getattr(model, "__self__", model)
    return owner if isinstance(owner, torch.nn.Module) else None


@contextlib.contextmanager
def eval_mode(model: Callable[..., Any], modules: list[torch.nn.Module] | None = None) -> Iterator[None]:
    """Put every submodule in eval mode, restoring each one's own flag afterwards.

    A model already in eval mode is left alone: nothing is set, nothing restored.
    ``modules``: the model's submodules where the caller has them already.
    """
    owner = owning_module(model)
    if modules is None:
        modules = [] if owner is None else submodules(owner)
    flags = [module.training for module in modules]
    if not any(flags):
        yield
        return
    try:
        assert owner is not None
        owner.eval()  # through eval(), which a model may override
        yield
    finally:
        for module, training in zip(modules, flags):
            if module.training != training:
                module.training = training


@contextlib.contextmanager
def preserved_buffers(
    model: Callable[..., Any], modules: list[torch.nn.Module] | None = None
) -> Iterator[None]:
    """Put back every buffer (object and value) after the block.

    Eval mode already keeps BatchNorm's statistics still; this also covers
    models that update buffers in their own forward (counters, caches). A
    buffer is written back only if it was replaced or changed in place (its
    version counter moved). Parameters are not copied: a copy would double the
    model's memory, and a forward pass under no_grad that writes to its
    parameters is a bug.
    """
    if modules is None:
        owner = owning_module(model)
        modules = [] if owner is None else submodules(owner)
    saved = [
        (module, name, buffer, buffer._version, buffer.clone())
        for module in modules
        for name, buffer in module._buffers.items()
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, buffer, version, copy in saved:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                if buffer._version == version:
                    continue
                if buffer.shape != copy.shape:
                    buffer.resize_(copy.shape)
                buffer.copy_(copy)


@contextlib.contextmanager
def isolated(model: Callable[..., Any]) -> Iterator[None]:
    """Eval mode, no autograd, exact float32, preserved RNG and buffers, all undone on exit."""
    owner = owning_module(model)
    modules = [] if owner is None else submodules(owner)
    with (
        eval_mode(model, modules),
        preserved_buffers(model, modules),
        torch.no_grad(),
        exact_float32(),
        preserved_rng(),
    ):
        yield


def snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` as it is now, which later in-place writes to either leave alone (a model
    that writes to its input, an in-place ReLU, a residual ``out += identity``, an output buffer
    reused on the next call)."""
    return tensor.detach().clone()


def private_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``snapshot`` that keeps ``tensor``'s autograd graph: a copy the caller may write to (dense,
    even of an expanded tensor)."""
    return tensor.clone()
