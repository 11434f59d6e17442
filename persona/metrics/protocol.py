"""Evaluation protocols as data, per-frame evaluation and the metrics.json writer.

A protocol records every choice that moves the numbers (METHOD.md section 9): background colour,
mask compositing of prediction and ground truth, pasting the crop back into the full image,
test-pose fitting with the avatar frozen, the LPIPS network, SSIM's border handling. It is saved
with every result. Fragments live in configs/protocol/*.yaml under a top-level `protocol:` key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from persona.metrics.geometry import (
    DEPTH_ALIGNMENTS,
    MASK_THRESHOLD,
    depth_l1_aligned,
    mask_iou,
    normal_angle_error,
)
from persona.metrics.images import SSIM_BORDERS, psnr, ssim

WHITE = (1.0, 1.0, 1.0)
LPIPS_NETS = ("alex", "vgg")


@dataclass
class EvalProtocol:
    """How test frames are scored. Defaults are the authors' protocol (METHOD.md section 9)."""

    name: str = "authors"
    background: tuple[float, float, float] = WHITE  # RGB in [0, 1] behind the render
    mask_composite: bool = True  # composite prediction AND ground truth with the test mask
    paste_into_full_image: bool = True  # score the full-size image, the crop pasted back
    fit_test_pose: bool = True  # fit the test frames' SMPL-X with the avatar frozen first
    fit_steps: int = 40  # optimisation steps per test frame (4 epochs x 10 passes)
    lpips_net: str = "alex"  # LPIPS backbone for evaluation
    ssim_border: str = "reflect"  # "reflect": torchmetrics default (authors); "valid": skimage
    depth_alignment: str = "median"  # depth L1 shift: median or mean of (target - pred)

    def __post_init__(self) -> None:
        self.background = tuple(float(c) for c in self.background)
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"protocol {self.name!r}: background must be 3 values in [0, 1], "
                             f"got {self.background}")
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"protocol {self.name!r}: lpips_net must be one of {LPIPS_NETS}, "
                             f"got {self.lpips_net!r}")
        if self.ssim_border not in SSIM_BORDERS:
            raise ValueError(f"protocol {self.name!r}: ssim_border must be one of "
                             f"{SSIM_BORDERS}, got {self.ssim_border!r}")
        if self.depth_alignment not in DEPTH_ALIGNMENTS:
            raise ValueError(f"protocol {self.name!r}: depth_alignment must be one of "
                             f"{DEPTH_ALIGNMENTS}, got {self.depth_alignment!r}")
        if self.fit_steps < 0:
            raise ValueError(f"protocol {self.name!r}: fit_steps must be >= 0")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["background"] = list(self.background)
        return data


