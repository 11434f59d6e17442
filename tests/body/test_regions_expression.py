"""The frontal expression face (`face_expr`) and the band inside it (`expr_boundary`)."""

import torch

from persona.body.loader import BodySpec, load_body
from persona.body.regions import (
    EXPR_BOUNDARY_RINGS,
    HEAD_JOINTS,
    expression_boundary_mask,
    expression_face_mask,
    expression_regions,
    grow_region,
)
from persona.body.types import SMPLX_JOINT_NAMES

J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


def _path_faces(count: int) -> torch.Tensor:
    """A strip of triangles whose vertices 0..count-1 form a path of edges (i, i+1)."""
    return torch.tensor([[i, i + 1, i + 2] for i in range(count - 2)])


def test_grow_region_adds_edge_rings():
    faces = _path_faces(12)  # edges (i, i+1) and (i, i+2)
    seed = torch.zeros(12, dtype=torch.bool)
    seed[0] = True
    assert grow_region(seed, faces, 0).nonzero().flatten().tolist() == [0]
    assert grow_region(seed, faces, 1).nonzero().flatten().tolist() == [0, 1, 2]
    assert grow_region(seed, faces, 2).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def _head_body():
    """The procedural body posing as SMPL-X with FLAME ids: the face region is the whole head
    (every vertex dominated by the head, jaw or an eye) and the expression basis moves all of it
    (as FLAME 2020's basis is nonzero everywhere)."""
    body = load_body(BodySpec(kind="procedural"))
    dominant = body.lbs_weights.argmax(1)
    head = torch.isin(dominant, torch.tensor([J[n] for n in HEAD_JOINTS]))
    exprdirs = torch.zeros_like(body.exprdirs)
    exprdirs[head] = 0.001
    return body, head, exprdirs


def test_face_expr_is_the_frontal_face_without_eyes_or_neck():
    """Old behaviour caught: the whole FLAME head (scalp, back of the head) counted as the
    expression face."""
    body, head, exprdirs = _head_body()
    vertices, weights = body.v_template, body.lbs_weights
    rest = body.J_regressor @ vertices
    face_expr = expression_face_mask(vertices, weights, rest, exprdirs, head)
    behind = head & (vertices[:, 2] <= rest[J["head"], 2])
    assert face_expr.any() and behind.any()
    assert not (face_expr & behind).any()  # the back of the head is not the expression face
    assert torch.all(face_expr <= head)
    eyes_or_neck = torch.isin(weights.argmax(1), torch.tensor(
        [J["neck"], J["left_eye_smplhf"], J["right_eye_smplhf"]]))
    assert not (face_expr & eyes_or_neck).any()
    # Small far-field values of the basis (< 1 % of its largest) do not count.
    weak = exprdirs.clone()
    weak[face_expr.nonzero()[0, 0]] = 1e-6
    assert int(expression_face_mask(vertices, weights, rest, weak, head).sum()) == int(
        face_expr.sum()) - 1


def test_expr_boundary_is_the_band_inside_the_face_next_to_the_rest_of_the_head():
    body, head, exprdirs = _head_body()
    rest = body.J_regressor @ body.v_template
    regions = expression_regions(body.v_template, body.faces, body.lbs_weights, rest, exprdirs,
                                 head)
    face_expr, band = regions["face_expr"], regions["expr_boundary"]
    assert band.any() and torch.all(band <= face_expr) and bool((face_expr & ~band).any())
    seeds = head & ~face_expr
    assert torch.equal(band, grow_region(seeds, body.faces, EXPR_BOUNDARY_RINGS) & face_expr)
    # A face vertex one ring beyond the band is not in it, one at the band's edge is.
    wider = grow_region(seeds, body.faces, EXPR_BOUNDARY_RINGS + 1) & face_expr
    assert bool((wider & ~band).any())
    assert torch.equal(expression_boundary_mask(face_expr, body.lbs_weights, body.faces, 0),
                       torch.zeros_like(band))


def test_derived_body_expression_face(procedural_body):
    body = procedural_body
    rest = body.J_regressor @ body.v_template
    masks = body.region_masks
    regions = expression_regions(body.v_template, body.faces, body.lbs_weights, rest,
                                 body.exprdirs, masks["face"])
    face_expr = regions["face_expr"]
    assert face_expr.any() and torch.all(face_expr <= masks["face"])
    assert not (face_expr & masks["eyes"]).any()
    assert torch.all(body.v_template[face_expr, 2] > rest[J["head"], 2])
