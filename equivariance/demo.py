"""The seed article's demonstration, end to end: ``equivariance demo``.

Trains the seed's LeNet on handwritten digits (or loads the weights a previous run saved), checks its conv4
map and a dense MLP of the same shapes over every shift of a box on the seed's 38x38 canvas, and writes the
error heatmaps and the animation of the clustered feature maps following a moving digit. Works offline: MNIST
is used when its files are in the cache, scikit-learn's digits otherwise. Needs the ``viz`` and ``data``
extras.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

import torch
from torch import nn

from equivariance.check import check_equivariance
from equivariance.errors import InvalidArgument
from equivariance.report import EquivarianceReport

if TYPE_CHECKING:
    from equivariance.datasets import Digits

__all__ = ["FAST_DIGITS", "PROMISED_ACCURACY", "DemoResult", "describe_data", "run_demo", "weights_path"]

DataChoice = Literal["auto", "mnist", "digits"]

FAST_DIGITS = 400
"""The training digits of a ``fast`` run (1 epoch)."""

PROMISED_ACCURACY = 0.9
"""The validation accuracy a full run reaches on either data set (about 97% on the digits, 99% on MNIST)."""


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

    The extras and ``out`` are checked before any work; weights are reused only by a run of the same settings.

    Args:
        out: the output directory (created).
        data: ``"mnist"`` (the cached or downloaded MNIST files), ``"digits"`` (scikit-learn's, offline) or
            ``"auto"`` (MNIST if cached, else digits).
        epochs: training epochs.
        max_shift: the checks cover every shift in ``[-max_shift, max_shift]^2``.
        seed: seeds the training and the models.
        retrain: train even if ``out`` holds weights of an earlier run with the same settings.
        fast: a quick run (400 training digits, 1 epoch, fewer frames), for smoke tests; its pictures are
            ``heatmaps-fast.png`` and ``moving_digit-fast.gif``, so a full run's stay.
        progress: show progress bars.
        stream: where to print (default: stdout).

    Returns:
        The two reports, LeNet's accuracy and the files written.

    Raises:
        InvalidArgument: an extra is missing or ``out`` cannot be written.

    Examples:
        >>> import io, tempfile
        >>> result = run_demo(tempfile.mkdtemp(), data="digits", fast=True, max_shift=1,
        ...                   progress=False, stream=io.StringIO())
        >>> result.as_expected, sorted(result.files)
        (True, ['animation', 'heatmaps', 'weights'])
    """
    _require_extras(data)
    stream = stream or sys.stdout
    out = _writable_directory(Path(out))

    from equivariance.datasets import embed_in_canvas, position_sweep
    from equivariance.models import MLP, LeNet
    from equivariance.viz import feature_animation, heatmaps_figure

    torch.manual_seed(seed)
    train_data, val_data = _data(data)
    available = len(train_data)
    if fast:
        train_data, epochs = train_data[:FAST_DIGITS], 1
    print(f"data: {describe_data(train_data, val_data, available)}", file=stream)
    lenet = LeNet()
    weights = weights_path(out, train_data.name, len(train_data), epochs, seed=seed)
    accuracy = _trained(lenet, weights, train_data, val_data, epochs, seed, retrain, progress, stream)
    print(
        f"LeNet validation accuracy {accuracy:.2%} (error {1 - accuracy:.2%}; the seed: about 1% on MNIST)",
        file=stream,
    )
    if accuracy < PROMISED_ACCURACY:
        how = "a --fast run trains 1 epoch on 400 digits" if fast else f"{epochs} epochs were not enough"
        print(
            f"WARNING: LeNet's accuracy {accuracy:.2%} is below the {PROMISED_ACCURACY:.0%} a full run "
            f"reaches ({how}); its feature maps are not those of a trained network. Run without --fast, "
            "or with more --epochs.",
            file=stream,
        )

    canvas = embed_in_canvas(val_data.images[:8], size=38)
    mlp = MLP(input_size=38)
    lenet_report = check_equivariance(lenet, canvas, max_shift=max_shift, layer="conv4")
    mlp_report = check_equivariance(mlp, canvas, max_shift=max_shift)
    print(f"\n{lenet_report}\n\n{mlp_report}\n", file=stream)

    suffix = "-fast" if fast else ""  # a smoke run never replaces the pictures of a full one
    heatmaps = out / f"heatmaps{suffix}.png"
    heatmaps_figure([lenet_report, mlp_report]).savefig(heatmaps, dpi=100)

    frames = position_sweep(val_data.images[0], size=38, path="horizontal")[:: 2 if fast else 1]
    reference = embed_in_canvas(val_data.images[: 20 if fast else 50], size=38)
    gif = feature_animation(
        {"LeNet conv4": lenet.features, "MLP (dense)": mlp},
        frames,
        reference,
        out / f"moving_digit{suffix}.gif",
    )
    files = {"heatmaps": heatmaps, "animation": gif, "weights": weights}
    for name, path in files.items():
        print(f"{name:>10}: {path}", file=stream)
    return DemoResult(lenet_report, mlp_report, accuracy, files)


