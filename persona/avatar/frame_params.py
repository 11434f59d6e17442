"""Per-frame SMPL-X parameters, optimised jointly with the avatar (METHOD.md section 7).

Rotations are stored in the continuous 6D representation (first two rows of the matrix) and
returned as axis-angle ``PoseParams`` in SMPL-X joint order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from persona.body.types import (
    EYE_JOINTS,
    JAW_JOINT,
    LEFT_HAND_JOINTS,
    NUM_BODY_JOINTS,
    NUM_JOINTS,
    RIGHT_HAND_JOINTS,
    PoseParams,
)
from persona.ops.rotations import axis_angle_to_rotation_6d, rotation_6d_to_axis_angle

ROOT_JOINT = 0
BODY_JOINTS = tuple(range(1, 1 + NUM_BODY_JOINTS))
# Storage order of the rotation tensors; concatenated they give joints 0..54 in SMPL-X order.
ROTATION_FIELDS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("root", (ROOT_JOINT,)),
    ("body", BODY_JOINTS),
    ("jaw", (JAW_JOINT,)),
    ("eyes", EYE_JOINTS),
    ("left_hand", LEFT_HAND_JOINTS),
    ("right_hand", RIGHT_HAND_JOINTS),
)
HAND_FIELDS = ("left_hand", "right_hand")


class FrameParams(nn.Module):
    """SMPL-X pose, expression and translation of every frame (F rows).

    Tensors: root [F, 6], body [F, 21, 6], jaw [F, 6], eyes [F, 2, 6], left_hand [F, 15, 6],
    right_hand [F, 15, 6], expression [F, E], transl [F, 3]. With ``learnable=False`` they are
    buffers (kept in checkpoints, never optimised).
    """

    def __init__(
        self,
        init_pose: PoseParams,  # the initial parameters of all F frames, in frame_id order
        learnable: bool = True,  # optimise the parameters (False: fixed buffers)
    ) -> None:
        super().__init__()
        init_pose.validate("FrameParams.init_pose")
        self.learnable = learnable
        rotations_6d = axis_angle_to_rotation_6d(init_pose.full_pose.detach().float())  # [F,55,6]
        values: dict[str, Tensor] = {}
        for name, joints in ROTATION_FIELDS:
            block = rotations_6d[:, list(joints)]  # [F, J, 6]
            values[name] = block[:, 0] if len(joints) == 1 else block
        values["expression"] = init_pose.expression.detach().float()
        values["transl"] = init_pose.transl.detach().float()
        for name, value in values.items():
            if learnable:
                setattr(self, name, nn.Parameter(value.clone()))
            else:
                self.register_buffer(name, value.clone())

    @property
    def num_frames(self) -> int:
        return self.transl.shape[0]

    def _check_frame_id(self, frame_id: Tensor) -> None:
        if frame_id.ndim != 1 or frame_id.dtype != torch.long:
            raise ValueError(f"FrameParams: frame_id must be a long tensor [B], "
                             f"got {frame_id.dtype} {list(frame_id.shape)}")
        if frame_id.numel() and (int(frame_id.min()) < 0
                                 or int(frame_id.max()) >= self.num_frames):
            raise ValueError(f"FrameParams: frame_id out of range [0, {self.num_frames}): "
                             f"{frame_id.tolist()}")

    def rotations_6d(self, frame_id: Tensor) -> Tensor:
        """All 55 joint rotations of the frames, 6D, SMPL-X order. Returns [B, 55, 6]."""
        self._check_frame_id(frame_id)
        blocks = []
        for name, joints in ROTATION_FIELDS:
            value = getattr(self, name)[frame_id]
            blocks.append(value[:, None] if len(joints) == 1 else value)
        rotations = torch.cat(blocks, dim=1)
        assert rotations.shape[1] == NUM_JOINTS
        return rotations

    def body_pose_6d(self, frame_id: Tensor) -> Tensor:
        """The 21 body joints' 6D rotations (the deformer's input). Returns [B, 21, 6]."""
        self._check_frame_id(frame_id)
        return self.body[frame_id]

    def forward(self, frame_id: Tensor) -> PoseParams:
        """frame_id [B] long -> PoseParams (full_pose [B, 55, 3] axis-angle, expression, transl)."""
        full_pose = rotation_6d_to_axis_angle(self.rotations_6d(frame_id))  # [B, 55, 3]
        return PoseParams(full_pose, self.expression[frame_id], self.transl[frame_id])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """"frame_hands" (finger rotations) and "frame_other" (the rest); empty when frozen."""
        if not self.learnable:
            return {"frame_hands": [], "frame_other": []}
        hands = [getattr(self, name) for name in HAND_FIELDS]
        other = [param for name, param in self.named_parameters() if name not in HAND_FIELDS]
        return {"frame_hands": hands, "frame_other": other}
