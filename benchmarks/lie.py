"""What the Lie derivative costs next to a sweep of 121 shifts of the same model.

Measures, in one run and on the same machine, taking the calls in turn in
every round (so a ratio within a round is not skewed by load that comes and
goes):

(a) one bare forward pass of the batch (no autograd);
(b) ``lie_derivative_error`` under a translation: one forward pass with a
    Jacobian-vector product, in isolation like a check;
(c) ``check_equivariance`` over the 121 integer shifts of [-5, 5]^2;
(d) ``profile_lie_derivative``: the contributions of every layer (one jvp
    vectorized over the layers).

It reports the median times and the medians of the ratios within rounds:
sweep/Lie (how many Lie derivatives one sweep costs), Lie/forward and
profile/Lie. Nothing is asserted: this is a benchmark, not a timed test.

Workloads: the seed's LeNet conv4 map on a 38x38 canvas, batch 8 (its
valid convolutions are not circular, which changes the value of the Lie
derivative but not its cost); a 4-layer conv net (3x3 convolutions and
ReLUs) on 64x64, batch 4.

    python benchmarks/lie.py [--repeats 7] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from equivariance import check_equivariance, shifts_in_box
from equivariance.lie import lie_derivative_error, profile_lie_derivative
from equivariance.models import LeNet

HEADER = (
    "workload", "forward", "Lie derivative", "121-shift check", "sweep/Lie", "Lie/forward", "per-layer",
    "per-layer/Lie",
)  # fmt: skip


class LeNetFeatures(nn.Module):
    """The seed's LeNet up to its ReLU'd conv4 map, as a module (so its layers can be profiled)."""

    def __init__(self) -> None:
        super().__init__()
        self.lenet = LeNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lenet.features(x)


def workloads() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    canvas = torch.zeros(8, 1, 38, 38)
    canvas[..., 5:33, 5:33] = torch.rand(8, 1, 28, 28)
    layers: list[nn.Module] = []
    channels = 3
    for out in (32, 64, 64, 64):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
        channels = out
    return [
        ("LeNet conv4, 38x38, batch 8", LeNetFeatures().eval(), canvas),
        ("4-layer conv net, 64x64, batch 4", nn.Sequential(*layers).eval(), torch.randn(4, 3, 64, 64)),
    ]


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(label: str, model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[str, ...]:
    def forward() -> object:
        with torch.no_grad():
            return model(x)

    calls: list[Callable[[], object]] = [
        forward,
        lambda: lie_derivative_error(model, x),
        lambda: check_equivariance(model, x, shifts=shifts_in_box(5)),
        lambda: profile_lie_derivative(model, x),
    ]
    for call in calls:  # warm up: the first forward-mode pass loads torch's decompositions
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, series in zip(calls, times):
            series.append(seconds(call))
    bare, lie, sweep, profile = times

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{statistics.median(p / q for p, q in zip(a, b)):.1f}"

    medians = [f"{statistics.median(t):.3f}s" for t in times]
    return (label, *medians[:3], ratio(sweep, lie), ratio(lie, bare), medians[3], ratio(profile, lie))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--markdown", default=None, help="write the table into this page between markers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    title = (
        f"torch {torch.__version__} on {platform.machine()} CPU, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} rounds"
    )
    rows = [row(label, model, x, args.repeats) for label, model, x in workloads()]
    print(title)
    print(" | ".join(HEADER))
    for cells in rows:
        print(" | ".join(cells))
    if args.markdown:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from speed import write_markdown

        write_markdown(
            args.markdown, title, rows, "cpu", HEADER, command="python benchmarks/lie.py", script="lie.py"
        )


if __name__ == "__main__":
    main()
