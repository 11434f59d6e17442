"""A small procedural body in SMPL-X format for unit tests (builds in well under a second).

The SMPL-X 55-joint tree in a T-pose (metres, y up, facing +z): ellipsoid limbs, torso, head
with a jaw region and two eyeballs, palms with ten three-segment fingers, feet. Smooth skinning
weights (a softmax over distances to the bones of all joints),
ten shape directions (three axis scalings, seven smooth fields) and ten expression directions
on the face (mouth open, smile, brows up, blink, then six smooth local fields).
"""

from __future__ import annotations

import numpy as np

from persona.body.fitting import fit_joint_regressor, nearest_support, smplx_arrays
from persona.body.types import FINGER_JOINTS, JAW_JOINT, SMPLX_JOINT_NAMES, SMPLX_PARENTS

NUM_SHAPE = 10  # nonzero shape directions
NUM_EXPRESSION = 10  # nonzero expression directions
BODY_SKIN_SCALE = 0.05  # m, softness of body skinning (distance scale of the softmax)
FINGER_SKIN_SCALE = 0.008  # m, softness of finger skinning
REGRESSOR_SUPPORT = 12  # template vertices per joint in the joint regressor
SEED = 7  # fixed: the body is the same every time

# Joint positions (left side; the right side mirrors x). T-pose, pelvis at the origin.
_LEFT_JOINTS: dict[str, tuple[float, float, float]] = {
    "pelvis": (0.0, 0.0, 0.0), "left_hip": (0.09, -0.08, 0.0), "spine1": (0.0, 0.11, -0.01),
    "left_knee": (0.10, -0.48, 0.01), "spine2": (0.0, 0.24, -0.01),
    "left_ankle": (0.10, -0.88, -0.03), "spine3": (0.0, 0.32, 0.0),
    "left_foot": (0.10, -0.94, 0.09), "neck": (0.0, 0.52, -0.01),
    "left_collar": (0.07, 0.45, 0.0), "head": (0.0, 0.60, 0.01),
    "left_shoulder": (0.18, 0.46, -0.01), "left_elbow": (0.45, 0.46, -0.02),
    "left_wrist": (0.70, 0.46, -0.01), "jaw": (0.0, 0.625, 0.03),
    "left_eye_smplhf": (0.032, 0.685, 0.075),
}
_FINGER_Z = {"index": 0.026, "middle": 0.008, "ring": -0.010, "pinky": -0.027}
_FINGER_LENGTH = {"index": 0.026, "middle": 0.029, "ring": 0.027, "pinky": 0.021}


def _joint_positions() -> np.ndarray:
    """The 55 rest joints [55, 3]."""
    left: dict[str, tuple[float, float, float]] = dict(_LEFT_JOINTS)
    wrist = np.array(left["left_wrist"])
    for finger, z in _FINGER_Z.items():
        for k in range(3):
            x = wrist[0] + 0.085 + k * _FINGER_LENGTH[finger]
            left[f"left_{finger}{k + 1}"] = (x, wrist[1], z)
    for k in range(3):  # thumb: forward (+z) and along the hand
        left[f"left_thumb{k + 1}"] = (wrist[0] + 0.025 + 0.028 * k, wrist[1] - 0.012,
                                      0.035 + 0.018 * k)
    joints = np.zeros((len(SMPLX_JOINT_NAMES), 3))
    for index, name in enumerate(SMPLX_JOINT_NAMES):
        mirrored = name.replace("right", "left")
        x, y, z = left[mirrored]
        joints[index] = (-x if name.startswith("right") else x, y, z)
    return joints


def _ellipsoid(center: np.ndarray, axes: np.ndarray, radii: np.ndarray, rings: int,
               segments: int) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV ellipsoid: vertices [(rings-1)*segments+2, 3], faces outward-oriented."""
    theta = np.linspace(0.0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    unit = np.concatenate([[[0.0, 0.0, 1.0]], unit, [[0.0, 0.0, -1.0]]])
    vertices = center + (unit * radii) @ axes
    faces = []
    count = rings - 1
    for s in range(segments):
        s2 = (s + 1) % segments
        faces.append([0, 1 + s2, 1 + s])
        for r in range(count - 1):
            a, b = 1 + r * segments + s, 1 + r * segments + s2
            c, d = a + segments, b + segments
            faces += [[a, b, d], [a, d, c]]
        last = 1 + (count - 1) * segments
        faces.append([len(unit) - 1, last + s, last + s2])
    faces = np.array(faces, dtype=np.int64)
    if np.linalg.det(axes) < 0:
        faces = faces[:, ::-1]
    return vertices, faces


def _frame(direction: np.ndarray) -> np.ndarray:
    """Rows: two unit vectors orthogonal to `direction`, then `direction` (right-handed)."""
    w = direction / np.linalg.norm(direction)
    helper = np.array([0.0, 0.0, 1.0]) if abs(w[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(helper, w)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w])


def _limb(start: np.ndarray, end: np.ndarray, radius: float, rings: int, segments: int,
          ) -> tuple[np.ndarray, np.ndarray]:
    axes = _frame(end - start)
    half = 0.5 * np.linalg.norm(end - start) + 0.6 * radius
    return _ellipsoid(0.5 * (start + end), axes, np.array([radius, radius, half]), rings, segments)


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance [N] from points [N,3] to the segment start-end."""
    d = end - start
    t = np.clip(((points - start) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * d), axis=-1)


