"""What moving point clouds costs, next to the forward passes a check of them needs: ratios, in one run.

For 64 rotations (or permutations) of 8 clouds of 64 points, in float32:

- moving the copies through each element class's batched path (one einsum of
  stacked matrices, one gather) against a Python loop of ``act``, one
  element at a time;
- the forward passes of an EGNN of two layers (examples/point_gallery.py)
  on the 512 moved clouds, as one batch, against 64 passes of 8, one per
  element: what the engine's batching can save on a CPU;
- moving the inputs against those forward passes: how much a check adds to
  the passes it needs;
- ``check_equivariance`` of the EGNN under 64 rotations (every copy through
  the one runner, with its noise floor and its per-output sums) against the
  forward passes of the same 512 moved clouds, and against a per-element
  loop: the same comparison written by hand, one rotation at a time, and
  ``equivariance_error`` called once per rotation;
- with e3nn installed: the check of the gallery's e3nn network under 64
  elements of O(3) against 64 calls of e3nn's own
  ``e3nn.util.test.equivariance_error`` (one random rotation a call, parity
  included, no translation).

The calls take turns, round after round (``--repeats`` rounds after one to
warm up); each time is the median over the rounds, and each ratio the median
of the ratios within a round, so load that comes and goes on a shared
machine weighs on both sides of a ratio alike (as in benchmarks/speed.py).
``--clock cpu`` times the process's CPU time instead of the wall clock
(steadier with ``--threads 1`` on a machine others load); ``--points 8``
checks small clouds, where a pass's fixed cost, not its arithmetic, is what
batching saves; ``--chunks 1,4,8,16`` also times the passes of the 512
moved clouds in chunks of those sizes; ``--cprofile`` prints where one call
of the check spends its time instead (the model's passes, the copies, the
comparisons, the rest). Nothing is asserted: this is a benchmark, not a timed test.

    python benchmarks/points.py [--repeats 7] [--threads 2] [--clock cpu] [--points 64] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from equivariance import check_equivariance, equivariance_error
from equivariance.euclidean import O3, SO3, Rotation
from equivariance.fields import Positions, Scalars
from equivariance.permutations import Permutation, Permutations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import point_gallery  # the gallery's models
from point_gallery import egnn

CLOUDS, POINTS, ELEMENTS = 8, 64, 64
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(
    calls: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """The times of each call in ``repeats`` rounds, after one to warm up; the calls take turns within
    a round, so that a machine whose load drifts slows them alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = clock()
            call()
            times[name].append(clock() - start)
    return times


# where one check spends its time: the cumulative time of the engine's function each stage runs in
STAGES = {
    "validation (every element tried on one sample)": ("arguments.py", "validate_parts"),
    "f(x), the unmoved pass": ("runner.py", "base"),
    "the runner's loop": ("runner.py", "run"),
    "  the model's passes of the copies, and comparing": ("runner.py", "consume"),
    "    comparing (references moved, squared norms)": ("part_sums.py", "add"),
    "the report": ("part_report.py", "part_report"),
}


