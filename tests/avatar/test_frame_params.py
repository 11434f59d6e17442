"""FrameParams: 6D storage round-trips to the initial axis-angle poses; one Parameter per
(field, frame), so Adam never moves a frame that was not drawn; checkpoint layouts."""

import math

import pytest
import torch

from persona.avatar.frame_params import FIELDS, FrameParams
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
    assert [tuple(p.shape) for p in groups["frame_hands"]] == [(15, 6)] * 8  # 2 hands x 4 frames
    assert len(groups["frame_other"]) == 6 * 4  # root, body, jaw, eyes, expression, transl
    out = params(torch.tensor([0, 1]))
    out.full_pose.pow(2).sum().backward()
    assert torch.isfinite(params.left_hand[0].grad).all()
    assert float(params.root[0].grad.abs().sum()) > 0
    assert params.root[2].grad is None and params.transl[3].grad is None  # not in the batch


def _frame_values(params: FrameParams, frame: int) -> list[torch.Tensor]:
    return [params.field(name, torch.tensor([frame]))[0].detach().clone() for name in FIELDS]


def test_adam_never_moves_a_frame_that_was_not_drawn() -> None:
    """The authors' per-frame Parameters: a frame moves only on the steps that draw it. Frame 0
    is drawn once, then frame 1 ten times: frame 0 stays bit-identical to its value after its own
    step, frames 2 and 3 to their initial values. (One shared [F, ...] tensor per field fails:
    Adam's momentum from frame 0's step keeps moving frame 0 while frame 1 is drawn.)"""
    params = FrameParams(_poses())
    groups = params.parameter_groups()
    optimiser = torch.optim.Adam([{"params": groups["frame_other"], "lr": 1e-3},
                                  {"params": groups["frame_hands"], "lr": 1e-4}], eps=1e-15)
    start = {frame: _frame_values(params, frame) for frame in range(4)}
    target = torch.randn(1, 55, 3, generator=torch.Generator().manual_seed(1))

    def step(frame: int) -> None:
        optimiser.zero_grad(set_to_none=True)  # Lightning's default
        out = params(torch.tensor([frame]))
        loss = (out.full_pose - target).pow(2).sum() + out.transl.pow(2).sum() \
            + out.expression.pow(2).sum()
        loss.backward()
        optimiser.step()

    step(0)
    after_own_step = _frame_values(params, 0)
    moved = [not torch.equal(a, b) for a, b in zip(after_own_step, start[0], strict=True)]
    assert all(moved)  # every field of frame 0 moved on its own step
    for _ in range(10):
        step(1)
    for a, b in zip(_frame_values(params, 0), after_own_step, strict=True):
        assert torch.equal(a, b)
    for frame in (2, 3):
        for a, b in zip(_frame_values(params, frame), start[frame], strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(_frame_values(params, 1)[0], start[1][0])


def test_checkpoint_layouts_load_both_ways() -> None:
    """Per-frame keys `root.3`; a stacked checkpoint (the layout before per-frame Parameters,
    and the frozen module's buffers) loads into a learnable module and back."""
    poses, moved = _poses(), _poses()
    moved.transl = moved.transl + 1.0
    learnable = FrameParams(poses)
    assert "root.3" in learnable.state_dict() and "root" not in learnable.state_dict()
    stacked = {k: v for k, v in FrameParams(moved, learnable=False).state_dict().items()}
    assert stacked["body"].shape == (4, 21, 6)
    learnable.load_state_dict(stacked)
    torch.testing.assert_close(learnable.field("transl", torch.arange(4)), moved.transl)
    frozen = FrameParams(poses, learnable=False)
    frozen.load_state_dict(learnable.state_dict())
    torch.testing.assert_close(frozen.field("transl", torch.arange(4)), moved.transl)
    with pytest.raises(RuntimeError, match="size mismatch|Missing"):
        FrameParams(_poses(frames=5)).load_state_dict(stacked)  # frame count differs


def test_frozen_params_are_buffers_and_bad_ids_rejected() -> None:
    params = FrameParams(_poses(), learnable=False)
    assert list(params.parameters()) == []
    assert "body" in dict(params.named_buffers())
    assert params.parameter_groups() == {"frame_hands": [], "frame_other": []}
    with pytest.raises(ValueError, match="frame_id"):
        params(torch.tensor([4]))


def test_host_rows_skip_reading_the_frame_ids_back() -> None:
    """With the batch's host copy of its frame ids, the ids tensor is never read (here it lives
    on the meta device, where a read fails): the same pose as reading them."""
    params = FrameParams(_poses())
    on_meta = torch.tensor([2, 0], device="meta")
    ours = params(on_meta, rows=[2, 0])
    theirs = params(torch.tensor([2, 0]))
    for a, b in ((ours.full_pose, theirs.full_pose), (ours.transl, theirs.transl)):
        assert torch.equal(a, b)
    assert torch.equal(params.body_pose_6d(on_meta, [2, 0]),
                       params.body_pose_6d(torch.tensor([2, 0])))
    with pytest.raises(ValueError, match="2 host rows for 1 frame ids"):
        params(torch.tensor([1]), rows=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        params(on_meta[:1], rows=[4])
