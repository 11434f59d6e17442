"""Geometry metrics as the paper's Table S3 reports them: mask IoU (%), depth L1 after aligning the
global translation (mm), normal angular error (degrees).

Conventions (documented in docs/METRICS_AND_EXPORT.md):
- masks are [H, W] or [H, W, 1]; a pixel is foreground when its value > `threshold` (0.5).
- depth is camera z in metres, [H, W] or [H, W, 1]; 0 (or non-finite) marks an invalid pixel.
  The error is taken over the pixels valid in both maps (and inside `region` when given): the
  predicted depth is shifted by one scalar, the median (default) or mean of (target - pred) over
  those pixels, then L1 is averaged and reported in millimetres. Along the optical axis a global
  translation of the body changes every depth by nearly the same amount, so this removes the
  absolute-distance ambiguity of a monocular reconstruction and scores the shape only.
- normals are [H, W, 3] in the same (camera) frame; a pixel is valid in a map when its normal has
  norm > `eps`. The angle between the normalised vectors is averaged over pixels valid in both.
A metric with no valid pixel returns NaN (aggregation uses the mean over frames where it exists).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_THRESHOLD = 0.5  # foreground when mask/alpha > 0.5
METRES_TO_MM = 1000.0  # depth maps are in metres, Table S3 reports millimetres
NORMAL_EPS = 1e-6  # a normal shorter than this marks an invalid pixel
DEPTH_ALIGNMENTS = ("median", "mean")


def _plane(values: Tensor, name: str) -> Tensor:
    """[H, W] or [H, W, 1] -> [H, W]."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"{name}: expected [H, W] or [H, W, 1], got {list(values.shape)}")
    return values


def _same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names}: shapes differ ({list(a.shape)} vs {list(b.shape)})")


def mask_iou(pred_mask: Tensor, target_mask: Tensor, threshold: float = MASK_THRESHOLD) -> float:
    """Intersection over union of the two foregrounds, in percent (100 when both are empty)."""
    pred = _plane(pred_mask, "pred_mask") > threshold  # [H, W]
    target = _plane(target_mask, "target_mask") > threshold  # [H, W]
    _same_shape(pred, target, "mask_iou")
    union = (pred | target).sum().item()
    if union == 0:
        return 100.0
    return 100.0 * (pred & target).sum().item() / union


def depth_valid(depth: Tensor) -> Tensor:
    """Bool [H, W]: finite and > 0."""
    return torch.isfinite(depth) & (depth > 0)


def depth_l1_aligned(pred_depth: Tensor, target_depth: Tensor, region: Tensor | None = None,
                     alignment: str = "median") -> float:
    """Mean |pred + s - target| in mm over pixels valid in both, s = median/mean(target - pred)."""
    if alignment not in DEPTH_ALIGNMENTS:
        raise ValueError(f"depth alignment: expected one of {DEPTH_ALIGNMENTS}, got {alignment!r}")
    pred = _plane(pred_depth, "pred_depth").double()  # [H, W]
    target = _plane(target_depth, "target_depth").double()  # [H, W]
    _same_shape(pred, target, "depth_l1_aligned")
    valid = depth_valid(pred) & depth_valid(target)  # [H, W]
    if region is not None:
        region_plane = _plane(region, "region")
        _same_shape(region_plane, valid, "depth_l1_aligned region")
        valid &= region_plane > MASK_THRESHOLD
    if not valid.any():
        return math.nan
    difference = target[valid] - pred[valid]  # [M]
    shift = difference.median() if alignment == "median" else difference.mean()
    return float((difference - shift).abs().mean() * METRES_TO_MM)


def normal_angle_error(pred_normal: Tensor, target_normal: Tensor, region: Tensor | None = None,
                       eps: float = NORMAL_EPS) -> float:
    """Mean angle in degrees between the unit normals over pixels valid in both."""
    if pred_normal.ndim != 3 or pred_normal.shape[-1] != 3:
        raise ValueError(f"pred_normal: expected [H, W, 3], got {list(pred_normal.shape)}")
    _same_shape(pred_normal, target_normal, "normal_angle_error")
    pred, target = pred_normal.double(), target_normal.double()  # [H, W, 3]
    pred_norm, target_norm = pred.norm(dim=-1), target.norm(dim=-1)  # [H, W]
    valid = (pred_norm > eps) & (target_norm > eps) & torch.isfinite(pred_norm) \
        & torch.isfinite(target_norm)
    if region is not None:
        region_plane = _plane(region, "region")
        _same_shape(region_plane, valid, "normal_angle_error region")
        valid &= region_plane > MASK_THRESHOLD
    if not valid.any():
        return math.nan
    a = pred[valid] / pred_norm[valid, None]  # [M, 3]
    b = target[valid] / target_norm[valid, None]  # [M, 3]
    # atan2(|a x b|, a . b) is accurate for small and near-opposite angles (acos is not)
    angle = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))  # [M]
    return float(torch.rad2deg(angle).mean())
