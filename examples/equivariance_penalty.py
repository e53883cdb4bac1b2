"""Train a small CNN with a positional channel on digits, with and without an equivariance penalty.

The CNN sees each digit together with two positional channels (the product
of a ramp across the rows and one across the columns, and its absolute
value), the way CoordConv and positional encodings give a network absolute
position: a part that is not translation equivariant. Otherwise it is built
to be shift invariant up to the aliasing of its two 2x2 average poolings
(circular convolutions, batch norms, global max pooling). It is trained
twice from the same initialization on scikit-learn's handwritten digits
(offline, in MNIST's 28x28 layout, 4 empty pixels around each digit): once
on cross-entropy alone, once on cross-entropy plus ``weight *
equivariance_loss(model, x, samples=1, max_shift=4, reference=logits)``, the
penalty on the logits' change under a random circular shift (the step's own
logits serve as the reference). It then reports for both: validation
accuracy, accuracy on the validation digits moved by a random circular shift
in [-4, 4]^2, the invariance error of the logits over the 80 nonzero shifts
of that box (its root mean square over shifts and digits, the square root of
the penalty in eval mode, and its maximum, from ``check_invariance``), and
their Lie derivative (translation along the width) per pixel.

    python examples/equivariance_penalty.py [--epochs 5] [--weight 1.0] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from equivariance import check_invariance, shifts_in_box
from equivariance.datasets import Digits, digits
from equivariance.lie import lie_derivative_error
from equivariance.loss import equivariance_loss
from equivariance.training import evaluate


class PositionalCNN(nn.Module):
    """Circular convolutions, batch norms and global max pooling, with two positional channels added."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, padding=2, padding_mode="circular")
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular")
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1, padding_mode="circular")
        self.norm1, self.norm2, self.norm3 = nn.BatchNorm2d(8), nn.BatchNorm2d(16), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.linspace(-1, 1, x.shape[-2], device=x.device).view(1, 1, -1, 1)
        cols = torch.linspace(-1, 1, x.shape[-1], device=x.device).view(1, 1, 1, -1)
        position = (rows * cols).expand(len(x), 1, *x.shape[-2:])  # the product of the ramps, and its size
        h = F.relu(self.norm1(self.conv1(torch.cat([x, position, position.abs()], dim=1))))
        h = F.relu(self.norm2(self.conv2(F.avg_pool2d(h, 2))))
        h = F.relu(self.norm3(self.conv3(F.avg_pool2d(h, 2))))
        logits: torch.Tensor = self.head(h.amax(dim=(-2, -1)))
        return logits


def fit(
    model: nn.Module, data: Digits, *, epochs: int, weight: float, seed: int, batch_size: int = 32
) -> float:
    """Adam on cross-entropy (plus the penalty when ``weight`` > 0); returns the seconds it took."""
    start = time.perf_counter()
    step = torch.optim.Adam(model.parameters(), lr=3e-3)
    order_rng = torch.Generator().manual_seed(seed)
    shift_rng = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=order_rng)
        for b in range(0, len(data), batch_size):
            index = order[b : b + batch_size]
            x, y = data.images[index], data.labels[index]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if weight > 0:  # the logits are the reference: x does not run through the model again
                penalty = equivariance_loss(model, x, samples=1, max_shift=4, rng=shift_rng, reference=logits)
                loss = loss + weight * penalty
            step.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            step.step()
    return time.perf_counter() - start


def shifted(data: Digits, seed: int) -> Digits:
    """Each digit moved by its own random circular shift in [-4, 4]^2 (the digits keep their ink)."""
    offsets = torch.randint(-4, 5, (len(data), 2), generator=torch.Generator().manual_seed(seed))
    moved = [torch.roll(image, (int(a), int(b)), (-2, -1)) for image, (a, b) in zip(data.images, offsets)]
    images = torch.stack(moved)
    return Digits(images, data.labels, f"{data.name}-shifted")


def report(name: str, model: nn.Module, val: Digits, seconds: float) -> str:
    _, accuracy = evaluate(model, val)
    _, moved = evaluate(model, shifted(val, seed=123))
    x = val.images[:100]
    box = [s for s in shifts_in_box(4) if not s.is_identity]
    check = check_invariance(model, x, shifts=box, boundary="circular")
    model.eval()
    with torch.no_grad():
        rms = equivariance_loss(model, x, box, boundary="circular").sqrt().item()
    lie = float(lie_derivative_error(model, x))
    return (
        f"{name:<12} {accuracy:9.1%} {moved:13.1%} {rms:12.4f} {check.max_error:10.4f} {lie:11.4f} "
        f"{seconds:8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--weight", type=float, default=1.0, help="the penalty's weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_data, val_data = digits().split(0.8, seed=0)
    print(f"{len(train_data)} training digits, {len(val_data)} validation digits, {args.epochs} epochs")
    print(
        f"{'':<12} {'accuracy':>9} {'shifted acc.':>13} {'RMS error':>12} {'max error':>10} "
        f"{'Lie (/px)':>11} {'train s':>8}"
    )
    for name, weight in (("plain", 0.0), (f"penalty {args.weight:g}", args.weight)):
        torch.manual_seed(args.seed)  # the same initialization for both
        model = PositionalCNN()
        seconds = fit(model, train_data, epochs=args.epochs, weight=weight, seed=args.seed)
        print(report(name, model, val_data, seconds))
    threads = torch.get_num_threads()
    print(f"total {time.perf_counter() - start:.1f} s, torch {torch.__version__}, {threads} threads")


if __name__ == "__main__":
    main()