def load_protocol(path: str | os.PathLike) -> EvalProtocol:
    """Read a protocol fragment (`model: eval_protocol:`, `protocol:`, or the mapping) from YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"protocol file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"].get("eval_protocol", data["model"])
    if isinstance(data, dict) and "protocol" in data:
        data = data["protocol"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping under 'protocol:'")
    known = {f.name for f in dataclasses.fields(EvalProtocol)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown protocol field(s) {unknown}; known: {sorted(known)}")
    return EvalProtocol(**data)


def composite(image: Tensor, mask: Tensor, background: tuple[float, float, float]) -> Tensor:
    """image [H, W, 3] * mask + background * (1 - mask); mask [H, W, 1] or [H, W] in [0, 1]."""
    if mask.ndim == 2:
        mask = mask[..., None]
    colour = torch.tensor(background, dtype=image.dtype, device=image.device)  # [3]
    return image * mask + colour * (1.0 - mask)


def paste_crop(crop: Tensor, full_height: int, full_width: int, top: int, left: int,
               fill: Tensor | float) -> Tensor:
    """Place crop [h, w, C] at (top, left) of a [full_height, full_width, C] canvas of `fill`
    (a [C] colour, a full-size image, or a scalar); parts outside the canvas are dropped."""
    h, w, channels = crop.shape
    fill = torch.as_tensor(fill, dtype=crop.dtype, device=crop.device)
    canvas = fill.expand(full_height, full_width, channels).clone() if fill.ndim < 3 \
        else fill.clone()
    if canvas.shape != (full_height, full_width, channels):
        raise ValueError(f"paste_crop: fill image {list(canvas.shape)} is not "
                         f"[{full_height}, {full_width}, {channels}]")
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, full_height), min(left + w, full_width)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = crop[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


def evaluate_frame(pred: Tensor, target: Tensor, pred_alpha: Tensor, target_mask: Tensor,
                   protocol: EvalProtocol, pred_depth: Tensor | None = None,
                   target_depth: Tensor | None = None, pred_normal: Tensor | None = None,
                   target_normal: Tensor | None = None,
                   lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None
                   ) -> dict[str, float]:
    """Score one frame. Returns psnr, ssim, lpips (when lpips_fn is given), mask_iou and,
    when both maps are given, depth_l1_mm and normal_deg.

    pred [H, W, 3]: the render already composited on protocol.background (full-size image when
    protocol.paste_into_full_image: use `paste_crop` first); target [H, W, 3] in [0, 1];
    pred_alpha [H, W, 1]; target_mask [H, W, 1] or [H, W]. Depth [H, W(, 1)] metres (0 invalid),
    normals [H, W, 3] camera frame; geometry is scored inside the ground-truth mask.
    lpips_fn(pred, target) takes [1, 3, H, W] in [0, 1] and returns distances whose mean is the
    score: `persona.metrics.lpips.load_lpips_distance(protocol.lpips_net)` (exact published
    LPIPS); a spatial `LPIPSLoss` also works but its upsampled mean differs by ~1e-2.
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"evaluate_frame: pred {list(pred.shape)} and target "
                         f"{list(target.shape)} must both be [H, W, 3]")
    mask = target_mask[..., 0] if target_mask.ndim == 3 else target_mask  # [H, W]
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"evaluate_frame: target_mask {list(target_mask.shape)} does not match "
                         f"the image {list(pred.shape[:2])}")
    pred, target = pred.float().clamp(0, 1), target.float().clamp(0, 1)
    if protocol.mask_composite:
        pred = composite(pred, mask.float(), protocol.background)
        target = composite(target, mask.float(), protocol.background)
    scores = {"psnr": psnr(pred, target), "ssim": ssim(pred, target, protocol.ssim_border)}
    if lpips_fn is not None:
        with torch.no_grad():
            pair = (pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])  # [1, 3, H, W]
            scores["lpips"] = float(lpips_fn(*pair).mean())
    scores["mask_iou"] = mask_iou(pred_alpha, mask)
    if pred_depth is not None and target_depth is not None:
        scores["depth_l1_mm"] = depth_l1_aligned(pred_depth, target_depth, region=mask,
                                                 alignment=protocol.depth_alignment)
    if pred_normal is not None and target_normal is not None:
        scores["normal_deg"] = normal_angle_error(pred_normal, target_normal, region=mask)
    return scores


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_versions() -> dict[str, str | None]:
    """Versions recorded with every result (gsplat None when not installed)."""
    versions: dict[str, str | None] = {"torch": torch.__version__}
    for package in ("gsplat", "persona", "torchmetrics", "lpips"):
        versions[package] = _package_version(package)
    return versions


@dataclass
class MetricsReport:
    """Per-frame scores and their means, with the protocol and the versions."""

    protocol: EvalProtocol
    frames: list[dict] = field(default_factory=list)  # {"frame": id, metric: value, ...}

    def add(self, frame: str, scores: dict[str, float]) -> None:
        self.frames.append({"frame": str(frame), **{k: float(v) for k, v in scores.items()}})

    def mean(self) -> dict[str, float]:
        """Mean of each metric over the frames where it is finite (NaN when none)."""
        names = sorted({k for row in self.frames for k in row if k != "frame"})
        means = {}
        for name in names:
            values = [row[name] for row in self.frames if name in row and math.isfinite(row[name])]
            means[name] = sum(values) / len(values) if values else math.nan
        return means

    def to_dict(self, extra: dict | None = None) -> dict:
        return {"protocol": self.protocol.to_dict(), "mean": self.mean(),
                "num_frames": len(self.frames), "frames": self.frames,
                "versions": environment_versions(), **(extra or {})}

    def write(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write metrics.json atomically (NaN written as null)."""
        return write_json_atomic(path, _nan_to_none(self.to_dict(extra)))


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp",
                                     delete=False) as handle:
        json.dump(data, handle, indent=1, allow_nan=False)
        tmp = Path(handle.name)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


__all__ = ["EvalProtocol", "MASK_THRESHOLD", "MetricsReport", "composite", "environment_versions",
           "evaluate_frame", "load_protocol", "paste_crop", "write_json_atomic"]
