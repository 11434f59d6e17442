"""Person masks with segment-anything (SAM), prompted by whole-body keypoints.

Facts from PREPROCESSING.md §3 (our own code around the `segment_anything` package classes):
the model is the released `Sam` (ImageEncoderViT + PromptEncoder + MaskDecoder with a
TwoWayTransformer); the prompt recipe is the authors' refinement pattern: keypoints with
score > 0.5 as positive points, their bounding box expanded 1.2x about its centre as the box,
one single-mask prediction, then a second one fed the best low-resolution logits as mask input.

Coordinates: the project's keypoints are continuous pixel coordinates (pixel centres at
integer + 0.5); `SamPredictor` takes pixel indices and adds 0.5 itself, so points and boxes are
shifted by -0.5 before they are passed (see :func:`to_sam_coords`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.predictor import SamPredictor

from data_prep.stage import PrepStage

# --- architecture (PREPROCESSING.md §3, segment-anything build_sam.py) -------------------------
SAM_IMAGE_SIZE = 1024  # §3: ImageEncoderViT img 1024
SAM_PATCH_SIZE = 16  # §3: patch 16
SAM_WINDOW_SIZE = 14  # §3: window 14
SAM_PROMPT_EMBED_DIM = 256  # §3: encoder out 256 = PromptEncoder embed 256
SAM_MASK_IN_CHANS = 16  # §3: PromptEncoder mask_in_chans 16
SAM_NUM_MULTIMASK = 3  # §3: MaskDecoder 3 multimask outputs
SAM_DECODER_DEPTH = 2  # §3: TwoWayTransformer depth 2
SAM_DECODER_MLP_DIM = 2048  # §3: TwoWayTransformer mlp 2048
SAM_DECODER_HEADS = 8  # §3: TwoWayTransformer 8 heads
SAM_IOU_HEAD_DEPTH = 3  # segment-anything build_sam.py: iou_head_depth 3
SAM_IOU_HEAD_HIDDEN = 256  # segment-anything build_sam.py: iou_head_hidden_dim 256
SAM_MLP_RATIO = 4.0  # segment-anything build_sam.py: ImageEncoderViT mlp_ratio 4
SAM_LAYER_NORM_EPS = 1e-6  # segment-anything build_sam.py: LayerNorm eps 1e-6
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # §3 pixel_mean
SAM_PIXEL_STD = (58.395, 57.12, 57.375)  # §3 pixel_std

# model_type -> (embed_dim, depth, num_heads, global_attn_indexes)  (PREPROCESSING.md §3)
SAM_PRESETS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}
# model_type -> released checkpoint file name (PREPROCESSING.md §3)
SAM_CHECKPOINT_NAMES: dict[str, str] = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
SAM_CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"  # PREPROCESSING.md §3
CHECKPOINT_SETTING = "model.init_args.checkpoint"  # where configs/prep/segment.yaml sets it

# --- prompts (PREPROCESSING.md §3, the refinement pattern) --------------------------------------
KEYPOINT_SCORE_THRESHOLD = 0.5  # §3: keypoints with score > 0.5 are prompts
BOX_EXTEND_RATIO = 1.2  # §3: get_bbox(extend_ratio=1.2)
SAM_PIXEL_CENTRE = 0.5  # §3: SamPredictor adds +0.5 to points and boxes (pixel index -> centre)
POSITIVE_LABEL = 1  # SamPredictor: 1 = foreground point
MASK_OUTPUT = "{split}/masks/{index}.png"  # docs/SUBJECT_FORMAT.md


@dataclass(frozen=True)
class SamArchitecture:
    """Every size of a `Sam`; the presets are the released models, overrides build tiny ones."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = SAM_IMAGE_SIZE
    patch_size: int = SAM_PATCH_SIZE
    window_size: int = SAM_WINDOW_SIZE
    prompt_embed_dim: int = SAM_PROMPT_EMBED_DIM
    mask_in_chans: int = SAM_MASK_IN_CHANS
    decoder_depth: int = SAM_DECODER_DEPTH
    decoder_mlp_dim: int = SAM_DECODER_MLP_DIM
    decoder_num_heads: int = SAM_DECODER_HEADS
    iou_head_hidden_dim: int = SAM_IOU_HEAD_HIDDEN


