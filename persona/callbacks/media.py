"""Image grids of the training renders, logged as uint8 to W&B and saved as PNG.

Contract with the LightningModule: after a training (or validation) step it may set
`pl_module.last_visuals: dict[str, Tensor]` with [H, W, C] tensors of one view (any device;
detached or not). Known keys, in grid order:
  target [H,W,3] in [0,1] | render [H,W,3] in [0,1] | error [H,W,1|3] (>= 0; computed as the
  mean absolute difference of render and target when absent) | alpha [H,W,1] in [0,1] |
  depth [H,W,1] metres (0 = empty) | normal [H,W,3] in [-1,1] (0 = empty) | seg [H,W,3] in [0,1] |
  seams [H,W,1|3] in [0,1]
Missing panels are skipped; other keys are appended in sorted order (3 channels as colours in
[0, 1], 1 channel as grey). All panels must share H and W.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from torch import Tensor

from persona.atomic import atomic_write

GRID_ORDER = ("target", "render", "error", "alpha", "depth", "normal", "seg", "seams")
ERROR_FULL_SCALE = 0.25  # an absolute error of 0.25 (per channel mean) maps to the hottest colour
PANEL_GAP = 2  # white pixels between panels


def heat(values: Tensor) -> Tensor:
    """[H, W] in [0, 1] -> [H, W, 3] black-red-yellow-white ramp."""
    v = values.clamp(0, 1)[..., None] * 3.0
    return torch.cat([v.clamp(0, 1), (v - 1).clamp(0, 1), (v - 2).clamp(0, 1)], dim=-1)


def _grey(values: Tensor) -> Tensor:
    return values[..., :1].clamp(0, 1).expand(*values.shape[:2], 3)


def depth_panel(depth: Tensor) -> Tensor:
    """[H, W, 1] metres -> [H, W, 3]: near bright, far dark, empty black (min-max over valid)."""
    d = depth[..., 0].float()
    valid = torch.isfinite(d) & (d > 0)
    out = torch.zeros_like(d)
    if valid.any():
        near, far = d[valid].min(), d[valid].max()
        out[valid] = 1.0 - 0.8 * (d[valid] - near) / (far - near).clamp(min=1e-8)
    return _grey(out[..., None])


def normal_panel(normal: Tensor) -> Tensor:
    """[H, W, 3] in [-1, 1] -> colours (n + 1) / 2, empty pixels black."""
    valid = normal.norm(dim=-1, keepdim=True) > 1e-6
    return torch.where(valid, (normal + 1) / 2, torch.zeros_like(normal)).clamp(0, 1)


def panel(name: str, value: Tensor) -> Tensor:
    """One visual as [H, W, 3] float in [0, 1]."""
    if value.ndim != 3 or value.shape[-1] not in (1, 3):
        raise ValueError(f"last_visuals[{name!r}]: expected [H, W, 1] or [H, W, 3], got "
                         f"{list(value.shape)}")
    value = value.detach().float().cpu()
    if name == "depth":
        return depth_panel(value)
    if name == "normal":
        return normal_panel(value)
    if name == "error":
        return heat(value.mean(-1) / ERROR_FULL_SCALE)
    if value.shape[-1] == 1:
        return _grey(value)
    return value.clamp(0, 1)


def make_grid(visuals: dict[str, Tensor]) -> tuple[np.ndarray, list[str]]:
    """uint8 [H, W * k + gaps, 3] grid of the visuals in GRID_ORDER, and the panel names."""
    visuals = dict(visuals)
    if "error" not in visuals and "render" in visuals and "target" in visuals:
        visuals["error"] = (visuals["render"].detach().float().cpu()
                            - visuals["target"].detach().float().cpu()).abs()
    names = [n for n in GRID_ORDER if n in visuals]
    names += sorted(n for n in visuals if n not in GRID_ORDER)
    if not names:
        raise ValueError("make_grid: no visuals")
    panels = [panel(n, visuals[n]) for n in names]
    sizes = {tuple(p.shape[:2]) for p in panels}
    if len(sizes) != 1:
        raise ValueError(f"make_grid: panels differ in size: "
                         f"{ {n: list(p.shape[:2]) for n, p in zip(names, panels, strict=True)} }")
    h = panels[0].shape[0]
    gap = torch.ones(h, PANEL_GAP, 3)
    pieces = [panels[0]]
    for p in panels[1:]:
        pieces += [gap, p]
    grid = torch.cat(pieces, dim=1)  # [H, W', 3]
    return (grid * 255.0 + 0.5).to(torch.uint8).numpy(), names


def save_png(path: Path, image: np.ndarray) -> Path:
    """Atomic PNG write of a uint8 [H, W, 3] image."""
    from PIL import Image

    return atomic_write(path, lambda temporary: Image.fromarray(image).save(temporary,
                                                                            format="PNG"))


def log_image_to_loggers(loggers: list, key: str, image: np.ndarray, step: int,
                         caption: str) -> int:
    """Log a uint8 image to every logger that takes images (W&B); returns how many did."""
    count = 0
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[image], step=step, caption=[caption])
            count += 1
    return count


class MediaLogger(Callback):
    """Every `every_n_steps` optimizer steps, log `pl_module.last_visuals` as a uint8 grid to W&B
    (key "media/train_grid") and save it as `<out_dir>/train_grid_<step>.png`; after each
    validation, the visuals of its first batch ("media/val_grid").

    out_dir: default `<trainer.default_root_dir>/media`.
    """

    def __init__(self, every_n_steps: int = 100, log_validation: bool = True,
                 out_dir: str | None = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"MediaLogger.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.log_validation = log_validation
        self.out_dir = out_dir
        self.saved: list[Path] = []

    def _media_dir(self, trainer) -> Path:  # noqa: ANN001 - Lightning Trainer
        return Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "media"

    def _emit(self, trainer, pl_module, tag: str) -> None:  # noqa: ANN001
        visuals = getattr(pl_module, "last_visuals", None)
        if not visuals or not trainer.is_global_zero:
            return
        grid, names = make_grid(visuals)
        step = int(trainer.global_step)
        self.saved.append(save_png(self._media_dir(trainer) / f"{tag}_{step:07d}.png", grid))
        log_image_to_loggers(trainer.loggers, f"media/{tag}", grid, step, " | ".join(names))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step % self.every_n_steps == 0:
            self._emit(trainer, pl_module, "train_grid")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,  # noqa: ANN001
                                dataloader_idx: int = 0) -> None:
        if self.log_validation and batch_idx == 0 and not trainer.sanity_checking:
            self._emit(trainer, pl_module, "val_grid")
