"""Region masks (hands, face, eyes, mouth interior) of a body.

From the official SMPL-X auxiliary files when they sit in the model folder:
`MANO_SMPLX_vertex_ids.pkl` (a dict with `left_hand` and `right_hand` vertex ids, 778 each) and
`SMPL-X__FLAME_vertex_ids.npy` (the 5,023 SMPL-X vertices that correspond to FLAME's head, the
expression region). Otherwise (and always for the eyes and the mouth interior, which no official
file lists) they are derived from the skinning weights: see `derive_region_masks`.
`expression_regions` adds the frontal expression face (`face_expr`) and the band inside it
(`expr_boundary`), always derived (the authors read them off FLAME 2019, which is not loaded here).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from persona.body.model import DERIVED_FROM_WEIGHTS, OFFICIAL_IDS
from persona.body.types import (
    EYE_JOINTS,
    JAW_JOINT,
    LEFT_HAND_JOINTS,
    RIGHT_HAND_JOINTS,
    SMPLX_JOINT_NAMES,
)
from persona.ops.mesh import mesh_edges

MANO_IDS_FILE = "MANO_SMPLX_vertex_ids.pkl"
FLAME_IDS_FILE = "SMPL-X__FLAME_vertex_ids.npy"
WEIGHT_THRESHOLD = 0.5  # a vertex belongs to a group when the group's weights sum above this
EXPRESSION_EPSILON = 1e-6  # m: an expression direction this large marks the expression region
# Keys of the expression-face regions (`expression_regions`).
FACE_EXPR = "face_expr"
EXPR_BOUNDARY = "expr_boundary"
# face_expr: a vertex's largest expression direction must exceed this fraction of the largest
# one of the body (the authors test FLAME 2019's basis for != 0; a relative threshold also
# ignores the tiny far-field values of bases that are nonzero on the whole head).
EXPRESSION_RELATIVE_THRESHOLD = 0.01
# face_expr: in front of the head joint by more than this (m, along +z, the body's facing).
FRONTAL_MARGIN = 0.0
# face_expr excludes vertices whose dominant joint is one of these (the authors drop FLAME's
# neck- and eyeball-dominated vertices from the expression set).
EXPRESSION_EXCLUDED_JOINTS = ("neck", "left_eye_smplhf", "right_eye_smplhf")
# The head for expr_boundary: vertices whose dominant joint is one of these (the authors' is_face).
HEAD_JOINTS = ("head", "jaw", "left_eye_smplhf", "right_eye_smplhf")
# expr_boundary: face_expr vertices within this many edge rings (original topology) of the head
# outside face_expr (the authors' band: one neighbour ring, then three more dilations).
EXPR_BOUNDARY_RINGS = 4

_INDEX = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


def find_auxiliary_file(model_file: Path, name: str) -> Path | None:
    """`name` next to the model file, in its parent (the folder given as model_path), or None."""
    for folder in (model_file.parent, model_file.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def read_official_ids(model_file: Path, num_vertices: int) -> dict[str, np.ndarray] | None:
    """Official hand and face vertex ids when both files are present, else None."""
    mano_file = find_auxiliary_file(model_file, MANO_IDS_FILE)
    flame_file = find_auxiliary_file(model_file, FLAME_IDS_FILE)
    if mano_file is None or flame_file is None:
        return None
    try:
        with open(mano_file, "rb") as stream:
            mano = pickle.load(stream, encoding="latin1")
        ids = {"left_hand": np.asarray(mano["left_hand"], dtype=np.int64),
               "right_hand": np.asarray(mano["right_hand"], dtype=np.int64),
               "face": np.asarray(np.load(flame_file), dtype=np.int64)}
    except Exception as exc:  # noqa: BLE001 - any unreadable auxiliary file is reported the same
        raise ValueError(f"{mano_file} / {flame_file}: unreadable SMPL-X auxiliary vertex ids "
                         f"({type(exc).__name__}: {exc})") from None
    for key, values in ids.items():
        if values.size == 0 or values.min() < 0 or values.max() >= num_vertices:
            raise ValueError(f"{flame_file if key == 'face' else mano_file}: {key} ids outside "
                             f"0..{num_vertices - 1}: not for this model")
    return ids


def _group_weight(weights: Tensor, joints: tuple[int, ...]) -> Tensor:
    return weights[:, list(joints)].sum(dim=1)  # [V]


def derive_region_masks(vertices: Tensor, weights: Tensor, rest_joints: Tensor,
                        exprdirs: Tensor) -> dict[str, Tensor]:
    """Masks from skinning weights. vertices [V,3] zero pose, weights [V,55], rest_joints
    [55,3], exprdirs [V,3,E].

    - hand: wrist + finger weights > 0.5 and beyond the wrist along the forearm;
    - eyes: eye-joint weights > 0.5;
    - face (expression region): the vertices the expression basis moves (when it is all zero:
      head + jaw + eye weights > 0.5 in front of the head joint), plus the eyes;
    - mouth_interior: empty (no weight tells it apart).
    """
    masks: dict[str, Tensor] = {}
    for side, group in (("left", LEFT_HAND_JOINTS), ("right", RIGHT_HAND_JOINTS)):
        wrist = rest_joints[_INDEX[f"{side}_wrist"]]
        elbow = rest_joints[_INDEX[f"{side}_elbow"]]
        beyond_wrist = ((vertices - wrist) @ (wrist - elbow)) > 0  # [V]
        hand_weight = _group_weight(weights, group + (_INDEX[f"{side}_wrist"],))
        masks[f"{side}_hand"] = (hand_weight > WEIGHT_THRESHOLD) & beyond_wrist
    masks["hands"] = masks["left_hand"] | masks["right_hand"]
    masks["eyes"] = _group_weight(weights, EYE_JOINTS) > WEIGHT_THRESHOLD
    moved = exprdirs.abs().amax(dim=(1, 2)) > EXPRESSION_EPSILON if exprdirs.numel() else None
    if moved is None or not bool(moved.any()):
        head_group = (_INDEX["head"], JAW_JOINT) + EYE_JOINTS
        in_head = _group_weight(weights, head_group) > WEIGHT_THRESHOLD
        moved = in_head & (vertices[:, 2] > rest_joints[_INDEX["head"], 2])
    masks["face"] = moved | masks["eyes"]  # FLAME's head region holds the eyes too
    masks["mouth_interior"] = torch.zeros_like(masks["eyes"])
    return masks


def region_masks(vertices: Tensor, weights: Tensor, rest_joints: Tensor, exprdirs: Tensor,
                 official: dict[str, np.ndarray] | None) -> tuple[dict[str, Tensor], str]:
    """(masks, source): official hand and face ids when given, else derived."""
    masks = derive_region_masks(vertices, weights, rest_joints, exprdirs)
    if official is None:
        return masks, DERIVED_FROM_WEIGHTS
    num_vertices = vertices.shape[0]
    for key in ("left_hand", "right_hand", "face"):
        mask = torch.zeros(num_vertices, dtype=torch.bool)
        mask[torch.as_tensor(official[key])] = True
        masks[key] = mask
    masks["hands"] = masks["left_hand"] | masks["right_hand"]
    return masks, OFFICIAL_IDS


def _dominated_by(weights: Tensor, names: tuple[str, ...]) -> Tensor:
    """[V] bool: the vertex's largest weight belongs to one of the named joints."""
    joints = torch.tensor([_INDEX[n] for n in names], device=weights.device)
    return torch.isin(weights.argmax(dim=1), joints)


