"""Body landmarks (SMPL-X's 144 output joints) and the keypoint mappings to COCO-WholeBody 133
and OpenPose-18 (PREPROCESSING.md section 4).

A *landmark table* says how each of the 144 SMPL-X output joints is read off a posed body:
- 0-54: the skeleton joints (posed joint positions of the body's own joint regressor);
- 55-75: vertex joints (nose, eyes, ears, toes, heels, fingertips): the official SMPL-X vertex
  ids on a real SMPL-X body (10,475 vertices), otherwise vertices chosen once from the
  zero-pose geometry and the skinning weights (see `derived_vertex_joints`);
- 76-126: the 51 static face landmarks and 127-143 the 17 face-contour landmarks: barycentric
  points of the model file's landmark embedding, only when one is given (real SMPL-X); the open
  and procedural bodies carry placeholder embeddings, so there these landmarks are invalid.

Invalid landmarks still get finite positions (the head joint) so that arrays stay finite; their
`valid` flag is False and every consumer gives them score 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from persona.body.lbs import rigid_chain, skin_points
from persona.body.model import BodyModel
from persona.body.types import NUM_JOINTS, SMPLX_JOINT_NAMES, Identity, PoseParams
from persona.ops.rotations import axis_angle_to_matrix

NUM_LANDMARKS = 144  # smplx output joints with use_face_contour=True (PREPROCESSING.md 4.3)
NUM_VERTEX_JOINTS = 21  # 55-75 (PREPROCESSING.md 4.3)
FIRST_VERTEX_JOINT = 55
FIRST_STATIC_FACE = 76  # 76-126: 51 static face landmarks (PREPROCESSING.md 4.3)
NUM_STATIC_FACE = 51
FIRST_CONTOUR = 127  # 127-143: 17 dynamic contour landmarks (PREPROCESSING.md 4.3)
NUM_CONTOUR = 17
NUM_CONTOUR_BINS = 79  # smplx dynamic landmark bins: yaw -39..39 degrees
MAX_CONTOUR_YAW_DEG = 39  # smplx find_dynamic_lmk_idx_and_bcoords clamp
NECK_CHAIN = (12, 9, 6, 3, 0)  # smplx's neck_kin_chain: neck up to the pelvis
NUM_COCO = 133  # COCO-WholeBody (PREPROCESSING.md 4.2)
NUM_OPENPOSE = 18  # OpenPose-18 body (PREPROCESSING.md 4.1)
NUM_HAND = 21  # keypoints per hand (COCO-WholeBody / DWPose)
NUM_FACE = 68  # iBUG-68 face keypoints
SMPLX_NUM_VERTICES = 10475  # the real SMPL-X mesh
HAND_ROOT_EXTENSION = 1.1  # hand root = elbow + 1.1 (wrist - elbow) (PREPROCESSING.md 4.4)

OFFICIAL_SOURCE = "official SMPL-X vertex ids"
DERIVED_SOURCE = "derived from geometry and skinning weights"

# The vertex joints 55-75 in order (smplx vertex_ids.py 'smplx', PREPROCESSING.md 4.3).
VERTEX_JOINT_NAMES: tuple[str, ...] = (
    "nose", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel", "left_thumb", "left_index", "left_middle", "left_ring", "left_pinky",
    "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky",
)
# Official SMPL-X vertex ids of the vertex joints, same order (PREPROCESSING.md 4.3).
SMPLX_VERTEX_IDS: tuple[int, ...] = (
    9120, 9929, 9448, 616, 6,
    5770, 5780, 8846, 8463, 8474, 8635,
    5361, 4933, 5058, 5169, 5286,
    8079, 7669, 7794, 7905, 8022,
)


def _coco_from_smplx() -> tuple[int, ...]:
    """COCO-WholeBody index -> SMPL-X output joint (-1: none), PREPROCESSING.md 4.4."""
    table = [-1] * NUM_COCO
    body = {0: 55, 1: 57, 2: 56, 3: 59, 4: 58, 5: 16, 6: 17, 7: 18, 8: 19, 9: 20, 10: 21,
            11: 1, 12: 2, 13: 4, 14: 5, 15: 7, 16: 8,
            17: 60, 18: 61, 19: 62, 20: 63, 21: 64, 22: 65}
    for coco, smplx in body.items():
        table[coco] = smplx
    for k in range(NUM_CONTOUR):  # 23..39 <- 127..143
        table[23 + k] = FIRST_CONTOUR + k
    for k in range(NUM_STATIC_FACE):  # 40..90 <- 76..126
        table[40 + k] = FIRST_STATIC_FACE + k
    hands = {91: (37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69, 31, 32, 33, 70),
             112: (52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74, 46, 47, 48,
                   75)}
    for root, joints in hands.items():  # root itself has no SMPL-X joint
        for k, joint in enumerate(joints):
            table[root + 1 + k] = joint
    return tuple(table)


COCO_FROM_SMPLX: tuple[int, ...] = _coco_from_smplx()
COCO_LEFT_HAND_ROOT = 91  # PREPROCESSING.md 4.2
COCO_RIGHT_HAND_ROOT = 112
COCO_FACE = tuple(range(23, 91))  # 68 face keypoints, iBUG order
COCO_LEFT_HAND = tuple(range(91, 112))
COCO_RIGHT_HAND = tuple(range(112, 133))
COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER = 5, 6
COCO_LEFT_ELBOW, COCO_RIGHT_ELBOW = 7, 8
COCO_LEFT_WRIST, COCO_RIGHT_WRIST = 9, 10
COCO_LEFT_HIP, COCO_RIGHT_HIP = 11, 12
# OpenPose-18 index -> COCO index; the neck (1) is the shoulder midpoint (PREPROCESSING.md 1.8).

# Derived vertex joints (open and procedural bodies). All in the zero pose, body frame (metres,
# y up, facing +z). Chosen for this project; the numbers are geometry heuristics, not SMPL-X's.
SKIN_THRESHOLD = 0.5  # a vertex belongs to a joint group when the group's weights sum above this
EAR_BAND = 0.04  # m: ears are searched within this height of the eye joints
SOLE_BAND = 0.05  # m: toes and heels are searched within this height above the lowest foot vertex
TOE_BAND = 0.04  # m: toes are searched within this depth behind the foremost foot vertex

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}


@dataclass
class LandmarkEmbedding:
    """SMPL-X's face landmark embedding (from the model npz), as vertex triples + weights."""

    static_vertices: Tensor  # [51, 3] long
    static_bary: Tensor  # [51, 3]
    contour_vertices: Tensor  # [79, 17, 3] long, one set per yaw bin
    contour_bary: Tensor  # [79, 17, 3]


