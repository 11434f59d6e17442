"""The keypoint fitter (data_prep/fitting.py) and the driving poses (data_prep/driving.py) on the
procedural body, with synthetic keypoints from known poses and cameras."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from scipy.spatial.transform import Rotation

from data_prep.driving import driving_keypoints, driving_poses, driving_subject_files
from data_prep.fitting import (
    FitSettings,
    FitStage,
    fit_smplx_to_keypoints,
    fitting_camera,
    initial_orientation,
    is_back_view,
    project_points,
)
from data_prep.keypoints import landmark_table, posed_landmarks, smplx_to_coco133
from data_prep.stage import PrepData, write_keypoints
from persona.body.loader import BodySpec, load_body
from persona.body.types import FINGER_JOINTS, Identity, PoseParams
from persona.data.motions import make_builtin_motion
from persona.data.subject import camera_from_json, pose_from_json
from persona.render.types import Camera

WIDTH, HEIGHT = 576, 1024  # the virtual camera's size (METHOD.md section 8)
UPRIGHT = np.diag([1.0, -1.0, -1.0])  # body frame (y up, facing +z) -> OpenCV camera
LIMB_JOINTS = [1, 2, 4, 5, 7, 8, 16, 17, 18, 19, 20, 21]  # hips, knees, ankles, arms
FAST = FitSettings(iterations=(20, 20, 20))


@pytest.fixture(scope="module")
def body():
    return load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))


@pytest.fixture(scope="module")
def table(body):
    return landmark_table(body)


def _true_pose(seed: int, yaw: float = 0.4, transl=(0.05, 0.1, 4.5)) -> PoseParams:
    """Random limbs (std 0.3 rad), rigid torso and head, fingers std 0.1 rad, the root upright
    before the camera turned by `yaw` (and a little pitch / roll)."""
    g = torch.Generator().manual_seed(seed)
    full_pose = torch.zeros(1, 55, 3)
    full_pose[0, LIMB_JOINTS] = 0.3 * torch.randn(len(LIMB_JOINTS), 3, generator=g)
    full_pose[0, list(FINGER_JOINTS)] = 0.1 * torch.randn(30, 3, generator=g)
    root = Rotation.from_matrix(UPRIGHT) * Rotation.from_rotvec([0.1, yaw, 0.05])
    full_pose[0, 0] = torch.tensor(root.as_rotvec(), dtype=torch.float32)
    return PoseParams(full_pose, torch.zeros(1, 10), torch.tensor([transl]))


def _synthetic_keypoints(body, table, pose: PoseParams, camera: Camera,
                         betas: torch.Tensor | None = None) -> np.ndarray:
    """[133, 3]: the projected landmarks, score 1 where the body defines them, else 0."""
    identity = Identity(torch.zeros(body.num_betas) if betas is None else betas)
    with torch.no_grad():
        landmarks = posed_landmarks(body, identity, pose, table)[0]
    coco, valid = smplx_to_coco133(landmarks, table.valid)
    pixels = project_points(coco, camera).double().numpy()
    return np.concatenate([pixels, valid.numpy()[:, None].astype(np.float64)], axis=1)


def _angle_deg(rotvec_a: np.ndarray, rotvec_b: np.ndarray) -> float:
    delta = Rotation.from_rotvec(rotvec_a).inv() * Rotation.from_rotvec(rotvec_b)
    return float(np.degrees(delta.magnitude()))


# ------------------------------------------------------------------------------ camera helpers
def test_fitting_camera_and_projection():
    camera = fitting_camera(WIDTH, HEIGHT)
    np.testing.assert_allclose(camera.K.numpy(), [[2000, 0, 288], [0, 2000, 512], [0, 0, 1]])
    assert fitting_camera(288, 512).K[0, 0] == 1000.0  # scaled by height
    assert fitting_camera(100, 100, focal=321.0).K[1, 1] == 321.0
    with pytest.raises(ValueError, match="model.init_args.settings.focal"):
        fitting_camera(100, 100, focal=-1.0)
    rotation = torch.tensor(Rotation.from_rotvec([0.0, 0.3, 0.0]).as_matrix(), dtype=torch.float32)
    K = torch.tensor([[500.0, 0, 100.5], [0, 600.0, 80.0], [0, 0, 1]])
    cam = Camera(K=K, R=rotation, t=torch.tensor([0.1, -0.2, 3.0]), width=200, height=160)
    point = torch.tensor([[0.3, 0.4, 0.5]])
    x, y, z = (point[0] @ rotation.T + cam.t).tolist()
    expected = [500.0 * x / z + 100.5, 600.0 * y / z + 80.0]
    torch.testing.assert_close(project_points(point, cam)[0], torch.tensor(expected))


def test_back_view_detection_and_orientation():
    keypoints = np.zeros((133, 3))
    keypoints[5], keypoints[6] = (300.0, 100.0, 1.0), (200.0, 100.0, 1.0)  # left on image right
    weights = keypoints[:, 2].copy()
    assert not is_back_view(keypoints, weights)
    keypoints[[5, 6], 0] = keypoints[[6, 5], 0]
    assert is_back_view(keypoints, weights)
    camera = fitting_camera(WIDTH, HEIGHT)
    np.testing.assert_allclose(Rotation.from_rotvec(initial_orientation(camera, False))
                               .as_matrix(), UPRIGHT, atol=1e-12)
    np.testing.assert_allclose(Rotation.from_rotvec(initial_orientation(camera, True))
                               .as_matrix(), np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    turned = Rotation.from_rotvec([0.0, 0.0, 0.4]).as_matrix()
    camera.R = torch.tensor(turned, dtype=torch.float32)
    np.testing.assert_allclose(Rotation.from_rotvec(initial_orientation(camera, False))
                               .as_matrix(), turned.T @ UPRIGHT, atol=1e-6)


def test_initial_translation_from_similar_triangles(body, table):
    """Zero pose facing the camera: the torso-scale estimate lands within 2 % in depth."""
    camera = fitting_camera(WIDTH, HEIGHT)
    truth = (0.1, -0.05, 4.0)
    pose = _true_pose(0, yaw=0.0, transl=truth)
    pose.full_pose[0, 1:] = 0.0
    pose.full_pose[0, 0] = torch.tensor(Rotation.from_matrix(UPRIGHT).as_rotvec())
    keypoints = _synthetic_keypoints(body, table, pose, camera)
    _, _, diagnostics = fit_smplx_to_keypoints(body, keypoints, camera,
                                               FitSettings(iterations=(0, 0, 0)), table)
    initial = np.array(diagnostics.initial_transl)
    assert abs(initial[2] - truth[2]) < 0.02 * truth[2]
    np.testing.assert_allclose(initial[:2], truth[:2], atol=0.01)
    assert not diagnostics.back_view


# ------------------------------------------------------------------------------------- the fit
def test_default_schedule_recovers_pose(body, table):
    """METHOD.md's 3 x 250 iterations from the rest pose: < 1.5 px mean reprojection error at
    576 x 1024 and the global orientation within 5 degrees."""
    camera = fitting_camera(WIDTH, HEIGHT)
    truth = _true_pose(seed=3)
    keypoints = _synthetic_keypoints(body, table, truth, camera)
    pose, betas, diagnostics = fit_smplx_to_keypoints(body, keypoints, camera, FitSettings(),
                                                      table)
    assert diagnostics.num_keypoints == 63  # 23 body + feet, 2 x 20 finger points
    assert diagnostics.mean_error_px < 1.5
    assert np.isnan(diagnostics.errors_px[23:91]).all()  # face: no landmarks on this body
    assert _angle_deg(pose.full_pose[0, 0].double().numpy(),
                      truth.full_pose[0, 0].double().numpy()) < 5.0
    assert abs(float(pose.transl[0, 2]) - 4.5) < 0.25
    assert pose.full_pose.shape == (1, 55, 3) and betas.shape == (10,)
    assert torch.all(pose.full_pose[0, 22:25] == 0)  # jaw and eyes are not fitted
    assert len(diagnostics.stage_losses) == 3
    assert diagnostics.stage_losses[2] < diagnostics.stage_losses[1]


def test_zero_confidence_keypoints_have_no_influence(body, table):
    camera = fitting_camera(WIDTH, HEIGHT)
    keypoints = _synthetic_keypoints(body, table, _true_pose(seed=1), camera)
    ignored = [0, 5, 9, 16, 17, 92, 99, 120, 130]  # incl. a shoulder: the init falls back
    keypoints[ignored, 2] = 0.0
    keypoints[[3, 100], 2] = 0.2  # below min_score 0.3: ignored too
    reference = fit_smplx_to_keypoints(body, keypoints, camera, FAST, table)
    perturbed = keypoints.copy()
    rng = np.random.default_rng(0)
    moved = ignored + [3, 100, 91, 112, 30, 60]  # + hand roots and face (no landmark)
    perturbed[moved, :2] += rng.uniform(-400, 400, (len(moved), 2))
    perturbed[[30, 60], 2] = 1.0  # scored but undefined on this body
    result = fit_smplx_to_keypoints(body, perturbed, camera, FAST, table)
    assert torch.equal(result[0].full_pose, reference[0].full_pose)
    assert torch.equal(result[0].transl, reference[0].transl)
    assert torch.equal(result[1], reference[1])
    # ... while moving one weighted keypoint does change the result (the test can fail).
    perturbed[7, :2] += 30.0
    changed = fit_smplx_to_keypoints(body, perturbed, camera, FAST, table)
    assert not torch.equal(changed[0].full_pose, reference[0].full_pose)


def test_too_few_keypoints_is_an_error(body, table):
    keypoints = np.zeros((133, 3))
    keypoints[5] = (10.0, 10.0, 1.0)
    with pytest.raises(ValueError, match="min_score"):
        fit_smplx_to_keypoints(body, keypoints, fitting_camera(WIDTH, HEIGHT), FAST, table)
    with pytest.raises(ValueError, match=r"\[133, 3\]"):
        fit_smplx_to_keypoints(body, np.zeros((17, 3)), fitting_camera(WIDTH, HEIGHT), FAST,
                               table)


def test_fit_stage_writes_subject_files(tmp_path, body, table):
    """FitStage through Lightning predict: the written params reproduce the fit's errors."""
    width, height = 288, 512
    camera = fitting_camera(width, height)
    truth = _true_pose(seed=2)
    keypoints = _synthetic_keypoints(body, table, truth, camera)
    root = tmp_path / "subject"
    (root / "captured" / "images").mkdir(parents=True)
    Image.new("RGB", (width, height), (255, 255, 255)).save(root / "captured/images/0.png")
    write_keypoints(root / "captured/keypoints/0.json", keypoints)
    stage = FitStage(body=BodySpec(kind="procedural"), settings=FitSettings(
        iterations=(30, 30, 30)))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
    trainer.predict(stage, datamodule=PrepData(str(root), splits=["captured"]),
                    return_predictions=False)
    cam_json = json.loads((root / "captured/cam_params/0.json").read_text())
    assert cam_json["focal"] == [1000.0, 1000.0] and cam_json["princpt"] == [144.0, 256.0]
    params = json.loads((root / "captured/smplx_optimized/smplx_params/0.json").read_text())
    shape = json.loads((root / "smplx_optimized/shape_param.json").read_text())
    assert len(params["body_pose"]) == 63 and len(params["right_hand_pose"]) == 45
    assert len(shape["betas"]) == 10
    pose = pose_from_json(params, num_expression=10)
    written_camera = camera_from_json(cam_json, width, height)
    identity = Identity(torch.tensor(shape["betas"], dtype=torch.float32))
    with torch.no_grad():
        landmarks = posed_landmarks(body, identity, pose, table)[0]
    coco, _ = smplx_to_coco133(landmarks, table.valid)
    errors = np.linalg.norm(project_points(coco, written_camera).numpy() - keypoints[:, :2],
                            axis=1)
    diagnostics = stage.diagnostics["captured/0"]
    weighted = ~np.isnan(diagnostics.errors_px)
    np.testing.assert_allclose(errors[weighted], diagnostics.errors_px[weighted], atol=1e-3)
    assert diagnostics.mean_error_px < 50.0  # 30 iterations per stage: coarse but sane