def _bone_ends(joints: np.ndarray, parents: np.ndarray) -> list[np.ndarray]:
    """Per joint, the far ends of its bones (children, or a short extension for leaves)."""
    ends: list[list[np.ndarray]] = [[] for _ in joints]
    for child, parent in enumerate(parents):
        if parent >= 0:
            ends[parent].append(joints[child])
    for joint, parent in enumerate(parents):
        if not ends[joint]:
            direction = joints[joint] - joints[max(parent, 0)]
            ends[joint].append(joints[joint] + 0.6 * direction)
    ends[JAW_JOINT] = [joints[JAW_JOINT] + np.array([0.0, -0.04, 0.06])]
    head = SMPLX_JOINT_NAMES.index("head")
    ends[head] = np.concatenate([ends[head], [joints[head] + np.array([0.0, 0.2, 0.0])]])
    return [np.stack(e) for e in ends]


def build_procedural_arrays() -> dict[str, np.ndarray]:
    """Every array of the procedural body's SMPL-X-format file."""
    rng = np.random.default_rng(SEED)
    joints = _joint_positions()
    parents = np.array(SMPLX_PARENTS)
    index = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
    parts: list[tuple[np.ndarray, np.ndarray, int]] = []  # (vertices, faces, owner joint)

    def add(mesh: tuple[np.ndarray, np.ndarray], owner: str) -> None:
        parts.append((mesh[0], mesh[1], index[owner]))

    add(_ellipsoid(np.array([0.0, 0.06, -0.01]), np.eye(3), np.array([0.16, 0.14, 0.11]),
                   12, 20), "pelvis")
    add(_ellipsoid(np.array([0.0, 0.30, -0.01]), np.eye(3), np.array([0.17, 0.22, 0.11]),
                   14, 24), "spine2")
    add(_limb(joints[index["neck"]], joints[index["head"]], 0.05, 6, 12), "neck")
    add(_ellipsoid(np.array([0.0, 0.69, 0.02]), np.eye(3), np.array([0.085, 0.11, 0.10]),
                   16, 24), "head")
    for side in ("left", "right"):
        for a, b, r in (("hip", "knee", 0.07), ("knee", "ankle", 0.05),
                        ("collar", "shoulder", 0.05), ("shoulder", "elbow", 0.045),
                        ("elbow", "wrist", 0.037)):
            add(_limb(joints[index[f"{side}_{a}"]], joints[index[f"{side}_{b}"]], r, 8, 12),
                f"{side}_{a}")
        ankle, foot = joints[index[f"{side}_ankle"]], joints[index[f"{side}_foot"]]
        add(_limb(ankle + np.array([0.0, -0.03, -0.06]), foot + np.array([0.0, -0.02, 0.05]),
                  0.04, 8, 12), f"{side}_ankle")
        wrist = joints[index[f"{side}_wrist"]]
        sign = 1.0 if side == "left" else -1.0
        palm_axes = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [sign, 0.0, 0.0]])
        add(_ellipsoid(wrist + np.array([sign * 0.045, 0.0, 0.0]), palm_axes,
                       np.array([0.045, 0.014, 0.05]), 6, 10), f"{side}_wrist")
        for finger in ("index", "middle", "ring", "pinky", "thumb"):
            for k in range(1, 4):
                start = joints[index[f"{side}_{finger}{k}"]]
                end = (joints[index[f"{side}_{finger}{k + 1}"]] if k < 3
                       else start + (start - joints[index[f"{side}_{finger}{k - 1}"]]))
                add(_limb(start, end, 0.0085, 4, 8), f"{side}_{finger}{k}")
        eye = joints[index[f"{side}_eye_smplhf"]]
        add(_ellipsoid(eye, np.eye(3), np.full(3, 0.012), 6, 8), f"{side}_eye_smplhf")

    vertices_list, faces_list, owners_list = [], [], []
    offset = 0
    for vertices, faces, owner in parts:
        vertices_list.append(vertices)
        faces_list.append(faces + offset)
        owners_list.append(np.full(len(vertices), owner))
        offset += len(vertices)
    template = np.concatenate(vertices_list)  # [V, 3]
    faces = np.concatenate(faces_list)  # [F, 3]
    owners = np.concatenate(owners_list)  # [V]
    weights = _skinning_weights(template, owners, joints, parents)
    shape_basis = _shape_basis(template, rng)
    expression_basis = _expression_basis(template, weights, joints, index, rng)
    support = nearest_support(template, joints, REGRESSOR_SUPPORT)
    regressor = fit_joint_regressor(template[None], joints[None], support)
    head_faces = np.flatnonzero(np.isin(faces[:, 0], np.flatnonzero(owners == index["head"])))
    return smplx_arrays(template, faces, weights, regressor, parents, shape_basis,
                        expression_basis, head_faces)


