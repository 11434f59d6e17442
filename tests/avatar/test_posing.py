"""posed_state's skinning switches (METHOD.md section 12, issue 11 item 1) on the procedural body:
the lookup's gradient into mean_offset, the refined lookup, the lookup's dominant joint."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from persona.avatar.deformer import PoseDeformer
from persona.avatar.gaussians import GaussianAvatar
from persona.avatar.posing import SkinningConfig, body_pose_6d, expression_offsets, posed_state
from persona.avatar.template import build_avatar_template
from persona.body.lbs import skin_points
from persona.body.loader import BodySpec, load_body, random_identity
from persona.body.skinning import (
    SkinningField,
    SkinningVolumeSettings,
    build_skinning_volume,
    field_skinning_weights,
)
from persona.body.types import NUM_JOINTS, PoseParams

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
GRID_SIZE = 32  # small skinning volume: builds in about a second
GAUSSIAN_SIGMA = 0.005  # m, a realistic Gaussian scale for the 13-point lookup
POSE_SCALE = 0.4  # rad, standard deviation of the random body pose
EXPRESSION_SCALE = 1.0  # standard deviation of the random expression coefficients
BODY_EXPRDIRS_SCALE = 0.003  # m per coefficient: expression basis given to every vertex in (b)
DEFORMER_OFFSET_GAIN = 30.0  # output-layer gain so that the refined offsets reach a few cm


@pytest.fixture(scope="module")
def setup():
    body = load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))
    identity = random_identity(body)
    template = build_avatar_template(body, identity, subdivision_levels=0)
    field = SkinningField(*build_skinning_volume(template.canonical_vertices,
                                                 template.lbs_weights,
                                                 SkinningVolumeSettings(grid_size=GRID_SIZE)))
    generator = torch.Generator().manual_seed(3)
    full_pose = body.big_pose().clone()[None]  # [1, 55, 3]
    full_pose[:, 1:22] += POSE_SCALE * torch.randn(1, 21, 3, generator=generator)
    pose = PoseParams(full_pose=full_pose,
                      expression=EXPRESSION_SCALE * torch.randn(1, 10, generator=generator),
                      transl=torch.zeros(1, 3))
    return body, identity, template, field, pose


def _avatar(num: int) -> GaussianAvatar:
    avatar = GaussianAvatar(num)
    with torch.no_grad():
        avatar.log_scale.fill_(math.log(GAUSSIAN_SIGMA))
    return avatar


def _deformer(gain: float = DEFORMER_OFFSET_GAIN) -> PoseDeformer:
    torch.manual_seed(0)
    deformer = PoseDeformer(triplane_channels=4, triplane_resolution=8, hidden_dim=16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        deformer.triplane.planes.normal_(generator=generator)
        deformer.output_layer.weight.mul_(gain)
    return deformer


def _config(**switches: bool) -> SkinningConfig:
    return SkinningConfig(method="volume", grid_size=GRID_SIZE, **switches)


def _pose(setup, avatar, deformer, config, template=None):
    body, identity, default_template, field, pose = setup
    return posed_state(template or default_template, avatar, deformer, body, identity, pose,
                       body_pose_6d(pose), config, field)


def test_lookup_grad_gives_mean_offset_gradient_through_the_weights(setup) -> None:
    """(a) Old behaviour caught: the lookup's query was detached, so a loss on the posed base
    means reached mean_offset only through the skinned point, never through the weights."""
    body, identity, template, field, pose = setup
    keep = template.region_masks["keep_template_weights"]  # [N] template-weight rows
    probe = torch.randn(template.num_vertices, 3, generator=torch.Generator().manual_seed(5))
    avatar, deformer = _avatar(template.num_vertices), _deformer()
    grads = {}
    for lookup_grad in (True, False):
        avatar.mean_offset.grad = None
        state = _pose(setup, avatar, deformer, _config(lookup_grad=lookup_grad))
        (state.means["base"] * probe).sum().backward()
        grads[lookup_grad] = avatar.mean_offset.grad.clone()  # [N, 3]
    difference = grads[True] - grads[False]  # [N, 3] the weights' contribution
    assert float(difference[keep].abs().max()) == 0.0  # hands/face/eyes keep template weights
    changed = difference[~keep].abs().amax(dim=1) > 1e-6  # [M]
    assert float(changed.float().mean()) > 0.3, "most looked-up rows get a weight gradient"
    # Expected contribution, built independently: the same loss with the skinned point held
    # fixed and only the looked-up weights depending on the canonical mean.
    canon = (template.canonical_vertices + avatar.mean_offset).detach().requires_grad_(True)
    sigma = avatar.log_scale.detach().exp().squeeze(-1)  # [N]
    weights = field_skinning_weights(field, canon, sigma, template.lbs_weights, keep)  # [N, 55]
    points = canon.detach() + expression_offsets(template, pose.expression[0])  # [N, 3]
    transforms = body.transforms_from_canonical(identity, pose)  # [1, 55, 4, 4]
    expected_base = skin_points(points, weights, transforms)[0]  # [N, 3]
    (expected,) = torch.autograd.grad((expected_base * probe).sum(), canon)
    torch.testing.assert_close(difference, expected, atol=1e-5, rtol=1e-4)


def test_refined_means_use_weights_looked_up_at_the_refined_position(setup) -> None:
    """(b) Old behaviour caught: the refined means were skinned with the base weights (looked up
    at template + mean_offset), not at the refined canonical position + expression."""
    body, identity, template, field, pose = setup
    # Give every vertex an expression basis, so that "+ expression" moves looked-up rows too.
    exprdirs = BODY_EXPRDIRS_SCALE * torch.randn(template.exprdirs.shape,
                                                 generator=torch.Generator().manual_seed(7))
    template = dataclasses.replace(template, exprdirs=exprdirs)
    keep = template.region_masks["keep_template_weights"]
    avatar, deformer = _avatar(template.num_vertices), _deformer()
    with torch.no_grad():
        state = _pose(setup, avatar, deformer, _config(refined_lookup=True), template)
        old = _pose(setup, avatar, deformer, _config(refined_lookup=False), template)
        canon = template.canonical_vertices + avatar.mean_offset  # [N, 3]
        sigma = avatar.log_scale.exp().squeeze(-1)  # [N]
        base_weights = field_skinning_weights(field, canon, sigma, template.lbs_weights, keep)
        joints = base_weights.argmax(dim=-1)  # [N]
        offsets = deformer(template.triplane_positions, joints, body_pose_6d(pose),
                           template.region_masks["no_deform"]).mean_offset[0]  # [N, 3]
        refined_canon = canon + offsets  # [N, 3]
        expr = torch.einsum("nce,e->nc", exprdirs, pose.expression[0])  # [N, 3]
        transforms = body.transforms_from_canonical(identity, pose)  # [1, 55, 4, 4]
        refined_weights = field_skinning_weights(field, refined_canon + expr, sigma,
                                                 template.lbs_weights, keep)  # [N, 55]
        expected = skin_points(refined_canon + expr, refined_weights, transforms)[0]
        expected_old = skin_points(refined_canon + expr, base_weights, transforms)[0]
        no_expr_weights = field_skinning_weights(field, refined_canon, sigma,
                                                 template.lbs_weights, keep)
        without_expr = skin_points(refined_canon + expr, no_expr_weights, transforms)[0]
    moved = offsets[~keep].norm(dim=-1)  # [M]
    assert 0.005 < float(moved.median()) < 0.2, "offsets of a few cm on the looked-up rows"
    torch.testing.assert_close(state.canonical_refined, refined_canon)
    torch.testing.assert_close(state.means["refined"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(old.means["refined"], expected_old, atol=1e-5, rtol=1e-5)
    # The three candidates are far apart on the looked-up rows: the test can tell them apart.
    assert float((expected - expected_old)[~keep].norm(dim=-1).max()) > 1e-3
    assert float((expected - without_expr)[~keep].norm(dim=-1).max()) > 1e-4
    # The base variant is the same with either switch; kept rows are identical.
    torch.testing.assert_close(state.means["base"], old.means["base"], atol=0, rtol=0)
    torch.testing.assert_close(state.means["refined"][keep], old.means["refined"][keep])


def _spy_joints(deformer: PoseDeformer, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the dominant_joint argument of every deformer forward."""
    calls: list[torch.Tensor] = []
    original = deformer.forward

    def spy(triplane_positions, dominant_joint, *args, **kwargs):
        calls.append(dominant_joint.clone())
        return original(triplane_positions, dominant_joint, *args, **kwargs)

    monkeypatch.setattr(deformer, "forward", spy)
    return calls