def describe_data(train_data: Digits, val_data: Digits, available: int) -> str:
    """The demo's data in words: which digits, how many of them trained and validated the model.

    Args:
        train_data: the training digits used.
        val_data: the validation digits.
        available: how many training digits there were before a ``fast`` run took its few.

    Examples:
        >>> from equivariance.datasets import digits
        >>> train, val = digits().split(0.8, seed=0)
        >>> print(describe_data(train[:400], val, len(train)))
        scikit-learn's handwritten digits (offline; 8x8 scans resized to MNIST's 28x28),
        400 of its 1,438 training digits to train, 359 others to validate
        >>> describe_data(train, val, len(train)).split(", ", 1)[1]
        'all 1,438 training digits to train, 359 others to validate'
    """
    source = train_data.name.split("[")[0]
    words = {
        "sklearn-digits": "scikit-learn's handwritten digits (offline; 8x8 scans resized to MNIST's 28x28)",
        "mnist-train": "MNIST (the official files, 28x28)",
    }.get(source, source)
    used = len(train_data)
    trained = (
        f"all {used:,} training digits"
        if used == available
        else f"{used:,} of its {available:,} training digits"
    )
    return f"{words}, {trained} to train, {len(val_data):,} others to validate"


def weights_path(out: Path, data_name: str, digits: int, epochs: int, *, seed: int) -> Path:
    """Where the demo keeps LeNet's weights for these training settings.

    Args:
        out: the output directory.
        data_name: the training data's name (a slice suffix such as ``[:1438]`` is dropped).
        digits: the number of training digits.
        epochs: training epochs.
        seed: the training seed.

    Returns:
        ``out / "lenet-DATA-Ndigits-Eepochs-seedS.pt"``: a run of other settings never reuses it.

    Examples:
        >>> weights_path(Path("demo"), "sklearn-digits[:1438]", 400, 1, seed=0).name
        'lenet-sklearn-digits-400digits-1epochs-seed0.pt'
    """
    return out / f"lenet-{data_name.split('[')[0]}-{digits}digits-{epochs}epochs-seed{seed}.pt"


def _require_extras(data: DataChoice) -> None:
    """Refuse at once, not after training, when a package the demo needs is missing."""
    needed = {"matplotlib": "viz", "PIL": "viz"}
    if data == "digits":
        needed["sklearn"] = "data"
    missing = [name for name in needed if not _importable(name)]
    if missing:
        extras = ",".join(sorted({needed[name] for name in missing}))
        raise InvalidArgument(
            f"the demo needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f'installed; pip install "equivariance[{extras}]"'
        )


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _writable_directory(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InvalidArgument(
            f"cannot write the demo's files to {os.fspath(out)!r} ({exc.strerror or exc}); pass --out "
            "a directory you can write to"
        ) from None
    return out


def _data(data: DataChoice) -> tuple[Digits, Digits]:
    from equivariance.datasets import DatasetUnavailable, digits, mnist

    if data == "digits":
        return digits().split(0.8, seed=0)
    if data == "mnist":
        return mnist("train"), mnist("test")
    try:
        return mnist("train", download=False), mnist("test", download=False)
    except DatasetUnavailable:
        return digits().split(0.8, seed=0)


def _trained(
    lenet: nn.Module,
    weights: Path,
    train_data: Digits,
    val_data: Digits,
    epochs: int,
    seed: int,
    retrain: bool,
    progress: bool,
    stream: TextIO,
) -> float:
    """Train ``lenet`` (or load the weights of an earlier run with the same settings); its accuracy."""
    from equivariance.training import evaluate, load, save, train

    if weights.exists() and not retrain:
        load(lenet, weights)
        _, accuracy = evaluate(lenet, val_data)
        print(f"loaded {weights} (delete it or pass --retrain to train again)", file=stream)
        return accuracy
    result = train(lenet, train_data, val_data, epochs=epochs, batch_size=32, seed=seed, progress=progress)
    print(result, file=stream)
    save(lenet, weights)
    return result.val_accuracy
