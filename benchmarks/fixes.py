"""What the fixes cost: a monitor's call against a training step, a converted model against the original.

Measures, in one run and on the same machine, taking the calls in turn in
every round (a ratio within a round is not skewed by load that comes and
goes), and reports the medians and the medians of the ratios within rounds:

(a) the monitor (``EquivarianceMonitor.measure``) with each measurement, on a
    fixed batch of 64 digits, against one training step (forward, backward,
    Adam) of the model on a batch of 32, and against the bare forward passes
    the measurement needs (no autograd, in one batch): the batch once for the
    Lie derivative, twice for one shift, 11 times for the 9 shifts of
    ``max_shift=1`` (with the unshifted batch and the identity), 5 times for
    the one-pixel shifts, twice for one pair of consistency;
(b) the forward pass of a converted model against the original's, for the
    example's CNN on 64 digits and ResNet-18 without its pooling head
    (``speed.py``'s trunk, full width) on a batch of 4 images of 112x112.

Nothing is asserted: this is a benchmark, not a timed test.

    python benchmarks/fixes.py [--repeats 7] [--threads N] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from equivariance.datasets import digits
from equivariance.monitor import EquivarianceMonitor
from equivariance.surgery import antialias, circular_padding, polyphase

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from fix_digits import cnn  # noqa: E402  (the example's model)

MONITOR_HEADER = (
    "measurement, 64 digits",
    "per call",
    "train step",
    "call/step",
    "forwards",
    "call/forwards",
)
MONITORED: list[tuple[str, dict[str, Any], int]] = [
    ("lie_derivative", {}, 1),
    ("invariance_error", {"shift": (1, 0)}, 2),
    ("check_invariance", {"max_shift": 1}, 11),
    ("prediction_change", {}, 5),
    ("consistency", {}, 2),
]
"""Each measurement, its options, and how many times it runs the batch through the model."""

CONVERSIONS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "antialias": antialias,
    "polyphase": polyphase,
    "circular_padding": circular_padding,
    "polyphase(circular_padding)": lambda model: polyphase(circular_padding(model)),
}
FORWARD_HEADER = ("model", "original", *(f"{name} / original" for name in CONVERSIONS))


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rounds(calls: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    for call in calls:
        call()  # warm up
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, series in zip(calls, times):
            series.append(seconds(call))
    return times


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(p / q for p, q in zip(a, b))


def monitor_rows(repeats: int) -> list[tuple[str, ...]]:
    data = digits()
    torch.manual_seed(0)
    model = cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch, labels, fixed = data.images[:32], data.labels[:32], data.images[100:164]

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    rows: list[tuple[str, ...]] = []
    for name, options, passes in MONITORED:
        monitor = EquivarianceMonitor(model, fixed, name, **options)
        stacked = fixed.repeat(passes, 1, 1, 1)

        def forwards(stacked: torch.Tensor = stacked) -> object:
            with torch.no_grad():
                return model.eval()(stacked)

        call, train, bare = rounds([monitor.measure, step, forwards], repeats)
        rows.append(
            (
                f"{name}" + (f" {options}" if options else ""),
                f"{statistics.median(call) * 1e3:.1f} ms",
                f"{statistics.median(train) * 1e3:.1f} ms",
                f"{ratio(call, train):.2f}",
                f"{passes} x 64: {statistics.median(bare) * 1e3:.1f} ms",
                f"{ratio(call, bare):.2f}",
            )
        )
    return rows


def forward_rows(repeats: int) -> list[tuple[str, ...]]:
    from speed import resnet18_trunk

    torch.manual_seed(0)
    workloads = [
        ("the example's CNN, 64 digits 28x28", cnn().eval(), digits().images[:64]),
        ("ResNet-18 trunk, 4 x 3 x 112 x 112", resnet18_trunk().eval(), torch.rand(4, 3, 112, 112)),
    ]
    rows: list[tuple[str, ...]] = []
    for label, model, x in workloads:
        models = [model, *(convert(model).eval() for convert in CONVERSIONS.values())]

        times = rounds([_forward(m, x) for m in models], repeats)
        cells = [f"{ratio(t, times[0]):.2f}" for t in times[1:]]
        rows.append((label, f"{statistics.median(times[0]) * 1e3:.1f} ms", *cells))
    return rows


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--markdown", default=None, help="write the tables into this page between markers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    title = (
        f"torch {torch.__version__} on {platform.machine()} CPU, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} rounds"
    )
    tables = [
        ("monitor", MONITOR_HEADER, monitor_rows(args.repeats)),
        ("forward", FORWARD_HEADER, forward_rows(args.repeats)),
    ]
    print(title)
    for _, header, rows in tables:
        print(" | ".join(header))
        for cells in rows:
            print(" | ".join(cells))
    if args.markdown:
        from speed import write_markdown

        command = f"python benchmarks/fixes.py --repeats {args.repeats}"
        command += f" --threads {args.threads}" if args.threads else ""
        for section, header, rows in tables:
            write_markdown(
                args.markdown, title, rows, "cpu", header, section=section, command=command, script="fixes.py"
            )


if __name__ == "__main__":
    main()
