"""Peak memory of a long sweep: 1,024 shifts of a ResNet-18-sized network on 224x224.

Runs ``check_invariance`` (the network's output compared whole, so every
shift, not only multiples of the total stride 32, is a valid one) over a
32x32 box of shifts, 1,024 in all, with ``batch_size="auto"``, and reports the
time, the chunk size chosen and the peak memory above the memory in use
before: ``torch.cuda.max_memory_allocated`` on CUDA, the peak resident set
(``VmHWM``) on the CPU.

    python benchmarks/memory.py [--device cpu] [--batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from speed import peak_memory, resnet18_trunk

from equivariance import Shift, check_invariance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = resnet18_trunk().to(args.device).eval()
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    shifts = [Shift((i, j)) for i in range(-16, 16) for j in range(-16, 16)]
    reports = []
    start = time.perf_counter()
    peak = peak_memory(
        lambda: reports.append(check_invariance(model, x, shifts, batch_size="auto")), args.device
    )
    seconds = time.perf_counter() - start
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__} on {name}: {len(shifts)} shifts x batch {args.batch} of a "
        f"ResNet-18 trunk at 224x224 in {seconds:.1f}s, chunks of {reports[0].batch_size}, "
        f"peak {'n/a' if peak is None else f'{peak:.0f} MiB'} above the start"
    )


if __name__ == "__main__":
    main()
