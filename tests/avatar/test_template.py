"""build_avatar_template on the procedural body."""

import pytest
import torch

from persona.avatar.template import FACE_BOUNDARY, build_avatar_template
from persona.body.loader import BodySpec, load_body, random_identity
from persona.body.types import JAW_JOINT
from persona.ops.mesh import apply_laplacian, mesh_edges


@pytest.fixture(scope="module")
def body():
    return load_body(BodySpec(kind="procedural"))


def test_template_without_subdivision(body) -> None:
    identity = random_identity(body)
    template = build_avatar_template(body, identity, subdivision_levels=0)
    count = body.num_vertices
    assert template.num_vertices == count == template.num_original_vertices
    torch.testing.assert_close(template.canonical_vertices, body.canonical(identity).vertices)
    torch.testing.assert_close(template.lbs_weights, body.lbs_weights)
    assert template.exprdirs.shape == body.exprdirs.shape
    assert torch.equal(template.dominant_joint, body.lbs_weights.argmax(1))
    for key, mask in body.region_masks.items():
        assert torch.equal(template.region_masks[key], mask)
    torch.testing.assert_close(template.template_laplacian_targets,
                               apply_laplacian(template.laplacian, template.canonical_vertices))


def test_triplane_positions_zero_betas_open_jaw_centred(body) -> None:
    template = build_avatar_template(body, random_identity(body), subdivision_levels=0,
                                     triplane_centre="bbox")
    closed = build_avatar_template(body, random_identity(body, scale=2.0), 0, jaw_open_angle=0.0,
                                   triplane_centre="bbox")
    positions = template.triplane_positions
    centre = (positions.amin(0) + positions.amax(0)) / 2
    torch.testing.assert_close(centre, torch.zeros(3), atol=1e-6, rtol=0)
    # the authors' centring (default): the mean of the (subdivided) vertices is the origin
    authors = build_avatar_template(body, random_identity(body), subdivision_levels=1)
    torch.testing.assert_close(authors.triplane_positions.mean(0), torch.zeros(3), atol=1e-6,
                               rtol=0)
    with pytest.raises(ValueError, match="triplane_centre"):
        build_avatar_template(body, random_identity(body), 0, triplane_centre="median")
    # Independent of the identity; only jaw-driven vertices move when the jaw opens.
    jaw = body.lbs_weights[:, JAW_JOINT] > 0.5
    assert jaw.any()
    moved = (positions - closed.triplane_positions).norm(dim=-1)
    assert float(moved[jaw].max()) > 0.01
    far = body.lbs_weights[:, JAW_JOINT] == 0
    assert float(moved[far].max()) < float(moved[jaw].max()) / 5
    assert float(positions.abs().max()) < 1.0  # inside the 2 m triplane


def test_face_boundary_is_the_outer_ring_of_the_face(body) -> None:
    template = build_avatar_template(body, random_identity(body), subdivision_levels=0)
    face = template.region_masks["face"]
    boundary = template.region_masks[FACE_BOUNDARY]
    assert boundary.any() and not (boundary & face).any()
    edges = mesh_edges(template.faces, template.num_vertices)
    touches_face = torch.zeros_like(face)
    crossing = face[edges[:, 0]] != face[edges[:, 1]]
    touches_face[edges[crossing].flatten()] = True
    assert torch.equal(boundary, touches_face & ~face)
    masks = template.region_masks
    union = masks["hands"] | masks["face"] | masks["eyes"]
    assert torch.equal(masks["keep_template_weights"], union)
    no_deform = masks["hands"] | masks["eyes"] | masks["face_expr"]
    assert torch.equal(template.deformer_zero_mask, no_deform) and no_deform.any()
    assert torch.equal(masks["no_deform"], no_deform)
    assert not masks["mouth_ring"].any()  # the procedural body has no mouth interior


def _whole_head_face_body():
    """The procedural body posing as SMPL-X with FLAME ids: the face region is the whole head
    (scalp and back included) and the expression basis is nonzero on all of it."""
    body = load_body(BodySpec(kind="procedural"))
    head = torch.isin(body.lbs_weights.argmax(1), torch.tensor([15, JAW_JOINT, 23, 24]))
    body.region_mask_face = head
    exprdirs = torch.zeros_like(body.exprdirs)
    exprdirs[head] = 0.001
    body.exprdirs = exprdirs
    return body, head


def test_pose_offsets_reach_the_back_of_the_head() -> None:
    """Old behaviour caught: no_deform held the whole FLAME head, so scalp, hair and the back
    of the head got no pose offsets; now only hands, eyes and the frontal expression face."""
    body, head = _whole_head_face_body()
    template = build_avatar_template(body, random_identity(body), subdivision_levels=1)
    masks = template.region_masks
    count = body.num_vertices
    rest = body.J_regressor @ body.v_template
    behind = head & (body.v_template[:, 2] < rest[15, 2])  # back of the head (original ids)
    assert behind.any() and not template.deformer_zero_mask[:count][behind].any()
    assert masks["face_expr"].any() and torch.all(masks["face_expr"] <= masks["face"])
    assert torch.all(masks["expr_boundary"] <= masks["face_expr"]) and masks["expr_boundary"].any()
    old = build_avatar_template(body, random_identity(body), 1, no_deform_face="face")
    assert torch.equal(old.deformer_zero_mask, masks["hands"] | masks["eyes"] | masks["face"])
    assert old.deformer_zero_mask[:count][behind].all()
    with pytest.raises(ValueError, match="no_deform_face"):
        build_avatar_template(body, random_identity(body), 0, no_deform_face="head")


def test_median_edge_lengths_halve_per_level(body) -> None:
    coarse = build_avatar_template(body, random_identity(body), subdivision_levels=0)
    fine = build_avatar_template(body, random_identity(body), subdivision_levels=2)
    assert coarse.median_edge_length == pytest.approx(coarse.original_median_edge_length)
    assert fine.original_median_edge_length == pytest.approx(coarse.median_edge_length)
    assert fine.median_edge_length == pytest.approx(coarse.median_edge_length / 4, rel=0.15)


def test_template_subdivided_once_carries_attributes(body) -> None:
    identity = random_identity(body)
    template = build_avatar_template(body, identity, subdivision_levels=1)
    count = body.num_vertices
    edges = mesh_edges(body.faces, count)
    assert template.num_vertices == count + edges.shape[0]
    assert template.faces.shape[0] == 4 * body.faces.shape[0]
    assert template.num_original_vertices == count
    torch.testing.assert_close(template.canonical_vertices[:count],
                               body.canonical(identity).vertices)
    # A new vertex (midpoint of an edge) carries the mean of its endpoints' weights and positions.
    new = count + torch.arange(edges.shape[0])
    midpoints = template.canonical_vertices[new]
    ends = template.canonical_vertices[edges]  # [E, 2, 3]
    torch.testing.assert_close(midpoints, ends.mean(1))
    torch.testing.assert_close(template.lbs_weights[new], body.lbs_weights[edges].mean(1))
    torch.testing.assert_close(template.lbs_weights.sum(1), torch.ones(template.num_vertices))
    # Binary regions are re-binarised: both endpoints inside.
    hands = body.region_masks["hands"]
    assert torch.equal(template.region_masks["hands"][new], hands[edges].all(1))
    assert template.region_masks["hands"].dtype == torch.bool
    assert torch.equal(template.dominant_joint, template.lbs_weights.argmax(1))
    assert template.original_laplacian.shape == (count, count)
    assert template.laplacian.shape == (template.num_vertices, template.num_vertices)
