"""persona's LearningRateMonitor: logs like Lightning's, and a run without a logger trains."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import LearningRateMonitor as LightningMonitor
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from persona.callbacks.lr_monitor import LearningRateMonitor

STEPS = 3  # training steps of each run


def _trainer(tmp_path: Path, monitor: pl.Callback, logger) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, max_steps=STEPS, logger=logger,
                      callbacks=[monitor], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, log_every_n_steps=1)


def test_without_a_logger_training_runs(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no logger"):  # what Lightning's own callback does
        _trainer(tmp_path, LightningMonitor(), False).fit(BoringModel())
    trainer = _trainer(tmp_path, LearningRateMonitor(), False)
    trainer.fit(BoringModel())
    assert trainer.global_step == STEPS


def test_with_a_logger_the_rate_is_logged(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    _trainer(tmp_path, LearningRateMonitor(logging_interval="step"), logger).fit(BoringModel())
    text = (Path(logger.log_dir) / "metrics.csv").read_text()
    header, *rows = text.strip().splitlines()
    assert "lr-SGD" in header.split(",") and len(rows) >= STEPS
    column = header.split(",").index("lr-SGD")
    assert float(rows[0].split(",")[column]) == pytest.approx(0.1)  # BoringModel's SGD lr
