import pytest
import torch

from persona.body.lbs import (
    KinematicChain,
    invert_rigid,
    make_transform,
    rigid_chain,
    rigid_chain_reference,
    skin_points,
)
from persona.body.reference import compare_with_smplx, smplx_vertices, zero_pose_correctives
from persona.body.smplx_format import build_smplx_layer
from persona.body.types import SMPLX_PARENTS, Identity, PoseParams
from persona.ops.rotations import axis_angle_to_matrix


def test_rigid_chain_two_joints_known_answer():
    # root at the origin, child at (1, 0, 0); root turns 90 deg about z, child 90 deg about z.
    joints = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    angle = torch.pi / 2
    rotations = axis_angle_to_matrix(torch.tensor([[[0, 0, angle], [0, 0, angle]]]))
    posed, relative = rigid_chain(rotations, joints, torch.tensor([-1, 0]))
    assert torch.allclose(posed[0, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    # a point 1 along x from the child ends 180 deg round: child (0,1,0) + (-1, 0, 0)
    point = torch.tensor([[2.0, 0.0, 0.0]])
    weights = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(skin_points(point, weights, relative)[0, 0],
                          torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6)


def _random_chain_inputs(parents: list[int], batch: int, seed: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    count = len(parents)
    rotations = axis_angle_to_matrix(torch.randn(batch, count, 3, generator=generator,
                                                 dtype=torch.float64))
    joints = torch.randn(batch, count, 3, generator=generator, dtype=torch.float64)
    return rotations.requires_grad_(True), joints.requires_grad_(True)


@pytest.mark.parametrize("parents", [list(SMPLX_PARENTS), [-1, 0, 1, 0, 3, 1, 5, 2, 0, 8]])
def test_rigid_chain_by_depth_equals_the_joint_by_joint_reference(parents):
    """float64: values and gradients of both outputs agree to round-off on SMPL-X's tree and on
    a tree whose depths interleave in index order."""
    rotations, joints = _random_chain_inputs(parents, batch=3, seed=len(parents))
    fast = rigid_chain(rotations, joints, torch.tensor(parents))
    reference = rigid_chain_reference(rotations, joints, parents)
    weights = [torch.randn(out.shape, dtype=torch.float64) for out in reference]
    grads = []
    for outputs in (fast, reference):
        assert [out.shape for out in outputs] == [(3, len(parents), 3), (3, len(parents), 4, 4)]
        loss = sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))
        grads.append(torch.autograd.grad(loss, (rotations, joints)))
    for ours, theirs in zip(fast, reference, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-12)
    for ours, theirs in zip(*grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-12)


def test_kinematic_chain_groups_smplx_by_depth():
    chain = KinematicChain.from_parents(SMPLX_PARENTS)
    assert len(chain.bounds) == 11  # pelvis ... the finger tips
    assert chain.order[chain.inverse].tolist() == list(range(55))
    depth = [0] * 55
    for joint in range(1, 55):
        depth[joint] = depth[SMPLX_PARENTS[joint]] + 1
    for level, (start, stop) in enumerate(chain.bounds):
        members = chain.order[start:stop].tolist()
        assert {depth[j] for j in members} == {level}
        if level:
            previous = chain.order[slice(*chain.bounds[level - 1])]
            parents_found = previous[chain.parent_local[start:stop]].tolist()
            assert parents_found == [SMPLX_PARENTS[j] for j in members]


@pytest.mark.parametrize("parents", [[0, -1], [-1, 2, 0], [-1, -1, 0], []])
def test_kinematic_chain_rejects_a_tree_out_of_order(parents):
    with pytest.raises(ValueError, match="parents: expected joint 0 as the only root"):
        KinematicChain.from_parents(parents)


def test_skin_points_identity_and_inverse():
    points = torch.randn(7, 3)
    weights = torch.softmax(torch.randn(7, 55), dim=-1)
    identity = torch.eye(4).expand(2, 55, 4, 4)
    assert torch.allclose(skin_points(points, weights, identity), points.expand(2, -1, -1))
    transform = make_transform(axis_angle_to_matrix(torch.randn(4, 3)), torch.randn(4, 3))
    assert torch.allclose(transform @ invert_rigid(transform), torch.eye(4).expand(4, 4, 4),
                          atol=1e-6)


def test_procedural_body_equals_smplx(procedural_body, procedural_folder):
    layer = build_smplx_layer(procedural_folder / "smplx" / "SMPLX_NEUTRAL.npz", 10, 10, False)
    result = compare_with_smplx(procedural_body, layer, num_samples=20)
    assert result.max_error < 1e-5


def test_expression_difference_is_the_joint_shift(procedural_body, procedural_folder):
    """smplx regresses joints from the expression-displaced mesh, PERSONA from the identity
    mesh (METHOD: expression added in canonical space, joints fixed by identity). The whole
    difference is that joint shift delta = J_regressor @ (exprdirs . expression): with it as a
    joint offset the two agree to 1e-5, and without it the error is bounded by
    2 x max over joints of the summed |delta| along the joint's chain (each rotation can move a
    joint shift by at most twice its length)."""
    body = procedural_body
    layer = build_smplx_layer(procedural_folder / "smplx" / "SMPLX_NEUTRAL.npz", 10, 10, False)
    zero_pose_correctives(layer)
    generator = torch.Generator().manual_seed(3)
    chains = []
    for joint in range(55):
        chain, current = [], joint
        while current >= 0:
            chain.append(current)
            current = SMPLX_PARENTS[current]
        chains.append(chain)
    for _ in range(5):
        betas = torch.randn(1, 10, generator=generator)
        pose = 0.4 * torch.randn(1, 55, 3, generator=generator)
        expression = 2.0 * torch.randn(1, 10, generator=generator)
        transl = torch.randn(1, 3, generator=generator)
        theirs = smplx_vertices(layer, betas, pose, expression, transl)
        ours = body(Identity(betas[0]), PoseParams(pose, expression, transl))
        delta = body.J_regressor @ body.expression_offsets(expression)[0]  # [55, 3]
        compensated = body(Identity(betas[0], joint_offset=delta),
                           PoseParams(pose, expression, transl))
        assert (compensated - theirs).norm(dim=-1).max() < 1e-5
        bound = 2 * max(float(delta[chain].norm(dim=-1).sum()) for chain in chains)
        error = float((ours - theirs).norm(dim=-1).max())
        assert error <= bound + 1e-5  # float32 round-off on top of the bound
