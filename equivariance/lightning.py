"""Watching equivariance in a PyTorch Lightning ``Trainer``: a callback (the ``lightning`` extra).

[`EquivarianceCallback`][equivariance.lightning.EquivarianceCallback] takes the measurements of
[`EquivarianceMonitor`][equivariance.monitor.EquivarianceMonitor] every few steps and logs them through the
trainer's loggers; install it with ``pip install "equivariance[lightning]"``.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - the extra is installed where this module is used
    raise ImportError(
        "equivariance.lightning needs PyTorch Lightning: pip install 'equivariance[lightning]'"
    ) from exc

from equivariance._engine.validation import as_int
from equivariance.errors import InvalidArgument
from equivariance.monitor import EquivarianceMonitor, Measure, MonitorRecord

__all__ = ["EquivarianceCallback"]


class EquivarianceCallback(pl.Callback):
    """Measures the module's equivariance on a fixed batch during ``Trainer.fit`` and logs it.

    Examples:
        >>> import torch, lightning.pytorch as pl
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> class Classifier(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Sequential(
        ...             torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        ...             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = torch.utils.data.TensorDataset(torch.randn(32, 1, 12, 12), torch.randint(0, 3, (32,)))
        >>> callback = EquivarianceCallback(torch.randn(4, 1, 12, 12), every_n_steps=2)
        >>> trainer = pl.Trainer(
        ...     max_epochs=2, callbacks=[callback], logger=CSVLogger(getfixture("tmp_path")),
        ...     log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        ...     enable_checkpointing=False)
        >>> trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=8))
        >>> [(record.step, record.epoch) for record in callback.history]  # 4 steps an epoch
        [(2, 0), (4, 0), (6, 1), (8, 1)]

    Args:
        x: the fixed batch ``(N, C, *spatial)`` each measurement uses (moved to the module's device).
        measure: a name in [`MEASURES`][equivariance.monitor.MEASURES] (default ``"lie_derivative"``) or a
            callable ``(model, x) -> number``.
        every_n_steps: measure after every ``every_n_steps``-th optimizer step (``trainer.global_step``);
            None: not by steps.
        every_n_epochs: measure at the end of every ``every_n_epochs``-th training epoch; None: not by epochs.
        name: the name logged; default ``"equivariance/<measure>"``.
        **options: passed to the measurement, e.g. ``shift=(1, 0)``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        measure: str | Measure = "lie_derivative",
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        name: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.every_n_steps = _every(every_n_steps, "every_n_steps")
        self.every_n_epochs = _every(every_n_epochs, "every_n_epochs")
        if self.every_n_steps is None and self.every_n_epochs is None:
            raise InvalidArgument(
                "every_n_steps and every_n_epochs are both None, so the callback would never measure; "
                "pass every_n_steps=100, say, or every_n_epochs=1"
            )
        # a stand-in module until the trainer hands over the LightningModule (in setup)
        self.monitor = EquivarianceMonitor(torch.nn.Identity(), x, measure, name=name, **options)
        self._last_step = -1

    @property
    def history(self) -> list[MonitorRecord]:
        """The measurements taken, in order."""
        return self.monitor.history

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.monitor.model = pl_module

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._measure(trainer, pl_module)

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measures and logs, once a step: with gradient accumulation several batches share a step, and
        an epoch may end on a step just measured."""
        step = trainer.global_step
        if step == self._last_step:
            return
        self.monitor.model = pl_module
        record = self.monitor.measure(step=step, epoch=trainer.current_epoch)
        self._last_step = step
        for logger in trainer.loggers:
            logger.log_metrics({self.monitor.name: record.value}, step=step)


def _every(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    count = as_int(value, what)
    if count < 1:
        raise InvalidArgument(f"{what} must be positive or None, found {count}; pass e.g. {what}=1")
    return count
