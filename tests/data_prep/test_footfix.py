"""The ankle-only foot fix of generated frames (data_prep/footfix.py) on the procedural body:
known ankle rotations -> projected toe / heel keypoints -> the fix from perturbed ankles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import savgol_filter
from scipy.spatial.transform import Rotation

from data_prep.cli import main as prep_main
from data_prep.driving import project_coco133
from data_prep.fitting import fitting_camera
from data_prep.footfix import (
    ANKLE_JOINTS,
    FootFixSettings,
    FootLandmarks,
    fix_ankles,
    foot_landmark_ids,
    savgol_window,
    smooth_sequence,
    with_fixed_ankles,
)
from data_prep.keypoints import landmark_table, posed_landmarks
from data_prep.stage import keypoints_relpath, write_keypoints
from persona.body.loader import BodySpec, load_body
from persona.body.types import Identity, PoseParams
from persona.data.palette import labels_to_rgb
from persona.data.subject import (
    FramePaths,
    camera_to_json,
    pose_to_json,
    validate_subject,
    write_frame_list,
    write_identity,
    write_json,
    write_npy,
    write_png,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "prep" / "footfix.yaml"
UPRIGHT = np.diag([1.0, -1.0, -1.0])  # body frame (y up, facing +z) -> OpenCV camera
FRAMES = 10  # frames of the known-answer sequence (>= the Savitzky-Golay window 9)
PERTURBATION = 0.3  # rad: the driving ankles are this far from the truth
FAST_ITERATIONS = 30  # enough for the exactness tests (no convergence needed)
STAGE_FRAMES = 6  # frames of the small subject's generated split
STAGE_SIZE = (144, 256)  # W, H: the virtual camera at MimicMotion resolution 144


@pytest.fixture(scope="module")
def body():
    return load_body(BodySpec(kind="procedural", num_betas=10, num_expression=10))


@pytest.fixture(scope="module")
def table(body):
    return landmark_table(body)


def _true_poses(frames: int) -> PoseParams:
    """Upright before the camera, bent left leg, ankles quadratic in time (smooth)."""
    full_pose = torch.zeros(frames, 55, 3)
    full_pose[:, 0] = torch.tensor(Rotation.from_matrix(UPRIGHT).as_rotvec(), dtype=torch.float32)
    full_pose[:, 1] = torch.tensor([0.2, 0.0, 0.05])
    full_pose[:, 4] = torch.tensor([0.3, 0.0, 0.0])
    s = torch.linspace(-1.0, 1.0, frames)[:, None]  # [T, 1]
    full_pose[:, 7] = (torch.tensor([0.3, 0.1, -0.1]) + s * torch.tensor([0.1, -0.1, 0.05])
                       + s**2 * torch.tensor([0.05, 0.05, 0.0]))
    full_pose[:, 8] = torch.tensor([-0.2, -0.1, 0.1]) + s * torch.tensor([-0.1, 0.1, 0.05])
    transl = torch.tensor([[0.0, 0.1, 4.5]]).repeat(frames, 1)
    return PoseParams(full_pose, torch.zeros(frames, 10), transl)


def _perturbed(poses: PoseParams, seed: int = 0) -> PoseParams:
    """The poses with each ankle turned by PERTURBATION rad about a random axis (axis-angle)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(poses.batch_size, 2, 3, generator=g),
                                              dim=-1)
    full_pose = poses.full_pose.clone()
    full_pose[:, list(ANKLE_JOINTS)] += PERTURBATION * direction
    return PoseParams(full_pose, poses.expression.clone(), poses.transl.clone())


