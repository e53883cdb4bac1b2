"""The seed article's demonstration, end to end: ``equivariance demo``.

Trains the seed's LeNet on handwritten digits (or loads the weights a
previous run saved), checks its conv4 map and a dense MLP of the same shapes
over every shift of a box on the seed's 38x38 canvas, and writes the error
heatmaps and the animation of the clustered feature maps following a moving
digit. Works offline: MNIST is used when its files are in the cache,
scikit-learn's digits otherwise. Needs the ``viz`` and ``data`` extras.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import torch

from equivariance.check import check_equivariance
from equivariance.report import EquivarianceReport

__all__ = ["DemoResult", "run_demo"]

DataChoice = Literal["auto", "mnist", "digits"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced.

    Attributes:
        lenet: the check of LeNet's conv4 map (expected to pass).
        mlp: the check of the MLP (expected to fail).
        val_accuracy: LeNet's validation accuracy.
        files: the pictures and weights written, by name.
    """

    lenet: EquivarianceReport
    mlp: EquivarianceReport
    val_accuracy: float
    files: dict[str, Path]

    @property
    def as_expected(self) -> bool:
        """Whether the seed's claim held: LeNet passed and the MLP failed."""
        return self.lenet.passed and not self.mlp.passed


def run_demo(
    out: str | Path = "equivariance-demo",
    *,
    data: DataChoice = "auto",
    epochs: int = 10,
    max_shift: int = 5,
    seed: int = 0,
    retrain: bool = False,
    fast: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Run the demonstration and write its pictures into ``out``.

    Args:
        out: the output directory (created).
        data: ``"mnist"`` (the cached or downloaded MNIST files), ``"digits"``
            (scikit-learn's, offline) or ``"auto"`` (MNIST if cached, else digits).
        epochs: training epochs.
        max_shift: the checks cover every shift in ``[-max_shift, max_shift]^2``.
        seed: seeds the training and the models.
        retrain: train even if ``out`` holds weights from an earlier run.
        fast: a quick run (400 training digits, 1 epoch, fewer frames), for smoke tests.
        progress: show progress bars.
        stream: where to print (default: stdout).
    """
    from equivariance.datasets import DatasetUnavailable, digits, embed_in_canvas, mnist, position_sweep
    from equivariance.models import MLP, LeNet
    from equivariance.training import evaluate, load, save, train
    from equivariance.viz import feature_animation, heatmaps_figure

    stream = stream or sys.stdout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    if data == "digits":
        train_data, val_data = digits().split(0.8, seed=0)
    elif data == "mnist":
        train_data, val_data = mnist("train"), mnist("test")
    else:
        try:
            train_data, val_data = mnist("train", download=False), mnist("test", download=False)
        except DatasetUnavailable:
            train_data, val_data = digits().split(0.8, seed=0)
    if fast:
        train_data, epochs = train_data[:400], 1
    print(
        f"data: {train_data.name} ({len(train_data)} training digits, {len(val_data)} validation)",
        file=stream,
    )

    lenet = LeNet()
    weights = out / f"lenet-{train_data.name.split('[')[0]}.pt"
    if weights.exists() and not retrain:
        load(lenet, weights)
        _, accuracy = evaluate(lenet, val_data)
        print(f"loaded {weights} (delete it or pass --retrain to train again)", file=stream)
    else:
        result = train(
            lenet, train_data, val_data, epochs=epochs, batch_size=32, seed=seed, progress=progress
        )
        print(result, file=stream)
        save(lenet, weights)
        accuracy = result.val_accuracy
    print(
        f"LeNet validation accuracy {accuracy:.2%} (error {1 - accuracy:.2%}; the seed: about 1% on MNIST)",
        file=stream,
    )

    canvas = embed_in_canvas(val_data.images[:8], size=38)
    mlp = MLP(input_size=38)
    lenet_report = check_equivariance(lenet, canvas, max_shift=max_shift, layer="conv4")
    mlp_report = check_equivariance(mlp, canvas, max_shift=max_shift)
    print(f"\n{lenet_report}\n\n{mlp_report}\n", file=stream)

    heatmaps = out / "heatmaps.png"
    heatmaps_figure([lenet_report, mlp_report]).savefig(heatmaps, dpi=100)

    frames = position_sweep(val_data.images[0], size=38, path="horizontal")[:: 2 if fast else 1]
    reference = embed_in_canvas(val_data.images[: 20 if fast else 50], size=38)
    gif = feature_animation(
        {"LeNet conv4": lenet.features, "MLP (dense)": mlp}, frames, reference, out / "moving_digit.gif"
    )
    files = {"heatmaps": heatmaps, "animation": gif, "weights": weights}
    for name, path in files.items():
        print(f"{name:>10}: {path}", file=stream)
    return DemoResult(lenet_report, mlp_report, accuracy, files)
