"""Train the seed's LeNet on real handwritten digits and report accuracy and time.

Offline by default: scikit-learn's 1,797 digits (in MNIST's 28x28 layout),
split 80/20 with a fixed seed. The target is at least 97% validation
accuracy in under two minutes of CPU. With ``--mnist`` it trains on MNIST's
60,000 training digits and reports the error on its 10,000 test digits, to
compare with the seed's ~1% (the files must be in the cache or downloadable).
Ends with a check that the trained network's conv4 map is still equivariant.

    python benchmarks/train_digits.py [--epochs 10] [--seed 0] [--threads N] [--mnist]
"""

from __future__ import annotations

import argparse
import time

import torch

from equivariance import check_equivariance
from equivariance.datasets import digits, embed_in_canvas, mnist
from equivariance.models import LeNet
from equivariance.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--mnist", action="store_true", help="train on MNIST instead (needs the files)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.mnist:
        train_data, val_data = mnist("train"), mnist("test")
    else:
        train_data, val_data = digits().split(0.8, seed=0)  # one fixed split; --seed varies the training
    loaded = time.perf_counter() - start
    torch.manual_seed(args.seed)
    model = LeNet()
    result = train(
        model, train_data, val_data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    print(result)
    print(
        f"data: {train_data.name} ({len(train_data)}) / {val_data.name} ({len(val_data)}), loaded in "
        f"{loaded:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"total wall time, loading included: {time.perf_counter() - start:.1f} s")

    canvas = embed_in_canvas(val_data.images[:8], size=38)
    report = check_equivariance(model, canvas, max_shift=3, layer="conv4")
    print(f"trained conv4 map on a 38x38 canvas: {'PASSED' if report.passed else 'FAILED'}, "
          f"max error {report.max_error:.1e} over {len(report.results)} shifts")  # fmt: skip


if __name__ == "__main__":
    main()
