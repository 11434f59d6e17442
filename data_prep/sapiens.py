"""Sapiens-lite backends: depth, surface normals, 28-class part segmentation and COCO-WholeBody
133 keypoints, with their exact pre- and post-processing (PREPROCESSING.md section 2) and the
conversions into the subject format (docs/SUBJECT_FORMAT.md).

The released models are TorchScript files (``*_torchscript.pt2``) that return the raw head output
for a batch of (B, 3, 1024, 768) fp32 images. Everything here is written from the facts in
PREPROCESSING.md; docs/prep/sapiens.md explains the conventions (relative depth, normal axis
signs, keypoint pixel centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.stage import PrepStage, keypoints_to_json
from persona.data.palette import NUM_GOLIATH_CLASSES, labels_to_rgb

# ----------------------------------------------------------------------------------------------
# Constants (PREPROCESSING.md section 2 unless noted)
# ----------------------------------------------------------------------------------------------
# Network input size (H, W): every image is stretched or warped to this (section 2.3, 2.6).
SAPIENS_INPUT_HW: tuple[int, int] = (1024, 768)
# Lite demo normalisation, RGB order, 0-255 scale (section 2.3; the training configs use the
# unrounded ImageNet values).
SAPIENS_MEAN: tuple[float, float, float] = (123.5, 116.5, 103.5)
SAPIENS_STD: tuple[float, float, float] = (58.5, 57.0, 57.5)
# Raw head output sizes (H, W) (section 2.3, 2.6).
SEG_OUTPUT_HW: tuple[int, int] = (512, 384)
NORMAL_OUTPUT_HW: tuple[int, int] = (512, 384)
DEPTH_OUTPUT_HW: tuple[int, int] = (1024, 768)
POSE_HEATMAP_HW: tuple[int, int] = (256, 192)
# Channels of each head (section 2.3, 2.5, 2.6).
NUM_SEG_CLASSES = NUM_GOLIATH_CLASSES  # 28 goliath classes (section 2.5)
NUM_WHOLEBODY_KEYPOINTS = 133  # COCO-WholeBody (section 4.2)
SEG_BACKGROUND_CLASS = 0  # "Background" is class 0 (section 2.5)
# Added to the normal length before dividing (vis_normal.py, section 2.4).
NORMAL_NORM_EPS = 1e-5
# Top-down crop padding around the person box (section 2.6).
POSE_BOX_PADDING = 1.25
# DARK-UDP modulation: Gaussian kernel size and the clip range before the log (section 2.6).
DARK_BLUR_KERNEL = 11
DARK_CLIP_MIN, DARK_CLIP_MAX = 1e-3, 50.0
# Regulariser added to the 2x2 Hessian before inversion (float32 machine epsilon, as mmpose).
DARK_HESSIAN_EPS = float(np.finfo(np.float32).eps)
# mmpose puts pixel centres at integers; this project at integer + 0.5 (docs/SUBJECT_FORMAT.md).
PIXEL_CENTRE_OFFSET = 0.5
# Depth conversion: the nearest foreground pixel is written as this value (docs/prep/sapiens.md).
DEFAULT_DEPTH_OFFSET = 1.0
# Sapiens normal axes -> OpenCV camera axes (x right, y down, z forward). Sapiens normals are
# x right, y up, z toward the camera; see docs/prep/sapiens.md for the evidence.
DEFAULT_NORMAL_AXIS_SIGNS: tuple[float, float, float] = (1.0, -1.0, -1.0)

# Released 1B TorchScript files: task -> (Hugging Face repo, path in the repo) (section 2.2).
SAPIENS_RELEASES: dict[str, tuple[str, str]] = {
    "depth": ("facebook/sapiens-depth-1b-torchscript",
              "sapiens_1b_render_people_epoch_88_torchscript.pt2"),
    "normal": ("facebook/sapiens-normal-1b-torchscript",
               "sapiens_1b_normal_render_people_epoch_115_torchscript.pt2"),
    "seg": ("facebook/sapiens-seg-1b-torchscript",
            "sapiens_1b_goliath_best_goliath_mIoU_7994_epoch_151_torchscript.pt2"),
    "pose": ("noahcao/sapiens-pose-coco",
             "sapiens_lite_host/torchscript/pose/checkpoints/sapiens_1b/"
             "sapiens_1b_coco_wholebody_best_coco_wholebody_AP_727_torchscript.pt2"),
}
TORCHSCRIPT_MARKER = "_torchscript"  # the demo picks the loader by this name part (section 2.1)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def release_hint(task: str) -> str:
    """Where the released 1B file of a task comes from, for error messages."""
    repo, name = SAPIENS_RELEASES[task]
    return (f"download `{name}` from the Hugging Face repo `{repo}` "
            f"(other sizes: PREPROCESSING.md section 2.2)")


def check_checkpoint(path: str | Path, setting: str, task: str) -> Path:
    """The checkpoint path, or FileNotFoundError / ValueError naming the setting and the source."""
    if task not in SAPIENS_RELEASES:
        raise ValueError(f"unknown Sapiens task {task!r}; known: {', '.join(SAPIENS_RELEASES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sapiens {task} checkpoint not found: {path}. Set `{setting}` to "
                                f"a local TorchScript file; {release_hint(task)}.")
    if TORCHSCRIPT_MARKER not in path.name:
        raise ValueError(f"`{setting}` = {path}: only the TorchScript release "
                         f"(`*{TORCHSCRIPT_MARKER}.pt2`, fp32) is supported, not the bfloat16 "
                         f"torch.export files; {release_hint(task)}.")
    return path


class SapiensModel(torch.nn.Module):
    """A released Sapiens-lite TorchScript model, run in fp32 eval mode without gradients.

    ``forward`` takes normalised images [B, 3, 1024, 768] and returns the raw head output.
    It is an nn.Module so that Lightning moves it with the stage.
    """

    def __init__(self, path: str | Path, setting: str, task: str,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.task = task
        self.path = check_checkpoint(path, setting, task)
        self.net = torch.jit.load(str(self.path), map_location=device)
        self.net.eval()
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:  # [B, 3, 1024, 768] -> raw head output
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *SAPIENS_INPUT_HW):
            raise ValueError(f"Sapiens {self.task}: expected [B, 3, {SAPIENS_INPUT_HW[0]}, "
                             f"{SAPIENS_INPUT_HW[1]}] input, got {list(images.shape)}")
        device = next(iter(self.net.parameters()), images).device
        with torch.no_grad():
            return self.net(images.to(device=device, dtype=torch.float32)).float()


def run_batched(model: torch.nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Run the model over [N, 3, H, W] in chunks of batch_size; concatenated outputs on CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = [model(images[start:start + batch_size]).cpu()
               for start in range(0, images.shape[0], batch_size)]
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------
# Pre-processing (section 2.3)
# ----------------------------------------------------------------------------------------------
def normalise_rgb(image: np.ndarray) -> Tensor:
    """uint8/float RGB [H, W, 3] (0-255) -> float32 CHW [3, H, W] minus mean over std (lite)."""
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()  # [3, H, W]
    mean = torch.tensor(SAPIENS_MEAN).view(3, 1, 1)
    std = torch.tensor(SAPIENS_STD).view(3, 1, 1)
    return (chw - mean) / std


def preprocess_dense(image_rgb: np.ndarray) -> Tensor:
    """RGB uint8 [H, W, 3] -> network input float32 [3, 1024, 768] for depth, normal and seg.

    A plain stretch (cv2.resize INTER_LINEAR, no aspect-preserving pad). The authors resize the
    BGR array and then swap to RGB; the resize acts per channel, so resizing RGB is identical.
    The model sees RGB channel order.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got {list(image_rgb.shape)}")
    height, width = SAPIENS_INPUT_HW
    resized = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    return normalise_rgb(resized)


