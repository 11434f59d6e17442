"""The track fit (persona/track/fit.py) on known poses of the procedural body: recovery, the
smoothness terms, interpolation of missing frames, joint limits, and the fast posing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from track_helpers import blazepose_layout, known_clip

from persona.track.evaluate import mpjpe, pa_mpjpe, procrustes
from persona.track.fit import (
    PosedClip,
    TrackFitSettings,
    fit_clip,
    interpolate_missing,
    interpolate_rotations,
    limit_bounds,
    limit_penalty,
    second_difference,
    torso_frame,
)

WIDTH, HEIGHT = 288, 512
QUICK = TrackFitSettings(iterations=(60, 150, 100))  # fewer steps: short clips


def test_fast_posing_matches_the_landmark_code(body) -> None:
    from data_prep.keypoints import landmark_table, posed_landmarks, smplx_to_coco133
    from persona.body.types import Identity, PoseParams
    from persona.ops.rotations import axis_angle_to_matrix

    generator = torch.Generator().manual_seed(0)
    full = 0.3 * torch.randn(3, 55, 3, generator=generator)
    full[:, 22:] = 0.0
    betas = torch.randn(body.num_betas, generator=generator)
    transl = torch.randn(3, 3, generator=generator)
    table = landmark_table(body)
    landmarks = posed_landmarks(body, Identity(betas),
                                PoseParams(full, torch.zeros(3, body.num_expression), transl),
                                table)
    coco, _ = smplx_to_coco133(landmarks, table.valid)
    keypoints, joints, pelvis = PosedClip(body, table)(axis_angle_to_matrix(full[:, 0]),
                                                       full[:, 1:22], transl, betas)
    torch.testing.assert_close(keypoints, coco[:, :23], atol=1e-5, rtol=0)
    torch.testing.assert_close(joints, landmarks[:, :22], atol=1e-5, rtol=0)
    torch.testing.assert_close(pelvis, body.rest_joints(Identity(betas))[0], atol=1e-5, rtol=0)


def test_fit_recovers_a_known_pose_from_its_landmarks(body) -> None:
    _, _, keypoints, joints, _ = known_clip(body, "punches", frames=6)
    landmarks, world = blazepose_layout(keypoints)
    fit = fit_clip(body, landmarks, world, np.ones(6, bool), WIDTH, HEIGHT, QUICK)
    assert fit.full_pose.shape == (6, 55, 3) and fit.joints.shape == (6, 22, 3)
    assert np.nanmedian(fit.errors_px) < 2.0  # px at 512 px height
    assert pa_mpjpe(fit.joints, joints).mean() < 40.0  # mm
    assert mpjpe(fit.joints, joints).mean() < 60.0
    # the body faces the camera: its forward axis points to -z (toward the camera)
    frame = torso_frame(fit.keypoints)
    assert (frame[:, 2, 2] < -0.8).all()


def _jitter(joints: np.ndarray) -> float:
    return float(np.linalg.norm(second_difference(torch.from_numpy(joints)).numpy(),
                                axis=-1).mean())


def test_smoothness_reduces_jitter_on_noisy_input(body) -> None:
    _, _, keypoints, joints, _ = known_clip(body, "wave", frames=10, step=2)
    landmarks, world = blazepose_layout(keypoints)
    rng = np.random.default_rng(0)
    landmarks[..., :2] += rng.normal(0.0, 4.0, landmarks[..., :2].shape)  # px
    world += rng.normal(0.0, 0.03, world.shape)  # m
    valid = np.ones(10, bool)
    smooth = fit_clip(body, landmarks, world, valid, WIDTH, HEIGHT, QUICK)
    rough = fit_clip(body, landmarks, world, valid, WIDTH, HEIGHT,
                     TrackFitSettings(iterations=QUICK.iterations, weight_acc=0.0,
                                      weight_vel=0.0, weight_pose_vel=0.0))
    assert _jitter(smooth.joints) < 0.6 * _jitter(rough.joints)
    assert _jitter(smooth.joints) < 2.0 * _jitter(joints) + 0.005  # m / frame^2


def test_a_frame_without_landmarks_is_interpolated_not_zero(body) -> None:
    _, _, keypoints, joints, _ = known_clip(body, "punches", frames=7, step=2)
    landmarks, world = blazepose_layout(keypoints)
    valid = np.ones(7, bool)
    valid[3] = False
    landmarks[3], world[3] = 0.0, 0.0  # what detect.py leaves for a frame without a person
    fit = fit_clip(body, landmarks, world, valid, WIDTH, HEIGHT, QUICK)
    assert np.isnan(fit.errors_px[3]).all()  # no data there
    assert np.isfinite(fit.joints[3]).all() and fit.transl[3, 2] > 3.0  # in front, not at 0
    between = 0.5 * (fit.joints[2] + fit.joints[4])
    assert np.linalg.norm(fit.joints[3] - between, axis=-1).mean() < 0.03  # m
    assert mpjpe(fit.joints[3:4], joints[3:4]).mean() < 80.0


def test_interpolation_helpers() -> None:
    values = np.array([[9.0], [1.0], [9.0], [3.0], [9.0]])  # 9: garbage in invalid frames
    valid = np.array([False, True, False, True, False])
    np.testing.assert_allclose(interpolate_missing(values, valid)[:, 0], [1, 1, 2, 3, 3])
    with pytest.raises(ValueError, match="no valid frame"):
        interpolate_missing(values, np.zeros(5, bool))
    from scipy.spatial.transform import Rotation

    rotations = Rotation.from_rotvec([[0, 0, 0], [0, 9, 9], [0, 1.0, 0]]).as_matrix()
    out = interpolate_rotations(rotations, np.array([True, False, True]))
    np.testing.assert_allclose(Rotation.from_matrix(out[1]).as_rotvec(), [0, 0.5, 0], atol=1e-9)


def test_joint_limits_penalise_only_impossible_bends() -> None:
    low, high = limit_bounds()
    pose = torch.zeros(1, 21, 3)
    assert limit_penalty(pose, low, high) == 0
    bent = pose.clone()
    bent[0, 3, 0] = 1.5  # left knee (joint 4) flexed: allowed
    assert limit_penalty(bent, low, high) == 0
    hyper = pose.clone()
    hyper[0, 3, 0] = -0.6  # left knee bent backwards by 0.5 rad beyond the limit
    assert limit_penalty(hyper, low, high) == pytest.approx(0.25, rel=1e-5)


def test_procrustes_removes_a_similarity() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(22, 3))
    from scipy.spatial.transform import Rotation

    moved = 1.3 * points @ Rotation.from_rotvec([0.3, -0.2, 1.0]).as_matrix().T + [1, 2, 3]
    np.testing.assert_allclose(procrustes(moved, points), points, atol=1e-9)
    assert pa_mpjpe(moved[None], points[None])[0] < 1e-6
    assert mpjpe(moved[None], points[None])[0] > 100.0
