import copy

import pytest
import torch

from persona.body.lbs import skin_points
from persona.body.types import Identity, PoseParams, big_pose


def _pose(batch: int, expression: int = 10, seed: int = 0) -> PoseParams:
    generator = torch.Generator().manual_seed(seed)
    return PoseParams(0.3 * torch.randn(batch, 55, 3, generator=generator),
                      torch.randn(batch, expression, generator=generator),
                      torch.randn(batch, 3, generator=generator))


def test_buffers_have_the_interface_shapes(procedural_body):
    body = procedural_body
    count = body.num_vertices
    assert body.v_template.shape == (count, 3) and body.faces.dtype == torch.long
    assert body.parents.shape == (55,) and body.lbs_weights.shape == (count, 55)
    assert body.shapedirs.shape == (count, 3, 10) and body.exprdirs.shape == (count, 3, 10)
    assert body.J_regressor.shape == (55, count)
    assert torch.allclose(body.lbs_weights.sum(-1), torch.ones(count), atol=1e-5)
    assert set(body.region_masks) == {"left_hand", "right_hand", "hands", "face", "eyes",
                                      "mouth_interior"}


def test_wrong_betas_length_is_a_clear_error(procedural_body):
    with pytest.raises(ValueError, match=r"identity\.betas: expected shape \[10\]"):
        procedural_body.shaped_vertices(Identity(torch.zeros(11)))


def test_nan_pose_is_a_clear_error(procedural_body):
    pose = _pose(1)
    pose.full_pose[0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="full_pose: contains NaN"):
        procedural_body(procedural_body.zero_identity(), pose)


def test_zero_pose_is_the_shaped_mesh_plus_translation(procedural_body):
    body = procedural_body
    identity = Identity(torch.randn(10))
    pose = PoseParams(torch.zeros(2, 55, 3), torch.zeros(2, 10), torch.randn(2, 3))
    expected = body.shaped_vertices(identity)[None] + pose.transl[:, None]
    assert torch.allclose(body(identity, pose), expected, atol=1e-6)


def test_canonical_is_the_big_pose_and_maps_to_every_pose(procedural_body):
    body = procedural_body
    identity = Identity(torch.randn(10), joint_offset=0.01 * torch.randn(55, 3))
    canonical = body.canonical(identity)
    big = PoseParams(big_pose()[None], torch.zeros(1, 10), torch.zeros(1, 3))
    assert torch.allclose(canonical.vertices, body(identity, big)[0], atol=1e-6)
    pose = _pose(3)
    pose.expression.zero_()
    transforms = body.transforms_from_canonical(identity, pose)  # [3, 55, 4, 4]
    moved = skin_points(canonical.vertices, body.lbs_weights, transforms)
    # Blended transforms do not compose, so only rigidly skinned vertices agree exactly.
    rigid = body.lbs_weights.max(dim=-1).values > 0.9999
    assert rigid.sum() > 50
    assert torch.allclose(moved[:, rigid], body(identity, pose)[:, rigid], atol=1e-5)
    # and the canonical joints go exactly where the posed joints are
    joints = skin_points(canonical.joints, torch.eye(55), transforms)
    posed = body.joint_transforms(identity, pose.full_pose)
    rest = body.rest_joints(identity)
    expected = skin_points(rest, torch.eye(55), posed) + pose.transl[:, None]
    assert torch.allclose(joints, expected, atol=1e-5)


def test_legs_apart_in_the_big_pose(procedural_body):
    canonical = procedural_body.canonical(procedural_body.zero_identity())
    rest = procedural_body.rest_joints(procedural_body.zero_identity())
    left_ankle, right_ankle = 7, 8
    assert canonical.joints[left_ankle, 0] > rest[left_ankle, 0] + 0.1
    assert canonical.joints[right_ankle, 0] < rest[right_ankle, 0] - 0.1


def test_gradients_reach_betas_pose_and_expression(procedural_body):
    betas = torch.zeros(10, requires_grad=True)
    pose = _pose(2)
    for tensor in (pose.full_pose, pose.expression, pose.transl):
        tensor.requires_grad_(True)
    procedural_body(Identity(betas), pose).square().sum().backward()
    for tensor in (betas, pose.full_pose, pose.expression, pose.transl):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_expression_of_wrong_width_is_an_error(procedural_body):
    with pytest.raises(ValueError, match="pose.expression"):
        procedural_body(procedural_body.zero_identity(), _pose(1, expression=11))


def test_transforms_from_canonical_batches_the_big_pose_with_the_pose(procedural_body):
    """The pose and the big pose go through the chain as one batch: equal to chaining each on
    its own (the form before), with the body's input checks costing one host synchronisation
    (pose and identity together) instead of one per field and call (9 before)."""
    body = procedural_body
    identity = Identity(torch.randn(10), face_offset=0.001 * torch.randn(body.num_vertices, 3),
                        joint_offset=0.01 * torch.randn(55, 3))
    pose = _pose(2, seed=4)
    posed = body.joint_transforms(identity, pose.full_pose)
    big = body.joint_transforms(identity, big_pose()[None])
    expected = posed @ torch.linalg.inv(big)
    expected[..., :3, 3] += pose.transl[:, None, :]
    with torch.profiler.profile() as profile:
        transforms = body.transforms_from_canonical(identity, pose)
    assert torch.allclose(transforms, expected, atol=1e-5)
    syncs = [e for e in profile.events() if e.name == "aten::_local_scalar_dense"]
    assert len(syncs) == 1
    with torch.profiler.profile() as profile:
        body(identity, pose)  # the posed mesh: one as well
    assert sum(e.name == "aten::_local_scalar_dense" for e in profile.events()) == 1
    bad = Identity(identity.betas, identity.face_offset, identity.joint_offset.clone())
    bad.joint_offset[3, 1] = float("inf")
    for call in (body.transforms_from_canonical, body):
        with pytest.raises(ValueError, match=r"^identity\.joint_offset: contains NaN"):
            call(bad, pose)


def test_chain_buffers_follow_the_body(procedural_body):
    body = copy.deepcopy(procedural_body).to(torch.float64)
    chain = body.kinematic_chain
    assert chain.order.dtype == torch.int64 and len(chain.bounds) == 11
    assert body.big_pose_buffer.dtype == torch.float64
    assert "chain_order" not in body.state_dict()  # derived from parents, not saved
    pose = PoseParams(_pose(1).full_pose.double(), torch.zeros(1, 10, dtype=torch.float64),
                      torch.zeros(1, 3, dtype=torch.float64))
    assert body(Identity(torch.zeros(10, dtype=torch.float64)), pose).dtype == torch.float64
