"""Fixing what the profile finds, on real digits: the seed's kind of CNN trained as is, anti-aliased, and
with adaptive polyphase sampling, and what each fix buys.

The claim of Zhang (ICML 2019) and of Chaman and Dokmanic (CVPR 2021), run on
the offline digits (scikit-learn's 1,797, in MNIST's 28x28 layout): a small
CNN of the seed's kind (5x5 convolutions and ReLUs, subsampled twice by 2x2
max pooling, pooled globally for a 10-way head) is trained from the same
initial weights in five ways:

- ``as is``: zero padding, strided max pooling;
- ``anti-aliased``: ``antialias(model)``, max pooling at stride 1, then
  Zhang's blur (4 taps, reflect padding) that subsamples;
- ``circular padding``: ``circular_padding(model)``, the control that
  separates the padding from the sampling;
- ``circular, anti-aliased``: ``circular_padding(antialias(model))``, the
  blur where the padding gives no position away (the blur pads circularly);
- ``polyphase``: ``polyphase(circular_padding(model))``, every subsampling
  keeps the grid of largest norm.

For each, with ``--seeds`` seeds (initial weights and batch order), it
reports the validation accuracy, the consistency (top-1 agreement of two
random shifts, ``pairs`` per digit, 95% interval clustered by digit: shifts
of up to 4 pixels, which keep the digit whole, and any circular shift, under
which polyphase sampling is exact), the probability that a one-pixel shift changes the prediction (95%
interval clustered by digit), the per-layer profile under a one-pixel shift,
and the Lie derivative of the logits watched during training
(``EquivarianceMonitor``). It writes ``results.json``, ``results.png``,
``profiles.png`` and ``monitor.png`` into ``--out``; the docs page "Fixing
what the profile finds" shows them.

    python examples/fix_digits.py [--seeds 3] [--epochs 8] [--threads N] [--out docs/fixing]
    python examples/fix_digits.py --fast --out /tmp/fix   # one seed, one epoch, a few hundred digits
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from equivariance import profile_equivariance
from equivariance.datasets import Digits, digits
from equivariance.invariance import consistency, prediction_change
from equivariance.monitor import EquivarianceMonitor
from equivariance.surgery import antialias, circular_padding, polyphase

VARIANTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "as is": lambda model: model,
    "anti-aliased": antialias,
    "circular padding": circular_padding,
    "circular, anti-aliased": lambda model: circular_padding(antialias(model)),
    "polyphase": lambda model: polyphase(circular_padding(model)),
}
"""The ways the same initial network is trained, by name."""


def cnn() -> nn.Sequential:
    """The seed's kind of CNN: 5x5 convolutions of 20 and 40 channels, ReLUs, two 2x2 max poolings (28 -> 14
    -> 7), a third convolution, global average pooling and a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 40, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(40, 40, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10),
    )  # fmt: skip


