"""The virtual cameras of a synthetic subject and the motion poses placed in front of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from persona.body.types import Identity, PoseParams
from persona.data import motions as motion_lib
from persona.render.types import Camera

HAND_MIN_DEPTH = 1e-3  # m: camera z of a hand centre is clamped to this (fault placement)


def front_camera(width: int, height: int) -> Camera:
    """The virtual camera of METHOD.md section 8 at this resolution (R = I, t = 0)."""
    K = torch.from_numpy(motion_lib.virtual_intrinsics(width, height)).float()
    return Camera(K, torch.eye(3), torch.zeros(3), width, height)


def orbit_camera(width: int, height: int, yaw_degrees: float, centre: Tensor) -> Camera:
    """The front camera turned by ``yaw`` about the vertical axis through ``centre`` [3]."""
    angle = math.radians(yaw_degrees)
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # camera -> world
    camera_centre = centre - rotation @ centre
    R = rotation.T
    front = front_camera(width, height)
    return Camera(front.K, R, -R @ camera_centre, width, height)


def camera_frame_poses(body: Any, identity: Identity, poses: np.ndarray, transl: np.ndarray,
                       num_expression: int) -> PoseParams:
    """Body-frame motion poses -> PoseParams in front of the virtual camera."""
    rest_pelvis = body.rest_joints(identity)[0].detach().numpy()
    cam_poses, cam_transl = motion_lib.place_in_camera(poses, transl, rest_pelvis)
    count = cam_poses.shape[0]
    return PoseParams(torch.from_numpy(cam_poses), torch.zeros(count, num_expression),
                      torch.from_numpy(cam_transl))


def select(pose: PoseParams, i: int) -> PoseParams:
    return PoseParams(pose.full_pose[i:i + 1], pose.expression[i:i + 1], pose.transl[i:i + 1])


def subsample(count: int, wanted: int) -> list[int]:
    """``wanted`` evenly spread indices of ``count`` frames (all when wanted >= count)."""
    if wanted >= count:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, wanted)})
