from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from persona.data import motions as M


@pytest.mark.parametrize("name", M.BUILTIN_MOTIONS)
def test_builtin_motions_round_trip_through_npz(name: str, tmp_path: Path):
    M.write_builtin_motions(tmp_path)
    shipped = M.load_motion(tmp_path / f"{name}.npz")
    made = M.resolve_motion(name)
    np.testing.assert_allclose(shipped.poses, made.poses, atol=1e-6)
    np.testing.assert_allclose(shipped.transl, made.transl, atol=1e-6)
    assert shipped.fps == made.fps
    assert 1.0 <= shipped.num_frames / shipped.fps <= 3.0


@pytest.mark.parametrize("name", M.BUILTIN_MOTIONS)
def test_motions_are_smooth(name: str):
    motion = M.make_builtin_motion(name)
    rotations = Rotation.from_rotvec(motion.poses.reshape(-1, 3).astype(np.float64))
    matrices = rotations.as_matrix().reshape(motion.num_frames, 55, 3, 3)
    # angle between consecutive frames of every joint: below 0.45 rad (a fast jab) at 30 fps
    relative = np.einsum("tjab,tjac->tjbc", matrices[:-1], matrices[1:])
    angles = np.arccos(np.clip((np.trace(relative, axis1=2, axis2=3) - 1) / 2, -1, 1))
    assert angles.max() < 0.45
    assert angles.max() > 0.01  # it moves


def test_rotation_turns_a_full_circle():
    motion = M.make_rotation()
    yaw = Rotation.from_rotvec(motion.poses[:, 0].astype(np.float64)).as_euler("YXZ")[:, 0]
    unwrapped = np.unwrap(yaw)
    assert unwrapped[-1] - unwrapped[0] == pytest.approx(2 * np.pi * (1 - 1 / 90), abs=0.05)


def test_euler_order_bends_left_arm_down_and_forward():
    rotvec = M.euler_to_rotvec(np.array([0.0, -1.0, -0.9]))
    arm = Rotation.from_rotvec(rotvec).apply([1.0, 0.0, 0.0])
    assert arm[1] < -0.5 and arm[2] > 0.3  # down (y<0) and forward (z>0)


def test_load_errors_name_file_and_key(tmp_path: Path):
    path = tmp_path / "bad.npz"
    np.savez(path, poses=np.zeros((5, 52, 3)), transl=np.zeros((5, 3)), fps=30.0)
    with pytest.raises(ValueError, match=r"bad.npz.*'poses'"):
        M.load_motion(path)
    np.savez(path, poses=np.zeros((5, 55, 3)), transl=np.zeros((4, 3)), fps=30.0)
    with pytest.raises(ValueError, match=r"'transl'"):
        M.load_motion(path)
    np.savez(path, poses=np.full((5, 55, 3), np.nan), transl=np.zeros((5, 3)), fps=30.0)
    with pytest.raises(ValueError, match="NaN"):
        M.load_motion(path)
    np.savez(path, poses=np.zeros((5, 55, 3)), transl=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="missing key 'fps'"):
        M.load_motion(path)
    with pytest.raises(FileNotFoundError):
        M.load_motion(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="unknown built-in"):
        M.resolve_motion("moonwalk")


def test_user_motion_round_trip(tmp_path: Path):
    motion = M.Motion("mine", np.random.rand(4, 55, 3).astype(np.float32),
                      np.random.rand(4, 3).astype(np.float32), 24.0,
                      np.random.rand(4, 10).astype(np.float32))
    M.save_motion(motion, tmp_path / "mine.npz")
    back = M.resolve_motion(str(tmp_path / "mine.npz"))
    np.testing.assert_array_equal(back.poses, motion.poses)
    np.testing.assert_array_equal(back.expression, motion.expression)
    assert back.fps == 24.0


def _smplx_rigid(root_rotvec: np.ndarray, transl: np.ndarray, rest_pelvis: np.ndarray,
                 points: np.ndarray) -> np.ndarray:
    """What SMPL-X does to rest points with only the root rotated: R (v - J0) + J0 + transl."""
    return Rotation.from_rotvec(root_rotvec).apply(points - rest_pelvis) + rest_pelvis + transl


def test_place_in_camera_is_a_rigid_turn_upright_with_pelvis_at_target():
    rng = np.random.default_rng(0)
    poses = rng.normal(scale=0.5, size=(6, 55, 3)).astype(np.float32)
    transl = rng.normal(scale=0.1, size=(6, 3)).astype(np.float32)
    rest_pelvis = np.array([0.01, -0.35, 0.02])
    cam_poses, cam_transl = M.place_in_camera(poses, transl, rest_pelvis, distance=4.0,
                                              pelvis_height=0.1)
    np.testing.assert_allclose(cam_poses[:, 1:], poses[:, 1:])
    points = rng.normal(size=(20, 3))
    offsets = []
    for t in range(6):
        body = _smplx_rigid(poses[t, 0], transl[t], rest_pelvis, points)
        camera = _smplx_rigid(cam_poses[t, 0].astype(np.float64), cam_transl[t], rest_pelvis,
                              points)
        offsets.append(camera - body @ M.UPRIGHT_IN_CAMERA.T)
    offsets = np.stack(offsets)  # one constant translation for every frame and point
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[0, 0], offsets.shape), atol=1e-5)
    pelvis = np.stack([_smplx_rigid(cam_poses[t, 0].astype(np.float64), cam_transl[t],
                                    rest_pelvis, rest_pelvis[None])[0] for t in range(6)])
    np.testing.assert_allclose(pelvis.mean(0), [0.0, 0.1, 4.0], atol=1e-5)


def test_virtual_intrinsics_scale_with_resolution():
    np.testing.assert_allclose(M.virtual_intrinsics(576, 1024)[:2], [[2000, 0, 288],
                                                                     [0, 2000, 512]])
    np.testing.assert_allclose(M.virtual_intrinsics(288, 512)[:2], [[1000, 0, 144],
                                                                    [0, 1000, 256]])


def test_side_kicks_are_the_kicks_turned_a_quarter():
    kicks, side = M.make_kicks(), M.make_builtin_motion("kicks_side")
    np.testing.assert_array_equal(side.poses[:, 1:], kicks.poses[:, 1:])  # joints unchanged
    np.testing.assert_array_equal(side.transl, kicks.transl)
    turn = Rotation.from_rotvec(side.poses[:, 0].astype(np.float64)) \
        * Rotation.from_rotvec(kicks.poses[:, 0].astype(np.float64)).inv()
    np.testing.assert_allclose(turn.as_rotvec(), np.tile([0.0, np.pi / 2, 0.0], (len(turn), 1)),
                               atol=1e-5)
