"""Driving poses for the pose videos (METHOD.md section 8, PREPROCESSING.md 1.8 / 4.4).

A motion (SMPL-X poses in the body frame) is posed on the subject's shape with jaw, eyes and
expression zero and flat hands, placed before the virtual camera (focal 2000, principal point
(288, 512) at 576 x 1024; `persona.data.motions.place_in_camera`), its landmarks projected and
mapped to COCO-WholeBody 133 (hand roots = elbow + 1.1 (wrist - elbow)), then to the DWPose
layout (OpenPose-18 body with the neck as shoulder midpoint, 2 x 21 hands, 68 face points;
coordinates normalised by (W, H)). Scores are 1 where the body defines the keypoint and 0 where
it does not (the face points without a landmark embedding). The per-frame SMPL-X parameters
and the camera are what a generated split stores (`driving_subject_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_prep.fitting import CAM_OUTPUT, SMPLX_OUTPUT, fitting_camera, project_points
from data_prep.keypoints import (
    LandmarkTable,
    landmark_table,
    posed_landmarks,
    smplx_to_coco133,
    with_hand_roots,
)
from data_prep.pose_draw import DWPose, coco133_to_dwpose
from persona.body.model import BodyModel
from persona.body.types import EYE_JOINTS, FINGER_JOINTS, JAW_JOINT, Identity, PoseParams
from persona.data.motions import (
    PELVIS_HEIGHT_IN_IMAGE,
    SUBJECT_DISTANCE,
    VIRTUAL_HEIGHT,
    VIRTUAL_WIDTH,
    Motion,
    place_in_camera,
)
from persona.data.subject import camera_to_json, pose_to_json
from persona.render.types import Camera

VALID_SCORE = 1.0  # score of a keypoint the body defines (no detector: PREPROCESSING.md 4.4)


@dataclass
class DrivingSequence:
    """A motion posed on a subject before the virtual camera."""

    poses: PoseParams  # [T] camera-frame SMPL-X parameters (R = I, t = 0)
    camera: Camera  # the virtual camera
    keypoints: np.ndarray  # [T, 133, 3] COCO-WholeBody pixels (x, y, score)
    dwposes: list[DWPose]  # T DWPose frames, normalised by (W, H)


def _identity(body: BodyModel, identity: Identity | Tensor) -> Identity:
    return identity if isinstance(identity, Identity) else Identity(identity.to(
        body.v_template))


def driving_poses(body: BodyModel, identity: Identity | Tensor, motion: Motion,
                  distance: float = SUBJECT_DISTANCE,
                  pelvis_height: float = PELVIS_HEIGHT_IN_IMAGE) -> PoseParams:
    """The motion's frames on this subject in the virtual camera's frame. Returns PoseParams [T]:
    jaw, eyes and expression zero, flat fingers (the pose that cancels the body's mean hand)."""
    identity = _identity(body, identity)
    rest_pelvis = body.rest_joints(identity)[0].detach().cpu().double().numpy()  # [3]
    poses, transl = place_in_camera(motion.poses, motion.transl, rest_pelvis, distance,
                                    pelvis_height)
    device = body.v_template.device
    full_pose = torch.as_tensor(poses, dtype=torch.float32, device=device).clone()  # [T, 55, 3]
    full_pose[:, [JAW_JOINT, *EYE_JOINTS]] = 0.0
    fingers = list(FINGER_JOINTS)
    full_pose[:, fingers] = -body.pose_mean[fingers]  # flat hands whatever the hand mean
    frames = full_pose.shape[0]
    return PoseParams(full_pose, torch.zeros(frames, body.num_expression, device=device),
                      torch.as_tensor(transl, dtype=torch.float32, device=device))


def project_coco133(body: BodyModel, identity: Identity | Tensor, poses: PoseParams,
                    camera: Camera, table: LandmarkTable | None = None) -> np.ndarray:
    """COCO-WholeBody keypoints [T, 133, 3] (pixels, score 1 / 0) of posed frames, hand roots
    from the arms (elbow + 1.1 (wrist - elbow))."""
    identity = _identity(body, identity)
    table = landmark_table(body) if table is None else table
    with torch.no_grad():
        landmarks = posed_landmarks(body, identity, poses, table)  # [T, 144, 3]
        coco, valid = smplx_to_coco133(landmarks, table.valid)  # [T, 133, 3], [133]
        pixels = project_points(coco, camera.to(coco.device))  # [T, 133, 2]
    pixels_np = pixels.cpu().double().numpy()
    pixels_np, valid_np = with_hand_roots(pixels_np, valid.cpu().numpy())
    scores = np.broadcast_to(np.where(valid_np, VALID_SCORE, 0.0), pixels_np.shape[:2])
    return np.concatenate([pixels_np, scores[..., None]], axis=-1)  # [T, 133, 3]


def driving_keypoints(body: BodyModel, identity: Identity | Tensor, motion: Motion,
                      camera: Camera | None = None, table: LandmarkTable | None = None,
                      distance: float = SUBJECT_DISTANCE,
                      pelvis_height: float = PELVIS_HEIGHT_IN_IMAGE) -> DrivingSequence:
    """Pose `motion` on the subject and project it with `camera` (default: the virtual camera,
    576 x 1024, focal 2000). The DWPose frames are normalised by the camera's (W, H)."""
    camera = fitting_camera(VIRTUAL_WIDTH, VIRTUAL_HEIGHT) if camera is None else camera
    poses = driving_poses(body, identity, motion, distance, pelvis_height)
    keypoints = project_coco133(body, identity, poses, camera, table)  # [T, 133, 3]
    dwposes = [coco133_to_dwpose(frame, camera.height, camera.width) for frame in keypoints]
    return DrivingSequence(poses, camera, keypoints, dwposes)


def driving_subject_files(split: str, poses: PoseParams, camera: Camera,
                          indices: list[int] | None = None) -> dict[str, Any]:
    """{relative path: JSON} of a generated split: per-frame SMPL-X params and cam_params."""
    indices = list(range(poses.batch_size)) if indices is None else indices
    if len(indices) != poses.batch_size:
        raise ValueError(f"indices: {len(indices)} for {poses.batch_size} frames")
    camera_json = camera_to_json(camera)
    files: dict[str, Any] = {}
    for b, index in enumerate(indices):
        files[SMPLX_OUTPUT.format(split=split, index=index)] = pose_to_json(poses, b)
        files[CAM_OUTPUT.format(split=split, index=index)] = camera_json
    return files
