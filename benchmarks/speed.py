"""How close a check runs to the cost of its forward passes.

Measures, in one run and on the same machine:

(a) ``check_equivariance`` over K shifts of a batch of N images;
(b) a plain per-shift loop doing the same comparison, one forward pass per
    shift (the way hand-written checkers work);
(c) the floor: bare forward passes over the same (K + 1) * N + 1 images (the
    shifted copies, the unshifted batch and the one sample the check sends
    again for its noise floor), in the fastest of several chunkings: the check's
    own, chunks of 4, 8, 16, 32, 64 and 128 images, and the whole sweep at
    once where it is at most 128 images, each timed in every round.

It runs them in turn, repeatedly, and reports the median times and
the medians of the ratios within each round: check/floor (the cost of
everything but the model) and loop/check, and the peak memory of the
check: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated
before, on the CPU the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``; Linux only) above the resident set before. Nothing
is asserted: this is a benchmark, not a timed test.

Workloads: the seed's LeNet (conv4) on a 38x38 canvas, 121 shifts, batch 8;
a 4-layer conv net; and a ResNet-18-sized fully convolutional network
(ResNet-18 without its pooling head: total stride 32, 11M parameters) on
224x224 with stride-aware shifts (nonzero multiples of 32), batch 1 and 8
shifts on the CPU (under a second a run), batch 8 and 24 shifts on CUDA.

A second table times small checks, where what a check does besides its
forward passes shows most: one shift of a batch of 2 through a one-layer
convolution on 8x8, a 20-layer convolution stack on 12x12, and the ResNet-18
trunk. Its *overhead* is the check's time less the time spent inside the
model's forward passes, timed from inside the model by a wrapper, in
milliseconds, the median over rounds.
A third table times the per-layer profile against the check of one shift, a fourth does so on
the gallery of common architectures (``examples/gallery.py``).

    python benchmarks/speed.py [--repeats 5] [--device cpu] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch
from torch import nn

from equivariance import (
    Shift,
    check_equivariance,
    check_invariance,
    multiples_of,
    profile_equivariance,
    shifts_in_box,
)
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


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions and a (strided) shortcut."""

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18_trunk() -> nn.Sequential:
    """ResNet-18 without its pooling and classifier: (N, 3, H, W) -> (N, 512, H / 32, W / 32)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(channels, width, stride), BasicBlock(width, width, 1)]
        channels = width
    return nn.Sequential(*layers)


def resnet_workload(
    device: str,
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, list[Shift]]:
    model = resnet18_trunk().to(device).eval()
    batch, reach = (8, 64) if device == "cuda" else (1, 32)
    x = torch.randn(batch, 3, 224, 224, device=device)
    shifts = [s for s in multiples_of(32, reach) if any(s)]
    return f"ResNet-18 trunk, 224x224, batch {batch}, {len(shifts)} shifts", model, x, shifts


def per_shift_loop(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shifts: list[Shift], stride: int = 1
) -> float:
    """The naive checker: one forward pass per shift, errors on the valid region."""
    worst = 0.0
    with torch.no_grad():
        y = model(x)
        for shift in shifts:
            moved = model(shift.apply(x))
            out_shift = shift / stride
            expected = out_shift.apply(y)
            region: tuple[EllipsisType | slice, ...] = (..., *out_shift.valid_region(tuple(y.shape[2:])))
            diff = (moved - expected)[region].flatten(1).norm(dim=1)
            worst = max(worst, float((diff / expected[region].flatten(1).norm(dim=1)).max()))
    return worst


def floor(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shifts: list[Shift], batch: int
) -> None:
    """Bare forward passes over the images a check runs, in chunks of ``batch``."""
    images = torch.cat([x[-1:], x.repeat(len(shifts), *([1] * (x.dim() - 1)))])
    with torch.no_grad():
        model(x)
        for start in range(0, len(images), batch):
            model(images[start : start + batch])


def chunkings(check_batch: int, total: int) -> list[int]:
    """The chunk sizes the floor tries: the check's own, powers of two from 4 to 128, and the whole
    sweep where it is at most 128 images (a larger one is never the fastest, and its allocations
    disturb the timings that follow it)."""
    whole = {total} if total <= 128 else set()
    return sorted({check_batch, *whole, *(b for b in (4, 8, 16, 32, 64, 128) if b < total)})


def seconds(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(fns: list[Callable[[], object]], repeats: int, device: str) -> list[list[float]]:
    """Times of each function, run in turn ``repeats`` times: ``times[i][r]``.

    Taking the functions in turn, rather than each ``repeats`` times in a row,
    exposes them to the same machine: a ratio computed within one round is
    not skewed by load that comes and goes.
    """
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times):
            series.append(seconds(fn, device))
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of one time over another taken in the same round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def peak_memory(fn: Callable[[], object], device: str) -> float | None:
    """MiB the call needed at its peak above what was in use before it (None where unmeasurable)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM, the peak resident set, to the current one
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


