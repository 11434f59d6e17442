"""Evaluation protocols as data, per-frame evaluation and the metrics.json writer.

A protocol records every choice that moves the numbers (METHOD.md section 9): background colour,
mask compositing of prediction and ground truth, pasting the crop back into the full image,
test-pose fitting with the avatar frozen, the LPIPS network, SSIM's border handling. It is saved
with every result. Fragments live in configs/protocol/*.yaml under a top-level `protocol:` key.

A recorded setting never claims a step that did not run: pasting needs the frame's crop box
(`CropBox`; the subject format has none yet), `evaluate_frame` records per frame whether it
pasted (`PASTED_KEY`), and metrics.json's protocol says `paste_into_full_image: true` only when
every frame was pasted (the request is kept under `protocol_requested`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from persona.atomic import atomic_write_text
from persona.metrics.geometry import (
    DEPTH_ALIGNMENTS,
    MASK_THRESHOLD,
    depth_l1_aligned,
    mask_iou,
    normal_angle_error,
)
from persona.metrics.images import SSIM_BORDERS, psnr, ssim
from persona.metrics.test_pose import TestPoseFitSettings

WHITE = (1.0, 1.0, 1.0)
LPIPS_NETS = ("alex", "vgg")
# Per-frame record of evaluate_frame: 1.0 when the crop was pasted into the full image, else 0.0.
# A flag, not a metric: left out of the means and the "test/<metric>" logs.
PASTED_KEY = "pasted_into_full_image"
FLAG_KEYS = (PASTED_KEY,)


@dataclass
class EvalProtocol:
    """How test frames are scored. Defaults are the authors' protocol (METHOD.md section 9)."""

    name: str = "authors"
    background: tuple[float, float, float] = WHITE  # RGB in [0, 1] behind the render
    mask_composite: bool = True  # composite prediction AND ground truth with the test mask
    paste_into_full_image: bool = True  # score the full-size image, the crop pasted back
    # (only frames with a crop box; metrics.json records what ran)
    fit_test_pose: bool = True  # fit the test frames' SMPL-X with the avatar frozen first
    fit_steps: int = 40  # optimisation steps per test frame (4 epochs x 10 passes)
    fit_lr: float = 1e-3  # test-pose fit: lr of the 6D rotations, expression, translation
    fit_hand_lr_factor: float = 0.1  # test-pose fit: finger rotations at fit_lr x this
    fit_decay_at: float = 2.75 / 4  # test-pose fit: lr / 10 after this fraction of fit_steps
    fit_in_validation: bool = False  # also fit during validation (False: cheap, given poses)
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
        if self.fit_test_pose and self.fit_steps == 0:
            raise ValueError(f"protocol {self.name!r}: fit_test_pose needs fit_steps > 0 "
                             "(or set fit_test_pose: false)")
        self.fit_settings()  # validates the fit's lr, factor and decay

    def fit_settings(self) -> TestPoseFitSettings:
        """The test-pose fit's settings (persona.metrics.test_pose.fit_test_pose)."""
        return TestPoseFitSettings(steps=self.fit_steps, lr=self.fit_lr,
                                   hand_lr_factor=self.fit_hand_lr_factor,
                                   decay_at=self.fit_decay_at)

    def validation_protocol(self) -> EvalProtocol:
        """The protocol of validation during training: this one without the test-pose fit
        unless fit_in_validation (the fit costs fit_steps renders per frame)."""
        if self.fit_in_validation or not self.fit_test_pose:
            return self
        return dataclasses.replace(self, name=f"{self.name}/validation", fit_test_pose=False)

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


@dataclass(frozen=True)
class CropBox:
    """Where a test image was cropped from its full-size original (the authors'
    `<frame>_bbox_orig.json` and `img_shape_orig.json`): the crop is the full image's pixels
    [top : top + crop height, left : left + crop width], not resized."""

    top: int
    left: int
    full_height: int
    full_width: int


