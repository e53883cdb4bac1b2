"""The seed article in one script: a convolutional LeNet follows a moving digit, a dense network does not.

Puts digit-like content on a 38x38 canvas (as the article does with MNIST
digits), checks the LeNet's conv4 map and an MLP of the same output shape
over every shift in [-5, 5]^2, and prints both reports. A trained LeNet and
real digits come with the notebook; equivariance of the conv stack does not
depend on training, which this demo shows with random weights.

    python examples/seed_demo.py [--max-shift 5] [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from equivariance import EquivarianceError, assert_equivariant, check_equivariance, equivariance_error
from equivariance.models import MLP, LeNet


def strokes(batch: int, size: int = 28, generator: torch.Generator | None = None) -> torch.Tensor:
    """Digit-like images: a few thick random strokes on a dark 28x28 square."""
    images = torch.zeros(batch, 1, size, size)
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float()
    for n in range(batch):
        for _ in range(3):
            a, b = torch.rand(2, 2, generator=generator) * (size - 8) + 4
            t = torch.linspace(0, 1, 32).view(-1, 1)
            points = a + t * (b - a)  # (32, 2) along a segment
            dist = (grid.view(-1, 1, 2) - points.view(1, -1, 2)).norm(dim=-1).min(dim=1).values
            images[n, 0] = torch.maximum(images[n, 0], (2.0 - dist).clamp(0, 1).view(size, size))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-shift", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x = torch.zeros(args.batch, 1, 38, 38)
    x[..., 5:33, 5:33] = strokes(args.batch)  # content on a zero border, as in the seed
    lenet, mlp = LeNet(), MLP(input_size=38)

    print("One shift, (3, -2): relative error of the conv4 map")
    print(f"  LeNet  {float(equivariance_error(lenet, x, (3, -2), layer='conv4')):.2e}")
    print(f"  MLP    {float(equivariance_error(mlp, x, (3, -2))):.2e}")

    print(f"\nEvery shift in [-{args.max_shift}, {args.max_shift}]^2, LeNet's conv4 map:")
    print(check_equivariance(lenet, x, max_shift=args.max_shift, layer="conv4"))

    print("\nThe same check on the MLP, through assert_equivariant:")
    try:
        assert_equivariant(mlp, x, max_shift=args.max_shift)
    except EquivarianceError as error:
        print(error)


if __name__ == "__main__":
    main()
