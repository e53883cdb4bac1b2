"""Is any workload slower than at an earlier commit? The same calls timed on both, in one run.

The earlier commit is checked out into a temporary git worktree. Each round
runs every workload on each version, in turn, each run in a fresh Python
process that imports that version's package (the two never share a process,
and no workload inherits the allocator's state from another: timings of a
small workload were seen to change threefold with the one run before it);
a workload's time in a round is the median of about half a second of calls
(at least 3) after one to warm up, and the ratio is this checkout's time over the earlier one's,
taken within the round; the table shows the median over rounds. Nothing is
asserted: this is a benchmark, not a timed test.

    python benchmarks/compare.py --before c35bbb1 [--rounds 5] [--clock cpu] [--markdown docs/benchmarks.md]

``--clock cpu`` times each call by the process's CPU time (``time.process_time``) instead of wall
time: on a machine other jobs load, the steadier measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each workload: a label and a statement timed after its setup (both run in the child process).
SETUP = """
import time, torch
from torch import nn
import equivariance as eq
from equivariance.models import LeNet
torch.manual_seed(0)
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
canvas = torch.zeros(8, 1, 38, 38); canvas[..., 5:33, 5:33] = torch.rand(8, 1, 28, 28)
lenet = LeNet().eval()
layers = []
for c_in, c_out in ((3, 32), (32, 64), (64, 64), (64, 64)):
    layers += [nn.Conv2d(c_in, c_out, 3), nn.ReLU()]
four = nn.Sequential(*layers).eval(); images = torch.randn(4, 3, 64, 64)
deep = nn.Sequential(
    *[m for i in range(20) for m in (nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.ReLU())]
).eval()
small = torch.randn(2, 1, 12, 12)
one = nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular").eval(); tiny = torch.randn(2, 1, 8, 8)
classifier = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
digits = torch.rand(64, 1, 28, 28)
"""

WORKLOADS = {
    "check: LeNet conv4, 121 shifts, batch 8": (
        "eq.check_equivariance(lenet, canvas, max_shift=5, layer='conv4')"
    ),
    "check: 4-layer net 64x64, 25 shifts, batch 4": "eq.check_equivariance(four, images, max_shift=2)",
    "check: one shift, one conv 8x8": "eq.check_equivariance(one, tiny, [(0, 1)], boundary='circular')",
    "check: one shift, 20 conv layers 12x12": "eq.check_equivariance(deep, small, [(1, 0)])",
    "check: stride and margin 'auto', LeNet": (
        "eq.check_equivariance(lenet, canvas[:2], max_shift=2, layer='conv4', stride='auto', margin='auto')"
    ),
    "equivariance_error: LeNet conv4, one shift": (
        "eq.equivariance_error(lenet, canvas, (3, -2), layer='conv4')"
    ),
    "profile: LeNet up to conv4": "eq.profile_equivariance(lenet, canvas, (2, 1), up_to='conv4')",
    "profile: 4-layer net": "eq.profile_equivariance(four, images, (2, 2))",
    "consistency: 64 digits, 4 pairs": "eq.invariance.consistency(classifier, digits, pairs=4)",
    "prediction_change: 64 digits": "eq.invariance.prediction_change(classifier, digits)",
    "audit: LeNet conv4, 4 batches of 8, 9 shifts": (
        "eq.audit(lenet, [canvas] * 4, eq.shifts_in_box(1), layer='conv4', progress=False)"
    ),
}

CHILD = """
import json, sys, time
sys.path.insert(0, {path!r})
import equivariance.invariance, equivariance.audit
{setup}
out = {{}}
for label, statement in {workloads!r}.items():
    start = {clock}(); exec(statement); warm = {clock}() - start  # kernels, allocators
    times = []
    for _ in range(max(3, min(50, int(0.5 / max(warm, 1e-4))))):  # about half a second of calls
        start = {clock}(); exec(statement); times.append({clock}() - start)
    out[label] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


CLOCKS = {"wall": "time.perf_counter", "cpu": "time.process_time"}


def run(path: Path, label: str, clock: str = "wall") -> float:
    """One workload on the package at ``path``, in a fresh process: the median time of a call."""
    code = CHILD.format(path=str(path), setup=SETUP, workloads={label: WORKLOADS[label]}, clock=CLOCKS[clock])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    times: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return times[label]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", default=None, help="also write the table into this page")
    parser.add_argument("--only", default="", help="time only the workloads whose label contains this")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time or CPU time")
    args = parser.parse_args()
    labels = [label for label in WORKLOADS if args.only in label]
    with tempfile.TemporaryDirectory() as scratch:
        before = Path(scratch) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)  # fmt: skip
        try:
            ratios: dict[str, list[float]] = {label: [] for label in labels}
            times: dict[str, list[float]] = {label: [] for label in labels}
            for _ in range(args.rounds):
                for label in labels:
                    old, new = run(before, label, args.clock), run(ROOT, label, args.clock)
                    ratios[label].append(new / old)
                    times[label].append(new)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False
            )
    rows: list[tuple[str, ...]] = [
        (label, f"{1e3 * statistics.median(times[label]):.1f} ms", f"{statistics.median(ratios[label]):.2f}")
        for label in labels
    ]
    title = f"this checkout against {args.before}; medians of {args.rounds} rounds"
    title += "; CPU time" if args.clock == "cpu" else ""
    print(title)
    for row in rows:
        print(f"{row[0]:<50} {row[1]:>12} {row[2]:>8}")
    if args.markdown:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from speed import write_markdown

        header = ("workload", "time now", "now / before")
        command = f"python benchmarks/compare.py --before {args.before} --rounds {args.rounds}"
        command += " --clock cpu" if args.clock == "cpu" else ""
        write_markdown(args.markdown, title, rows, "cpu", header, section="before-after", command=command)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
