"""Chunk sizes from memory: ``batch_size="auto"`` and the retry after a CUDA out-of-memory error.

The memory a forward pass needs per sample is estimated from the unshifted
pass the engine runs anyway: the bytes of every leaf module's output (an upper
bound on the activations alive at once without autograd) plus the input,
divided by the batch. ``"auto"`` then fits as many samples into a chunk as a
budget allows:

- on CUDA, half of the free memory reported by ``torch.cuda.mem_get_info``
  (the other half covers convolution workspaces and the allocator's slack);
- on the CPU, :data:`CPU_BUDGET_BYTES` (256 MiB), since a CPU has no free
  memory figure worth trusting and gains little from larger batches.

If a chunk still runs out of CUDA memory, the engine halves the chunk and
tries again, down to one sample.
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

CPU_CHUNK_BYTES = 32 * 2**20
"""Activation memory per forward pass that the default chunks aim for on the CPU.

Measured with ``benchmarks/speed.py`` on a 2-core CPU: the seed's LeNet on 38x38
canvases (0.34 MiB of activations a sample) ran its check 1.2x faster in chunks
of 32 to 94 samples than of 181 (the earlier default of 2**18 input elements);
the 4-layer net (5.9 MiB a sample) was within noise from 4 to 21 samples.
"""

CPU_MIN_CHUNK = 8
"""Samples a default CPU chunk holds at least (within :data:`CPU_BUDGET_BYTES`).

Large models run poorly one sample at a time: the ResNet-18 trunk on 224x224
(25 MiB of activations a sample) ran its check 1.25x faster in chunks of 8
than of 1.
"""


class ActivationMeter:
    """Counts the bytes of the outputs of a model's leaf modules during forward passes."""

    def __init__(self) -> None:
        self.bytes = 0

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
def metered(model: Callable[..., Any], enabled: bool = True) -> Iterator[ActivationMeter]:
    """Within the block, count the bytes every leaf module of ``model`` outputs."""
    meter = ActivationMeter()
    handles = []
    # a bound method of a module (``model.features``) runs that module's layers
    owner = getattr(model, "__self__", model)
    if enabled and isinstance(owner, nn.Module):
        for module in owner.modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_hook(lambda _m, _i, out: meter.add(out)))
    try:
        yield meter
    finally:
        for handle in handles:
            handle.remove()


def auto_batch_size(x: torch.Tensor, output: torch.Tensor, meter: ActivationMeter, total: int) -> int:
    """Samples per chunk that fit the memory budget of ``x``'s device, between 1 and ``total``.

    >>> meter = ActivationMeter()
    >>> meter.bytes = 4 * 2**20  # 4 MiB of activations for a batch of 4
    >>> auto_batch_size(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), meter, total=10_000)
    255
    """
    per_sample = _bytes_per_sample(x, output, meter)
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        budget = int(free * CUDA_FREE_FRACTION)
    else:
        budget = CPU_BUDGET_BYTES
    return max(1, min(total, budget // per_sample))


def default_cpu_batch_size(x: torch.Tensor, output: torch.Tensor, meter: ActivationMeter, total: int) -> int:
    """Samples per chunk on the CPU when the caller does not say: about :data:`CPU_CHUNK_BYTES` of
    activations, at least :data:`CPU_MIN_CHUNK` samples where :data:`CPU_BUDGET_BYTES` allows,
    between 1 and ``total``.

    >>> meter = ActivationMeter()
    >>> meter.bytes = 4 * 2**20  # 1 MiB of activations a sample
    >>> default_cpu_batch_size(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), meter, total=10_000)
    31
    """
    per_sample = _bytes_per_sample(x, output, meter)
    at_least = min(CPU_MIN_CHUNK, CPU_BUDGET_BYTES // per_sample)
    return max(1, min(total, max(CPU_CHUNK_BYTES // per_sample, at_least)))


def _bytes_per_sample(x: torch.Tensor, output: torch.Tensor, meter: ActivationMeter) -> int:
    """Activations (or 4 outputs' worth where no leaf module reported any), input and output, a sample."""
    measured = meter.bytes if meter.bytes else 4 * output.numel() * output.element_size()
    total = measured + x.numel() * x.element_size() + output.numel() * output.element_size()
    return max(1, total // len(x))


def release_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back before retrying a smaller chunk."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