def sam_architecture(model_type: str = "vit_h",
                     overrides: dict[str, Any] | None = None) -> SamArchitecture:
    """The preset of ``model_type`` (vit_h, vit_l, vit_b) with ``overrides`` applied."""
    if model_type not in SAM_PRESETS:
        raise ValueError(f"unknown SAM model_type {model_type!r} (setting "
                         f"model.init_args.model_type); choose one of {sorted(SAM_PRESETS)}")
    embed_dim, depth, heads, global_attn = SAM_PRESETS[model_type]
    arch = SamArchitecture(embed_dim, depth, heads, global_attn)
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(SamArchitecture)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown SAM architecture override(s) {unknown} (setting "
                         f"model.init_args.architecture); known: {sorted(names)}")
    if "global_attn_indexes" in overrides:
        overrides["global_attn_indexes"] = tuple(overrides["global_attn_indexes"])
    return dataclasses.replace(arch, **overrides)


def build_sam(arch: SamArchitecture) -> Sam:
    """A randomly initialised `Sam` of the given sizes, in eval mode, on the CPU."""
    embedding_size = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
            depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=SAM_MLP_RATIO,
            out_chans=arch.prompt_embed_dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=SAM_LAYER_NORM_EPS),
            use_rel_pos=True, window_size=arch.window_size,
            global_attn_indexes=arch.global_attn_indexes),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=SAM_NUM_MULTIMASK,
            transformer=TwoWayTransformer(depth=arch.decoder_depth,
                                          embedding_dim=arch.prompt_embed_dim,
                                          mlp_dim=arch.decoder_mlp_dim,
                                          num_heads=arch.decoder_num_heads),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=SAM_IOU_HEAD_DEPTH,
            iou_head_hidden_dim=arch.iou_head_hidden_dim),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    return sam.eval()


def _where_from(model_type: str) -> str:
    name = SAM_CHECKPOINT_NAMES.get(model_type, SAM_CHECKPOINT_NAMES["vit_h"])
    return f"{name} from {SAM_CHECKPOINT_URL}{name}"


def _describe_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_sam(checkpoint: str | Path, model_type: str = "vit_h",
             architecture: dict[str, Any] | None = None,
             setting: str = CHECKPOINT_SETTING) -> Sam:
    """Build the `Sam` of ``model_type`` (+ ``architecture`` overrides) and load a local state
    dict strictly (``torch.load(weights_only=True)``); errors name ``setting`` and the file."""
    arch = sam_architecture(model_type, architecture)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint {path} not found (setting {setting}); "
                                f"download {_where_from(model_type)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"SAM checkpoint {path} (setting {setting}) is not a state dict")
    sam = build_sam(arch)
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state)
                        if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"SAM checkpoint {path.name} (setting {setting}) does not fit model_type "
            f"{model_type!r} {arch}: missing keys {_describe_keys(missing)}, unexpected keys "
            f"{_describe_keys(unexpected)}, shape mismatches {_describe_keys(mismatched)}. "
            f"model_type {model_type!r} expects {_where_from(model_type)}")
    sam.load_state_dict(state, strict=True)
    return sam.eval()


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSettings:
    """How keypoints become SAM prompts (PREPROCESSING.md §3)."""

    keypoint_threshold: float = KEYPOINT_SCORE_THRESHOLD  # score > this -> positive point
    box_extend_ratio: float = BOX_EXTEND_RATIO  # keypoint box scaled about its centre
    refine: bool = True  # second prediction fed the best low-res logits


@dataclass
class Prompts:
    """Prompts in the project's continuous pixel coordinates (centres at integer + 0.5)."""

    points: np.ndarray | None  # [N, 2] x, y, or None
    box: np.ndarray  # [4] x0, y0, x1, y1
    full_image: bool = field(default=False)


