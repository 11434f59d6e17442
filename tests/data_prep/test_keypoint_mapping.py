"""Landmark definitions and the SMPL-X -> COCO-WholeBody-133 -> OpenPose-18 mappings
(PREPROCESSING.md section 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_prep.keypoints import (
    COCO_FROM_SMPLX,
    DERIVED_SOURCE,
    FIRST_STATIC_FACE,
    OFFICIAL_SOURCE,
    SMPLX_VERTEX_IDS,
    VERTEX_JOINT_NAMES,
    body_landmarks,
    contour_bins,
    hand_root,
    landmark_table,
    read_landmark_embedding,
    smplx_to_coco133,
    with_hand_roots,
)
from data_prep.pose_draw import coco133_to_dwpose
from persona.body.lbs import rigid_chain
from persona.body.loader import BodySpec, load_body
from persona.body.model import DERIVED_FROM_WEIGHTS, REGION_NAMES, BodyModel
from persona.body.types import SMPLX_PARENTS, Identity, PoseParams
from persona.ops.rotations import axis_angle_to_matrix


@pytest.fixture(scope="module")
def procedural():
    return load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))


def _random_pose(batch: int, seed: int, num_expression: int = 10) -> PoseParams:
    g = torch.Generator().manual_seed(seed)
    return PoseParams(0.3 * torch.randn(batch, 55, 3, generator=g),
                      torch.randn(batch, num_expression, generator=g),
                      torch.randn(batch, 3, generator=g))


def _fake_smplx_body(num_vertices: int = 10475) -> BodyModel:
    """A body with the real SMPL-X vertex count (random geometry, every vertex on the pelvis)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.zeros(num_vertices, 55)
    weights[:, 0] = 1.0
    regressor = torch.zeros(55, num_vertices)
    regressor[torch.arange(55), torch.arange(55)] = 1.0
    masks = {name: torch.zeros(num_vertices, dtype=torch.bool) for name in REGION_NAMES}
    return BodyModel(torch.randn(num_vertices, 3, generator=g), torch.zeros(1, 3).long(),
                     torch.tensor(SMPLX_PARENTS), weights, torch.zeros(num_vertices, 3, 2),
                     torch.zeros(num_vertices, 3, 2), regressor, torch.zeros(55, 3), masks,
                     DERIVED_FROM_WEIGHTS, name="fake-smplx")


# ------------------------------------------------------------------------------ mapping tables
def test_coco_table_spot_checks_against_section_4_4():
    table = COCO_FROM_SMPLX
    assert len(table) == 133
    assert table[:23] == (55, 57, 56, 59, 58, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8,
                          60, 61, 62, 63, 64, 65)
    assert table[23:40] == tuple(range(127, 144))  # contour in order
    assert table[40:91] == tuple(range(76, 127))  # brows .. mouth in order
    assert table[91] == -1 and table[112] == -1  # hand roots: no SMPL-X joint
    assert table[92:96] == (37, 38, 39, 66)  # left thumb
    assert table[96:100] == (25, 26, 27, 67)  # left index
    assert table[104:108] == (34, 35, 36, 69)  # left ring
    assert table[108:112] == (31, 32, 33, 70)  # left pinky
    assert table[113:117] == (52, 53, 54, 71)  # right thumb
    assert table[121:125] == (43, 44, 45, 73)  # right middle
    assert table[129:133] == (46, 47, 48, 75)  # right pinky
    assert sorted(t for t in table if t >= 0) == sorted(set(t for t in table if t >= 0))


def test_smplx_to_coco133_gathers_by_index_numpy_and_torch():
    landmarks = np.stack([np.arange(144.0), -np.arange(144.0), np.full(144, 7.0)], 1)  # [144, 3]
    valid = np.ones(144, dtype=bool)
    valid[56] = False  # the right eye
    batched = np.stack([landmarks, 2 * landmarks])  # [2, 144, 3]
    out, ok = smplx_to_coco133(batched, valid)
    assert out.shape == (2, 133, 3) and ok.shape == (133,)
    for coco, smplx in enumerate(COCO_FROM_SMPLX):
        if smplx < 0:
            assert not ok[coco] and np.all(out[:, coco] == 0)
        else:
            assert out[1, coco, 0] == 2 * smplx and out[0, coco, 1] == -smplx
    assert not ok[2] and ok[1]  # COCO right eye <- SMPL-X 56
    out_t, ok_t = smplx_to_coco133(torch.as_tensor(batched), torch.as_tensor(valid))
    np.testing.assert_array_equal(out_t.numpy(), out)
    np.testing.assert_array_equal(ok_t.numpy(), ok)


def _dwpose_reference_body(coco: np.ndarray) -> np.ndarray:
    """DWPose's own recipe (PREPROCESSING.md 1.8): insert the neck at 17, then permute."""
    neck = coco[[5, 6]].mean(0)
    neck[2] = float(coco[5, 2] > 0.3 and coco[6, 2] > 0.3)
    new = np.insert(coco, 17, neck, axis=0)  # [134, 3]
    dst = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
    src = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
    new[dst] = new[src]
    return new[:18]


