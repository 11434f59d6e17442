"""Generated training videos: the ``generated_<k>`` splits (METHOD.md section 8).

For each motion k of the configured library, one item of a Lightning ``predict`` (so several GPUs
generate several motions at once):

1. the motion is posed on the subject's body and shape (jaw, eyes, expression zero, flat hands)
   before the virtual camera (576 x 1024, focal 2000) and its keypoints are projected
   (``data_prep.driving``);
2. the reference image is the input photo composited on white (with its SAM mask), scaled and
   shifted so that its body keypoints align with the first driving frame's (least-squares
   isotropic scale + shift over the body keypoints both define; the authors fit a polynomial on
   13 body keypoints, PREPROCESSING.md section 6), and its own aligned pose is pose frame 0;
3. every frame's pose is drawn as a DWPose image (``data_prep.pose_draw``) and MimicMotion
   generates the video (``data_prep.mimicmotion``; frame 0, the reference, is dropped);
4. the split gets ``images/{i}.png`` (frame i = driving frame i), ``cam_params/{i}.json`` (the
   virtual camera), ``smplx_optimized/smplx_params/{i}.json`` (the driving parameters: the
   authors do no per-frame fitting), the drawn poses ``poses/{i}.png`` and the reference
   ``reference.png`` for inspection, and last ``frame_idx_list.txt`` (every ``frame_stride``-th
   frame), whose presence marks the motion as done.

Masks, depth, normals and part segmentation of the new frames come from running the keypoint,
SAM and Sapiens stages on the generated splits afterwards (docs/PREPROCESSING.md).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data_prep.driving import driving_keypoints, driving_subject_files
from data_prep.fitting import CAPTURED_SPLIT, fitting_camera
from data_prep.mimicmotion import GenerateConfig, MimicMotionGenerator, target_size
from data_prep.pose_draw import coco133_to_dwpose, draw_pose
from data_prep.stage import (
    PrepData,
    PrepStage,
    keypoints_relpath,
    load_subject_body,
    read_keypoints,
    read_mask_bool,
    read_rgb_uint8,
)
from persona.data.motions import VIRTUAL_HEIGHT, VIRTUAL_WIDTH, resolve_motion
from persona.data.subject import (
    FRAME_LIST_NAME,
    FramePaths,
    generated_split,
)

DEFAULT_MOTIONS = ("dance", "rotation", "punches", "kicks")  # METHOD.md section 8 library
WHITE = 255  # the reference is composited on white (METHOD.md section 8)
ALIGN_KEYPOINTS = tuple(range(17))  # COCO-WholeBody body keypoints used to place the reference
ALIGN_MIN_SCORE = 0.3  # detected keypoints below this score are not used for the alignment
MIN_ALIGN_POINTS = 2  # a scale and a shift need at least two points
FRAME_LIST_TEMPLATE = "{split}/" + FRAME_LIST_NAME


def fit_scale_shift(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares isotropic scale s and shift b with ``dst ~ s src + b``.

    src, dst: [K, 2] matching points (K >= 2, not all equal). Returns (s, b [2]).
    """
    src_mean, dst_mean = src.mean(0), dst.mean(0)  # [2]
    src_c, dst_c = src - src_mean, dst - dst_mean  # [K, 2]
    denominator = float((src_c * src_c).sum())
    if denominator <= 0.0:
        raise ValueError("alignment points are all at one place")
    scale = float((src_c * dst_c).sum()) / denominator
    return scale, dst_mean - scale * src_mean


