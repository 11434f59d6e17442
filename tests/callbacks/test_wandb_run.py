"""An offline W&B run of a tiny fit holds the train losses, validation metrics, media and the
test table, and the values are read back from the run file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from persona.callbacks.loggers import make_loggers
from persona.callbacks.media import PANEL_GAP, MediaLogger
from persona.callbacks.test_metrics import TestMetricsWriter
from persona.callbacks.wandb_offline import (
    find_run_files,
    history_column,
    iter_payloads,
    read_history,
    wait_for_run,
)
from persona.metrics.protocol import EvalProtocol, evaluate_frame

SIZE = 16  # image side in pixels (SSIM needs > 11)


class _TinyFit(L.LightningModule):
    """Fits a small colour image; exposes last_visuals and returns per-frame test metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Parameter(torch.zeros(SIZE, SIZE, 3))
        self.eval_protocol = EvalProtocol(name="plain", mask_composite=False,
                                          fit_test_pose=False, fit_steps=0, ssim_border="reflect")
        self.last_visuals: dict[str, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        target = batch[0][0]
        loss = (self.image - target).abs().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        self.last_visuals = {"target": target, "render": self.image.detach().clamp(0, 1)}
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/l1", (self.image - batch[0][0]).abs().mean())

    def test_step(self, batch, batch_idx):
        target = batch[0][0]
        pred = self.image.detach().clamp(0, 1)
        metrics = evaluate_frame(pred, target, torch.ones(SIZE, SIZE, 1), torch.ones(SIZE, SIZE, 1),
                                 self.eval_protocol)
        return {"frame": f"test/{batch_idx}", "metrics": metrics,
                "thumbnail": torch.cat([target, pred], dim=1)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def test_offline_run_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    target = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(target), batch_size=1)
    loggers = make_loggers(tmp_path / "run", project="persona-test")
    trainer = L.Trainer(default_root_dir=tmp_path / "run", max_steps=4, logger=loggers,
                        callbacks=[MediaLogger(every_n_steps=2), TestMetricsWriter()],
                        log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", limit_val_batches=1, check_val_every_n_epoch=2,
                        num_sanity_val_steps=0)
    model = _TinyFit()
    trainer.fit(model, loader, loader)
    trainer.test(model, loader)
    loggers[0].experiment.finish()

    runs = find_run_files(tmp_path / "run")
    assert len(runs) == 1
    start = time.monotonic()
    wait_for_run(runs[0])
    print(f"run file complete {time.monotonic() - start:.2f} s after finish()")
    rows = read_history(runs[0])
    losses = [v for _, v in history_column(rows, "train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert len(history_column(rows, "val/l1")) == 2
    grids = [v for _, v in history_column(rows, "media/train_grid")]
    assert len(grids) == 2 and grids[0]["_type"] == "images/separated"
    assert grids[0]["height"] == SIZE and grids[0]["width"] == 3 * SIZE + 2 * PANEL_GAP
    media = runs[0].parent / "files" / grids[0]["filenames"][0]
    assert media.is_file()
    from PIL import Image

    with Image.open(media) as image:
        assert image.mode == "RGB" and np.asarray(image).max() > 0
    psnr = [v for _, v in history_column(rows, "test/psnr")]
    table = [v for _, v in history_column(rows, "test/frames")]
    assert len(psnr) == 1 and table and table[0]["_type"] == "table-file"

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "plain" and metrics["num_frames"] == 1
    assert math.isclose(metrics["mean"]["psnr"], psnr[0], rel_tol=1e-6)
    assert sorted(p.name for p in (tmp_path / "run" / "media").iterdir()) == [
        "train_grid_0000002.png", "train_grid_0000004.png", "val_grid_0000002.png",
        "val_grid_0000004.png"]
    csv = next((tmp_path / "run" / "csv").rglob("metrics.csv")).read_text()
    assert "train/loss" in csv.splitlines()[0]


def test_reader_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a run")
    with pytest.raises(ValueError, match="W&B run file"):
        iter_payloads(path)
    with pytest.raises(FileNotFoundError):
        iter_payloads(tmp_path / "missing.wandb")