@pytest.mark.parametrize("scores", [(0.9, 0.8), (0.9, 0.2), (0.1, 0.9)])
def test_openpose18_body_matches_dwpose_recipe(scores):
    """coco133_to_dwpose's body (what the pose videos draw) against DWPose's own recipe."""
    rng = np.random.default_rng(0)
    coco = np.concatenate([rng.uniform(0, 500, (133, 2)), rng.uniform(0.5, 1, (133, 1))], 1)
    coco[5, 2], coco[6, 2] = scores
    dw = coco133_to_dwpose(coco, height=1.0, width=1.0)  # pixels: normalised by 1
    out = np.concatenate([dw.body, dw.body_score[0][:, None]], 1)  # [18, 3]
    np.testing.assert_allclose(out, _dwpose_reference_body(coco))
    np.testing.assert_allclose(out[1, :2], 0.5 * (coco[5, :2] + coco[6, :2]))  # neck
    assert out[1, 2] == float(scores[0] > 0.3 and scores[1] > 0.3)
    # Named spot checks (OpenPose: 2 RShoulder <- COCO 6, 15 LEye <- COCO 1, 17 LEar <- COCO 3).
    np.testing.assert_allclose(out[[2, 15, 17]], coco[[6, 1, 3]])


def test_hand_root_formula_and_fill():
    assert np.allclose(hand_root(np.array([0.0, 0.0]), np.array([10.0, 4.0])), [11.0, 4.4])
    coco = np.zeros((133, 2))
    coco[7], coco[9] = (100.0, 200.0), (120.0, 260.0)  # left elbow, left wrist
    coco[8], coco[10] = (300.0, 200.0), (290.0, 150.0)  # right elbow, right wrist
    valid = np.ones(133, dtype=bool)
    valid[[91, 112]] = False
    valid[10] = False
    filled, ok = with_hand_roots(coco, valid)
    np.testing.assert_allclose(filled[91], [122.0, 266.0])  # 100 + 1.1 * 20, 200 + 1.1 * 60
    np.testing.assert_allclose(filled[112], [289.0, 145.0])
    assert ok[91] and not ok[112]  # the right wrist is invalid
    assert not valid[91]  # inputs untouched
    k = np.zeros((133, 3))
    k[7, :2], k[9, :2] = (10.0, 20.0), (20.0, 40.0)  # left elbow, left wrist
    k[8, :2], k[10, :2] = (50.0, 50.0), (40.0, 50.0)  # right elbow, right wrist
    out, _ = with_hand_roots(k, np.ones(133, dtype=bool))
    np.testing.assert_allclose(out[91, :2], (21.0, 42.0))
    np.testing.assert_allclose(out[112, :2], (39.0, 50.0))
    assert (k[91] == 0).all()  # input untouched


# ----------------------------------------------------------------------------------- landmarks
def test_procedural_landmarks_are_posed_joints_and_vertices(procedural):
    table = landmark_table(procedural)
    assert table.source == DERIVED_SOURCE
    assert table.valid[:FIRST_STATIC_FACE].all() and not table.valid[FIRST_STATIC_FACE:].any()
    identity = Identity(0.5 * torch.randn(10, generator=torch.Generator().manual_seed(3)))
    pose = _random_pose(3, seed=1)
    landmarks, valid = body_landmarks(procedural, identity, pose, table)
    assert landmarks.shape == (3, 144, 3) and valid.shape == (144,)
    vertices = procedural(identity, pose)  # [3, V, 3]
    ids = table.vertex_joints[:, 0]
    torch.testing.assert_close(landmarks[:, 55:76], vertices[:, ids], atol=1e-6, rtol=0)
    rotations = axis_angle_to_matrix(pose.full_pose + procedural.pose_mean)
    joints, _ = rigid_chain(rotations, procedural.rest_joints(identity).expand(3, -1, -1),
                            procedural.parents)
    torch.testing.assert_close(landmarks[:, :55], joints + pose.transl[:, None], atol=1e-6,
                               rtol=0)
    assert torch.isfinite(landmarks).all()  # invalid ones sit at the head joint