# ------------------------------------------------------------------------------- driving poses
def test_driving_poses_zero_face_flat_hands(body):
    motion = make_builtin_motion("wave")
    poses = driving_poses(body, body.zero_identity(), motion)
    assert poses.batch_size == motion.num_frames
    assert torch.all(poses.full_pose[:, 22:25] == 0) and torch.all(poses.expression == 0)
    fingers = list(FINGER_JOINTS)
    torch.testing.assert_close(poses.full_pose[:, fingers],
                               (-body.pose_mean[fingers]).expand(motion.num_frames, -1, -1))
    torch.testing.assert_close(poses.full_pose[:, 1:22], torch.as_tensor(motion.poses[:, 1:22]))


def test_driving_keypoints_equal_direct_projection(body, table):
    motion = make_builtin_motion("wave")
    identity = Identity(0.3 * torch.ones(body.num_betas))
    sequence = driving_keypoints(body, identity, motion, table=table)
    assert len(sequence.dwposes) == motion.num_frames
    frame = 25
    one = PoseParams(sequence.poses.full_pose[frame:frame + 1],
                     sequence.poses.expression[frame:frame + 1],
                     sequence.poses.transl[frame:frame + 1])
    with torch.no_grad():
        points = posed_landmarks(body, identity, one, table)[0].double().numpy()  # [144, 3]
    pixels = np.stack([2000.0 * points[:, 0] / points[:, 2] + 288.0,
                       2000.0 * points[:, 1] / points[:, 2] + 512.0], 1)  # by hand
    size = np.array([WIDTH, HEIGHT], dtype=np.float64)
    dw = sequence.dwposes[frame]
    # OpenPose-18 <- SMPL-X: nose 55, RSho 17, RElb 19, RWri 21, LSho 16, LHip 1, LAnk 7, REye 56.
    for openpose, smplx in ((0, 55), (2, 17), (3, 19), (4, 21), (5, 16), (11, 1), (13, 7),
                            (14, 56)):
        np.testing.assert_allclose(dw.body[openpose] * size, pixels[smplx], atol=1e-3)
    np.testing.assert_allclose(dw.body[1] * size, 0.5 * (pixels[16] + pixels[17]), atol=1e-3)
    # Hands (left, then right): root = elbow + 1.1 (wrist - elbow); 4 = thumb tip, 8 = index tip.
    np.testing.assert_allclose(dw.hands[0, 0] * size,
                               pixels[18] + 1.1 * (pixels[20] - pixels[18]), atol=1e-3)
    np.testing.assert_allclose(dw.hands[1, 0] * size,
                               pixels[19] + 1.1 * (pixels[21] - pixels[19]), atol=1e-3)
    np.testing.assert_allclose(dw.hands[1, 4] * size, pixels[71], atol=1e-3)
    np.testing.assert_allclose(dw.hands[0, 8] * size, pixels[67], atol=1e-3)
    assert np.all(dw.body_score == 1.0) and np.all(dw.subset == np.arange(18))
    assert np.all(dw.hands_score == 1.0) and np.all(dw.faces_score == 0.0)
    np.testing.assert_allclose(sequence.keypoints[frame, 0, :2], pixels[55], atol=1e-3)


