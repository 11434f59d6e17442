"""Per-frame SMPL-X parameters, optimised jointly with the avatar (METHOD.md sections 7 and 12).

Rotations are stored in the continuous 6D representation (first two rows of the matrix) and
returned as axis-angle ``PoseParams`` in SMPL-X joint order.

Layout (the authors'): one ``nn.Parameter`` per (field, frame). A frame that is not in the batch
gets no gradient (``.grad`` stays None after ``zero_grad(set_to_none=True)``, Lightning's
default), so Adam skips it: its parameters and its Adam state do not move, and each parameter
keeps its own Adam step count. One shared [F, ...] tensor per field would instead let Adam's
momentum move every frame on every step.

State-dict keys: ``<field>.<frame>`` (e.g. ``root.3``: [6], ``body.3``: [21, 6]) when learnable,
``<field>`` ([F, ...]) as buffers. Either layout loads into either kind of module (a load
pre-hook splits or stacks the tensors), so checkpoints written before the per-frame layout
(``<field>`` [F, ...] parameters) still load; their optimiser state does not (resume them
without it).
"""

from __future__ import annotations

from typing import Any

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
FIELDS: tuple[str, ...] = (*(name for name, _ in ROTATION_FIELDS), "expression", "transl")


class FrameParams(nn.Module):
    """SMPL-X pose, expression and translation of every frame (F frames).

    Per frame: root [6], body [21, 6], jaw [6], eyes [2, 6], left_hand [15, 6], right_hand
    [15, 6], expression [E], transl [3]; one Parameter each (``self.<field>[frame]`` of an
    ``nn.ParameterList``). With ``learnable=False`` each field is one [F, ...] buffer (kept in
    checkpoints, never optimised).
    """

    def __init__(
        self,
        init_pose: PoseParams,  # the initial parameters of all F frames, in frame_id order
        learnable: bool = True,  # optimise the parameters (False: fixed buffers)
    ) -> None:
        super().__init__()
        init_pose.validate("FrameParams.init_pose")
        self.learnable = learnable
        self._num_frames = init_pose.batch_size
        for name, value in initial_values(init_pose).items():
            if learnable:
                setattr(self, name, nn.ParameterList(
                    [nn.Parameter(row.clone()) for row in value.unbind(0)]))
            else:
                self.register_buffer(name, value.clone())
        self.register_load_state_dict_pre_hook(_convert_layout)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def _rows(self, frame_id: Tensor, rows: list[int] | None = None) -> list[int]:
        """Checked frame ids as a list: `rows` when the caller has them on the host (a batch's
        "frame_id_host"), else read from frame_id (one host sync per call)."""
        if frame_id.ndim != 1 or frame_id.dtype != torch.long:
            raise ValueError(f"FrameParams: frame_id must be a long tensor [B], "
                             f"got {frame_id.dtype} {list(frame_id.shape)}")
        if rows is None:
            rows = frame_id.tolist()
        elif len(rows) != frame_id.shape[0]:
            raise ValueError(f"FrameParams: {len(rows)} host rows for {frame_id.shape[0]} "
                             f"frame ids")
        if any(row < 0 or row >= self.num_frames for row in rows):
            raise ValueError(f"FrameParams: frame_id out of range [0, {self.num_frames}): {rows}")
        return list(rows)

    def _gather(self, name: str, frame_id: Tensor, rows: list[int]) -> Tensor:
        """One field of the frames, stacked: [B, ...] (only those frames enter the graph)."""
        storage = getattr(self, name)
        if isinstance(storage, Tensor):  # buffers
            return storage[frame_id]
        return torch.stack([storage[row] for row in rows])

    def field(self, name: str, frame_id: Tensor, rows: list[int] | None = None) -> Tensor:
        """One field (see FIELDS) of the frames frame_id [B] long (rows: the same ids on the
        host, optional). Returns [B, ...]."""
        return self._gather(name, frame_id, self._rows(frame_id, rows))

    def _rotations_6d(self, frame_id: Tensor, rows: list[int]) -> Tensor:
        blocks = []
        for name, joints in ROTATION_FIELDS:
            value = self._gather(name, frame_id, rows)  # [B, 6] or [B, J, 6]
            blocks.append(value[:, None] if len(joints) == 1 else value)
        rotations = torch.cat(blocks, dim=1)
        assert rotations.shape[1] == NUM_JOINTS
        return rotations

    def rotations_6d(self, frame_id: Tensor, rows: list[int] | None = None) -> Tensor:
        """All 55 joint rotations of the frames, 6D, SMPL-X order. Returns [B, 55, 6]."""
        return self._rotations_6d(frame_id, self._rows(frame_id, rows))

    def body_pose_6d(self, frame_id: Tensor, rows: list[int] | None = None) -> Tensor:
        """The 21 body joints' 6D rotations (the deformer's input). Returns [B, 21, 6]."""
        return self.field("body", frame_id, rows)

    def forward(self, frame_id: Tensor, rows: list[int] | None = None) -> PoseParams:
        """frame_id [B] long (rows: the same ids on the host, optional: no host sync) ->
        PoseParams (full_pose [B, 55, 3] axis-angle, expression, transl)."""
        rows = self._rows(frame_id, rows)
        full_pose = rotation_6d_to_axis_angle(self._rotations_6d(frame_id, rows))  # [B, 55, 3]
        return PoseParams(full_pose, self._gather("expression", frame_id, rows),
                          self._gather("transl", frame_id, rows))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """"frame_hands" (finger rotations of every frame) and "frame_other" (the rest); one
        Parameter per (field, frame). Empty when frozen."""
        if not self.learnable:
            return {"frame_hands": [], "frame_other": []}
        hands = [p for name in HAND_FIELDS for p in getattr(self, name)]
        other = [p for name in FIELDS if name not in HAND_FIELDS for p in getattr(self, name)]
        return {"frame_hands": hands, "frame_other": other}


def initial_values(pose: PoseParams) -> dict[str, Tensor]:
    """The stored fields of F frames, stacked: root [F, 6], body [F, 21, 6], ..., transl [F, 3]."""
    rotations_6d = axis_angle_to_rotation_6d(pose.full_pose.detach().float())  # [F, 55, 6]
    values: dict[str, Tensor] = {}
    for name, joints in ROTATION_FIELDS:
        block = rotations_6d[:, list(joints)]  # [F, J, 6]
        values[name] = block[:, 0] if len(joints) == 1 else block
    values["expression"] = pose.expression.detach().float()
    values["transl"] = pose.transl.detach().float()
    return values


def _convert_layout(module: FrameParams, state_dict: dict[str, Any], prefix: str,
                    *_: Any) -> None:
    """Load pre-hook: split stacked `<field>` [F, ...] tensors into `<field>.<i>` for a learnable
    module, or stack `<field>.<i>` into `<field>` for a frozen one (in place)."""
    for name in FIELDS:
        stacked_key = f"{prefix}{name}"
        frame_keys = [f"{prefix}{name}.{i}" for i in range(module.num_frames)]
        if module.learnable and stacked_key in state_dict:
            stacked = state_dict.pop(stacked_key)
            for i in range(stacked.shape[0]):
                state_dict[f"{prefix}{name}.{i}"] = stacked[i]
        elif not module.learnable and all(key in state_dict for key in frame_keys):
            state_dict[stacked_key] = torch.stack([state_dict.pop(key) for key in frame_keys])