HEADER = ("workload", "floor", "check", "loop", "check/floor", "loop/check", "check peak MiB")
OVERHEAD_HEADER = ("one-shift check, batch 2", "modules", "in forward passes", "check", "overhead ms")
PROFILE_HEADER = ("workload, one shift", "check", "profile", "profile/check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", default=None, help="also write the results as a Markdown table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    title = f"torch {torch.__version__} on {name}; medians of {args.repeats} rounds"
    print(title + "\n")
    print(line((*HEADER[:-1], "peak MiB")))
    rows, profile_rows = [], []
    for workload in (lenet_workload, convnet_workload, resnet_workload):
        label, model, x, shifts = workload(args.device)
        stride = 32 if workload is resnet_workload else 1
        cells = row(label, model, x, shifts, args.repeats, args.device, stride)
        rows.append(cells)
        print(line(cells))
        if isinstance(model, nn.Module):
            profile_rows.append(profile_row(label, model, x, shifts[-1], args.repeats, args.device, stride))
        elif isinstance(lenet := getattr(model, "__self__", None), LeNet):
            # model is lenet.features; LeNet's head refuses the 38x38 canvas, so profile up to conv4
            profile_rows.append(
                profile_row(label, lenet, x, shifts[-1], args.repeats, args.device, stride, up_to="conv4")
            )
    print("\nWhat a small check costs besides its forward passes:")
    overhead_rows = [overhead_row(*w, args.repeats, args.device) for w in overhead_workloads(args.device)]
    for cells in overhead_rows:
        print(f"{cells[0]:<44} {cells[1]:>8} {cells[2]:>15} {cells[3]:>9} {cells[4]:>12}")
    print("\nThe layer profile of one shift against the check of that shift:")
    for cells in profile_rows:
        print(f"{cells[0]:<44} {cells[1]:>8} {cells[2]:>8} {cells[3]:>13}")
    print(
        "\nThe layer profile against the check, on the gallery of common architectures (examples/gallery.py):"
    )
    gallery_rows = [gallery_row(name, args.repeats, args.device) for name in _gallery().GALLERY]
    for cells in gallery_rows:
        print(f"{cells[0]:<44} {cells[1]:>8} {cells[2]:>8} {cells[3]:>13}")
    if args.markdown:
        write_markdown(args.markdown, title, gallery_rows, args.device, PROFILE_HEADER, section="gallery")
        write_markdown(args.markdown, title, rows, args.device)
        write_markdown(args.markdown, title, overhead_rows, args.device, OVERHEAD_HEADER, section="overhead")
        write_markdown(args.markdown, title, profile_rows, args.device, PROFILE_HEADER, section="profile")


def line(cells: tuple[str, ...]) -> str:
    widths = (44, 8, 8, 8, 12, 11, 9)
    return " ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])


def row(
    label: str,
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    shifts: list[Shift],
    repeats: int,
    device: str,
    stride: int = 1,
) -> tuple[str, ...]:
    # the check's own chunks (the report says which it chose), also warming up kernels and allocators
    batch = check_equivariance(model, x, shifts, stride=stride).batch_size
    sizes = chunkings(batch, len(shifts) * len(x) + 1)

    def run_floor(size: int) -> Callable[[], None]:
        return lambda: floor(model, x, shifts, size)

    def run_check() -> None:
        check_equivariance(model, x, shifts, stride=stride)

    def run_loop() -> None:
        per_shift_loop(model, x, shifts, stride)

    for size in sizes:
        run_floor(size)()
    *per_size, checks, loops = interleaved([*map(run_floor, sizes), run_check, run_loop], repeats, device)
    floors = [min(times) for times in zip(*per_size)]  # the fastest chunking, in each round
    peak = peak_memory(run_check, device)
    return (
        label,
        f"{statistics.median(floors):.3f}s",
        f"{statistics.median(checks):.3f}s",
        f"{statistics.median(loops):.3f}s",
        f"{median_ratio(checks, floors):.2f}",
        f"{median_ratio(loops, checks):.2f}",
        "n/a" if peak is None else f"{peak:.0f}",
    )


def overhead_workloads(
    device: str,
) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Small checks: one layer, a deep stack of small layers, a real backbone."""
    torch.manual_seed(0)
    one = nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular")
    layers: list[nn.Module] = []
    for i in range(20):
        layers += [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU()]
    return [
        ("one conv, 8x8", one.to(device).eval(), torch.randn(2, 1, 8, 8, device=device)),
        (
            "20 conv + ReLU layers, 12x12",
            nn.Sequential(*layers).to(device).eval(),
            torch.randn(2, 1, 12, 12, device=device),
        ),
        (
            "ResNet-18 trunk, 224x224",
            resnet18_trunk().to(device).eval(),
            torch.randn(2, 3, 224, 224, device=device),
        ),
    ]


class Timed(nn.Module):
    """A model that adds up the time spent in its own forward passes."""

    def __init__(self, model: nn.Module, device: str) -> None:
        super().__init__()
        self.model, self.device, self.inside = model, device, 0.0
        self.eval()  # as the model it wraps: a check leaves a model in eval mode alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out: torch.Tensor = self.model(x)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.inside += time.perf_counter() - start
        return out


def overhead_row(label: str, model: nn.Module, x: torch.Tensor, repeats: int, device: str) -> tuple[str, ...]:
    """A one-shift check, and the part of its time spent outside the model's forward passes.

    The forward passes are timed from inside the model (a wrapper adds up the time of each call), so
    the overhead is measured in the same run as the check, not as a difference of two noisy times.
    """
    size = x.shape[-1]
    shift = Shift(0, 32) if size >= 64 else Shift(0, 1)
    stride = 32 if size >= 64 else 1
    timed = Timed(model, device)
    check_equivariance(timed, x, [shift], stride=stride, boundary="circular")  # warm up
    totals, insides = [], []
    for _ in range(max(repeats, 20)):
        timed.inside = 0.0
        totals.append(
            seconds(lambda: check_equivariance(timed, x, [shift], stride=stride, boundary="circular"), device)
        )
        insides.append(timed.inside)
    overhead = statistics.median(t - i for t, i in zip(totals, insides))
    modules = sum(1 for _ in model.modules())
    return (
        label,
        str(modules),
        f"{1e3 * statistics.median(insides):.1f} ms",
        f"{1e3 * statistics.median(totals):.1f} ms",
        f"{1e3 * overhead:.1f}",
    )


def profile_row(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    shift: Shift,
    repeats: int,
    device: str,
    stride: int = 1,
    up_to: str | None = None,
) -> tuple[str, ...]:
    """``profile_equivariance`` (every layer, one batched pass) against the check of the same shift.

    With ``up_to``, both stop after that layer: the profile with ``up_to=``, the check with ``layer=``.
    """

    def run_check() -> None:
        check_equivariance(model, x, [shift], stride=stride, layer=up_to)

    def run_profile() -> None:
        profile_equivariance(model, x, shift, up_to=up_to)

    run_check()
    run_profile()
    checks, profiles = interleaved([run_check, run_profile], repeats, device)
    return (
        label.split(",")[0],
        f"{statistics.median(checks):.3f}s",
        f"{statistics.median(profiles):.3f}s",
        f"{median_ratio(profiles, checks):.2f}",
    )


def _gallery() -> Any:
    """``examples/gallery.py`` (``examples/`` is not a package: it goes on the path)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import gallery

    return gallery


def gallery_row(name: str, repeats: int, device: str) -> tuple[str, ...]:
    """The profile of a gallery model (its docs page's shift) against a check of that one shift.

    A model whose output has no spatial dims (the ViT's logits) is checked for invariance.
    """
    gallery = _gallery()
    case = gallery.CASES[name]
    model = gallery.GALLERY[name]().to(device)
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image}).to(device)
    shift = Shift(case.shift)
    with torch.no_grad():
        flat = model(x).dim() == 2

    def run_check() -> None:
        if flat:
            check_invariance(model, x, [shift])
        else:
            check_equivariance(model, x, [shift])

    def run_profile() -> None:
        profile_equivariance(model, x, shift)

    run_check()
    run_profile()
    checks, profiles = interleaved([run_check, run_profile], repeats, device)
    return (
        f"{name}, shift {shift}",
        f"{statistics.median(checks):.3f}s",
        f"{statistics.median(profiles):.3f}s",
        f"{median_ratio(profiles, checks):.2f}",
    )


def write_markdown(
    path: str,
    title: str,
    rows: list[tuple[str, ...]],
    device: str,
    header: tuple[str, ...] = HEADER,
    section: str = "",
    command: str | None = None,
    script: str = "speed.py",
) -> None:
    """Replace the section of ``script`` for ``device`` (and ``section``) in the benchmark page with
    these results (or append it)."""
    marker = f"<!-- {script} {' '.join(filter(None, (device, section)))} -->"
    command = command or f"python benchmarks/speed.py --device {device}"
    table = [
        marker,
        f"**{title}**, {datetime.date.today().isoformat()}, `{command}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in rows),
        marker,
    ]
    text = ""
    if os.path.exists(path):
        with open(path) as page:
            text = page.read()
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + "\n".join(table) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(table) + "\n"
    with open(path, "w") as page:
        page.write(text)


if __name__ == "__main__":
    main()
