"""Measure the rounding noise of exactly equivariant models, per dtype.

The default tolerances in ``equivariance/tolerances.py`` were set from this
script's output. For random convolution stacks (1-D to 3-D, depth 1 to 6,
up to 64 channels, kernel sizes 1 to 7, valid or circular padding) it prints,
per dtype:

- the largest equivariance error over every shift in a box (and the noise
  floor), which is what a check of an exactly equivariant model measures on
  this machine's kernels;
- the largest rounding error of the model's output against the same model in
  float64. Two kernels that sum in different orders (another device, another
  batch size, another algorithm) can differ by up to about twice this, so it
  is the noise a tolerance must absorb where kernels are not as
  position-independent as the CPU's.

Run it after changing kernels, torch versions or devices:

    python benchmarks/tolerances.py [--trials 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import torch
from torch import nn

from equivariance import check_equivariance
from equivariance.tolerances import DEFAULT_TOLERANCES

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SIZE = {1: 48, 2: 24, 3: 10}


def random_stack(rng: random.Random, ndim: int, circular: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = rng.randint(1, 4)
    depth = rng.randint(1, 6 if ndim < 3 else 3)
    for _ in range(depth):
        out = rng.choice([1, 4, 16, 32, 64]) if ndim < 3 else rng.choice([1, 4, 8])
        k = rng.choice([1, 3, 5, 7]) if ndim < 3 else rng.choice([1, 3])
        pad: dict[str, Any] = {"padding": k // 2, "padding_mode": "circular"} if circular else {}
        layers += [CONV[ndim](channels, out, k, **pad), rng.choice([nn.ReLU(), nn.Tanh(), nn.GELU()])]
        channels = out
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    worst: dict[torch.dtype, float] = {dtype: 0.0 for dtype in DEFAULT_TOLERANCES}
    rounding: dict[torch.dtype, float] = {dtype: 0.0 for dtype in DEFAULT_TOLERANCES}
    for _ in range(args.trials):
        ndim = rng.choice([1, 2, 3])
        circular = rng.random() < 0.5
        model = random_stack(rng, ndim, circular).to(args.device)
        first = model[0]
        assert isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        x = torch.randn(4, first.in_channels, *(SIZE[ndim],) * ndim, device=args.device)
        with torch.no_grad():
            exact = model.double()(x.double())
        for dtype in worst:
            with torch.no_grad():
                y = model.to(dtype)(x.to(dtype)).double()
            relative = (y - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1).clamp_min(1e-300)
            rounding[dtype] = max(rounding[dtype], float(relative.max()))
            report = check_equivariance(
                model.to(dtype), x.to(dtype), max_shift=3 if ndim < 3 else 2,
                boundary="circular" if circular else "zeros", rtol=1.0,
            )  # fmt: skip
            worst[dtype] = max(worst[dtype], report.max_error, report.noise_floor)
    print(f"{args.trials} random convolution stacks on {args.device}")
    print(f"{'dtype':<15} {'equivariance error':>18} {'rounding vs f64':>16} {'default rtol':>13}")
    for dtype, value in worst.items():
        shown = "(reference)" if dtype == torch.float64 else f"{rounding[dtype]:.2e}"
        print(f"{dtype!s:<15} {value:18.2e} {shown:>16} {DEFAULT_TOLERANCES[dtype][0]:13.0e}")


if __name__ == "__main__":
    main()