def paste_frame(pred: Tensor, target: Tensor, pred_alpha: Tensor, target_mask: Tensor,
                box: CropBox, background: tuple[float, float, float]
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The crop's images pasted into the full image: pred and target on `background`, alpha
    and mask on 0 (outside the crop both images are the background, as in the authors'
    eval_neuman.py, where the pasted mask is 1 there and both canvases white)."""
    if target_mask.ndim == 2:
        target_mask = target_mask[..., None]
    size = (box.full_height, box.full_width, box.top, box.left)
    colour = pred.new_tensor(background)  # [3]
    return (paste_crop(pred, *size, colour), paste_crop(target, *size, colour),
            paste_crop(pred_alpha, *size, 0.0), paste_crop(target_mask.to(pred.dtype), *size, 0.0))


def evaluate_frame(pred: Tensor, target: Tensor, pred_alpha: Tensor, target_mask: Tensor,
                   protocol: EvalProtocol, pred_depth: Tensor | None = None,
                   target_depth: Tensor | None = None, pred_normal: Tensor | None = None,
                   target_normal: Tensor | None = None,
                   lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                   crop_box: CropBox | None = None) -> dict[str, float]:
    """Score one frame. Returns psnr, ssim, lpips (when lpips_fn is given), mask_iou, the flag
    PASTED_KEY and, when both maps are given, depth_l1_mm and normal_deg.

    pred [H, W, 3]: the render already composited on protocol.background; target [H, W, 3] in
    [0, 1]; pred_alpha [H, W, 1]; target_mask [H, W, 1] or [H, W]. With
    protocol.paste_into_full_image and a crop_box, the four are pasted into the full image
    before scoring (PASTED_KEY 1.0); without a crop box they are scored as given (0.0).
    Depth [H, W(, 1)] metres (0 invalid), normals [H, W, 3] camera frame; geometry is scored
    inside the ground-truth mask of the crop (pasting adds no mask pixel).
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
    geometry_mask = mask
    pasted = protocol.paste_into_full_image and crop_box is not None
    if pasted:
        pred, target, pred_alpha, full_mask = paste_frame(pred, target, pred_alpha.float(), mask,
                                                          crop_box, protocol.background)
        mask = full_mask[..., 0]  # [H_full, W_full]
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
        scores["depth_l1_mm"] = depth_l1_aligned(pred_depth, target_depth, region=geometry_mask,
                                                 alignment=protocol.depth_alignment)
    if pred_normal is not None and target_normal is not None:
        scores["normal_deg"] = normal_angle_error(pred_normal, target_normal,
                                                  region=geometry_mask)
    scores[PASTED_KEY] = 1.0 if pasted else 0.0
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
        """Mean of each metric over the frames where it is finite (NaN when none); flags
        (FLAG_KEYS) are not metrics and are left out."""
        names = sorted({k for row in self.frames for k in row if k != "frame"} - set(FLAG_KEYS))
        means = {}
        for name in names:
            values = [row[name] for row in self.frames if name in row and math.isfinite(row[name])]
            means[name] = sum(values) / len(values) if values else math.nan
        return means

    def applied_protocol(self) -> dict:
        """The protocol as it ran: paste_into_full_image is true only when every frame was
        pasted (a frame without the flag counts as not pasted)."""
        applied = self.protocol.to_dict()
        applied["paste_into_full_image"] = bool(self.frames) and all(
            row.get(PASTED_KEY, 0.0) == 1.0 for row in self.frames)
        return applied

    def to_dict(self, extra: dict | None = None) -> dict:
        applied, requested = self.applied_protocol(), self.protocol.to_dict()
        differs = {k: v for k, v in requested.items() if applied[k] != v}
        return {"protocol": applied, **({"protocol_requested": differs} if differs else {}),
                "mean": self.mean(), "num_frames": len(self.frames), "frames": self.frames,
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
    """Strict JSON (a NaN or infinity raises ValueError) written atomically; `path`."""
    return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))


__all__ = ["CropBox", "EvalProtocol", "FLAG_KEYS", "MASK_THRESHOLD", "MetricsReport",
           "PASTED_KEY", "composite", "environment_versions", "evaluate_frame", "load_protocol",
           "paste_crop", "paste_frame", "write_json_atomic"]