@dataclass
class LandmarkTable:
    """How each of the 144 landmarks is read off a posed body."""

    vertex_joints: Tensor  # [21, 3] long: vertex triples of landmarks 55-75
    vertex_bary: Tensor  # [21, 3]: their weights (single vertex: (1, 0, 0))
    valid: Tensor  # [144] bool
    source: str  # OFFICIAL_SOURCE or DERIVED_SOURCE
    embedding: LandmarkEmbedding | None = None  # face landmarks 76-143 when given


def read_landmark_embedding(model_file: str | Path) -> LandmarkEmbedding:
    """The face landmark embedding of a real SMPL-X npz (keys lmk_faces_idx, lmk_bary_coords,
    dynamic_lmk_faces_idx, dynamic_lmk_bary_coords, f). FileNotFoundError / ValueError name the
    setting `model.init_args.landmark_embedding`."""
    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_args.landmark_embedding: {path} does not exist "
                                f"(a real SMPL-X model file, smplx/SMPLX_NEUTRAL.npz from "
                                f"https://smpl-x.is.tue.mpg.de)")
    keys = ("f", "lmk_faces_idx", "lmk_bary_coords", "dynamic_lmk_faces_idx",
            "dynamic_lmk_bary_coords")
    with np.load(path, allow_pickle=True) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"model.init_args.landmark_embedding: {path} lacks {missing}")
        arrays = {k: np.asarray(data[k]) for k in keys}
    faces = arrays["f"].astype(np.int64)  # [F, 3]
    static = faces[arrays["lmk_faces_idx"].astype(np.int64).reshape(-1)]  # [51, 3]
    dynamic = faces[arrays["dynamic_lmk_faces_idx"].astype(np.int64)]  # [79, 17, 3]
    if static.shape != (NUM_STATIC_FACE, 3) or dynamic.shape != (NUM_CONTOUR_BINS, NUM_CONTOUR, 3):
        raise ValueError(f"model.init_args.landmark_embedding: {path}: expected 51 static "
                         f"and 79 x 17 contour landmarks, got {static.shape[0]} and "
                         f"{dynamic.shape[:2]}")
    return LandmarkEmbedding(
        torch.as_tensor(static), torch.as_tensor(arrays["lmk_bary_coords"]).float().reshape(-1, 3),
        torch.as_tensor(dynamic),
        torch.as_tensor(arrays["dynamic_lmk_bary_coords"]).float().reshape(dynamic.shape))