def test_driving_subject_files_round_trip(body):
    motion = make_builtin_motion("wave")
    sequence = driving_keypoints(body, body.zero_identity(), motion)
    files = driving_subject_files("generated_0", sequence.poses, sequence.camera)
    assert len(files) == 2 * motion.num_frames
    camera = files["generated_0/cam_params/4.json"]
    assert camera["focal"] == [2000.0, 2000.0] and camera["princpt"] == [288.0, 512.0]
    params = pose_from_json(json.loads(json.dumps(files[
        "generated_0/smplx_optimized/smplx_params/4.json"])), num_expression=10)
    torch.testing.assert_close(params.full_pose[0], sequence.poses.full_pose[4])
    torch.testing.assert_close(params.transl[0], sequence.poses.transl[4])
    with pytest.raises(ValueError, match="indices"):
        driving_subject_files("generated_0", sequence.poses, sequence.camera, [0, 1])


def test_fit_config_parses_to_the_default_settings(tmp_path):
    """configs/prep/fit.yaml instantiates FitStage through the prep CLI with exactly the
    dataclass defaults (the YAML documents the numbers; they must not drift apart)."""
    from pathlib import Path

    from data_prep.cli import build_cli

    config = Path(__file__).resolve().parents[2] / "configs" / "prep" / "fit.yaml"
    (tmp_path / "captured").mkdir()
    cli = build_cli(["--config", str(config), "--data.subject_dir", str(tmp_path),
                     "--model.init_args.body.kind", "procedural"])
    assert isinstance(cli.model, FitStage)
    assert cli.model.settings == FitSettings()
    assert cli.model.body.name == "procedural" and cli.datamodule.splits == ["captured"]


def test_fit_stage_smplx_kind_without_real_mesh_has_no_face(tmp_path):
    """kind smplx with a file that is not the real SMPL-X mesh (here the procedural body in the
    SMPL-X layout): no automatic landmark embedding, the face stays invalid."""
    from persona.body.procedural import build_procedural_arrays
    from persona.body.smplx_format import write_smplx_npz

    write_smplx_npz(tmp_path / "smplx" / "SMPLX_NEUTRAL.npz", build_procedural_arrays())
    stage = FitStage(body=BodySpec(kind="smplx", model_path=str(tmp_path)),
                     settings=FitSettings(iterations=(1, 1, 1)))
    assert stage.table.embedding is None and not stage.table.valid[76:].any()
