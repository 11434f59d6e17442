"""The tracked clip as a motion (persona/track/output.py): the camera -> body frame change, the
npz (loadable by load_motion, with the tracker's report), and playback by the animate code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from persona.data.motions import Motion, load_motion, make_builtin_motion, place_in_camera
from persona.track.output import (
    camera_to_body_frame,
    read_track_report,
    write_track_motion,
)


def test_camera_frame_back_to_the_body_frame_undoes_place_in_camera() -> None:
    motion = make_builtin_motion("dance")
    pelvis = np.array([0.0, 0.2, 0.01])
    cam_poses, cam_transl = place_in_camera(motion.poses, motion.transl, pelvis)
    poses, transl = camera_to_body_frame(cam_poses, cam_transl, pelvis)
    same = Rotation.from_rotvec(poses[:, 0]).inv() * Rotation.from_rotvec(motion.poses[:, 0])
    assert same.magnitude().max() < 1e-5
    np.testing.assert_allclose(poses[:, 1:], motion.poses[:, 1:], atol=1e-6)
    expected = motion.transl - [motion.transl[0, 0], motion.transl[:, 1].mean(),
                                motion.transl[0, 2]]  # the anchored trajectory
    np.testing.assert_allclose(transl, expected, atol=1e-5)


def test_the_npz_loads_as_a_motion_and_keeps_the_report(tmp_path: Path) -> None:
    poses = np.zeros((5, 55, 3), np.float32)
    motion = Motion("clip", poses, np.zeros((5, 3), np.float32), 12.5)
    path = write_track_motion(tmp_path / "m.npz", motion, [1, 2], [2], {"source": "v.mp4"})
    loaded = load_motion(path)
    assert loaded.num_frames == 5 and loaded.fps == 12.5
    assert read_track_report(path) == ([1, 2], [2], {"source": "v.mp4"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind
    bad = Motion("clip", poses, np.full((5, 3), np.nan, np.float32), 12.5)
    with pytest.raises(ValueError, match="bad.npz: 'transl' contains NaN"):
        write_track_motion(tmp_path / "bad.npz", bad, [], [], {})
    assert not (tmp_path / "bad.npz").exists()


class MeshAvatar:
    """The procedural body's posed vertices as Gaussians: the smallest avatar the animate code
    plays (posed_gaussians(pose, variant) -> (Gaussians, {"rgb": ...}))."""

    def __init__(self, body) -> None:
        self.body = body
        self.rgb = torch.rand(body.num_vertices, 3, generator=torch.Generator().manual_seed(0))

    def posed_gaussians(self, pose, variant: str = "refined"):
        from persona.render.types import Gaussians

        with torch.no_grad():
            means = self.body(self.body.zero_identity(), pose)[0]  # [V, 3]
        count = means.shape[0]
        return (Gaussians(means, torch.full((count, 3), 0.02), torch.full((count,), 0.9)),
                {"rgb": self.rgb})


def test_a_tracked_motion_plays_in_animate(tmp_path: Path, body) -> None:
    import imageio.v3 as iio

    from persona.export.cli import animate_avatar
    from persona.render import make_renderer

    motion = make_builtin_motion("punches")
    picks = slice(0, 12, 3)
    pelvis = body.rest_joints(body.zero_identity())[0].numpy()
    cam_poses, cam_transl = place_in_camera(motion.poses[picks], motion.transl[picks], pelvis)
    poses, transl = camera_to_body_frame(cam_poses, cam_transl, pelvis)
    path = write_track_motion(tmp_path / "tracked.npz",
                              Motion("tracked", poses.astype(np.float32),
                                     transl.astype(np.float32), 10.0), [], [], {})
    loaded = load_motion(path)
    video, timing = animate_avatar(MeshAvatar(body), loaded.poses, loaded.transl, None,
                                   tmp_path / "a.mp4", make_renderer("torch"), loaded.fps,
                                   48, 64)
    frames = iio.imread(video)
    assert frames.shape == (4, 64, 48, 3) and timing.frames == 4
    assert frames[:, 32, 24].mean() < 230  # the body is in the middle of every frame
