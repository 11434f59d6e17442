"""Media grids: panel order, colour conventions, uint8 output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona.callbacks.media import PANEL_GAP, depth_panel, make_grid, normal_panel


def _visuals(h: int = 6, w: int = 5) -> dict[str, torch.Tensor]:
    target = torch.zeros(h, w, 3)
    render = torch.zeros(h, w, 3)
    render[0, 0] = 1.0  # error 1 at one pixel
    depth = torch.zeros(h, w, 1)
    depth[1, 1], depth[2, 2] = 2.0, 3.0
    normal = torch.zeros(h, w, 3)
    normal[3, 3] = torch.tensor([0.0, 0.0, -1.0])
    return {"normal": normal, "depth": depth, "render": render, "target": target,
            "alpha": torch.full((h, w, 1), 0.5)}


def test_grid_order_size_and_dtype() -> None:
    grid, names = make_grid(_visuals())
    assert names == ["target", "render", "error", "alpha", "depth", "normal"]
    assert grid.dtype == np.uint8 and grid.shape == (6, 6 * 5 + 5 * PANEL_GAP, 3)
    step = 5 + PANEL_GAP
    error = grid[:, 2 * step:2 * step + 5]
    assert error[0, 0].tolist() == [255, 255, 255] and error[1, 1].tolist() == [0, 0, 0]
    alpha = grid[:, 3 * step:3 * step + 5]
    assert (alpha == 128).all()
    assert (grid[:, 5:5 + PANEL_GAP] == 255).all()  # white gap


def test_depth_and_normal_conventions() -> None:
    depth = _visuals()["depth"]
    panel = depth_panel(depth)
    assert panel[1, 1, 0] == pytest.approx(1.0) and panel[2, 2, 0] == pytest.approx(0.2)
    assert panel[0, 0].abs().sum() == 0  # empty pixel black
    normal = normal_panel(_visuals()["normal"])
    assert normal[3, 3].tolist() == [0.5, 0.5, 0.0] and normal[0, 0].abs().sum() == 0


def test_bad_visuals_are_named() -> None:
    with pytest.raises(ValueError, match=r"last_visuals\['seg'\]"):
        make_grid({"seg": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="differ in size"):
        make_grid({"target": torch.zeros(4, 4, 3), "alpha": torch.zeros(5, 4, 1)})


def test_test_writer_accepts_flat_metric_dicts(tmp_path) -> None:
    """The shape PersonaSystem.test_step returns: a flat dict; the frame comes from the batch."""
    import json
    from types import SimpleNamespace

    from persona.callbacks.test_metrics import TestMetricsWriter
    from persona.metrics.protocol import EvalProtocol

    module = SimpleNamespace(eval_protocol=EvalProtocol(name="authors"), last_eval_visuals={
        "target": torch.zeros(4, 4, 3), "render": torch.ones(4, 4, 3)})
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path), loggers=[],
                              global_step=7, ckpt_path=None)
    writer = TestMetricsWriter()
    writer.on_test_epoch_start(trainer, module)
    for index, psnr in ((3, 20.0), (5, torch.tensor(30.0))):
        batch = {"split": ["test"], "index": torch.tensor([index])}
        writer.on_test_batch_end(trainer, module, {"psnr": psnr, "note": "x"}, batch, 0)
    writer.on_test_epoch_end(trainer, module)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [f["frame"] for f in data["frames"]] == ["test/3", "test/5"]
    assert data["mean"] == {"psnr": 25.0}
    thumb = writer.thumbnails["test/3"]
    assert thumb.shape == (4, 8, 3) and thumb[0, 0, 0] == 0 and thumb[0, 7, 0] == 255
    with pytest.raises(ValueError, match="no metric values"):
        writer.on_test_batch_end(trainer, module, {"note": "x"}, {}, 0)
