"""The Lightning callback: it measures when asked, logs through the trainer's loggers, and leaves training
as it would have been without it. Skipped where PyTorch Lightning (the lightning extra) is not installed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")
from lightning.pytorch.loggers.logger import Logger  # noqa: E402

from equivariance import InvalidArgument  # noqa: E402
from equivariance.lightning import EquivarianceCallback  # noqa: E402


class Recording(Logger):
    """A logger that keeps what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(callbacks: list[Any], logger: Any = False, epochs: int = 2) -> Classifier:
    generator = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.rand(48, 1, 12, 12, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    )
    pl.seed_everything(3, verbose=False)
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", deterministic=True,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8, shuffle=True))
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's own notes (workers, logging interval)
def test_the_callback_logs_through_the_trainers_logger_when_asked() -> None:
    logger = Recording()
    callback = EquivarianceCallback(torch.rand(4, 1, 12, 12), every_n_steps=4, every_n_epochs=1)
    fit([callback], logger)
    ours = [
        (metrics["equivariance/lie_derivative"], step)
        for metrics, step in logger.metrics
        if "equivariance/lie_derivative" in metrics
    ]
    # 6 steps an epoch: steps 4 and 8 by steps, 6 and 12 at the epochs' ends (12 once, not twice)
    assert [step for _, step in ours] == [4, 6, 8, 12]
    assert [value for value, _ in ours] == [record.value for record in callback.history]
    assert [record.epoch for record in callback.history] == [0, 0, 1, 1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_with_the_callback_gives_the_same_weights_as_without() -> None:
    plain = fit([])
    watched = fit(
        [EquivarianceCallback(torch.rand(4, 1, 12, 12), "check_invariance", every_n_steps=1, max_shift=1)]
    )
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name
    assert watched.training  # Lightning's own state, as it left it


def test_a_callback_that_would_never_measure_is_refused() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"every_n_steps and every_n_epochs are both None, so the callback would never measure",
    ):
        EquivarianceCallback(torch.rand(2, 1, 8, 8), every_n_epochs=None)
    with pytest.raises(InvalidArgument, match=r"every_n_steps must be positive or None, found 0"):
        EquivarianceCallback(torch.rand(2, 1, 8, 8), every_n_steps=0)
