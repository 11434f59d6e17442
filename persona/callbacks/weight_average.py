"""An exponential moving average of the system's parameters (model.optim.ema_decay)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging


class SystemEMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging for a module that creates its parameters in its own
    `setup` (PersonaSystem builds them from the subject): Lightning sets up callbacks before the
    module, so the average's copy would miss them; this builds the module first.

    Parameters only (use_buffers False): the system's buffers are constants (template, skinning
    volume, body), and an average of a constant is not bit-exact in floating point. The
    checkpoint's state_dict holds the average, the live weights go under
    "current_model_state"; after the fit the module holds the average."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=False, decay=decay)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.setup(stage)
        super().setup(trainer, pl_module, stage)
