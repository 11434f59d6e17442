"""Helpers of the `persona track` tests (imported by name; conftest.py holds the fixtures):
known poses in front of the camera, their BlazePose-layout landmarks, and the real inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
REAL_PHOTO = REPO / "tests" / "data_prep" / "real" / "s2d_f150_person.jpg"  # one person, BSD-3
BLAZEPOSE_DIR = Path(os.environ.get("PERSONA_BLAZEPOSE_DIR", REPO / "weights" / "blazepose"))
SPORTS2D_VIDEO = REPO / "weights" / "sports2d" / "demo.mp4"  # Makefile install step
WIDTH, HEIGHT = 288, 512  # the synthetic camera: the virtual one at half size


def _pose_runtime_missing() -> str | None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return "ai-edge-litert is not installed"
    for name in ("pose_detection.tflite", "pose_landmark_full.tflite"):
        if not (BLAZEPOSE_DIR / name).is_file():
            return (f"{BLAZEPOSE_DIR / name} missing: python -m data_prep.light_pose install "
                    "weights/blazepose")
    return None


needs_pose_models = pytest.mark.skipif(_pose_runtime_missing() is not None,
                                       reason=str(_pose_runtime_missing()))


def known_clip(body, motion: str = "punches", frames: int = 8, step: int = 3):
    """(camera-frame full poses [T, 55, 3], transl [T, 3], true keypoints [T, 23, 3], joints
    [T, 22, 3], betas) of a built-in motion placed before the virtual camera (4.5 m)."""
    from data_prep.keypoints import landmark_table
    from persona.data.motions import make_builtin_motion, place_in_camera
    from persona.ops.rotations import axis_angle_to_matrix
    from persona.track.fit import PosedClip

    motion_data = make_builtin_motion(motion)
    picks = list(range(0, frames * step, step))
    betas = torch.zeros(body.num_betas)
    pelvis = body.rest_joints(body.zero_identity())[0].numpy()
    poses, transl = place_in_camera(motion_data.poses[picks], motion_data.transl[picks], pelvis)
    clip = PosedClip(body, landmark_table(body))
    full = torch.from_numpy(poses).float()
    with torch.no_grad():
        keypoints, joints, _ = clip(axis_angle_to_matrix(full[:, 0]), full[:, 1:22],
                                    torch.from_numpy(transl).float(), betas)
    return poses, transl, keypoints.double().numpy(), joints.double().numpy(), betas


def blazepose_layout(keypoints: np.ndarray, width: int = WIDTH, height: int = HEIGHT,
                     score: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """True COCO keypoints [T, 23, 3] (camera frame) -> what BlazePose would give: 2D landmarks
    [T, 33, 3] (x, y, score) through the tracker's camera and world landmarks [T, 33, 3]
    (metres, origin between the hips, camera axes); landmarks without a COCO twin score 0."""
    from data_prep.fitting import fitting_camera, project_points
    from persona.track.fit import BLAZE_OF_COCO

    camera = fitting_camera(width, height)
    pixels = project_points(torch.from_numpy(keypoints).float(), camera).double().numpy()
    hips = keypoints[:, [11, 12]].mean(1, keepdims=True)
    landmarks = np.zeros((len(keypoints), 33, 3))
    world = np.zeros((len(keypoints), 33, 3))
    for coco, blaze in BLAZE_OF_COCO.items():
        landmarks[:, blaze, :2] = pixels[:, coco]
        landmarks[:, blaze, 2] = score
        world[:, blaze] = keypoints[:, coco] - hips[:, 0]
    return landmarks, world