def where_the_time_goes(check: Callable[[], object]) -> None:
    """One call of ``check`` under cProfile: the time of each stage (the runner's loop less its
    consumers is what moving the copies costs), and the top functions by their own time."""
    check()
    profile = cProfile.Profile()
    profile.enable()
    check()
    profile.disable()
    stats = pstats.Stats(profile)
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in table.values())
    print(f"one check: {total * 1e3:.1f} ms under cProfile")
    for stage, (module, function) in STAGES.items():
        seconds = sum(
            e[3] for (path, _, name), e in table.items() if path.endswith(module) and name == function
        )
        print(f"  {stage:52s} {seconds * 1e3:8.1f} ms  {seconds / total:6.1%}")
    stats.sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall time, or the process's CPU time (with --threads 1, steadier on a machine others load)",
    )  # fmt: skip
    parser.add_argument("--points", type=int, default=POINTS, help="points a cloud (default 64)")
    parser.add_argument("--cprofile", action="store_true", help="where one call of the check spends time")
    parser.add_argument(
        "--chunks", default="", help="also time the forward passes of the 512 moved clouds in passes of "
        "these sizes, e.g. 1,4,8,16 (what the check's chunk size could save)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(CLOUDS, args.points, 3, generator=generator)
    h = torch.randn(CLOUDS, args.points, 4, generator=generator)
    rotations: list[Rotation] = list(SO3(ELEMENTS, seed=0))
    perms: list[Permutation] = list(Permutations(ELEMENTS, n=args.points, seed=0))
    rows = torch.arange(CLOUDS).repeat(ELEMENTS)  # copy k * CLOUDS + i: cloud i moved by element k
    which = torch.arange(ELEMENTS).repeat_interleave(CLOUDS)

    def rotate_batched() -> torch.Tensor:
        batched = Rotation.batched(pos, rotations, Positions())
        assert batched is not None
        return batched.take(rows, which)

    def rotate_loop() -> torch.Tensor:
        return torch.cat([r.act(pos, Positions()) for r in rotations])

    def permute_batched() -> torch.Tensor:
        batched = Permutation.batched(h, perms, Scalars())
        assert batched is not None
        return batched.take(rows, which)

    def permute_loop() -> torch.Tensor:
        return torch.cat([p.act(h, Scalars()) for p in perms])

    assert torch.allclose(rotate_batched(), rotate_loop())
    assert torch.equal(permute_batched(), permute_loop())
    model = egnn().eval()
    moved_pos, moved_h = rotate_batched(), h.repeat(ELEMENTS, 1, 1)

    def forward_batched() -> object:
        with torch.no_grad():
            return model(moved_pos, moved_h)

    def forward_loop() -> object:
        with torch.no_grad():
            for r in rotations:  # each output dropped at once, as a check's chunks are
                out = model(r.act(pos, Positions()), h)
        return out

    fields = dict(inputs=(Positions(), Scalars()), outputs=(Positions(), Scalars()))

    def check() -> object:
        report = check_equivariance(model, (pos, h), transforms=rotations, **fields)  # type: ignore[arg-type]
        assert report.passed, report
        return report

    def by_hand() -> object:
        with torch.no_grad():
            base_pos, base_h = model(pos, h)
            worst = 0.0
            for r in rotations:
                out_pos, out_h = model(r.act(pos, Positions()), h)
                ref = r.act(base_pos, Positions())
                worst = max(worst, float((out_pos - ref).norm() / ref.norm()))
                worst = max(worst, float((out_h - base_h).norm() / base_h.norm()))
        return worst

    if args.cprofile:
        where_the_time_goes(check)
        return

    def errors_loop() -> object:
        return [equivariance_error(model, (pos, h), r, **fields) for r in rotations]  # type: ignore[arg-type]

    calls = {
        "rotate, batched": rotate_batched, "rotate, loop": rotate_loop,
        "permute, batched": permute_batched, "permute, loop": permute_loop,
        "EGNN on 512 clouds, one batch": forward_batched, "EGNN, 64 passes of 8": forward_loop,
        "check, 64 rotations": check, "by hand, loop of 64": by_hand,
        "equivariance_error x 64": errors_loop,
    }  # fmt: skip
    for size in (int(k) for k in args.chunks.split(",") if k):
        calls[f"EGNN on 512 clouds, passes of {size}"] = _passes(model, moved_pos, moved_h, size)
    e3nn = point_gallery.CASES["e3nn network"]
    if e3nn.available:
        calls.update(_e3nn_calls(e3nn))
    rounds = timed(calls, args.repeats, CLOCKS[args.clock])
    t = {name: statistics.median(values) for name, values in rounds.items()}
    shape = f"{ELEMENTS} elements x {CLOUDS} clouds of {args.points} points"
    clock = "CPU time" if args.clock == "cpu" else "wall time"
    rounds_of = f"medians of {args.repeats} rounds"
    print(f"torch {torch.__version__}, {args.threads} threads; {shape}; {clock}, {rounds_of}")
    for name, seconds in t.items():
        print(f"  {name:34s} {seconds * 1e3:9.2f} ms")
    pairs = {
        "loop / batched, rotations": ("rotate, loop", "rotate, batched"),
        "loop / batched, permutations": ("permute, loop", "permute, batched"),
        "64 passes / one batch, EGNN": ("EGNN, 64 passes of 8", "EGNN on 512 clouds, one batch"),
        "moving / forward, rotations": ("rotate, batched", "EGNN on 512 clouds, one batch"),
        "check / forward of 512 (<= 1.2)": ("check, 64 rotations", "EGNN on 512 clouds, one batch"),
        "check / 64 passes of 8": ("check, 64 rotations", "EGNN, 64 passes of 8"),
        "loop by hand / check (>= 3)": ("by hand, loop of 64", "check, 64 rotations"),
        "64 errors / check": ("equivariance_error x 64", "check, 64 rotations"),
        "e3nn's 64 calls / check": ("e3nn: equivariance_error x 64", "e3nn: check, 64 elements"),
    }
    ratios = {
        name: statistics.median(a / b for a, b in zip(rounds[top], rounds[bottom]))
        for name, (top, bottom) in pairs.items()
        if top in rounds
    }
    for name, ratio in ratios.items():
        print(f"  {name:34s} {ratio:9.3f}")


def _passes(model: torch.nn.Module, pos: torch.Tensor, h: torch.Tensor, size: int) -> Callable[[], object]:
    """The forward passes of the moved clouds in chunks of ``size``."""

    def run() -> object:
        with torch.no_grad():
            for start in range(0, len(pos), size):
                out = model(pos[start : start + size], h[start : start + size])
        return out

    return run


def _e3nn_calls(case: point_gallery.Case) -> dict[str, Callable[[], object]]:
    """The gallery's e3nn network (float32, 8 clouds of its 5 points): our check of 64 elements of O(3),
    and 64 calls of e3nn's own ``equivariance_error``."""
    from e3nn import o3
    from e3nn.util.test import equivariance_error as e3nn_error

    network = case.build(seed=0).eval()
    pos = torch.randn(CLOUDS, point_gallery.POINTS, 3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(CLOUDS, point_gallery.POINTS, 5, generator=torch.Generator().manual_seed(2))
    elements = O3(ELEMENTS, seed=0)

    def ours() -> object:
        report = check_equivariance(
            network, (pos, x), transforms=elements, inputs=case.fields, outputs=case.outputs
        )
        assert report.passed, report
        return report

    def theirs() -> object:
        irreps_in = ["cartesian_points", o3.Irreps(point_gallery.E3NN_IN)]
        irreps_out = [o3.Irreps(point_gallery.E3NN_OUT)]
        with torch.no_grad():
            return [
                e3nn_error(network, [pos, x], irreps_in, irreps_out, ntrials=1, do_translation=False)
                for _ in range(ELEMENTS)
            ]

    return {"e3nn: check, 64 elements": ours, "e3nn: equivariance_error x 64": theirs}


if __name__ == "__main__":
    main()
