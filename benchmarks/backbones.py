"""The checks on real backbones: what a check, a profile and a Lie derivative cost next to the
forward passes they need.

torchvision does not import beside the CPU build of torch the tests use (``torch==2.13.0``), so this
benchmark has an environment of its own (``torch==2.14.1`` with ``torchvision==0.29.1`` install and run
on the CPU)::

    python3 -m venv .venv-backbones && . .venv-backbones/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 numpy && pip install --no-deps -e .
    python benchmarks/backbones.py [--repeats 5] [--threads 2] [--markdown docs/benchmarks.md]

Workloads: torchvision's resnet18, mobilenet_v3_small, efficientnet_b0 and convnext_tiny, random
init, eval mode, a batch of 4 images of 96x96, each cut at its stride-8 features (checked for
equivariance under shifts by multiples of 8, the cut's stride) and whole (its logits, checked for
invariance under shifts by multiples of 32); and vit_b_16 at 96x96 (a 6x6 grid of patches, its
position embedding zeroed), its encoder's tokens (``layout=Tokens``, shifts of 16) and whole. The
models pad circularly and are checked under ``boundary="circular"``, so the checks pass, as those of
a test suite do; the last column checks torchvision's own model under the zeros boundary, a check
that fails and pays for its diagnosis. The ratios, each the median over rounds of two times taken
in the same round (the calls run in turn in every round, so load that comes and goes skews both
alike):

- ``check k / floor``: ``check_equivariance`` (``check_invariance`` for a whole model) of k shifts,
  k = 1 and 4, against the bare forward passes of the inputs it needs, x once and each moved copy
  once: (k + 1) N images, in one batch or N at a time, whichever is faster in that round;
- ``profile / check 1``: ``profile_equivariance`` of one shift against the check of that shift;
- ``Lie / forward``: ``lie_derivative_error`` against one forward pass of the batch;
- ``failing check 1 / floor``: the check of one shift of the unconverted model, which fails.

Nothing is asserted: this is a benchmark, not a timed test. ``--cprofile NAME`` prints where one
call of each measurement of that workload spends its time instead.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from equivariance import Shift, check_equivariance, check_invariance, profile_equivariance
from equivariance.layouts import Tokens
from equivariance.lie import lie_derivative_error
from equivariance.surgery import circular_padding

HEADER = (
    "workload", "forward N", "check 1 / floor", "check 4 / floor", "profile / check 1", "Lie / forward",
    "failing check 1 / floor",
)  # fmt: skip
SIZE, BATCH = 96, 4


@dataclass
class Workload:
    """A model under test and how it is checked: ``stride`` for an equivariant map, None for logits.

    ``model`` pads circularly (``equivariance.surgery.circular_padding``), so that its checks under
    ``boundary="circular"`` pass, as the checks of a test suite do; ``original`` is the model as
    torchvision defines it, whose check under the zeros boundary fails and explains why.
    """

    name: str
    model: nn.Module
    original: nn.Module
    step: int  # the shifts are multiples of it: the cut's stride, or the whole model's
    stride: int | None  # None: logits, checked for invariance
    layout: Any = None

    def shifts(self, count: int) -> list[Shift]:
        return [Shift(self.step * (1 + k // 2) * (-1) ** k, 0) for k in range(count)]

    def check(self, x: torch.Tensor, count: int, *, original: bool = False) -> object:
        model = self.original if original else self.model
        boundary: Literal["zeros", "circular"] = "zeros" if original else "circular"
        if self.stride is None:
            return check_invariance(model, x, self.shifts(count), boundary=boundary)
        return check_equivariance(
            model, x, self.shifts(count), stride=self.stride, layout=self.layout, boundary=boundary
        )

    def profile(self, x: torch.Tensor) -> object:
        return profile_equivariance(self.model, x, self.shifts(1)[0], boundary="circular")

    def lie(self, x: torch.Tensor) -> object:
        return lie_derivative_error(self.model, x)


def _prefix(blocks: list[nn.Module], x: torch.Tensor, stride: int) -> nn.Sequential:
    """The longest run of ``blocks`` from the first whose output is subsampled by ``stride``."""
    kept: list[nn.Module] = []
    y = x
    with torch.no_grad():
        for block in blocks:
            y = block(y)
            if y.dim() != 4 or x.shape[-1] // y.shape[-1] > stride:
                break
            kept.append(block)
    return nn.Sequential(*kept).eval()


class VitTokens(nn.Module):
    """torchvision's ViT up to its encoder's output: a class token, then the patches' tokens."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit: Any = self.vit
        tokens = vit._process_input(x)
        cls = vit.class_token.expand(len(x), -1, -1)
        out: torch.Tensor = vit.encoder(torch.cat([cls, tokens], dim=1))
        return out