def grow_region(region: Tensor, faces: Tensor, rings: int) -> Tensor:
    """region [V] bool grown by `rings` edge rings over the mesh faces [F, 3] -> [V] bool."""
    edges = mesh_edges(faces, region.shape[0])  # [E, 2]
    grown = region.bool().clone()
    for _ in range(rings):
        touched = grown[edges[:, 0]] | grown[edges[:, 1]]  # [E]
        grown = grown.clone()
        grown[edges[touched].flatten()] = True
    return grown


def expression_face_mask(vertices: Tensor, weights: Tensor, rest_joints: Tensor,
                         exprdirs: Tensor, face: Tensor) -> Tensor:
    """The frontal expression face (the authors' `is_face_expr`) -> [V] bool. vertices [V,3]
    zero pose (facing +z), weights [V,55], rest_joints [55,3], exprdirs [V,3,E], face [V] bool
    (the body's face region: FLAME's head on SMPL-X).

    The authors take FLAME 2019's vertices with a nonzero expression basis minus its neck- and
    eyeball-dominated vertices; no file here lists them, so it is DERIVED for every body:
    face & (largest expression direction > 1 % of the body's largest) & (in front of the head
    joint) & (dominant joint not the neck or an eye). With an all-zero basis: face & frontal &
    not neck/eye-dominated."""
    magnitude = exprdirs.abs().amax(dim=(1, 2)) if exprdirs.numel() else None  # [V]
    if magnitude is None or float(magnitude.max()) <= 0.0:
        moved = torch.ones_like(face, dtype=torch.bool)
    else:
        moved = magnitude > EXPRESSION_RELATIVE_THRESHOLD * magnitude.max()
    frontal = vertices[:, 2] > rest_joints[_INDEX["head"], 2] + FRONTAL_MARGIN
    excluded = _dominated_by(weights, EXPRESSION_EXCLUDED_JOINTS)
    return face.bool() & moved & frontal & ~excluded


def expression_boundary_mask(face_expr: Tensor, weights: Tensor, faces: Tensor,
                             rings: int = EXPR_BOUNDARY_RINGS) -> Tensor:
    """The authors' `is_expr_boundary`: the band of face_expr [V] bool within `rings` edge
    rings of the head outside it (head = dominant joint head, jaw or an eye; weights [V,55],
    faces [F,3] of the same mesh) -> [V] bool, a subset of face_expr."""
    head = _dominated_by(weights, HEAD_JOINTS)
    return grow_region(head & ~face_expr, faces, rings) & face_expr


def expression_regions(vertices: Tensor, faces: Tensor, weights: Tensor, rest_joints: Tensor,
                       exprdirs: Tensor, face: Tensor) -> dict[str, Tensor]:
    """{face_expr, expr_boundary}: [V] bool each, on the body's own topology (see
    `expression_face_mask` and `expression_boundary_mask`)."""
    face_expr = expression_face_mask(vertices, weights, rest_joints, exprdirs, face)
    return {FACE_EXPR: face_expr,
            EXPR_BOUNDARY: expression_boundary_mask(face_expr, weights, faces)}