def _skinning_weights(template: np.ndarray, owners: np.ndarray, joints: np.ndarray,
                      parents: np.ndarray) -> np.ndarray:
    """Softmax over -d^2/(2 s^2), d the distance to each joint's bones, over all joints but the
    eyes (eyeballs are rigid on their eye joint). s is the finger scale for vertices of the
    palms and fingers, the body scale elsewhere, so the weights are a smooth function of
    position within each region."""
    num_joints = len(joints)
    ends = _bone_ends(joints, parents)
    eye_joints = [i for i, name in enumerate(SMPLX_JOINT_NAMES) if "eye" in name]
    candidates = [j for j in range(num_joints) if j not in eye_joints]
    distances = np.stack([
        np.min(np.stack([_segment_distance(template, joints[j], e) for e in ends[j]]), axis=0)
        for j in candidates], axis=1)  # [V, C]
    hand_owners = set(FINGER_JOINTS) | {SMPLX_JOINT_NAMES.index(f"{side}_wrist")
                                        for side in ("left", "right")}
    scale = np.where(np.isin(owners, list(hand_owners)), FINGER_SKIN_SCALE, BODY_SKIN_SCALE)
    logits = -0.5 * (distances / scale[:, None]) ** 2
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    weights = np.zeros((len(template), num_joints))
    weights[:, candidates] = soft / soft.sum(axis=1, keepdims=True)
    is_eye = np.isin(owners, eye_joints)
    weights[is_eye] = 0.0
    weights[is_eye, owners[is_eye]] = 1.0
    weights[weights < 1e-4] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


def _smooth_fields(points: np.ndarray, count: int, wavelength: float, amplitude: float,
                   rng: np.random.Generator) -> np.ndarray:
    """`count` smooth random displacement fields [N, 3, count]."""
    fields = np.zeros((len(points), 3, count))
    for k in range(count):
        frequency = rng.normal(size=(3, 3)) * (2 * np.pi / wavelength)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        fields[:, :, k] = amplitude * np.sin(points @ frequency.T + phase)
    return fields


def _shape_basis(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[V, 3, NUM_SHAPE]: scalings along x, y, z (5 % per unit) then smooth 1 cm fields."""
    basis = np.zeros((len(template), 3, NUM_SHAPE))
    for axis in range(3):
        basis[:, axis, axis] = 0.05 * template[:, axis]
    basis[:, :, 3:] = _smooth_fields(template, NUM_SHAPE - 3, 0.8, 0.01, rng)
    return basis


def _expression_basis(template: np.ndarray, weights: np.ndarray, joints: np.ndarray,
                      index: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """[V, 3, NUM_EXPRESSION] on the front of the head (zero elsewhere)."""
    head = joints[index["head"]]
    face = ((weights[:, index["head"]] + weights[:, JAW_JOINT] > 0.5)
            & (template[:, 2] > head[2] + 0.03)).astype(np.float64)
    rel = template - head  # [V, 3]
    mouth_y = joints[JAW_JOINT][1] + 0.005
    basis = np.zeros((len(template), 3, NUM_EXPRESSION))
    lower = np.clip((mouth_y - template[:, 1]) / 0.04, 0.0, 1.0) * face
    basis[:, 1, 0] = -0.01 * lower  # mouth open
    near_mouth = np.exp(-((template[:, 1] - mouth_y) / 0.015) ** 2) * face
    basis[:, 0, 1] = 0.006 * np.sign(rel[:, 0]) * near_mouth * np.abs(rel[:, 0]) / 0.05
    basis[:, 1, 1] = 0.004 * near_mouth * np.abs(rel[:, 0]) / 0.05  # smile
    brow_y = joints[index["left_eye_smplhf"]][1] + 0.02
    basis[:, 1, 2] = 0.006 * np.exp(-((template[:, 1] - brow_y) / 0.015) ** 2) * face  # brows
    eye_y = joints[index["left_eye_smplhf"]][1]
    basis[:, 1, 3] = -0.004 * np.exp(-((template[:, 1] - eye_y - 0.012) / 0.008) ** 2) * face
    basis[:, :, 4:] = _smooth_fields(template, NUM_EXPRESSION - 4, 0.1, 0.003, rng) * face[
        :, None, None]
    return basis
