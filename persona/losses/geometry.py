"""Geometry losses (METHOD.md section 5): mask, scale/shift-invariant log depth, normals and
part-segmentation palette colours.

Encodings (the data contract of docs/INTERFACES.md):
- alpha / mask: floats in [0, 1], any matching shape ([B, H, W, 1] in batches).
- depth: camera z in metres (any positive scale), 0 = invalid; [B, H, W, 1] or [H, W, 1].
- normals: unit vectors in the camera frame (OpenCV axes), channel-last [..., 3]; an all-zero
  vector marks an invalid pixel. A rendered normal map composited on black follows the same
  encoding (background = 0).
- seg: palette RGB colours in [0, 1], channel-last [..., 3].
"""

from __future__ import annotations

import torch
from torch import Tensor

from persona.ops.image import gaussian_blur

# Added to both min-max normalised depths before the log, so the nearest pixel (normalised 0)
# stays finite. METHOD.md gives no value; 0.01 keeps near pixels from dominating.
SILOG_LOG_EPS = 1e-2
# SILog needs at least this many pixels valid in both depths; fewer gives a loss of 0.
SILOG_MIN_VALID_PIXELS = 16
# Lambda of sqrt(mean d^2 - lambda (mean d)^2) (METHOD.md section 5).
SILOG_VARIANCE_FOCUS = 0.5
# Floor under the SILog square root so its gradient stays finite at a perfect match.
SQRT_FLOOR = 1e-12


def _zero_like_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the inputs' graphs (gradient 0, not None)."""
    return sum(t.sum() * 0.0 for t in tensors)  # type: ignore[return-value]


def coarse_loss(render: Tensor, target: Tensor, sigma: float, levels: int) -> Tensor:
    """Mean |blur(render) - blur(target)| over ``levels`` Gaussian blurs of std sigma, 2 sigma,
    4 sigma ... pixels (images [B, C, H, W], same shapes). A splat's gradient from a blurred
    difference reaches as far as the blur: it pulls a Gaussian towards image content a few
    sigma away, where the plain per-pixel terms only see the Gaussian's own footprint."""
    if render.shape != target.shape:
        raise ValueError(f"coarse_loss: render {list(render.shape)} and target "
                         f"{list(target.shape)} differ")
    losses = [(gaussian_blur(render, sigma * 2 ** k) - gaussian_blur(target, sigma * 2 ** k))
              .abs().mean() for k in range(levels)]
    return torch.stack(losses).mean()


def mask_loss(alpha: Tensor, mask: Tensor) -> Tensor:
    """Mean |alpha - mask| over all pixels (same shapes)."""
    if alpha.shape != mask.shape:
        raise ValueError(f"mask_loss: alpha {list(alpha.shape)} and mask {list(mask.shape)} "
                         f"differ")
    return (alpha - mask.to(alpha.dtype)).abs().mean()


