"""FrameParams: 6D storage round-trips to the initial axis-angle poses; parameter groups."""

import math

import pytest
import torch

from persona.avatar.frame_params import FrameParams
from persona.body.types import PoseParams
from persona.ops.rotations import axis_angle_to_matrix, matrix_to_rotation_6d


def _poses(frames: int = 4) -> PoseParams:
    generator = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(frames, 55, 3, generator=generator), dim=-1)
    angle = torch.rand(frames, 55, 1, generator=generator) * (math.pi - 0.1)
    full_pose = axis * angle
    full_pose[0, 30:] = 0.0  # flat fingers: identity rotations must round-trip too
    return PoseParams(full_pose, torch.randn(frames, 10, generator=generator),
                      torch.randn(frames, 3, generator=generator))


def test_forward_returns_initial_pose() -> None:
    poses = _poses()
    params = FrameParams(poses)
    frame_id = torch.tensor([2, 0, 3])
    out = params(frame_id)
    torch.testing.assert_close(out.full_pose, poses.full_pose[frame_id], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.expression, poses.expression[frame_id])
    torch.testing.assert_close(out.transl, poses.transl[frame_id])
    expected_body = matrix_to_rotation_6d(axis_angle_to_matrix(poses.full_pose[frame_id, 1:22]))
    torch.testing.assert_close(params.body_pose_6d(frame_id), expected_body)


def test_parameter_groups_partition_and_gradients() -> None:
    params = FrameParams(_poses())
    groups = params.parameter_groups()
    assert set(groups) == {"frame_hands", "frame_other"}
    hands = {id(p) for p in groups["frame_hands"]}
    other = {id(p) for p in groups["frame_other"]}
    assert not hands & other and hands | other == {id(p) for p in params.parameters()}
    assert [tuple(p.shape) for p in groups["frame_hands"]] == [(4, 15, 6), (4, 15, 6)]
    out = params(torch.tensor([0, 1]))
    out.full_pose.pow(2).sum().backward()
    assert torch.isfinite(params.left_hand.grad).all()
    assert float(params.root.grad[:2].abs().sum()) > 0
    assert float(params.root.grad[2:].abs().sum()) == 0  # frames not in the batch


def test_frozen_params_are_buffers_and_bad_ids_rejected() -> None:
    params = FrameParams(_poses(), learnable=False)
    assert list(params.parameters()) == []
    assert "body" in dict(params.named_buffers())
    assert params.parameter_groups() == {"frame_hands": [], "frame_other": []}
    with pytest.raises(ValueError, match="frame_id"):
        params(torch.tensor([4]))