# ----------------------------------------------------------------------------------------------
# Vertex joints
# ----------------------------------------------------------------------------------------------
def _argmax_in(scores: np.ndarray, mask: np.ndarray, what: str) -> int:
    if not mask.any():
        raise ValueError(f"body landmarks: no vertex qualifies for {what}")
    masked = np.where(mask, scores, -np.inf)
    return int(np.argmax(masked))


def derived_vertex_joints(vertices: np.ndarray, weights: np.ndarray, joints: np.ndarray,
                          eyes_mask: np.ndarray) -> list[int]:
    """Vertex ids of landmarks 55-75 on a body without SMPL-X's vertex ids.

    vertices [V, 3] zero pose (y up, facing +z), weights [V, 55], joints [55, 3], eyes_mask [V].
    - nose: the foremost (max z) head/jaw vertex;
    - eyes: the foremost vertex of each eye region (eye-joint weight > 0.5), else the foremost
      head vertex within EAR_BAND of the eye joint on that side;
    - ears: the head vertex farthest to that side within EAR_BAND of the eye height;
    - feet (ankle + foot weight > 0.5, below the ankle): within SOLE_BAND of the sole,
      big toe = foremost vertex on the inner half, small toe = the outermost vertex within
      TOE_BAND of the foremost one, heel = the rearmost vertex;
    - fingertips: the vertex of the finger's third segment farthest from the wrist.
    """
    head_w = weights[:, [_J["head"], _J["jaw"]]].sum(1)
    head = head_w > SKIN_THRESHOLD
    ids = {"nose": _argmax_in(vertices[:, 2], head, "nose")}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        eye_joint = joints[_J[f"{side}_eye_smplhf"]]
        on_side = sign * vertices[:, 0] > 0
        eye_region = eyes_mask & on_side
        near_eye = head & (np.linalg.norm(vertices[:, :2] - eye_joint[:2], axis=1) < EAR_BAND)
        ids[f"{side}_eye"] = _argmax_in(vertices[:, 2], eye_region if eye_region.any()
                                        else near_eye & on_side, f"{side} eye")
        band = head & (np.abs(vertices[:, 1] - eye_joint[1]) < EAR_BAND) & on_side
        ids[f"{side}_ear"] = _argmax_in(sign * vertices[:, 0], band, f"{side} ear")
        foot_w = weights[:, [_J[f"{side}_ankle"], _J[f"{side}_foot"]]].sum(1)
        foot = (foot_w > SKIN_THRESHOLD) & (vertices[:, 1] < joints[_J[f"{side}_ankle"], 1])
        if not foot.any():
            raise ValueError(f"body landmarks: no {side} foot vertex")
        sole = foot & (vertices[:, 1] < vertices[foot, 1].min() + SOLE_BAND)
        centre_x = np.median(vertices[sole, 0])
        inner = sole & (sign * (vertices[:, 0] - centre_x) <= 0)
        ids[f"{side}_big_toe"] = _argmax_in(vertices[:, 2], inner, f"{side} big toe")
        front = sole & (vertices[:, 2] > vertices[sole, 2].max() - TOE_BAND)
        ids[f"{side}_small_toe"] = _argmax_in(sign * vertices[:, 0], front, f"{side} small toe")
        ids[f"{side}_heel"] = _argmax_in(-vertices[:, 2], sole, f"{side} heel")
        wrist = joints[_J[f"{side}_wrist"]]
        distance = np.linalg.norm(vertices - wrist, axis=1)
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = weights[:, _J[f"{side}_{finger}3"]] > SKIN_THRESHOLD
            ids[f"{side}_{finger}"] = _argmax_in(distance, tip, f"{side} {finger} tip")
    return [ids[name] for name in VERTEX_JOINT_NAMES]