# ----------------------------------------------------------------------------------------------
# Post-processing (section 2.4)
# ----------------------------------------------------------------------------------------------
def _resize_bilinear(raw: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """[C, h, w] -> [C, H, W], bilinear, align_corners=False (F.interpolate default)."""
    return F.interpolate(raw[None].float(), size=tuple(out_hw), mode="bilinear",
                         align_corners=False)[0]


def seg_labels(logits: Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """Seg logits [28, h, w] -> class labels uint8 [H, W] (bilinear to size, then argmax)."""
    if logits.ndim != 3 or logits.shape[0] != NUM_SEG_CLASSES:
        raise ValueError(f"seg logits must be [{NUM_SEG_CLASSES}, h, w], got {list(logits.shape)}")
    return _resize_bilinear(logits, out_hw).argmax(dim=0).to(torch.uint8).numpy()


def normal_map(raw: Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """Normal head output [3, h, w] -> float32 [H, W, 3], n / (|n| + 1e-5), Sapiens axes."""
    if raw.ndim != 3 or raw.shape[0] != 3:
        raise ValueError(f"normal output must be [3, h, w], got {list(raw.shape)}")
    normals = _resize_bilinear(raw, out_hw).permute(1, 2, 0)  # [H, W, 3]
    normals = normals / (normals.norm(dim=-1, keepdim=True) + NORMAL_NORM_EPS)
    return normals.numpy().astype(np.float32)


def depth_map(raw: Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """Depth head output [1, h, w] -> relative depth float32 [H, W] (channel 0)."""
    if raw.ndim != 3:
        raise ValueError(f"depth output must be [1, h, w], got {list(raw.shape)}")
    return _resize_bilinear(raw, out_hw)[0].numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Conversions into the subject format
# ----------------------------------------------------------------------------------------------
def foreground_from(mask: np.ndarray | None, labels: np.ndarray | None) -> np.ndarray:
    """Foreground bool [H, W]: the SAM mask when given, else Sapiens seg != background."""
    if mask is not None:
        return np.asarray(mask).astype(bool)
    if labels is None:
        raise ValueError("foreground needs a mask or seg labels")
    return np.asarray(labels) != SEG_BACKGROUND_CLASS


def depth_to_subject(depth: np.ndarray, foreground: np.ndarray,
                     offset: float = DEFAULT_DEPTH_OFFSET,
                     larger_is_farther: bool = True) -> np.ndarray:
    """Relative depth [H, W] -> strictly positive depth on the foreground, 0 elsewhere.

    Foreground values become ``offset + (d - min_fg)`` (``offset + (max_fg - d)`` when the model's
    larger values are nearer): a positive affine map of the depth, so the training loss, which
    min-max normalises both depths over pixels > 0, sees exactly the same normalised values.
    Non-finite depth pixels are written as 0 (invalid).
    """
    if offset <= 0:
        raise ValueError(f"depth offset must be > 0, got {offset}")
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.asarray(foreground, dtype=bool) & np.isfinite(depth)  # [H, W]
    out = np.zeros(depth.shape, np.float32)
    if not valid.any():
        return out
    values = depth[valid]
    shifted = values - values.min() if larger_is_farther else values.max() - values
    out[valid] = (offset + shifted).astype(np.float32)
    return out


def normals_to_subject(normals: np.ndarray, foreground: np.ndarray,
                       axis_signs: tuple[float, float, float] = DEFAULT_NORMAL_AXIS_SIGNS,
                       ) -> np.ndarray:
    """Sapiens normals [H, W, 3] -> OpenCV camera-frame unit normals on the foreground, 0 off it.

    Each axis is multiplied by its sign, then renormalised to exactly unit length; foreground
    pixels with a zero or non-finite normal become 0 (invalid).
    """
    signs = np.asarray(axis_signs, dtype=np.float64)
    if signs.shape != (3,) or not np.all(np.abs(signs) == 1.0):
        raise ValueError(f"normal_axis_signs must be three values of +1 or -1, got {axis_signs}")
    flipped = np.asarray(normals, dtype=np.float64) * signs  # [H, W, 3]
    length = np.linalg.norm(flipped, axis=-1)  # [H, W]
    valid = np.asarray(foreground, dtype=bool) & np.isfinite(length) & (length > 0)
    out = np.zeros(flipped.shape, np.float32)
    out[valid] = (flipped[valid] / length[valid, None]).astype(np.float32)
    return out


def seg_to_subject(labels: np.ndarray) -> np.ndarray:
    """Class labels [H, W] -> goliath palette RGB uint8 [H, W, 3] (persona/data/palette.py)."""
    return labels_to_rgb(np.asarray(labels).astype(np.int64))


# ----------------------------------------------------------------------------------------------
# Keypoints: top-down crop (section 2.6)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoseCrop:
    """The crop of one person: centre and size (w, h) in the original image, mmpose index
    coordinates (pixel centres at integers)."""

    center: np.ndarray  # [2]
    scale: np.ndarray  # [2]


def person_box(mask: np.ndarray | None, image_hw: tuple[int, int]) -> np.ndarray:
    """Box [x1, y1, x2, y2] in index coordinates: the outer pixel edges of the mask's foreground,
    or the full image [0, 0, W, H] (as the authors do without a detector) when the mask is None
    or empty."""
    height, width = image_hw
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rows.size:
            return np.array([cols[0] - 0.5, rows[0] - 0.5, cols[-1] + 0.5, rows[-1] + 0.5],
                            np.float64)
    return np.array([0.0, 0.0, float(width), float(height)])


def box_to_crop(box: np.ndarray, image_hw: tuple[int, int],
                padding: float = POSE_BOX_PADDING) -> PoseCrop:
    """Box [4] -> centre and padded size, the aspect fixed to the original image's w / h."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    box_w, box_h = (x2 - x1) * padding, (y2 - y1) * padding
    aspect = image_hw[1] / image_hw[0]
    if box_w > box_h * aspect:
        scale = np.array([box_w, box_w / aspect])
    else:
        scale = np.array([box_h * aspect, box_h])
    return PoseCrop(center, scale)


def udp_warp_matrix(crop: PoseCrop, output_wh: tuple[int, int]) -> np.ndarray:
    """Affine [2, 3] (rotation 0) taking the crop to [0, W_out - 1] x [0, H_out - 1] (UDP)."""
    scale_x = (output_wh[0] - 1) / crop.scale[0]
    scale_y = (output_wh[1] - 1) / crop.scale[1]
    left = crop.center - 0.5 * crop.scale  # [2] top-left corner of the crop
    return np.array([[scale_x, 0.0, -scale_x * left[0]],
                     [0.0, scale_y, -scale_y * left[1]]], np.float32)


def pose_input_image(image_rgb: np.ndarray, crop: PoseCrop) -> np.ndarray:
    """RGB [H, W, 3] -> the warped crop resized to the network size, RGB [1024, 768, 3] (as the
    lite demo: warp to the original image size, then cv2.resize)."""
    height, width = image_rgb.shape[:2]
    warped = cv2.warpAffine(image_rgb, udp_warp_matrix(crop, (width, height)), (width, height),
                            flags=cv2.INTER_LINEAR)
    net_h, net_w = SAPIENS_INPUT_HW
    return cv2.resize(warped, (net_w, net_h), interpolation=cv2.INTER_LINEAR)


def preprocess_pose(image_rgb: np.ndarray, mask: np.ndarray | None,
                    padding: float = POSE_BOX_PADDING) -> tuple[Tensor, PoseCrop]:
    """RGB [H, W, 3] (+ optional person mask [H, W]) -> input [3, 1024, 768] and its crop."""
    crop = box_to_crop(person_box(mask, image_rgb.shape[:2]), image_rgb.shape[:2], padding)
    return normalise_rgb(pose_input_image(image_rgb, crop)), crop


# ----------------------------------------------------------------------------------------------
# Keypoints: heatmap decoding (section 2.6)
# ----------------------------------------------------------------------------------------------
def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps [K, h, w] -> integer peak locations (x, y) float [K, 2] and peak values [K];
    locations with a peak value <= 0 are -1."""
    num, height, width = heatmaps.shape
    flat = heatmaps.reshape(num, -1)
    index = flat.argmax(axis=1)
    values = flat[np.arange(num), index]
    locations = np.stack([index % width, index // width], axis=-1).astype(np.float64)
    locations[values <= 0] = -1.0
    return locations, values


def modulate_heatmaps(heatmaps: np.ndarray, kernel: int = DARK_BLUR_KERNEL) -> np.ndarray:
    """Gaussian blur [K, h, w] with zero padding outside the map (cv2 sigma for the kernel size),
    each map rescaled so its maximum equals the original maximum."""
    if kernel % 2 != 1:
        raise ValueError(f"blur kernel must be odd, got {kernel}")
    border = (kernel - 1) // 2
    out = np.empty(heatmaps.shape, np.float32)
    for k, heatmap in enumerate(np.asarray(heatmaps, np.float32)):
        padded = np.pad(heatmap, border)  # zeros around the map
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        peak = blurred.max()
        out[k] = blurred * (heatmap.max() / peak) if peak > 0 else blurred
    return out


def dark_udp_refine(locations: np.ndarray, heatmaps: np.ndarray,
                    kernel: int = DARK_BLUR_KERNEL) -> np.ndarray:
    """One Newton step on the log of the modulated heatmap at each integer peak.

    locations [K, 2] integer (x, y) peaks (-1 = none, left as they are); heatmaps [K, h, w].
    Derivatives are central differences on the log map padded by edge replication; the step is
    -(H + eps I)^-1 g. Returns refined locations [K, 2] in heatmap index coordinates.
    """
    log_maps = np.log(np.clip(modulate_heatmaps(heatmaps, kernel), DARK_CLIP_MIN, DARK_CLIP_MAX))
    padded = np.pad(log_maps, ((0, 0), (1, 1), (1, 1)), mode="edge").astype(np.float64)
    num = heatmaps.shape[0]
    refined = np.asarray(locations, np.float64).copy()
    valid = np.all(refined >= 0, axis=1)  # [K]
    ks = np.arange(num)[valid]
    px = refined[valid, 0].astype(np.int64) + 1  # positions in the padded map
    py = refined[valid, 1].astype(np.int64) + 1

    def at(dx: int, dy: int) -> np.ndarray:
        return padded[ks, py + dy, px + dx]

    centre = at(0, 0)
    grad = np.stack([0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))], -1)  # [V, 2]
    dxx = at(1, 0) - 2 * centre + at(-1, 0)
    dyy = at(0, 1) - 2 * centre + at(0, -1)
    dxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * centre - at(-1, 0) - at(0, -1)
                 + at(-1, -1))
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)  # [V, 2, 2]
    hessian_inv = np.linalg.inv(hessian + DARK_HESSIAN_EPS * np.eye(2))
    refined[valid] -= np.einsum("vij,vj->vi", hessian_inv, grad)
    return refined


def heatmap_to_image(points: np.ndarray, crop: PoseCrop,
                     heatmap_hw: tuple[int, int] = POSE_HEATMAP_HW) -> np.ndarray:
    """Heatmap index coordinates [K, 2] -> original-image index coordinates [K, 2] (mmpose):
    x = x_hm / (w_hm - 1) * scale_w + center_x - scale_w / 2, likewise y."""
    hm_size = np.array([heatmap_hw[1] - 1, heatmap_hw[0] - 1], np.float64)
    return points / hm_size * crop.scale + crop.center - 0.5 * crop.scale


def decode_keypoints(heatmaps: np.ndarray, crop: PoseCrop,
                     kernel: int = DARK_BLUR_KERNEL) -> np.ndarray:
    """Heatmaps [133, 256, 192] -> keypoints [133, 3] (x, y, score) in this project's pixel
    convention (centres at integer + 0.5). Score = the raw heatmap peak value."""
    heatmaps = np.asarray(heatmaps, np.float32)
    locations, scores = heatmap_argmax(heatmaps)
    refined = dark_udp_refine(locations, heatmaps, kernel)
    xy = heatmap_to_image(refined, crop, heatmaps.shape[1:]) + PIXEL_CENTRE_OFFSET
    return np.concatenate([xy, scores[:, None]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------
DEPTH_OUTPUT = "{split}/depths/{index}.npy"  # docs/SUBJECT_FORMAT.md
NORMAL_OUTPUT = "{split}/normals/{index}.npy"  # docs/SUBJECT_FORMAT.md
SEG_OUTPUT = "{split}/segs/{index}.png"  # docs/SUBJECT_FORMAT.md
KEYPOINT_OUTPUT = "{split}/keypoints/{index}.json"  # data_prep/stage.py keypoints_relpath
GEOMETRY_TASKS: tuple[str, ...] = ("depth", "normal", "seg")
# Where configs/prep/geometry.yaml and keypoints.yaml set each checkpoint.
CHECKPOINT_SETTINGS: dict[str, str] = {
    "depth": "model.init_args.depth_checkpoint",
    "normal": "model.init_args.normal_checkpoint",
    "seg": "model.init_args.seg_checkpoint",
    "pose": "model.init_args.pose_checkpoint",
}


def _image_of(item: dict[str, Any]) -> np.ndarray:
    image = item["image"]
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    return np.asarray(image, dtype=np.uint8)  # [H, W, 3] RGB


def _mask_of(item: dict[str, Any]) -> np.ndarray | None:
    mask = item.get("mask")
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    return None if mask is None else np.asarray(mask, dtype=bool)  # [H, W]


class SapiensGeometryStage(PrepStage):
    """Sapiens depth, normals and part segmentation -> ``{split}/depths/{i}.npy``,
    ``{split}/normals/{i}.npy`` and ``{split}/segs/{i}.png``.

    ``tasks`` picks the models to run (any of depth, normal, seg). The foreground is the SAM mask
    of the frame when present, else the Sapiens seg (then seg must be among the tasks). The
    frames of a data batch go through each model together, ``model_batch_size`` at a time.
    """

    def __init__(self, depth_checkpoint: str | None = None,
                 normal_checkpoint: str | None = None, seg_checkpoint: str | None = None,
                 tasks: Sequence[str] = GEOMETRY_TASKS,
                 depth_offset: float = DEFAULT_DEPTH_OFFSET,
                 depth_larger_is_farther: bool = True,
                 normal_axis_signs: Sequence[float] = DEFAULT_NORMAL_AXIS_SIGNS,
                 model_batch_size: int = 4):
        super().__init__()
        unknown = [task for task in tasks if task not in GEOMETRY_TASKS]
        if unknown or not tasks:
            raise ValueError(f"model.init_args.tasks: unknown or empty {list(tasks)}; choose "
                             f"from {', '.join(GEOMETRY_TASKS)}")
        if depth_offset <= 0:
            raise ValueError(f"model.init_args.depth_offset must be > 0, got {depth_offset}")
        self.tasks = tuple(dict.fromkeys(tasks))
        self.output_templates = tuple(
            {"depth": DEPTH_OUTPUT, "normal": NORMAL_OUTPUT, "seg": SEG_OUTPUT}[task]
            for task in self.tasks)
        self.depth_offset = float(depth_offset)
        self.depth_larger_is_farther = bool(depth_larger_is_farther)
        self.normal_axis_signs = tuple(float(v) for v in normal_axis_signs)
        normals_to_subject(np.zeros((1, 1, 3)), np.zeros((1, 1), bool),
                           self.normal_axis_signs)  # validates the signs early
        self.model_batch_size = int(model_batch_size)
        paths = {"depth": depth_checkpoint, "normal": normal_checkpoint, "seg": seg_checkpoint}
        self.models = torch.nn.ModuleDict()
        for task in self.tasks:
            if paths[task] is None:
                raise ValueError(f"`{CHECKPOINT_SETTINGS[task]}` is not set; "
                                 f"{release_hint(task)}")
            self.models[task] = SapiensModel(paths[task], CHECKPOINT_SETTINGS[task], task)

    def process_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Frame items -> one ``{relpath: payload}`` per item."""
        images = [_image_of(item) for item in items]
        inputs = torch.stack([preprocess_dense(image) for image in images])  # [B, 3, 1024, 768]
        raw = {task: run_batched(model, inputs, self.model_batch_size)
               for task, model in self.models.items()}
        outputs = []
        for b, (item, image) in enumerate(zip(items, images, strict=True)):
            hw = image.shape[:2]
            labels = seg_labels(raw["seg"][b], hw) if "seg" in raw else None  # [H, W]
            mask = _mask_of(item)
            if mask is None and labels is None:
                raise ValueError(f"{item['split']}/{item['index']}: no mask "
                                 f"({item['split']}/masks/{item['index']}.png) and seg is not "
                                 f"among model.init_args.tasks, so there is no foreground")
            foreground = foreground_from(mask, labels)  # [H, W]
            key = {"split": item["split"], "index": item["index"]}
            files: dict[str, Any] = {}
            if "depth" in raw:
                files[DEPTH_OUTPUT.format(**key)] = depth_to_subject(
                    depth_map(raw["depth"][b], hw), foreground, self.depth_offset,
                    self.depth_larger_is_farther)
            if "normal" in raw:
                files[NORMAL_OUTPUT.format(**key)] = normals_to_subject(
                    normal_map(raw["normal"][b], hw), foreground, self.normal_axis_signs)
            if labels is not None:
                files[SEG_OUTPUT.format(**key)] = seg_to_subject(labels)
            outputs.append(files)
        return outputs

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.process_batch([item])[0]


class SapiensKeypointStage(PrepStage):
    """Sapiens COCO-WholeBody 133 keypoints -> ``{split}/keypoints/{i}.json``.

    Top-down on one person per frame: the box is the frame's SAM mask box when a mask exists
    (and ``use_mask_box``), else the full image (no person detector).
    """

    output_templates = (KEYPOINT_OUTPUT,)

    def __init__(self, pose_checkpoint: str, padding: float = POSE_BOX_PADDING,
                 blur_kernel: int = DARK_BLUR_KERNEL, use_mask_box: bool = True,
                 model_batch_size: int = 4):
        super().__init__()
        if padding <= 0:
            raise ValueError(f"model.init_args.padding must be > 0, got {padding}")
        if blur_kernel < 1 or blur_kernel % 2 != 1:
            raise ValueError(f"model.init_args.blur_kernel must be odd, got {blur_kernel}")
        self.padding = float(padding)
        self.blur_kernel = int(blur_kernel)
        self.use_mask_box = bool(use_mask_box)
        self.model_batch_size = int(model_batch_size)
        self.model = SapiensModel(pose_checkpoint, CHECKPOINT_SETTINGS["pose"], "pose")

    def process_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Frame items -> one ``{relpath: keypoints JSON}`` per item."""
        prepared = [preprocess_pose(_image_of(item),
                                    _mask_of(item) if self.use_mask_box else None, self.padding)
                    for item in items]
        inputs = torch.stack([tensor for tensor, _ in prepared])  # [B, 3, 1024, 768]
        heatmaps = run_batched(self.model, inputs, self.model_batch_size).numpy()
        expected = (NUM_WHOLEBODY_KEYPOINTS, *POSE_HEATMAP_HW)
        if heatmaps.shape[1:] != expected:
            raise ValueError(f"pose model output {list(heatmaps.shape)}: expected "
                             f"[B, {expected[0]}, {expected[1]}, {expected[2]}] heatmaps")
        return [{KEYPOINT_OUTPUT.format(split=item["split"], index=item["index"]):
                 keypoints_to_json(decode_keypoints(heatmaps[b], crop, self.blur_kernel))}
                for b, (item, (_, crop)) in enumerate(zip(items, prepared, strict=True))]

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.process_batch([item])[0]
