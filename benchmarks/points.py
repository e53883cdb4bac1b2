"""What moving point clouds costs, next to the forward passes a check of them needs: ratios, in one run.

For 64 rotations (or permutations) of 8 clouds of 64 points, in float32:

- moving the copies through each element class's batched path (one einsum of
  stacked matrices, one gather) against a Python loop of ``act``, one
  element at a time;
- the forward passes of an EGNN of two layers (examples/point_gallery.py)
  on the 512 moved clouds, as one batch, against 64 passes of 8, one per
  element: what the engine's batching can save on a CPU;
- moving the inputs against those forward passes: how much a check adds to
  the passes it needs.

Each time is the median of ``--repeats`` runs after one to warm up. Nothing
is asserted: this is a benchmark, not a timed test.

    python benchmarks/points.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from equivariance.euclidean import SO3, Rotation
from equivariance.fields import Positions, Scalars
from equivariance.permutations import Permutation, Permutations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from point_gallery import egnn  # the gallery's EGNN

CLOUDS, POINTS, ELEMENTS = 8, 64, 64


def timed(call: Callable[[], object], repeats: int) -> float:
    """The median time of ``call`` over ``repeats`` runs, after one to warm up."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(CLOUDS, POINTS, 3, generator=generator)
    h = torch.randn(CLOUDS, POINTS, 4, generator=generator)
    rotations: list[Rotation] = list(SO3(ELEMENTS, seed=0))
    perms: list[Permutation] = list(Permutations(ELEMENTS, n=POINTS, seed=0))
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
            return [model(r.act(pos, Positions()), h) for r in rotations]

    t = {name: timed(call, args.repeats) for name, call in {
        "rotate, batched": rotate_batched, "rotate, loop": rotate_loop,
        "permute, batched": permute_batched, "permute, loop": permute_loop,
        "EGNN on 512 clouds, one batch": forward_batched, "EGNN, 64 passes of 8": forward_loop,
    }.items()}  # fmt: skip
    shape = f"{ELEMENTS} elements x {CLOUDS} clouds of {POINTS} points"
    print(f"torch {torch.__version__}, {args.threads} threads; {shape}")
    for name, seconds in t.items():
        print(f"  {name:32s} {seconds * 1e3:9.2f} ms")
    ratios = {
        "loop / batched, rotations": t["rotate, loop"] / t["rotate, batched"],
        "loop / batched, permutations": t["permute, loop"] / t["permute, batched"],
        "64 passes / one batch, EGNN": t["EGNN, 64 passes of 8"] / t["EGNN on 512 clouds, one batch"],
        "moving / forward, rotations": t["rotate, batched"] / t["EGNN on 512 clouds, one batch"],
    }
    for name, ratio in ratios.items():
        print(f"  {name:32s} {ratio:9.3f}")


if __name__ == "__main__":
    main()
