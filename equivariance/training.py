"""Train the seed's LeNet (or any classifier) on digits, in plain PyTorch.

[`train`][equivariance.training.train] is a short, seeded training loop (docs/reference/training.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.progress import Progress
from equivariance._engine.validation import as_float, as_int, describe
from equivariance.datasets import Digits
from equivariance.errors import InvalidArgument

__all__ = ["EpochStats", "TrainingResult", "evaluate", "load", "save", "train"]

DataLike = Digits | tuple[torch.Tensor, torch.Tensor] | Sequence[torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    """The numbers of one epoch.

    Attributes:
        epoch: 1-based.
        train_loss: the mean cross-entropy over the epoch's training batches.
        val_loss: the mean cross-entropy on the validation data (NaN without any).
        val_accuracy: the fraction of validation digits classified right (NaN without any).
        seconds: the epoch's wall time, validation included.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainingResult:
    """What ``train`` did: one ``EpochStats`` per epoch and the final validation numbers.

    ``str(result)`` is a small table, one line per epoch.

    Attributes:
        history: the epochs, in order.
        val_accuracy: the last epoch's validation accuracy.
        val_error: ``1 - val_accuracy``, the number the seed quotes (about 1% on MNIST).
        seconds: the total wall time.
        samples: the number of training digits.
    """

    history: tuple[EpochStats, ...]
    val_accuracy: float
    val_error: float
    seconds: float
    samples: int

    def __str__(self) -> str:
        lines = [
            f"trained {len(self.history)} epochs on {self.samples} digits in {self.seconds:.1f} s: "
            f"validation accuracy {self.val_accuracy:.2%} (error {self.val_error:.2%})",
            "  epoch  train loss  val loss  val accuracy  seconds",
        ]
        for e in self.history:
            lines.append(
                f"  {e.epoch:5d}  {e.train_loss:10.4f}  {e.val_loss:8.4f}  {e.val_accuracy:12.2%}  "
                f"{e.seconds:7.1f}"
            )
        return "\n".join(lines)