def fit(
    model: nn.Module, data: Digits, monitor: EquivarianceMonitor, *, epochs: int, seed: int, lr: float = 3e-3
) -> float:
    """A plain loop (Adam, cross-entropy, batches of 32) with the monitor called once per step; seconds."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * -(-len(data) // 32)
    )
    started = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), 32):
            batch = order[start : start + 32]
            loss = F.cross_entropy(model(data.images[batch]), data.labels[batch])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            monitor.step(epoch=epoch)
    model.eval()
    return time.perf_counter() - started


def measure(model: nn.Module, val: Digits, pairs: int) -> dict[str, Any]:
    """Accuracy, consistency, one-pixel prediction change and the per-layer profile of a trained model."""
    with torch.no_grad():
        accuracy = float((model(val.images).argmax(1) == val.labels).float().mean())
    # shifts that keep the digit whole (it sits in a 20x20 box with 4 empty rows and columns around it),
    # and any circular shift (the protocol under which polyphase sampling is exact)
    near = consistency(model, val.images, pairs=pairs, max_shift=4, boundary="zeros", seed=1)
    anywhere = consistency(model, val.images, pairs=pairs, seed=1)
    change = prediction_change(model, val.images)
    profile = profile_equivariance(model, val.images[:64], (1, 0), boundary="circular")
    return {
        "accuracy": accuracy,
        "consistency_4px": near.to_dict(),
        "consistency_circular": anywhere.to_dict(),
        "prediction_change": change.to_dict(),
        "profile": [
            {"name": row.name, "type": row.type, "error": row.error, "passed": row.passed, "cause": row.cause}
            for row in profile.layers
        ],
        "profile_summary": profile.summary(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    train_data, val_data = digits().split(0.8, seed=0)
    if args.fast:
        train_data, val_data = train_data[:384], val_data[:120]
    watched = val_data.images[:64]
    runs = []
    for seed in range(args.seeds):
        for variant, convert in VARIANTS.items():
            torch.manual_seed(seed)
            model = convert(cnn())  # the same initial weights for every variant of a seed
            monitor = EquivarianceMonitor(model, watched, "lie_derivative", every=args.every)
            monitor.measure(step=0)  # before training
            seconds = fit(model, train_data, monitor, epochs=args.epochs, seed=seed)
            measured = measure(model, val_data, args.pairs)
            measured.update(
                variant=variant, seed=seed, train_seconds=seconds,
                monitor=[[r.step, r.value] for r in monitor.history],
                monitor_seconds=sum(r.seconds for r in monitor.history),
            )  # fmt: skip
            runs.append(measured)
            shown = "  ".join(
                f"{key} {m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
                for key in ("consistency_4px", "consistency_circular", "prediction_change")
                if (m := measured[key])
            )
            print(
                f"seed {seed}  {variant:17s} accuracy {measured['accuracy']:.3f}  {shown}  ({seconds:.0f} s)"
            )
    settings = {
        "data": f"{train_data.name}: {len(train_data)} training, {len(val_data)} validation digits",
        "epochs": args.epochs, "seeds": args.seeds, "pairs": args.pairs, "fast": args.fast,
        "monitor": f"lie_derivative of the logits, {len(watched)} digits, every {args.every} steps",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    return {"settings": settings, "variants": list(VARIANTS), "runs": runs}


def pictures(results: dict[str, Any], out: Path) -> None:
    """``results.png`` (each seed's numbers with their intervals), ``profiles.png`` (seed 0's profile of each
    variant, the layers of the original named) and ``monitor.png`` (seed 0's Lie derivative during
    training). ``python examples/fix_digits.py --redraw`` draws them again from ``results.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants, runs = results["variants"], results["runs"]
    colours = dict(zip(variants, ["tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:green"]))
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, key, label in zip(
        axes,
        ["accuracy", "consistency_4px", "consistency_circular", "prediction_change"],
        [
            "validation accuracy",
            "consistency, shifts up to 4 px",
            "consistency, any circular shift",
            "P(prediction changes), 1-pixel shift",
        ],
    ):
        for i, variant in enumerate(variants):
            mine = [r for r in runs if r["variant"] == variant]
            for j, r in enumerate(mine):
                x = i + (j - (len(mine) - 1) / 2) * 0.15
                if key == "accuracy":
                    ax.plot(x, r[key], "o", color=colours[variant])
                else:
                    value, low, high = r[key]["value"], r[key]["low"], r[key]["high"]
                    ax.errorbar(
                        x,
                        value,
                        yerr=[[value - low], [high - value]],
                        fmt="o",
                        color=colours[variant],
                        capsize=3,
                    )
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
    figure.suptitle("each dot a seed; bars: 95% intervals clustered by digit", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "results.png", dpi=100)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(9, 4.2))
    for variant in variants:
        rows = next(r for r in runs if r["variant"] == variant and r["seed"] == 0)["profile"]
        errors = [max(r["error"], 1e-9) for r in rows]
        ax.plot(range(len(rows)), errors, marker="o", label=variant, color=colours[variant])
    layers = next(r for r in runs if r["variant"] == variants[0] and r["seed"] == 0)["profile"]
    ax.set_xticks(range(len(layers)), [f"{r['name']} {r['type']}" for r in layers], rotation=30, ha="right")
    ax.set_yscale("log")
    ax.axhline(1e-4, color="black", linestyle="--", linewidth=1, label="rtol 1e-04")
    ax.set_ylabel("relative error, shift (1, 0)")
    ax.set_title(
        "each layer of the trained networks (seed 0), 64 validation digits; below 1e-9 drawn at 1e-9"
    )
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "profiles.png", dpi=100)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(6, 3.6))
    for variant in variants:
        history = next(r for r in runs if r["variant"] == variant and r["seed"] == 0)["monitor"]
        ax.plot(
            [s for s, _ in history],
            [v for _, v in history],
            marker="o",
            markersize=2,
            label=variant,
            color=colours[variant],
        )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("Lie derivative of the logits")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "monitor.png", dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of shifts per digit for consistency")
    parser.add_argument("--every", type=int, default=15, help="steps between two monitor measurements")
    parser.add_argument("--out", type=Path, default=Path("docs/fixing"))
    parser.add_argument("--fast", action="store_true", help="one seed, one epoch, a few hundred digits")
    parser.add_argument("--redraw", action="store_true", help="only draw the pictures of OUT/results.json")
    args = parser.parse_args()
    if args.redraw:
        pictures(json.loads((args.out / "results.json").read_text()), args.out)
        return
    if args.fast:
        args.seeds, args.epochs, args.pairs = 1, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run(args)
    results["settings"]["seconds"] = round(time.perf_counter() - started)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    pictures(results, args.out)
    print(f"wrote results.json, results.png, profiles.png, monitor.png to {args.out}")


if __name__ == "__main__":
    main()