def confident_points(keypoints: np.ndarray, threshold: float) -> np.ndarray:
    """[K, 3] (x, y, score) -> [N, 2] the points with score > threshold."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    return keypoints[keypoints[:, 2] > threshold, :2]


def extended_box(points: np.ndarray, ratio: float) -> np.ndarray:
    """[N, 2] points -> [4] their min/max box scaled by ``ratio`` about its centre."""
    low, high = points.min(axis=0), points.max(axis=0)
    centre, half = (low + high) / 2.0, (high - low) / 2.0 * ratio
    return np.concatenate([centre - half, centre + half])


def full_image_box(height: int, width: int) -> np.ndarray:
    """[4] the whole image in continuous pixel coordinates."""
    return np.array([0.0, 0.0, float(width), float(height)])


def make_prompts(keypoints: np.ndarray | None, height: int, width: int,
                 settings: PromptSettings) -> Prompts:
    """Keypoints -> points and the extended keypoint box; no keypoints file, or no keypoint
    above the threshold -> the full-image box alone."""
    points = None if keypoints is None else confident_points(keypoints,
                                                             settings.keypoint_threshold)
    if points is None or len(points) == 0:
        return Prompts(None, full_image_box(height, width), full_image=True)
    return Prompts(points, extended_box(points, settings.box_extend_ratio))


def to_sam_coords(xy: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates (centres at i + 0.5) -> SAM's pixel indices (SamPredictor
    adds 0.5 back). Works on [N, 2] points and [4] xyxy boxes alike."""
    return np.asarray(xy, dtype=np.float64) - SAM_PIXEL_CENTRE


# ----------------------------------------------------------------------------------------------
# Backend
# ----------------------------------------------------------------------------------------------
class SamSegmenter:
    """One person mask per image with a loaded `Sam` through `SamPredictor`."""

    def __init__(self, sam: Sam, settings: PromptSettings | None = None):
        self.sam = sam
        self.settings = settings or PromptSettings()
        self.predictor = SamPredictor(sam)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, model_type: str = "vit_h",
                        architecture: dict[str, Any] | None = None,
                        settings: PromptSettings | None = None,
                        setting: str = CHECKPOINT_SETTING) -> SamSegmenter:
        return cls(load_sam(checkpoint, model_type, architecture, setting), settings)

    def segment(self, image: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
        """uint8 [H, W, 3] RGB (+ float [133, 3] keypoints) -> bool [H, W] person mask."""
        height, width = image.shape[:2]
        prompts = make_prompts(keypoints, height, width, self.settings)
        kwargs: dict[str, Any] = {"box": to_sam_coords(prompts.box),  # [4]
                                  "multimask_output": False}
        if prompts.points is not None:
            kwargs["point_coords"] = to_sam_coords(prompts.points)  # [N, 2]
            kwargs["point_labels"] = np.full(len(prompts.points), POSITIVE_LABEL)  # [N]
        self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        masks, scores, logits = self.predictor.predict(**kwargs)  # [C, H, W] [C] [C, h, w]
        if self.settings.refine:
            best = logits[int(np.argmax(scores))]  # [h, w] low-res logits
            masks, _, _ = self.predictor.predict(mask_input=best[None], **kwargs)
        self.predictor.reset_image()
        return np.asarray(masks).any(axis=0)  # [H, W]


class SamSegmentStage(PrepStage):
    """Writes ``{split}/masks/{index}.png`` (255 = person) with :class:`SamSegmenter`."""

    output_templates = (MASK_OUTPUT,)

    def __init__(self, checkpoint: str, model_type: str = "vit_h",
                 architecture: dict[str, Any] | None = None,
                 keypoint_threshold: float = KEYPOINT_SCORE_THRESHOLD,
                 box_extend_ratio: float = BOX_EXTEND_RATIO, refine: bool = True):
        super().__init__()
        settings = PromptSettings(keypoint_threshold, box_extend_ratio, refine)
        self.segmenter = SamSegmenter.from_checkpoint(checkpoint, model_type, architecture,
                                                      settings)
        self.sam = self.segmenter.sam  # registered, so Lightning moves it to the device

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item["image"].detach().cpu().numpy()  # [H, W, 3] uint8
        keypoints = item.get("keypoints")
        if keypoints is not None:
            keypoints = keypoints.detach().cpu().numpy()  # [133, 3]
        mask = self.segmenter.segment(image, keypoints)  # [H, W] bool
        return {MASK_OUTPUT.format(split=item["split"], index=item["index"]): mask}