def landmark_table(body: BodyModel, embedding: LandmarkEmbedding | None = None) -> LandmarkTable:
    """The landmark table of a body: official vertex ids on real SMPL-X (10,475 vertices),
    derived ones otherwise; face landmarks 76-143 valid only with an embedding."""
    valid = torch.zeros(NUM_LANDMARKS, dtype=torch.bool)
    valid[:FIRST_STATIC_FACE] = True
    if body.num_vertices == SMPLX_NUM_VERTICES:
        ids, source = list(SMPLX_VERTEX_IDS), OFFICIAL_SOURCE
    else:
        vertices = body.v_template.detach().cpu().double().numpy()
        joints = (body.J_regressor.double() @ body.v_template.double()).cpu().numpy()
        ids = derived_vertex_joints(vertices, body.lbs_weights.detach().cpu().numpy(), joints,
                                    body.region_masks["eyes"].cpu().numpy())
        source = DERIVED_SOURCE
    triples = torch.tensor(ids, dtype=torch.long)[:, None].repeat(1, 3)  # [21, 3]
    bary = torch.zeros(NUM_VERTEX_JOINTS, 3)
    bary[:, 0] = 1.0
    if embedding is not None:
        if body.num_vertices != SMPLX_NUM_VERTICES:
            raise ValueError("model.init_args.landmark_embedding: a face landmark embedding "
                             f"needs the real SMPL-X mesh ({SMPLX_NUM_VERTICES} vertices), body "
                             f"{body.name!r} has {body.num_vertices}")
        valid[FIRST_STATIC_FACE:] = True
    return LandmarkTable(triples, bary, valid, source, embedding)


# ----------------------------------------------------------------------------------------------
# Posing
# ----------------------------------------------------------------------------------------------
def contour_bins(full_pose: Tensor, pose_mean: Tensor) -> Tensor:
    """smplx's dynamic contour bin per batch element from the neck-chain rotation (yaw, degrees,
    rounded, clamped to +-39; negative yaws map to 39 - yaw). full_pose [B, 55, 3] -> [B] long."""
    rotations = axis_angle_to_matrix((full_pose + pose_mean)[:, list(NECK_CHAIN)])  # [B, 5, 3, 3]
    chain = torch.eye(3, dtype=full_pose.dtype, device=full_pose.device).expand(
        full_pose.shape[0], 3, 3)
    for k in range(len(NECK_CHAIN)):
        chain = rotations[:, k] @ chain
    sy = torch.sqrt(chain[:, 0, 0] ** 2 + chain[:, 1, 0] ** 2)
    yaw = torch.atan2(-chain[:, 2, 0], sy)  # [B]
    angle = torch.round(torch.clamp(-torch.rad2deg(yaw), max=MAX_CONTOUR_YAW_DEG)).long()
    negative = torch.where(angle < -MAX_CONTOUR_YAW_DEG, torch.full_like(angle, 78),
                           MAX_CONTOUR_YAW_DEG - angle)
    return torch.where(angle < 0, negative, angle)