def train(
    model: nn.Module,
    train_data: DataLike,
    val_data: DataLike | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    schedule: Literal["onecycle", "constant"] = "onecycle",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train a classifier with cross-entropy; validate after every epoch.

    The model is trained in place and left in the mode it was in; batches are drawn by a generator seeded with
    ``seed`` (the global RNG is not touched).

    Args:
        model: maps ``(N, 1, 28, 28)`` to logits ``(N, classes)``, e.g. [`LeNet`][equivariance.models.LeNet].
        train_data: [`Digits`][equivariance.datasets.Digits] or a pair ``(images, labels)``.
        val_data: the same, or None to skip validation.
        epochs: passes over the training data.
        batch_size: digits per step.
        lr: the learning rate (the peak rate of the one-cycle schedule).
        optimizer: ``"adam"`` or ``"sgd"`` (with momentum 0.9).
        schedule: ``"onecycle"`` (default: the rate warms up to ``lr`` over the first 30% of the steps, then
            anneals to almost zero; on the offline digits it is what makes 97% reliable) or ``"constant"``.
        weight_decay: L2 penalty passed to the optimizer.
        seed: seeds the shuffling.
        device: where to train (default: the model's device).
        progress: show a progress bar on stderr (redrawn on a terminal, one summary line per epoch elsewhere).

    Returns:
        A [`TrainingResult`][equivariance.training.TrainingResult].

    Examples:
        >>> import torch
        >>> from equivariance.models import LeNet
        >>> from equivariance.datasets import Digits
        >>> data = Digits(torch.rand(32, 1, 28, 28), torch.arange(32) % 10, "noise")
        >>> result = train(LeNet(), data, data, epochs=1, batch_size=16, progress=False)
        >>> len(result.history), 0.0 <= result.val_accuracy <= 1.0
        (1, True)
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"model must be a torch.nn.Module, found {describe(model)}; pass the module, not its output"
        )
    images, labels = _as_data(train_data, "train_data")
    val = None if val_data is None else _as_data(val_data, "val_data")
    epochs = _positive(epochs, "epochs")
    batch_size = _positive(batch_size, "batch_size")
    lr_value = as_float(lr, "lr")
    decay = as_float(weight_decay, "weight_decay")
    assert lr_value is not None
    assert decay is not None
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    step = _optimizer(model, optimizer, lr_value, decay)
    if schedule not in ("onecycle", "constant"):
        raise InvalidArgument(
            f"schedule must be 'onecycle' or 'constant', found {describe(schedule)}; pass schedule='onecycle'"
        )
    batches = -(-len(labels) // batch_size)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(step, lr_value, total_steps=epochs * batches)
        if schedule == "onecycle"
        else None
    )
    generator = torch.Generator().manual_seed(as_int(seed, "seed"))
    was_training = model.training
    history: list[EpochStats] = []
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            total_loss = 0.0
            with Progress(batches, f"epoch {epoch}/{epochs}", enabled=progress, unit="batch") as bar:
                for b in range(batches):
                    index = order[b * batch_size : (b + 1) * batch_size]
                    x, y = images[index].to(device), labels[index].to(device)
                    loss = F.cross_entropy(model(x), y)
                    step.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    step.step()
                    if scheduler is not None:
                        scheduler.step()
                    total_loss += float(loss.detach()) * len(index)
                    bar.update(loss=total_loss / min((b + 1) * batch_size, len(labels)))
                val_loss, val_accuracy = (float("nan"), float("nan"))
                if val is not None:
                    val_loss, val_accuracy = evaluate(model, val, device=device)
                    bar.set(val_acc=val_accuracy)
            history.append(
                EpochStats(
                    epoch, total_loss / len(labels), val_loss, val_accuracy, time.perf_counter() - epoch_start
                )
            )
    finally:
        model.train(was_training)
    accuracy = history[-1].val_accuracy
    return TrainingResult(tuple(history), accuracy, 1.0 - accuracy, time.perf_counter() - start, len(labels))


def evaluate(
    model: nn.Module, data: DataLike, *, batch_size: int = 512, device: torch.device | str | None = None
) -> tuple[float, float]:
    """The mean cross-entropy and the accuracy of a classifier on ``data``, in eval mode, without autograd.

    Args:
        model: maps images to logits.
        data: [`Digits`][equivariance.datasets.Digits] or a pair ``(images, labels)``.
        batch_size: digits per forward pass.
        device: where to run (default: the model's device).

    Returns:
        ``(loss, accuracy)`` as floats.

    Examples:
        >>> import torch
        >>> from equivariance.datasets import Digits
        >>> always_three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
        >>> with torch.no_grad():
        ...     _ = always_three[1].weight.zero_(); _ = always_three[1].bias.copy_(torch.eye(10)[3])
        >>> evaluate(always_three, Digits(torch.zeros(4, 1, 2, 2), torch.tensor([3, 3, 1, 0]), "x"))[1]
        0.5
    """
    images, labels = _as_data(data, "data")
    batch_size = _positive(batch_size, "batch_size")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                x = images[start : start + batch_size].to(device)
                y = labels[start : start + batch_size].to(device)
                logits = model(x)
                total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return total_loss / len(labels), correct / len(labels)


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a model's weights (its ``state_dict``) to ``path``.

    Examples:
        >>> import os, tempfile, torch
        >>> from equivariance.models import LeNet
        >>> path = os.path.join(tempfile.mkdtemp(), "lenet.pt")
        >>> save(LeNet(), path)
        >>> isinstance(load(LeNet(), path), LeNet)
        True
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"model must be a torch.nn.Module, found {describe(model)}; pass the module, not its output"
        )
    torch.save(model.state_dict(), os.fspath(path))


def load(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load weights saved by ``save`` into ``model`` (strictly: every name must match); returns it.

    Only tensors are read (``torch.load(..., weights_only=True)``), so a file from elsewhere cannot run code.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgument(
            f"model must be a torch.nn.Module, found {describe(model)}; pass the module, not its output"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        state = torch.load(os.fspath(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InvalidArgument(
            f"no saved weights at {os.fspath(path)!r}; save them first with save()"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InvalidArgument(
            f"the weights in {os.fspath(path)!r} do not fit {type(model).__name__}: {error}"
        ) from None
    return model


def _optimizer(model: nn.Module, optimizer: object, lr: float, decay: float) -> torch.optim.Optimizer:
    """Adam or SGD with momentum over the model's trainable parameters."""
    if optimizer not in ("adam", "sgd"):
        raise InvalidArgument(
            f"optimizer must be 'adam' or 'sgd', found {describe(optimizer)}; pass optimizer='adam'"
        )
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise InvalidArgument(
            f"{type(model).__name__} has no trainable parameters; unfreeze them (requires_grad_(True))"
        )
    if optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=decay)


def _as_data(data: object, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, Digits):
        images, labels = data.images, data.labels
    elif (
        isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    ):
        images, labels = data
    else:
        raise InvalidArgument(
            f"{what} must be Digits or a pair (images, labels) of tensors, found {describe(data)}"
        )
    if images.dim() < 2 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or len(labels) == 0:
        raise InvalidArgument(
            f"{what} must hold images (N, ...) and labels (N,) with N > 0, found {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise InvalidArgument(
            f"{what}'s labels must be int64 class indices, found {labels.dtype}; convert them, e.g. "
            "labels.long()"
        )
    return images, labels


def _positive(value: object, what: str) -> int:
    number = as_int(value, what)
    if number < 1:
        raise InvalidArgument(f"{what} must be positive, found {number}; pass a positive number")
    return number
