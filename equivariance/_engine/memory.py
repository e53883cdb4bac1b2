"""Chunk sizes from memory: ``batch_size="auto"`` and the retry after a CUDA out-of-memory error.

The bytes a sample needs are read from the unshifted pass (or the first chunk): every leaf module's
output plus the input and output. ``"auto"`` fits a chunk into half the free CUDA memory, or
``CPU_BUDGET_BYTES`` on the CPU; a chunk that still runs out is halved, down to one sample
(docs/benchmarks.md, "Memory and long sweeps").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

CPU_BUDGET_BYTES = 256 * 2**20
"""Activation memory per forward pass that ``batch_size="auto"`` aims for on the CPU."""

CUDA_FREE_FRACTION = 0.5
"""The share of the GPU's free memory that ``batch_size="auto"`` lets one chunk use."""

CPU_CHUNK_BYTES = 16 * 2**20
"""Activation memory per forward pass that the default chunks aim for on the CPU.

Measured with ``benchmarks/speed.py`` on a 2-core CPU: the seed's LeNet on 38x38
canvases (0.34 MiB of activations a sample) ran its check 1.2x faster in chunks
of 32 to 94 samples than of 181 (the earlier default of 2**18 input elements),
and bare forward passes over its 976 canvases, timed in turn in chunks of 4 to
90, were fastest in chunks of 32 to 45 and 10 to 20% slower in chunks of 64 and
90, whose larger allocations the C allocator hands back and takes again: 16 MiB
gives chunks of 45. The 4-layer net (5.9 MiB a sample) was within noise from 4
to 21 samples.
"""

CPU_MIN_CHUNK = 8
"""Samples a default CPU chunk holds at least (within :data:`CPU_BUDGET_BYTES`).

Large models run poorly one sample at a time: the ResNet-18 trunk on 224x224
(25 MiB of activations a sample) ran its check 1.25x faster in chunks of 8
than of 1.
"""


class ActivationMeter:
    """Counts the bytes of the outputs of a model's leaf modules during forward passes."""

    def __init__(self, enabled: bool = True) -> None:
        self.bytes = 0
        self.enabled = enabled

    def add(self, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.bytes += output.numel() * output.element_size()
        elif isinstance(output, (tuple, list)):
            for item in output:
                self.add(item)
        elif isinstance(output, dict):
            for item in output.values():
                self.add(item)


@contextlib.contextmanager
def metered(model: Callable[..., Any] | None, enabled: bool = True) -> Iterator[ActivationMeter]:
    """Within the block, count the bytes every leaf module of ``model`` outputs."""
    meter = ActivationMeter(enabled)
    if not enabled:
        yield meter
        return
    handles = []
    # a bound method of a module (``model.features``) runs that module's layers
    owner = getattr(model, "__self__", model)
    if isinstance(owner, nn.Module):
        for module in owner.modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_hook(lambda _m, _i, out: meter.add(out)))
    try:
        yield meter
    finally:
        for handle in handles:
            handle.remove()


DEFAULT_BATCH_ELEMENTS = {"cpu": 2**18, "cuda": 2**22}
"""Input elements per forward pass before anything is metered: a GPU wants large batches to fill its
cores; on the CPU the chunks are sized from the metered activations instead."""


def default_batch_size(x: torch.Tensor) -> int:
    """Samples per forward pass by input size: about 2**22 input elements on a GPU, 2**18 on the CPU.

    Examples:
        >>> default_batch_size(torch.zeros(1, 1, 64, 64))
        64
    """
    budget = DEFAULT_BATCH_ELEMENTS.get(x.device.type, DEFAULT_BATCH_ELEMENTS["cuda"])
    return max(1, budget // max(1, x[0].numel()))


def auto_batch_size(per_sample: int, device: torch.device, total: int) -> int:
    """Samples per chunk that fit the memory budget of ``device``, between 1 and ``total``.

    Examples:
        >>> auto_batch_size(2**20, torch.device("cpu"), total=10_000)  # 1 MiB a sample
        256
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_FREE_FRACTION)
    else:
        budget = CPU_BUDGET_BYTES
    return max(1, min(total, budget // max(1, per_sample)))


def default_cpu_batch_size(per_sample: int, total: int) -> int:
    """Samples per chunk on the CPU when the caller does not say: about
    ``CPU_CHUNK_BYTES`` of
    activations, at least ``CPU_MIN_CHUNK`` samples where
    ``CPU_BUDGET_BYTES`` allows,
    between 1 and ``total``.

    Examples:
        >>> default_cpu_batch_size(2**20, total=10_000)  # 1 MiB a sample
        16
    """
    per_sample = max(1, per_sample)
    at_least = min(CPU_MIN_CHUNK, CPU_BUDGET_BYTES // per_sample)
    return max(1, min(total, max(CPU_CHUNK_BYTES // per_sample, at_least)))


def chunk_size(batch_size: int | str | None, x: torch.Tensor, per_sample: int, total: int) -> int:
    """The chunk size a measurement uses: the caller's, ``"auto"`` (fill the memory budget), or
    the default (activations on the CPU, input elements elsewhere); ``per_sample`` is the metered
    bytes a sample."""
    if batch_size == "auto":
        return auto_batch_size(per_sample, x.device, total)
    if batch_size is None:
        if x.device.type != "cpu":
            return min(total, default_batch_size(x))
        if per_sample:
            return balanced(default_cpu_batch_size(per_sample, total), total)
        return min(total, CPU_MIN_CHUNK)  # not metered: a sweep small enough for one default chunk
    assert isinstance(batch_size, int)
    return batch_size


def balanced(size: int, total: int) -> int:
    """A chunk size near ``size`` that splits ``total`` into chunks of about equal size.

    A sweep of 9 in chunks of 8 would end with a chunk of one, a forward pass
    of its own: it runs as one chunk of 9 instead; 976 in chunks of about 45
    as 22 chunks of 45 or 44. A chunk grows by at most half.

    Examples:
        >>> balanced(8, 9), balanced(45, 976), balanced(8, 104), balanced(8, 12)
        (9, 45, 8, 6)
    """
    chunks = max(1, round(total / size))
    return -(-total // chunks)


def release_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back before retrying a smaller chunk."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
