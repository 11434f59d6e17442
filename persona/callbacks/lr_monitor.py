"""Lightning's learning-rate monitor, usable in runs without a logger."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningMonitor


class LearningRateMonitor(_LightningMonitor):
    """Logs each optimiser group's learning rate like Lightning's, but a run without a logger
    (`--trainer.logger false`) trains on instead of stopping in `on_train_start` with Lightning's
    "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger"."""

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