def _min_max_on(values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(values - low) / span on the valid pixels (0 elsewhere) and span = high - low, with low
    and high over the valid pixels only; masked reductions, so nothing is read back to the host.
    A span <= 0 (constant, or no valid pixel) divides by 1 instead; the caller discards it."""
    fill_high, fill_low = values.detach().max(), values.detach().min()  # finite fills
    low = torch.where(valid, values, fill_high).amin()
    high = torch.where(valid, values, fill_low).amax()
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(valid, (values - low) / safe, torch.zeros_like(values)), span


def _silog_single(pred: Tensor, target: Tensor, log_eps: float, min_valid_pixels: int) -> Tensor:
    valid = (pred.detach() > 0) & (target > 0)
    weight = valid.to(pred.dtype)
    count = weight.sum()
    pred_norm, pred_span = _min_max_on(pred, valid)
    target_norm, target_span = _min_max_on(target, valid)
    d = (torch.log(target_norm + log_eps) - torch.log(pred_norm + log_eps)) * weight
    mean_d = d.sum() / count.clamp(min=1)
    variance = (d * d).sum() / count.clamp(min=1) - SILOG_VARIANCE_FOCUS * mean_d ** 2
    loss = variance.clamp(min=SQRT_FLOOR).sqrt()
    # too few valid pixels, or a constant depth (it carries no shape): 0 with a zero gradient
    usable = (count >= min_valid_pixels) & (pred_span > 0) & (target_span > 0)
    return torch.where(usable, loss, torch.zeros_like(loss))


def silog_depth_loss(
    pred_depth: Tensor,
    target_depth: Tensor,
    log_eps: float = SILOG_LOG_EPS,  # offset added to the normalised depths before the log
    min_valid_pixels: int = SILOG_MIN_VALID_PIXELS,  # fewer valid pixels: loss 0
) -> Tensor:
    """Scale- and shift-invariant log depth loss (METHOD.md section 5).

    On the pixels where both depths are > 0, each depth is min-max normalised to [0, 1];
    d = log(target + eps) - log(pred + eps); loss = sqrt(mean d^2 - 0.5 (mean d)^2). Any positive
    affine change of either depth leaves it unchanged. With fewer than min_valid_pixels valid
    pixels, or a constant depth on them, the loss is 0 (with a zero gradient). A 4-D input
    [B, ...] is evaluated per sample and averaged.
    """
    if pred_depth.shape != target_depth.shape:
        raise ValueError(f"silog_depth_loss: pred {list(pred_depth.shape)} and target "
                         f"{list(target_depth.shape)} differ")
    if pred_depth.ndim == 4:
        losses = [_silog_single(p, t, log_eps, min_valid_pixels)
                  for p, t in zip(pred_depth, target_depth, strict=True)]
        return torch.stack(losses).mean()
    return _silog_single(pred_depth, target_depth, log_eps, min_valid_pixels)


def normal_valid(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Pixels [...] where both normal maps [..., 3] are nonzero (and valid [...], if given)."""
    if pred.shape != target.shape or pred.shape[-1] != 3:
        raise ValueError(f"normal_loss: pred {list(pred.shape)} and target "
                         f"{list(target.shape)} must both be [..., 3]")
    both = (target.abs().sum(-1) > 0) & (pred.detach().abs().sum(-1) > 0)  # [...]
    if valid is None:
        return both
    if valid.shape != both.shape:
        raise ValueError(f"normal_loss: valid {list(valid.shape)} must be {list(both.shape)}")
    return both & valid.bool()


def normal_loss_map(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-pixel |n - n*| (mean over xyz) + (1 - n . n*), zero where invalid (the authors'
    NormalLoss map). pred, target [..., 3] camera-frame unit normals (0 = invalid); valid [...]
    bool (e.g. the rendered alpha above a threshold) further restricts the pixels. -> [...]"""
    both = normal_valid(pred, target, valid)  # [...]
    per_pixel = (pred - target).abs().mean(-1) + (1.0 - (pred * target).sum(-1))  # [...]
    return torch.where(both, per_pixel, torch.zeros_like(per_pixel))


def normal_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
                mean_over_valid: bool = False) -> Tensor:
    """|n - n*| (mean over xyz) + (1 - n . n*) on pixels valid in both, zero elsewhere,
    averaged over ALL pixels (the authors' reduction); with mean_over_valid, over the valid
    pixels only (ours: 1 / valid-fraction times stronger). pred, target [..., 3]; valid [...].
    No valid pixel: 0 (with a zero gradient)."""
    per_pixel = normal_loss_map(pred, target, valid)  # [...]
    if not mean_over_valid:  # zeros off the valid pixels: no host read of the mask
        return per_pixel.mean()
    both = normal_valid(pred, target, valid)  # [...]
    if not bool(both.any()):
        return _zero_like_graph(pred)
    return per_pixel[both].mean()


def seg_loss_map(pred_palette: Tensor, target_palette: Tensor, foreground: Tensor) -> Tensor:
    """Per-pixel, per-channel |pred - target| on palette colours [..., 3], zero off the
    foreground [...] (the authors' SegLoss map). -> [..., 3]"""
    if pred_palette.shape != target_palette.shape:
        raise ValueError(f"seg_loss: pred {list(pred_palette.shape)} and target "
                         f"{list(target_palette.shape)} differ")
    foreground = foreground.bool()
    if foreground.shape != pred_palette.shape[:-1]:
        raise ValueError(f"seg_loss: foreground {list(foreground.shape)} must be "
                         f"{list(pred_palette.shape[:-1])}")
    diff = (pred_palette - target_palette).abs()  # [..., 3]
    return torch.where(foreground[..., None], diff, torch.zeros_like(diff))


def seg_loss(pred_palette: Tensor, target_palette: Tensor, foreground: Tensor,
             mean_over_valid: bool = False) -> Tensor:
    """L1 between palette colours [..., 3] on foreground [...] pixels, zero elsewhere, averaged
    over ALL pixels and channels (the authors' reduction); with mean_over_valid, over the
    foreground pixels only (ours). No foreground pixel: 0."""
    per_pixel = seg_loss_map(pred_palette, target_palette, foreground)  # [..., 3]
    if not mean_over_valid:  # zeros off the foreground: no host read of the mask
        return per_pixel.mean()
    foreground = foreground.bool()
    if not bool(foreground.any()):
        return _zero_like_graph(pred_palette)
    return per_pixel[foreground].mean()
