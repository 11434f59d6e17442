"""Poses for export and animation, and the one call that poses an avatar for them.

Everything that writes a posed avatar (`persona export`, its PLY sequences and bundles,
`persona animate`) goes through `posed_frame` / `PosableAvatar.posed_gaussians`: the system's own
posing function, never a copy of it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from persona.body.types import NUM_JOINTS, PoseParams, big_pose
from persona.render.types import Gaussians

DEFAULT_NUM_EXPRESSION = 10  # expression coefficients of a neutral face (zeros)


class PosableAvatar(Protocol):
    """What export and animation need from an avatar (PersonaSystem implements it)."""

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"
                        ) -> tuple[Gaussians, dict[str, Tensor]]: ...


def avatar_device(avatar: PosableAvatar) -> torch.device:
    """Where the avatar's tensors live (a LightningModule's `.device`; plain avatars: cpu)."""
    return torch.device(getattr(avatar, "device", "cpu"))


def pose_to(pose: PoseParams, device: torch.device) -> PoseParams:
    """The same pose with its tensors on `device`."""
    return PoseParams(pose.full_pose.to(device), pose.expression.to(device),
                      pose.transl.to(device))


def canonical_pose(num_expression: int = DEFAULT_NUM_EXPRESSION) -> PoseParams:
    """The big pose at the origin with a neutral face (batch 1)."""
    return PoseParams(big_pose()[None], torch.zeros(1, num_expression), torch.zeros(1, 3))


def motion_pose(poses: np.ndarray, transl: np.ndarray, expression: np.ndarray | None,
                t: int, source: str = "motion") -> PoseParams:
    """Frame t of a motion (poses [T, 55, 3], transl [T, 3], expression [T, E] or None)."""
    if not -poses.shape[0] <= t < poses.shape[0]:
        raise ValueError(f"{source}: frame {t} out of range (the motion has {poses.shape[0]})")
    expr = torch.zeros(1, DEFAULT_NUM_EXPRESSION) if expression is None \
        else torch.as_tensor(expression[t], dtype=torch.float32)[None]
    pose = PoseParams(torch.as_tensor(poses[t], dtype=torch.float32).reshape(1, NUM_JOINTS, 3),
                      expr, torch.as_tensor(transl[t], dtype=torch.float32).reshape(1, 3))
    pose.validate(f"{source} frame {t}")
    return pose


def posed_frame(avatar: PosableAvatar, poses: np.ndarray, transl: np.ndarray,
                expression: np.ndarray | None, t: int, variant: str = "refined"
                ) -> tuple[Gaussians, dict[str, Tensor]]:
    """The avatar's own posed Gaussians and channels ({"rgb": [N, 3], ...}) at motion frame t,
    without gradient."""
    pose = pose_to(motion_pose(poses, transl, expression, t), avatar_device(avatar))
    with torch.no_grad():
        return avatar.posed_gaussians(pose, variant)


def check_max_frames(max_frames: int | None) -> None:
    """ValueError unless max_frames is None (every frame) or a positive frame count."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames: expected a positive number of frames, got {max_frames}")


def frame_count(num_frames: int, max_frames: int | None, where: str = "motion") -> int:
    """How many leading frames of a motion to use: all, or at most max_frames (>= 1)."""
    check_max_frames(max_frames)
    total = num_frames if max_frames is None else min(num_frames, max_frames)
    if total < 1:
        raise ValueError(f"{where}: the motion has no frames")
    return total