def reference_on_white(image: np.ndarray, mask: np.ndarray | None, scale: float,
                       shift: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The photo [h, w, 3] uint8 composited on white with its mask [h, w] bool (None: whole
    photo), mapped by x' = scale x + shift (continuous pixel coordinates) into an out_hw canvas
    with a white border. Returns uint8 [H, W, 3]."""
    composite = image.astype(np.float32)
    if mask is not None:
        composite = np.where(mask[..., None], composite, float(WHITE))
    # continuous coordinates (centres at +0.5) -> cv2's index coordinates: x_i' = s x_i + b'
    # with b' = b + 0.5 (s - 1)
    offset = shift + 0.5 * (scale - 1.0)
    matrix = np.array([[scale, 0.0, offset[0]], [0.0, scale, offset[1]]], dtype=np.float64)
    height, width = out_hw
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    warped = cv2.warpAffine(composite, matrix, (width, height), flags=interpolation,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(WHITE, WHITE, WHITE))
    return np.clip(np.rint(warped), 0, WHITE).astype(np.uint8)


def align_reference_keypoints(captured: np.ndarray, first_frame: np.ndarray
                              ) -> tuple[float, np.ndarray]:
    """Scale and shift taking the photo's keypoints [133, 3] onto the first driving frame's
    [133, 3] over the body keypoints both define (photo score >= ALIGN_MIN_SCORE, driving
    score > 0)."""
    ids = [i for i in ALIGN_KEYPOINTS
           if captured[i, 2] >= ALIGN_MIN_SCORE and first_frame[i, 2] > 0.0]
    if len(ids) < MIN_ALIGN_POINTS:
        raise ValueError(f"only {len(ids)} body keypoints of the photo are confident enough "
                         f"(score >= {ALIGN_MIN_SCORE}) to place the reference image")
    return fit_scale_shift(captured[ids, :2].astype(np.float64),
                           first_frame[ids, :2].astype(np.float64))


class MotionItems(Dataset):
    """One item per motion: ``{"split": "generated_<k>", "index": k, "motion": name,
    "image", "mask" (when present), "keypoints"}`` with the captured photo's data. Motions
    whose ``frame_idx_list.txt`` exists are skipped unless ``overwrite``."""

    def __init__(self, subject_dir: str | Path, motions: list[str], overwrite: bool = False):
        self.root = Path(subject_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"subject folder {self.root} does not exist "
                                    "(setting data.subject_dir)")
        all_items = [(generated_split(k), k, name) for k, name in enumerate(motions)]
        self.items = [item for item in all_items if overwrite or not (
            self.root / FRAME_LIST_TEMPLATE.format(split=item[0])).is_file()]
        self.num_skipped = len(all_items) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        split, k, motion = self.items[i]
        paths = FramePaths(CAPTURED_SPLIT, 0)
        keypoints_path = self.root / keypoints_relpath(CAPTURED_SPLIT, 0)
        if not keypoints_path.is_file():
            raise FileNotFoundError(f"{keypoints_path} is missing: run the keypoint stage on "
                                    "the captured split first (configs/prep/keypoints.yaml)")
        item: dict[str, Any] = {
            "split": split, "index": k, "motion": motion,
            "image": torch.from_numpy(read_rgb_uint8(self.root / paths.image)),  # [h, w, 3]
            "keypoints": torch.from_numpy(read_keypoints(keypoints_path)),  # [133, 3]
        }
        if (self.root / paths.mask).is_file():
            item["mask"] = torch.from_numpy(read_mask_bool(self.root / paths.mask))  # [h, w]
        return item


class GenerateVideosStage(PrepStage):
    """MimicMotion videos of the motion library -> ``generated_<k>`` splits (module docstring).

    The body is the subject's (``subject.json``) with its fitted shape
    (``smplx_optimized/shape_param.json``), so run the fit stage first.
    """

    output_templates = (FRAME_LIST_TEMPLATE,)

    def __init__(self, generate: GenerateConfig | None = None,
                 motions: list[str] | None = None, frame_stride: int = 1,
                 save_pose_frames: bool = True):
        """generate: MimicMotion settings and weight paths (configs/prep/generate.yaml);
        motions: built-in names or npz paths, motion k -> generated_<k>; frame_stride: every
        n-th generated frame is listed for training; save_pose_frames: also write the drawn
        poses and the reference for inspection."""
        super().__init__()
        if frame_stride < 1:
            raise ValueError(f"model.init_args.frame_stride must be >= 1, got {frame_stride}")
        self.config = generate or GenerateConfig()
        self.motions = list(DEFAULT_MOTIONS if motions is None else motions)
        self.frame_stride = frame_stride
        self.save_pose_frames = save_pose_frames
        self.generator: MimicMotionGenerator | None = None  # loaded in setup (big weights)

    def make_dataset(self, data: PrepData) -> Dataset:
        return MotionItems(data.subject_dir, self.motions, data.overwrite)

    def setup(self, stage: str) -> None:
        self.body, self.identity, _ = load_subject_body(self.trainer.datamodule.subject_dir)
        if self.generator is None:
            settings = asdict(self.config)
            if settings["device"] == "auto":  # the device Lightning gave this rank (DDP)
                settings["device"] = str(self.trainer.strategy.root_device)
            self.generator = MimicMotionGenerator(GenerateConfig(**settings))

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        assert self.generator is not None, "setup() loads the generator"
        split, motion_name = item["split"], item["motion"]
        motion = resolve_motion(motion_name)
        # the virtual camera (576 x 1024, focal 2000) scaled to the generated video's size
        height, width = target_size(VIRTUAL_HEIGHT, VIRTUAL_WIDTH, self.config.resolution)
        camera = fitting_camera(width, height)
        driving = driving_keypoints(self.body, self.identity.to(self.body.v_template.device),
                                    motion, camera)
        needed = self.generator.config.tile_size
        if motion.num_frames < needed:
            raise ValueError(f"motion {motion_name!r} has {motion.num_frames} frames; MimicMotion "
                             f"needs at least tile_size = {needed} "
                             "(model.init_args.generate.tile_size)")
        out_hw = (camera.height, camera.width)
        photo_keypoints = item["keypoints"].cpu().numpy()  # [133, 3]
        scale, shift = align_reference_keypoints(photo_keypoints, driving.keypoints[0])
        mask = item["mask"].cpu().numpy() if "mask" in item else None
        reference = reference_on_white(item["image"].cpu().numpy(), mask, scale, shift, out_hw)
        aligned = photo_keypoints.copy()
        aligned[:, :2] = photo_keypoints[:, :2] * scale + shift
        poses = [coco133_to_dwpose(aligned, *out_hw)] + driving.dwposes
        pose_frames = np.stack([draw_pose(p, *out_hw) for p in poses])  # [T + 1, H, W, 3]
        video = self.generator.generate(reference, pose_frames)  # [T, H', W', 3]
        if video.shape[1:3] != out_hw:
            raise ValueError(f"generated frames are {video.shape[1:3]}, the camera is {out_hw}")
        files: dict[str, Any] = {f"{split}/images/{i}.png": frame for i, frame in
                                 enumerate(video)}
        files.update(driving_subject_files(split, driving.poses, camera))
        if self.save_pose_frames:
            files[f"{split}/reference.png"] = reference
            files.update({f"{split}/poses/{i}.png": frame
                          for i, frame in enumerate(pose_frames[1:])})
        files[FRAME_LIST_TEMPLATE.format(split=split)] = list(
            range(0, len(video), self.frame_stride))  # last: marks the motion as done
        return files