def _angles_deg(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Rotation angle between axis-angle rotations a, b [..., 3] in degrees."""
    ra = Rotation.from_rotvec(a.reshape(-1, 3).double().numpy())
    rb = Rotation.from_rotvec(b.reshape(-1, 3).double().numpy())
    return np.degrees((ra.inv() * rb).magnitude())


# ---------------------------------------------------------------------------------- pieces
def test_foot_landmarks_equal_posed_landmarks(body, table):
    g = torch.Generator().manual_seed(3)
    frames = 4
    pose = PoseParams(0.3 * torch.randn(frames, 55, 3, generator=g),
                      torch.randn(frames, 10, generator=g), torch.randn(frames, 3, generator=g))
    identity = Identity(0.5 * torch.randn(10, generator=g),
                        joint_offset=0.01 * torch.randn(55, 3, generator=g))
    ids = foot_landmark_ids()
    assert ids == [60, 61, 62, 63, 64, 65]  # COCO 17-22 <- SMPL-X toes and heels
    feet = FootLandmarks(body, identity, pose, table, ids)
    ankles = pose.full_pose[:, list(ANKLE_JOINTS)] + 0.2  # other ankles than the stored ones
    moved = PoseParams(pose.full_pose.clone(), pose.expression, pose.transl)
    moved.full_pose[:, list(ANKLE_JOINTS)] = ankles
    expected = posed_landmarks(body, identity, moved, table)[:, ids]  # [T, 6, 3]
    torch.testing.assert_close(feet(ankles), expected, atol=1e-5, rtol=0)


def test_savgol_matches_local_quadratic_fits_and_keeps_a_quadratic():
    rng = np.random.default_rng(0)
    frames, window, order = 15, 9, 2
    values = rng.normal(size=(frames, 2, 3))
    smoothed, used = smooth_sequence(values, window, order)
    assert used == window
    # independent: a least-squares quadratic over each window (the first / last window at the
    # ends, scipy's mode 'interp'), evaluated at the frame
    half = window // 2
    t = np.arange(frames)
    expected = np.empty_like(values)
    for i in range(frames):
        lo = min(max(i - half, 0), frames - window)
        span = t[lo:lo + window]
        flat = values[lo:lo + window].reshape(window, -1)
        coefficients = np.polyfit(span, flat, order)  # [3, 6]
        expected[i] = (np.vander([i], order + 1) @ coefficients).reshape(2, 3)
    np.testing.assert_allclose(smoothed, expected, atol=1e-10)
    np.testing.assert_allclose(smoothed, savgol_filter(values, 9, 2, axis=0), atol=1e-12)
    quadratic = (0.3 + 0.2 * t - 0.05 * t**2)[:, None, None] * np.ones((1, 2, 3))
    np.testing.assert_allclose(smooth_sequence(quadratic, window, order)[0], quadratic,
                               atol=1e-10)
    # short sequences: the largest odd window <= T that is > order, else none
    assert [savgol_window(n, 9, 2) for n in (2, 3, 4, 7, 8, 9, 30)] == [0, 3, 3, 7, 7, 9, 9]
    short, used = smooth_sequence(values[:2], window, order)
    assert used == 0 and np.array_equal(short, values[:2])


def test_with_fixed_ankles_changes_only_the_ankle_entries():
    data = {"global_orient": [0.1, 0.2, 0.3], "body_pose": [float(i) / 7 for i in range(63)],
            "transl": [1.0, 2.0, 3.0], "expr": [0.5]}
    out = with_fixed_ankles(data, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert out["body_pose"][18:24] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert out["body_pose"][:18] == data["body_pose"][:18]
    assert out["body_pose"][24:] == data["body_pose"][24:]
    assert {k: v for k, v in out.items() if k != "body_pose"} == {
        k: v for k, v in data.items() if k != "body_pose"}
    assert data["body_pose"][18] == 18 / 7  # the input is not modified


# ---------------------------------------------------------------------------------- the fix
def test_fix_recovers_known_ankles(body, table):
    truth = _true_poses(FRAMES)
    camera = fitting_camera(576, 1024)
    identity = Identity(torch.zeros(10))
    keypoints = project_coco133(body, identity, truth, camera, table)  # [T, 133, 3], score 1
    driving = _perturbed(truth)
    fixed, diagnostics = fix_ankles(body, identity, driving, camera, keypoints,
                                    FootFixSettings(iterations=250), table)
    assert diagnostics.error_before_px > 5.0
    assert diagnostics.error_after_px < 1.0, diagnostics
    assert diagnostics.savgol_window == 9
    angles = _angles_deg(fixed.full_pose[:, list(ANKLE_JOINTS)],
                         truth.full_pose[:, list(ANKLE_JOINTS)])
    start = _angles_deg(driving.full_pose[:, list(ANKLE_JOINTS)],
                        truth.full_pose[:, list(ANKLE_JOINTS)])
    assert start.min() > 10.0  # 0.3 rad = 17 degrees
    assert angles.max() < 4.0 and angles.mean() < 1.5, angles
    others = [j for j in range(55) if j not in ANKLE_JOINTS]
    assert torch.equal(fixed.full_pose[:, others], driving.full_pose[:, others])
    assert torch.equal(fixed.transl, driving.transl)
    assert torch.equal(fixed.expression, driving.expression)


def test_unconfident_keypoints_have_no_influence_and_smoothing_is_savgol(body, table):
    truth = _true_poses(FRAMES)
    camera = fitting_camera(576, 1024)
    identity = Identity(torch.zeros(10))
    keypoints = project_coco133(body, identity, truth, camera, table)
    keypoints[2, 17, 2] = 0.2  # one left big toe below the threshold
    keypoints[4, 20:23, 2] = 0.29  # frame 4: no confident right-foot keypoint
    keypoints[6, 17:20, 2] = 0.3  # frame 6: left foot exactly 0.3 (authors: score > 0.3)
    moved = keypoints.copy()
    rng = np.random.default_rng(1)
    for frame, ids in ((2, [17]), (4, [20, 21, 22]), (6, [17, 18, 19])):
        moved[frame, ids, :2] += rng.uniform(20.0, 60.0, (len(ids), 2))
    body_and_hands = [k for k in range(133) if k not in range(17, 23)]
    moved[:, body_and_hands, :2] += rng.normal(0.0, 30.0, (FRAMES, len(body_and_hands), 2))
    driving = _perturbed(truth, seed=5)
    settings = FootFixSettings(iterations=FAST_ITERATIONS)
    first, diagnostics = fix_ankles(body, identity, driving, camera, keypoints, settings, table)
    second, _ = fix_ankles(body, identity, driving, camera, moved, settings, table)
    assert torch.equal(first.full_pose, second.full_pose)
    # feet without a confident keypoint keep the driving ankle exactly
    assert diagnostics.optimised[4] == [True, False] and diagnostics.optimised[6] == [False, True]
    assert torch.equal(first.full_pose[4, 8], driving.full_pose[4, 8])
    assert torch.equal(first.full_pose[6, 7], driving.full_pose[6, 7])
    assert not torch.equal(first.full_pose[5, 8], driving.full_pose[5, 8])
    # the smoothing is scipy's Savitzky-Golay (9, 2) of the unsmoothed optimum, per component
    raw, _ = fix_ankles(body, identity, driving, camera, keypoints,
                        FootFixSettings(iterations=FAST_ITERATIONS, smooth=False), table)
    raw_ankles = raw.full_pose[:, list(ANKLE_JOINTS)].double().numpy()  # [T, 2, 3]
    expected = savgol_filter(raw_ankles, 9, 2, axis=0)
    expected[4, 1] = raw_ankles[4, 1]  # not optimised: driving kept
    expected[6, 0] = raw_ankles[6, 0]
    np.testing.assert_allclose(first.full_pose[:, list(ANKLE_JOINTS)].double().numpy(),
                               expected, atol=1e-6)


# ---------------------------------------------------------------------------------- the stage
def _frame_files(root: Path, split: str, index: int, pose: PoseParams, b: int, camera) -> None:
    """Every per-frame file the subject format asks for (blank maps, real camera and params)."""
    width, height = camera.width, camera.height
    paths = FramePaths(split, index)
    write_png(root / paths.image, np.full((height, width, 3), 200, np.uint8))
    write_png(root / paths.mask, np.zeros((height, width), np.uint8))
    write_png(root / paths.seg, labels_to_rgb(np.zeros((height, width), np.int64)))
    write_npy(root / paths.depth, np.zeros((height, width), np.float32))
    write_npy(root / paths.normal, np.zeros((height, width, 3), np.float32))
    write_json(root / paths.camera, camera_to_json(camera))
    write_json(root / f"{split}/smplx_optimized/smplx_params/{index}.json", pose_to_json(pose, b))


def _small_subject(root: Path, body, table) -> tuple[PoseParams, PoseParams]:
    """A valid subject whose generated_0 holds perturbed ankles and the true poses' keypoints.
    Returns (truth, driving)."""
    write_json(root / "subject.json", {"format_version": 1, "name": "footfix", "body": {
        "kind": "procedural", "gender": "neutral", "num_betas": 10, "num_expression": 10}})
    identity = Identity(torch.zeros(10))
    write_identity(root, identity)
    camera = fitting_camera(*STAGE_SIZE)
    truth = _true_poses(STAGE_FRAMES)
    driving = _perturbed(truth, seed=2)
    _frame_files(root, "captured", 0, truth, 0, camera)
    write_png(root / "captured/image_intrinsics/0_albedo.png",
              np.full((camera.height, camera.width, 3), 128, np.uint8))
    keypoints = project_coco133(body, identity, truth, camera, table)
    for i in range(STAGE_FRAMES):
        _frame_files(root, "generated_0", i, driving, i, camera)
        write_keypoints(root / keypoints_relpath("generated_0", i), keypoints[i])
    write_frame_list(root / "generated_0/frame_idx_list.txt", list(range(STAGE_FRAMES)))
    return truth, driving


def _run(subject: Path, *args: str) -> int:
    return prep_main(["--config", str(CONFIG), "--data.subject_dir", str(subject),
                      "--trainer.accelerator", "cpu",
                      "--model.init_args.settings.iterations", "150", *args])


def test_stage_writes_only_ankles_and_a_valid_subject(tmp_path, body, table, capsys):
    subject = tmp_path / "subject"
    truth, driving = _small_subject(subject, body, table)
    params_dir = subject / "generated_0/smplx_optimized/smplx_params"
    before = {i: json.loads((params_dir / f"{i}.json").read_text())
              for i in range(STAGE_FRAMES)}
    assert validate_subject(subject) == []
    assert _run(subject) == 0
    assert validate_subject(subject) == []
    marker = json.loads((subject / "generated_0/smplx_optimized/footfix.json").read_text())
    assert marker["frames"] == list(range(STAGE_FRAMES))
    assert marker["settings"]["iterations"] == 150 and marker["settings"]["savgol_window"] == 9
    diagnostics = marker["diagnostics"]
    assert diagnostics["error_before_px"] > 2.0 and diagnostics["error_after_px"] < 1.0
    assert diagnostics["savgol_window"] == 5  # 6 frames: the largest odd window <= 6
    np.testing.assert_array_equal(marker["driving_ankles"],
                                  driving.full_pose[:, list(ANKLE_JOINTS)].double().numpy())
    first_run = {}
    for i in range(STAGE_FRAMES):
        text = (params_dir / f"{i}.json").read_text()
        after, old = json.loads(text), before[i]
        first_run[i] = text
        assert after.keys() == old.keys()
        for key in old:
            if key != "body_pose":
                assert after[key] == old[key], key  # bit-identical floats
        assert after["body_pose"][:18] == old["body_pose"][:18]
        assert after["body_pose"][24:] == old["body_pose"][24:]
        fixed = torch.tensor(after["body_pose"][18:24]).reshape(2, 3)
        assert _angles_deg(fixed, truth.full_pose[i, [7, 8]]).max() < 5.0
        assert _angles_deg(torch.tensor(old["body_pose"][18:24]).reshape(2, 3),
                           truth.full_pose[i, [7, 8]]).min() > 10.0
    # done: a second run skips the split; overwrite starts again from the kept driving ankles
    assert _run(subject) == 0
    assert "0 item(s) processed, 1 already done" in capsys.readouterr().out
    assert _run(subject, "--data.overwrite", "true") == 0
    assert "1 item(s) processed, 0 already done" in capsys.readouterr().out
    assert all((params_dir / f"{i}.json").read_text() == first_run[i]
               for i in range(STAGE_FRAMES))


def test_stage_names_the_missing_keypoints_and_refuses_other_splits(tmp_path, body, table,
                                                                    capsys):
    subject = tmp_path / "subject"
    _small_subject(subject, body, table)
    (subject / keypoints_relpath("generated_0", 3)).unlink()
    assert _run(subject) == 1
    err = capsys.readouterr().err
    assert re.search(r"generated_0/keypoints/3\.json is missing: run the keypoint stage", err)
    assert "configs/prep/keypoints.yaml" in err and "Traceback" not in err
    assert not (subject / "generated_0/smplx_optimized/footfix.json").exists()
    assert _run(subject, "--data.splits", "[captured]") == 1
    assert "the foot fix is for generated_<k> splits" in capsys.readouterr().err