def posed_landmarks(body: BodyModel, identity: Identity, pose: PoseParams,
                    table: LandmarkTable) -> Tensor:
    """All 144 landmarks of a posed body (world frame, transl included). Returns [B, 144, 3].

    Same LBS as `BodyModel.forward` (expression in the zero pose), but only the landmark
    vertices are skinned. Invalid landmarks sit at the head joint."""
    body.check_pose(pose)
    batch = pose.batch_size
    shaped = body.shaped_vertices(identity)  # [V, 3]
    rest = body.rest_joints(identity)  # [55, 3]
    rotations = axis_angle_to_matrix(pose.full_pose + body.pose_mean)  # [B, 55, 3, 3]
    joints, transforms = rigid_chain(rotations, rest.expand(batch, -1, -1), body.parents)
    table_device = table.vertex_joints.to(shaped.device)
    parts_ids = [table_device[None].expand(batch, -1, -1)]  # [B, 21, 3]
    parts_bary = [table.vertex_bary.to(shaped)[None].expand(batch, -1, -1)]
    if table.embedding is not None:
        emb = table.embedding
        bins = contour_bins(pose.full_pose, body.pose_mean).cpu()  # [B]
        parts_ids += [emb.static_vertices[None].expand(batch, -1, -1).to(shaped.device),
                      emb.contour_vertices[bins].to(shaped.device)]
        parts_bary += [emb.static_bary[None].expand(batch, -1, -1).to(shaped),
                       emb.contour_bary[bins].to(shaped)]
    ids = torch.cat(parts_ids, dim=1)  # [B, L, 3]
    bary = torch.cat(parts_bary, dim=1)  # [B, L, 3]
    flat = ids.reshape(batch, -1)  # [B, 3L]
    points = shaped[flat]  # [B, 3L, 3]
    num_expression = pose.expression.shape[1]
    if num_expression > 0:  # expression in the zero pose, only at the landmark vertices
        directions = body.exprdirs[flat][..., :num_expression]  # [B, 3L, 3, E]
        points = points + torch.einsum("be,bnce->bnc", pose.expression, directions)
    weights = body.lbs_weights[flat]  # [B, 3L, 55]
    skinned = skin_points(points, weights, transforms)  # [B, 3L, 3]
    skinned = skinned.reshape(batch, -1, 3, 3)  # [B, L, 3 vertices, 3]
    vertex_points = (bary[..., None] * skinned).sum(2)  # [B, L, 3]
    out = joints.new_zeros(batch, NUM_LANDMARKS, 3)
    out[:, :NUM_JOINTS] = joints
    count = vertex_points.shape[1]
    out[:, FIRST_VERTEX_JOINT:FIRST_VERTEX_JOINT + count] = vertex_points
    if FIRST_VERTEX_JOINT + count < NUM_LANDMARKS:
        out[:, FIRST_VERTEX_JOINT + count:] = joints[:, _J["head"], None]
    return out + pose.transl[:, None, :]


def body_landmarks(body: BodyModel, identity: Identity, pose: PoseParams,
                   table: LandmarkTable | None = None) -> tuple[Tensor, Tensor]:
    """(landmarks [B, 144, 3], valid [144] bool) of a posed body (table built when None)."""
    table = landmark_table(body) if table is None else table
    return posed_landmarks(body, identity, pose, table), table.valid


# ----------------------------------------------------------------------------------------------
# Mappings
# ----------------------------------------------------------------------------------------------
def smplx_to_coco133(landmarks: Tensor | np.ndarray, valid: Tensor | np.ndarray,
                     ) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """SMPL-X output joints [..., 144, C] + valid [144] -> COCO-WholeBody [..., 133, C] + valid
    [133] (PREPROCESSING.md 4.4). Keypoints without an SMPL-X joint (the hand roots 91, 112) are
    zero and invalid."""
    table = np.array(COCO_FROM_SMPLX)
    source = np.where(table >= 0, table, 0)
    has = table >= 0
    if isinstance(landmarks, Tensor):
        index = torch.as_tensor(source, device=landmarks.device)
        mask = torch.as_tensor(has, device=landmarks.device)
        out = landmarks[..., index, :] * mask[:, None].to(landmarks.dtype)
        valid_out = torch.as_tensor(valid, device=landmarks.device)[index] & mask
        return out, valid_out
    out = np.asarray(landmarks)[..., source, :] * has[:, None]
    return out, np.asarray(valid)[source] & has


def hand_root(elbow: Tensor | np.ndarray, wrist: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """DWPose-style hand root from SMPL-X: elbow + 1.1 (wrist - elbow) (PREPROCESSING.md 4.4).
    elbow, wrist [..., C] -> [..., C]."""
    return elbow + HAND_ROOT_EXTENSION * (wrist - elbow)


def with_hand_roots(coco: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill the COCO hand roots 91 / 112 with `hand_root` of the elbow and wrist.
    coco [..., 133, C], valid [133] -> same shapes (copies)."""
    coco, valid = np.array(coco, copy=True), np.array(valid, copy=True)
    for root, elbow, wrist in ((COCO_LEFT_HAND_ROOT, COCO_LEFT_ELBOW, COCO_LEFT_WRIST),
                               (COCO_RIGHT_HAND_ROOT, COCO_RIGHT_ELBOW, COCO_RIGHT_WRIST)):
        coco[..., root, :] = hand_root(coco[..., elbow, :], coco[..., wrist, :])
        valid[root] = valid[elbow] and valid[wrist]
    return coco, valid