def workloads(only: str | None = None) -> list[Workload]:
    from torchvision import models  # only in this benchmark's own environment

    probe = torch.zeros(1, 3, SIZE, SIZE)
    found = []
    for name in ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"):
        if only is not None and not only.startswith(name):
            continue
        torch.manual_seed(0)
        model = getattr(models, name)(weights=None).eval()
        if hasattr(model, "features"):
            blocks = list(model.features)
        else:  # a ResNet: its stem and stages
            blocks = [model.conv1, model.bn1, model.relu, model.maxpool, *model.layer1, *model.layer2]
        cut = _prefix(blocks, probe, 8)
        found.append(Workload(f"{name} stride 8", circular_padding(cut), cut, 8, 8))
        found.append(Workload(f"{name} whole", circular_padding(model), model, 32, None))
    if only is None or only.startswith("vit"):
        torch.manual_seed(0)
        vit = models.vit_b_16(weights=None, image_size=SIZE).eval()
        with torch.no_grad():  # no position embedding: tokens moved by whole patches are permuted
            vit.encoder.pos_embedding.zero_()
            nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts it at zero: logits of 0
        grid = SIZE // 16
        tokens = VitTokens(vit).eval()
        found.append(Workload("vit_b_16 tokens", tokens, tokens, 16, 16, Tokens((grid, grid), prefix=1)))
        found.append(Workload("vit_b_16 whole", vit, vit, 16, None))
    return [w for w in found if only is None or w.name == only or w.name.split()[0] == only.split()[0]]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def seconds(fn: Callable[[], object]) -> float:
    start = clock()
    fn()
    return clock() - start


def forward(model: nn.Module, x: torch.Tensor, copies: int, together: bool) -> Callable[[], None]:
    """Bare forward passes of ``copies`` batches like ``x``: as one batch, or one batch at a time."""
    batch = x.repeat(copies, 1, 1, 1)

    def run() -> None:
        with torch.no_grad():
            if together:
                model(batch)
            else:
                for k in range(copies):
                    model(batch[k * len(x) : (k + 1) * len(x)])

    return run


def row(work: Workload, x: torch.Tensor, repeats: int) -> tuple[str, ...]:
    calls: dict[str, Callable[[], object]] = {
        "forward": forward(work.model, x, 1, True),
        "floor 1 together": forward(work.model, x, 2, True),
        "floor 1 apart": forward(work.model, x, 2, False),
        "check 1": lambda: work.check(x, 1),
        "floor 4 together": forward(work.model, x, 5, True),
        "floor 4 apart": forward(work.model, x, 5, False),
        "check 4": lambda: work.check(x, 4),
        "profile": lambda: work.profile(x),
        "lie": lambda: work.lie(x),
        "failing check 1": lambda: work.check(x, 1, original=True),
        "original floor together": forward(work.original, x, 2, True),
        "original floor apart": forward(work.original, x, 2, False),
    }
    for call in calls.values():  # kernels, allocators, the first pass's lazy set-up
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(seconds(call))

    def ratio(top: str, *bottom: str) -> str:
        rounds = [
            times[top][r] / min(times[b][r] for b in bottom) for r in range(repeats)
        ]  # fmt: skip
        return f"{statistics.median(rounds):.2f}"

    return (
        work.name,
        f"{statistics.median(times['forward']) * 1e3:.0f} ms",
        ratio("check 1", "floor 1 together", "floor 1 apart"),
        ratio("check 4", "floor 4 together", "floor 4 apart"),
        ratio("profile", "check 1"),
        ratio("lie", "forward"),
        ratio("failing check 1", "original floor together", "original floor apart"),
    )


def where_the_time_goes(work: Workload, x: torch.Tensor, top: int = 25) -> None:
    """cProfile of one call of each measurement (after one to warm up), by cumulative time."""
    calls: list[tuple[str, Callable[[], object]]] = [
        ("check of one shift", lambda: work.check(x, 1)),
        ("profile", lambda: work.profile(x)),
        ("Lie derivative", lambda: work.lie(x)),
    ]
    for label, call in calls:
        call()
        profiler = cProfile.Profile()
        profiler.runcall(call)
        print(f"\n== {work.name}: {label}")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default=None, help="one workload (e.g. 'resnet18 stride 8') or model")
    parser.add_argument("--cprofile", default=None, help="where one call of each measurement spends time")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall time, or the process's CPU time (with --threads 1, steadier on a machine others load)",
    )  # fmt: skip
    parser.add_argument("--markdown", default=None, help="also write the table into this Markdown page")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    if args.cprofile:
        for work in workloads(args.cprofile):
            where_the_time_goes(work, x)
        return
    machine = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    title = (
        f"torch {torch.__version__} on {machine}; batch {BATCH} of {SIZE}x{SIZE}; "
        f"medians of {args.repeats} rounds" + ("; CPU time" if args.clock == "cpu" else "")
    )
    print(title + "\n")
    print(" | ".join(HEADER))
    rows = []
    for work in workloads(args.only):
        cells = row(work, x, args.repeats)
        rows.append(cells)
        print(" | ".join(cells), flush=True)
    if args.markdown:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from speed import write_markdown

        write_markdown(
            args.markdown, title, rows, "cpu", HEADER, section="backbones",
            command="python benchmarks/backbones.py", script="backbones.py",
        )  # fmt: skip


if __name__ == "__main__":
    main()
