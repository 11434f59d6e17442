"""The data types every body model speaks: SMPL-X joint layout, identity and pose parameters.

These are the contract between bodies, the avatar, the synthetic subjects and preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# SMPL-X's 55 joints in the order of its kinematic tree (smplx.joint_names.JOINT_NAMES[:55]).
SMPLX_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2",
    "right_middle3", "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2",
    "right_ring3", "right_thumb1", "right_thumb2", "right_thumb3",
)
NUM_JOINTS = 55
NUM_BODY_JOINTS = 21  # joints 1..21: the body pose without root, jaw, eyes and fingers

# Parent of each joint (root = -1), SMPL-X's kintree_table[0].
SMPLX_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
# Joint index groups.
JAW_JOINT = 22
EYE_JOINTS = (23, 24)
LEFT_HAND_JOINTS = tuple(range(25, 40))
RIGHT_HAND_JOINTS = tuple(range(40, 55))
FINGER_JOINTS = LEFT_HAND_JOINTS + RIGHT_HAND_JOINTS
# Canonical "big pose": left hip z = +1/3 rad, right hip z = -1/3 rad (METHOD.md section 1).
BIG_POSE_HIP_ANGLE = 1.0 / 3.0


@dataclass
class Identity:
    """A subject's frozen identity on a body model."""

    betas: Tensor  # [num_betas]
    face_offset: Tensor | None = None  # [V, 3] per-vertex offset (zero off the face), or None
    joint_offset: Tensor | None = None  # [55, 3] per-joint offset (root and hips zero), or None

    def to(self, device: torch.device | str) -> Identity:
        return Identity(
            self.betas.to(device),
            None if self.face_offset is None else self.face_offset.to(device),
            None if self.joint_offset is None else self.joint_offset.to(device),
        )


@dataclass
class PoseParams:
    """Batched SMPL-X pose parameters, axis-angle, in SMPL-X joint order."""

    full_pose: Tensor  # [B, 55, 3] axis-angle: root, 21 body, jaw, 2 eyes, 2 x 15 fingers
    expression: Tensor  # [B, E]
    transl: Tensor  # [B, 3]

    @property
    def batch_size(self) -> int:
        return self.full_pose.shape[0]

    def validate(self, where: str = "pose", finite: bool = True) -> None:
        """Raise ValueError naming the field when a shape is wrong or (finite) a value is not
        finite."""
        fp, ex, tr = self.full_pose, self.expression, self.transl
        if fp.ndim != 3 or fp.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"{where}.full_pose: expected shape [B, 55, 3], got {list(fp.shape)}")
        if ex.ndim != 2 or ex.shape[0] != fp.shape[0]:
            raise ValueError(f"{where}.expression: expected shape [B, E], got {list(ex.shape)}")
        if tr.shape != (fp.shape[0], 3):
            raise ValueError(f"{where}.transl: expected shape [B, 3], got {list(tr.shape)}")
        if finite:
            check_finite(pose_fields(self, where))


def identity_fields(identity: Identity, where: str = "identity") -> dict[str, Tensor | None]:
    """{"identity.betas": ..., ...}: an identity's tensors by name, for check_finite."""
    return {f"{where}.{name}": getattr(identity, name)
            for name in ("betas", "face_offset", "joint_offset")}


def pose_fields(pose: PoseParams, where: str = "pose") -> dict[str, Tensor]:
    """{"pose.full_pose": ..., ...}: a pose's tensors by name, for check_finite."""
    return {f"{where}.{name}": getattr(pose, name)
            for name in ("full_pose", "expression", "transl")}


def check_finite(fields: dict[str, Tensor | None]) -> None:
    """ValueError naming the first field holding a NaN or infinite value; None fields are
    skipped. One host synchronisation for all fields (a GPU step waits once)."""
    present = [(name, value) for name, value in fields.items() if value is not None]
    if not present:
        return
    finite = torch.stack([torch.isfinite(value).all() for _, value in present])
    if bool(finite.all()):
        return
    for (name, _), ok in zip(present, finite.tolist(), strict=True):
        if not ok:
            raise ValueError(f"{name}: contains NaN or infinite values")


def big_pose(dtype: torch.dtype = torch.float32) -> Tensor:
    """The canonical big pose as axis-angle. Returns [55, 3]."""
    pose = torch.zeros(NUM_JOINTS, 3, dtype=dtype)
    pose[1, 2] = BIG_POSE_HIP_ANGLE
    pose[2, 2] = -BIG_POSE_HIP_ANGLE
    return pose
