"""Scoring one evaluation render (persona/render/passes.py `render_eval`) against its frame with
an EvalProtocol, and the views the callbacks show of it. Pure functions of tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from persona.metrics.protocol import EvalProtocol, evaluate_frame

EVAL_DEPTH_ALPHA = 0.5  # rendered alpha above which the eval depth is scored (else 0)
MIN_ALPHA = 1e-6  # alpha is clamped to this when normalising the rendered depth


def score_eval_render(out: dict[str, Tensor], batch: dict, protocol: EvalProtocol,
                      lpips_fn: Callable | None) -> dict[str, float]:
    """evaluate_frame on a render_eval output (rgb on the background, alpha, depth, normal,
    [H, W, C] each) and the batch's (batch size 1) image, mask, depth and normal: the depth is
    alpha-normalised and scored where alpha > EVAL_DEPTH_ALPHA."""
    alpha = out["alpha"].clamp(min=MIN_ALPHA)  # [H, W, 1]
    pred_depth = torch.where(out["alpha"] > EVAL_DEPTH_ALPHA, out["depth"] / alpha, 0.0)
    return evaluate_frame(
        out["rgb_on_background"], batch["image"][0], out["alpha"], batch["mask"][0], protocol,
        pred_depth=pred_depth, target_depth=batch["depth"][0],
        pred_normal=F.normalize(out["normal"], dim=-1), target_normal=batch["normal"][0],
        lpips_fn=lpips_fn)


def eval_visuals(out: dict[str, Tensor], batch: dict, background: tuple[float, ...]
                 ) -> dict[str, Tensor]:
    """target (the frame's image masked onto the background), render and alpha, [H, W, C]."""
    mask = batch["mask"][0]  # [H, W, 1]
    on = out["rgb"].new_tensor(background)  # [3]
    target = batch["image"][0] * mask + on * (1 - mask)  # [H, W, 3]
    return {"target": target, "render": out["rgb_on_background"], "alpha": out["alpha"]}
