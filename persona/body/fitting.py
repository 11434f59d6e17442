"""Small numerical helpers shared by the body builders (open and procedural)."""

from __future__ import annotations

import numpy as np

# Ridge weight of the joint-regressor fit, relative to the data term (keeps weights small
# and spread when several vertex sets reproduce the joints equally well).
REGRESSOR_RIDGE = 1e-6


def fit_joint_regressor(vertices: np.ndarray, joints: np.ndarray, support: list[np.ndarray],
                        ridge: float = REGRESSOR_RIDGE) -> np.ndarray:
    """Fit a sparse affine joint regressor.

    vertices [S, V, 3] and joints [S, J, 3] over S samples (shapes); support[j] the vertex ids
    that may carry weight for joint j. Each row solves min sum_s |sum_k w_k v_sk - j_s|^2 +
    ridge |w|^2 subject to sum_k w_k = 1 (exact for S = 1 when the support spans the joint).
    Returns J_regressor [J, V].
    """
    num_samples, num_vertices, _ = vertices.shape
    regressor = np.zeros((joints.shape[1], num_vertices), dtype=np.float64)
    for joint, ids in enumerate(support):
        points = vertices[:, ids, :]  # [S, K, 3]
        design = points.transpose(0, 2, 1).reshape(num_samples * 3, len(ids))  # [3S, K]
        target = joints[:, joint, :].reshape(num_samples * 3)  # [3S]
        scale = max(float(np.mean(design * design)), 1e-12)
        gram = design.T @ design + ridge * scale * np.eye(len(ids))  # [K, K]
        kkt = np.zeros((len(ids) + 1, len(ids) + 1))
        kkt[:-1, :-1] = gram
        kkt[:-1, -1] = 1.0
        kkt[-1, :-1] = 1.0
        rhs = np.concatenate([design.T @ target, [1.0]])
        solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        regressor[joint, ids] = solution[:-1]
    return regressor


def nearest_support(template: np.ndarray, joints: np.ndarray, count: int) -> list[np.ndarray]:
    """The `count` template vertices [V,3] nearest to each joint [J,3]."""
    distances = np.linalg.norm(template[None, :, :] - joints[:, None, :], axis=-1)  # [J, V]
    return [np.argsort(row)[:count] for row in distances]


def landmark_arrays(faces: np.ndarray, candidate_faces: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark arrays smplx needs (51 static, 79 x 17 dynamic contour) on `candidate_faces`.

    They only make smplx's forward run: PERSONA reads no smplx landmark. Faces are spread over
    the candidates and the barycentric coordinates are face centres.
    """
    from persona.body.smplx_format import (
        NUM_DYNAMIC_LANDMARK_BINS,
        NUM_DYNAMIC_LANDMARKS,
        NUM_STATIC_LANDMARKS,
    )

    if len(candidate_faces) == 0:
        candidate_faces = np.arange(len(faces))
    static = candidate_faces[np.linspace(0, len(candidate_faces) - 1,
                                         NUM_STATIC_LANDMARKS).astype(np.int64)]
    dynamic_count = NUM_DYNAMIC_LANDMARK_BINS * NUM_DYNAMIC_LANDMARKS
    dynamic = candidate_faces[np.linspace(0, len(candidate_faces) - 1,
                                          dynamic_count).astype(np.int64)]
    third = np.full(3, 1.0 / 3.0)
    return {
        "lmk_faces_idx": static.astype(np.int64),
        "lmk_bary_coords": np.tile(third, (NUM_STATIC_LANDMARKS, 1)),
        "dynamic_lmk_faces_idx": dynamic.reshape(NUM_DYNAMIC_LANDMARK_BINS,
                                                 NUM_DYNAMIC_LANDMARKS).astype(np.int64),
        "dynamic_lmk_bary_coords": np.tile(third, (NUM_DYNAMIC_LANDMARK_BINS,
                                                   NUM_DYNAMIC_LANDMARKS, 1)),
    }


def smplx_arrays(v_template: np.ndarray, faces: np.ndarray, weights: np.ndarray,
                 J_regressor: np.ndarray, parents: np.ndarray, shape_basis: np.ndarray,
                 expression_basis: np.ndarray, landmark_faces: np.ndarray,
                 hands_mean: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Assemble a full-layout SMPL-X array set (300 shape + 100 expression columns, zero
    pose correctives, identity hand PCA, hand means zero unless given)."""
    from persona.body.smplx_format import (
        EXPRESSION_SPACE_DIM,
        NUM_HAND_POSE,
        NUM_POSE_BASIS,
        SHAPE_SPACE_DIM,
    )

    num_vertices = v_template.shape[0]
    if shape_basis.shape[-1] > SHAPE_SPACE_DIM or expression_basis.shape[-1] > EXPRESSION_SPACE_DIM:
        raise ValueError("shape or expression basis larger than the SMPL-X layout (300 / 100)")
    shapedirs = np.zeros((num_vertices, 3, SHAPE_SPACE_DIM + EXPRESSION_SPACE_DIM), np.float32)
    shapedirs[:, :, :shape_basis.shape[-1]] = shape_basis
    shapedirs[:, :, SHAPE_SPACE_DIM:SHAPE_SPACE_DIM + expression_basis.shape[-1]] = (
        expression_basis)
    kintree = np.stack([parents, np.arange(len(parents))]).astype(np.int64)
    hands_mean = np.zeros(2 * NUM_HAND_POSE) if hands_mean is None else hands_mean
    arrays = {
        "v_template": v_template.astype(np.float32),
        "f": faces.astype(np.int64),
        "shapedirs": shapedirs,
        "posedirs": np.zeros((num_vertices, 3, NUM_POSE_BASIS), np.float32),
        "J_regressor": J_regressor.astype(np.float32),
        "kintree_table": kintree,
        "weights": weights.astype(np.float32),
        "hands_componentsl": np.eye(NUM_HAND_POSE, dtype=np.float32),
        "hands_componentsr": np.eye(NUM_HAND_POSE, dtype=np.float32),
        "hands_meanl": hands_mean[:NUM_HAND_POSE].astype(np.float32),
        "hands_meanr": hands_mean[NUM_HAND_POSE:].astype(np.float32),
    }
    arrays.update(landmark_arrays(faces, landmark_faces))
    return arrays


def smooth_vertex_field(values: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Uniform Laplacian smoothing of a per-vertex field [V, ...] over the mesh edges."""
    num_vertices = values.shape[0]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    degree = np.bincount(edges[:, 0], minlength=num_vertices).astype(np.float64)
    degree = np.maximum(degree, 1.0).reshape((-1,) + (1,) * (values.ndim - 1))
    result = values.astype(np.float64)
    for _ in range(iterations):
        summed = np.zeros_like(result)
        np.add.at(summed, edges[:, 0], result[edges[:, 1]])
        result = 0.5 * result + 0.5 * summed / degree
    return result