def test_procedural_derived_vertex_joints_make_sense(procedural):
    ids = landmark_table(procedural).vertex_joints[:, 0]
    v = procedural.v_template
    joints = procedural.J_regressor @ v
    named = {name: v[i] for name, i in zip(VERTEX_JOINT_NAMES, ids.tolist(), strict=True)}
    head = (procedural.lbs_weights[:, 15] + procedural.lbs_weights[:, 22]) > 0.5
    assert named["nose"][2] == v[head, 2].max()  # the foremost head vertex
    assert abs(float(named["nose"][0])) < 1e-6  # on the midline
    for side, sign, eye, wrist, ankle in (("left", 1, 23, 20, 7), ("right", -1, 24, 21, 8)):
        assert sign * named[f"{side}_eye"][0] > 0 and sign * named[f"{side}_ear"][0] > 0
        assert named[f"{side}_eye"][2] > joints[eye, 2]  # in front of the eye joint
        assert sign * named[f"{side}_ear"][0] > sign * named[f"{side}_eye"][0]
        assert named[f"{side}_big_toe"][2] > joints[ankle, 2] > named[f"{side}_heel"][2]
        assert named[f"{side}_big_toe"][1] < joints[ankle, 1]
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = named[f"{side}_{finger}"]
            third = joints[procedural_joint(f"{side}_{finger}3")]
            assert (tip - joints[wrist]).norm() > (third - joints[wrist]).norm()
    # The procedural body is mirror-symmetric: so are its derived landmarks.
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    for name in VERTEX_JOINT_NAMES:
        if name.startswith("left_"):
            torch.testing.assert_close(named[name] * mirror, named[name.replace("left", "right")],
                                       atol=1e-5, rtol=0)


def procedural_joint(name: str) -> int:
    from persona.body.types import SMPLX_JOINT_NAMES

    return SMPLX_JOINT_NAMES.index(name)


def test_real_smplx_vertex_count_uses_official_ids():
    body = _fake_smplx_body()
    table = landmark_table(body)
    assert table.source == OFFICIAL_SOURCE
    assert table.vertex_joints[:, 0].tolist() == list(SMPLX_VERTEX_IDS)
    assert SMPLX_VERTEX_IDS[0] == 9120 and SMPLX_VERTEX_IDS[VERTEX_JOINT_NAMES.index(
        "left_ear")] == 6 and SMPLX_VERTEX_IDS[-1] == 8022
    pose = _random_pose(2, seed=2, num_expression=2)
    landmarks, _ = body_landmarks(body, body.zero_identity(), pose, table)
    vertices = body(body.zero_identity(), pose)
    torch.testing.assert_close(landmarks[:, 55], vertices[:, 9120])  # nose
    torch.testing.assert_close(landmarks[:, 60], vertices[:, 5770])  # left big toe


def _write_embedding(path, num_vertices: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    faces = rng.integers(0, num_vertices, size=(500, 3))
    arrays = {"f": faces, "lmk_faces_idx": rng.integers(0, 500, 51),
              "lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
              "dynamic_lmk_faces_idx": rng.integers(0, 500, (79, 17)),
              "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), (79, 17))}
    np.savez(path, **arrays)
    return arrays


def test_landmark_embedding_static_and_contour(tmp_path):
    body = _fake_smplx_body()
    arrays = _write_embedding(tmp_path / "SMPLX_NEUTRAL.npz", body.num_vertices)
    table = landmark_table(body, read_landmark_embedding(tmp_path / "SMPLX_NEUTRAL.npz"))
    assert table.valid.all()
    angle = math.radians(-20.0)  # neck turned by -20 degrees about y -> smplx bin 20
    pose = PoseParams(torch.zeros(1, 55, 3), torch.zeros(1, 2), torch.zeros(1, 3))
    pose.full_pose[0, 12, 1] = angle
    landmarks, _ = body_landmarks(body, body.zero_identity(), pose, table)
    vertices = body(body.zero_identity(), pose)[0].double().numpy()  # [V, 3]
    faces = arrays["f"]
    k = 7
    tri = faces[arrays["lmk_faces_idx"][k]]
    expected = (arrays["lmk_bary_coords"][k][:, None] * vertices[tri]).sum(0)
    np.testing.assert_allclose(landmarks[0, 76 + k].numpy(), expected, atol=1e-5)
    tri = faces[arrays["dynamic_lmk_faces_idx"][20, 3]]
    expected = (arrays["dynamic_lmk_bary_coords"][20, 3][:, None] * vertices[tri]).sum(0)
    np.testing.assert_allclose(landmarks[0, 127 + 3].numpy(), expected, atol=1e-5)


def test_contour_bins_follow_smplx_yaw_rule():
    pose = torch.zeros(5, 55, 3)
    for b, degrees in enumerate((0.0, -20.0, 20.0, -60.0, 60.0)):
        pose[b, 12, 1] = math.radians(degrees)  # neck yaw about y
    # yaw y -> a = round(min(-y, 39)); a >= 0 -> a; -39 <= a < 0 -> 39 - a; a < -39 -> 78.
    assert contour_bins(pose, torch.zeros(55, 3)).tolist() == [0, 20, 59, 39, 78]


def test_embedding_errors_name_the_setting(tmp_path, procedural):
    with pytest.raises(FileNotFoundError, match="model.init_args.landmark_embedding"):
        read_landmark_embedding(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", f=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="model.init_args.landmark_embedding"):
        read_landmark_embedding(tmp_path / "bad.npz")
    _write_embedding(tmp_path / "ok.npz", procedural.num_vertices)
    with pytest.raises(ValueError, match="10475"):
        landmark_table(procedural, read_landmark_embedding(tmp_path / "ok.npz"))