def test_deformer_joint_is_the_argmax_of_the_looked_up_weights(setup, monkeypatch) -> None:
    """(c) Old behaviour caught: the 4-ring mask used the template's fixed dominant joint, so a
    Gaussian moved into another joint's region kept its old joint."""
    body, identity, template, field, pose = setup
    keep = template.region_masks["keep_template_weights"]
    vertices = template.canonical_vertices
    sigma = torch.full((template.num_vertices,), GAUSSIAN_SIGMA)
    looked_up = field_skinning_weights(field, vertices, sigma, template.lbs_weights, keep)
    lookup_joint = looked_up.argmax(dim=-1)  # [N]
    # A looked-up Gaussian and a far target whose looked-up joint differs from its template joint.
    free = torch.nonzero(~keep)[:, 0]
    mover = int(free[0])
    old_joint = int(template.dominant_joint[mover])
    others = free[(lookup_joint[free] != old_joint) & (template.dominant_joint[free] != old_joint)]
    distance = (vertices[others] - vertices[mover]).norm(dim=-1)
    target = int(others[distance.argmax()])
    new_joint = int(lookup_joint[target])
    assert new_joint != old_joint and 0 <= new_joint < NUM_JOINTS
    avatar, deformer = _avatar(template.num_vertices), _deformer()
    with torch.no_grad():
        avatar.mean_offset[mover] = vertices[target] - vertices[mover]
    calls = _spy_joints(deformer, monkeypatch)
    with torch.no_grad():
        _pose(setup, avatar, deformer, _config(dominant_from_lookup=True))
        _pose(setup, avatar, deformer, _config(dominant_from_lookup=False))
    assert len(calls) == 2
    joints_new, joints_old = calls
    assert int(joints_new[mover]) == new_joint
    assert int(joints_old[mover]) == old_joint
    assert torch.equal(joints_old, template.dominant_joint)
    canon = vertices + avatar.mean_offset.detach()  # [N, 3]
    expected = field_skinning_weights(field, canon, sigma, template.lbs_weights, keep)
    assert torch.equal(joints_new, expected.argmax(dim=-1))
