"""How close a check runs to the cost of its forward passes.

Measures, in one run and on the same machine:

(a) ``check_equivariance`` over K shifts of a batch of N images;
(b) a plain per-shift loop doing the same comparison, one forward pass per
    shift (the way hand-written checkers work);
(c) the floor: bare forward passes over the same (K + 2) * N images in the
    same chunks (the shifted copies, the unshifted batch and the identity
    shift the check adds for its noise floor).

It reports medians over repeated runs and the ratios check/floor (the cost
of everything but the model) and loop/check. Nothing is asserted: this is a
benchmark, not a timed test.

    python benchmarks/speed.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from equivariance import Shift, check_equivariance, shifts_in_box
from equivariance.metric import default_batch_size
from equivariance.models import LeNet


def lenet_workload(
    device: str,
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, list[Shift]]:
    model = LeNet().to(device).eval()
    x = torch.zeros(8, 1, 38, 38, device=device)
    x[..., 5:33, 5:33] = torch.rand(8, 1, 28, 28, device=device)
    return "LeNet conv4, 38x38, batch 8, 121 shifts", model.features, x, shifts_in_box(5, ndim=2)


def convnet_workload(
    device: str,
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, list[Shift]]:
    layers: list[nn.Module] = []
    channels = 3
    for out in (32, 64, 64, 64):
        layers += [nn.Conv2d(channels, out, 3), nn.ReLU()]
        channels = out
    model = nn.Sequential(*layers).to(device).eval()
    x = torch.randn(4, 3, 64, 64, device=device)
    return "4-layer conv net, 64x64, batch 4, 25 shifts", model, x, shifts_in_box(2, ndim=2)


def per_shift_loop(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shifts: list[Shift]
) -> float:
    """The naive checker: one forward pass per shift, errors on the valid region."""
    worst = 0.0
    with torch.no_grad():
        y = model(x)
        for shift in shifts:
            moved = model(shift.apply(x))
            expected = shift.apply(y)
            region = (..., *shift.valid_region(tuple(y.shape[2:])))
            diff = (moved - expected)[region].flatten(1).norm(dim=1)
            worst = max(worst, float((diff / expected[region].flatten(1).norm(dim=1)).max()))
    return worst


def floor(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shifts: list[Shift]) -> None:
    """Bare forward passes over the images a check runs, in the check's chunks."""
    batch = default_batch_size(x)
    images = x.repeat(len(shifts) + 1, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        model(x)
        for start in range(0, len(images), batch):
            model(images[start : start + batch])


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"torch {torch.__version__} on {name}; medians of {args.repeats} runs\n")
    print(f"{'workload':<44} {'floor':>8} {'check':>8} {'loop':>8} {'check/floor':>12} {'loop/check':>11}")
    for workload in (lenet_workload, convnet_workload):
        print(row(*workload(args.device), args.repeats, args.device))


def row(
    label: str,
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    shifts: list[Shift],
    repeats: int,
    device: str,
) -> str:
    def run_floor() -> None:
        floor(model, x, shifts)

    def run_check() -> None:
        check_equivariance(model, x, shifts)

    def run_loop() -> None:
        per_shift_loop(model, x, shifts)

    run_floor()  # warm up kernels and allocators
    run_check()
    t_floor = timed(run_floor, repeats, device)
    t_check = timed(run_check, repeats, device)
    t_loop = timed(run_loop, repeats, device)
    return (
        f"{label:<44} {t_floor:7.3f}s {t_check:7.3f}s {t_loop:7.3f}s "
        f"{t_check / t_floor:12.2f} {t_loop / t_check:11.2f}"
    )


if __name__ == "__main__":
    main()
