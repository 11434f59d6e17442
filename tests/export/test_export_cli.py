"""export/animate below the checkpoint layer, with a plain-tensor avatar and the CPU renderer."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from plyfile import PlyData

from persona.body.types import PoseParams, big_pose
from persona.export.cli import (
    animate_avatar,
    animate_main,
    canonical_pose,
    export_avatar,
    export_main,
    motion_pose,
    parse_pose_spec,
    resolve_pose,
)
from persona.render.types import Gaussians


def _axis_angle_matrix(v: torch.Tensor) -> torch.Tensor:
    angle = v.norm()
    if angle < 1e-12:
        return torch.eye(3)
    k = v / angle
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return torch.eye(3) + torch.sin(angle) * K + (1 - torch.cos(angle)) * K @ K


class _BoxAvatar:
    """A 1.7 m tall box of Gaussians, rigidly rotated by the root joint and translated."""

    def __init__(self, n: int = 400) -> None:
        g = torch.Generator().manual_seed(0)
        self.points = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.4, 1.7, 0.25])
        self.rgb = torch.rand(n, 3, generator=g)
        self.calls: list[PoseParams] = []

    def posed_gaussians(self, pose: PoseParams, variant: str = "refined"):
        self.calls.append(pose)
        rotation = _axis_angle_matrix(pose.full_pose[0, 0])
        means = self.points @ rotation.T + pose.transl[0]
        n = means.shape[0]
        return (Gaussians(means, torch.full((n, 3), 0.04), torch.full((n,), 0.9)),
                {"rgb": self.rgb, "seg": torch.zeros(n, 3)})


def test_parse_pose_spec() -> None:
    assert parse_pose_spec("canonical").kind == "canonical"
    spec = parse_pose_spec("frame:generated_0/12")
    assert (spec.kind, spec.split, spec.index) == ("frame", "generated_0", 12)
    spec = parse_pose_spec("motion:/tmp/a:b.npz:7")
    assert (spec.kind, spec.motion, spec.time) == ("motion", "/tmp/a:b.npz", 7)
    for bad in ("frame:test", "motion:dance", "tpose"):
        with pytest.raises(ValueError, match="--pose"):
            parse_pose_spec(bad)
    with pytest.raises(ValueError, match="--subject"):
        resolve_pose(parse_pose_spec("frame:test/0"))


def test_canonical_and_motion_poses() -> None:
    pose = canonical_pose()
    assert torch.equal(pose.full_pose[0], big_pose()) and pose.transl.abs().sum() == 0
    poses = np.random.default_rng(0).normal(size=(4, 55, 3)).astype(np.float32)
    transl = np.arange(12, dtype=np.float32).reshape(4, 3)
    frame = motion_pose(poses, transl, None, 2)
    assert np.array_equal(frame.full_pose[0].numpy(), poses[2])
    assert frame.transl[0].tolist() == [6.0, 7.0, 8.0] and frame.expression.shape == (1, 10)
    with pytest.raises(ValueError, match="out of range"):
        motion_pose(poses, transl, None, 4)
    builtin = resolve_pose(parse_pose_spec("motion:wave:3"))
    from persona.data.motions import resolve_motion

    assert np.allclose(builtin.full_pose[0].numpy(), resolve_motion("wave").poses[3])


def test_export_avatar_writes_the_posed_gaussians(tmp_path: Path) -> None:
    avatar = _BoxAvatar()
    pose = canonical_pose()
    pose.transl[0] = torch.tensor([0.0, 0.0, 2.0])
    path, count = export_avatar(avatar, pose, tmp_path / "a.ply")
    vertex = PlyData.read(str(path))["vertex"].data
    assert count == 400 and len(vertex) == 400
    assert np.allclose(vertex["z"], avatar.points[:, 2].numpy() + 2.0, atol=1e-6)
    path, _ = export_avatar(avatar, pose, tmp_path / "a.npz", fmt="npz")
    with np.load(path) as dump:
        assert dump["means"].shape == (400, 3) and "channel_seg" in dump.files


def _wave(frames: int) -> tuple[np.ndarray, np.ndarray]:
    from persona.data.motions import resolve_motion

    motion = resolve_motion("wave")
    return motion.poses[:frames], motion.transl[:frames]


def test_animate_a_builtin_motion_to_mp4(tmp_path: Path) -> None:
    from persona.render import make_renderer

    poses, transl = _wave(6)
    poses = poses.copy()
    poses[:, 0] = 0.0  # keep the box upright; turn it about y over the clip
    poses[:, 0, 1] = np.linspace(0, np.pi / 2, 6)
    avatar = _BoxAvatar()
    path, timing = animate_avatar(avatar, poses, transl, None, tmp_path / "wave.mp4",
                                  make_renderer("torch"), fps=10, width=47, height=64)
    video = iio.imread(path)
    assert video.shape == (6, 64, 48, 3)  # odd width padded to even
    assert timing.frames == 6 and timing.fps > 0
    # white background at the corners, the body in the middle
    assert video[:, 2, 2].min() > 240 and video[:, 32, 24].mean() < 230
    # the box turns: the first and last frames differ in the middle
    assert np.abs(video[0].astype(int) - video[-1].astype(int)).mean() > 1.0

    spin, _ = animate_avatar(avatar, np.zeros_like(poses), transl, None, tmp_path / "tt.mp4",
                             make_renderer("torch"), fps=10, width=48, height=64,
                             turntable=True, max_frames=4)
    turntable = iio.imread(spin)
    assert turntable.shape == (4, 64, 48, 3)
    assert np.abs(turntable[0].astype(int) - turntable[1].astype(int)).mean() > 1.0


def test_commands_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_main(["--ckpt", str(tmp_path / "none.ckpt"), "--out", "x.ply"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert animate_main(["--ckpt", str(tmp_path / "none.ckpt"), "--motion", "nosuch",
                         "--out", "x.mp4"]) == 1
    assert "unknown built-in motion" in capsys.readouterr().err
    assert export_main(["--ckpt", "x", "--out", "x.ply", "--pose", "tpose"]) == 1
    assert not (tmp_path / "x.ply").exists()
