"""mp4 writing, turntable cameras and frame rendering."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from persona.export.video import (
    framing_distance,
    look_at,
    render_frames,
    turntable_cameras,
    write_mp4,
)
from persona.render.types import Camera, Gaussians


def test_mp4_round_trip_with_odd_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = np.zeros((7, 31, 45, 3), np.uint8)
    frames[:, :, :, 0] = np.linspace(0, 255, 7).astype(np.uint8)[:, None, None]  # red ramp
    frames[:, 10:20, 10:20] = rng.integers(0, 255, (7, 10, 10, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "out.mp4", frames, fps=12)
    with imageio.get_reader(path) as reader:
        meta = reader.get_meta_data()
        read = np.stack([frame for frame in reader])  # noqa: C416 - list() asks len(): inf
    assert read.shape == (7, 32, 46, 3)  # padded to even
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 12.0
    # lossy, but the red ramp survives frame by frame
    reds = read[:, 2:8, 25:40, 0].mean(axis=(1, 2))
    assert np.all(np.abs(reds - np.linspace(0, 255, 7)) < 8)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_mp4_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 4, 4, 3), np.float32), 10)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_mp4(tmp_path / "x.mp4", np.zeros((4, 4, 3), np.uint8), 10)
    assert list(tmp_path.iterdir()) == []


def _project(camera: Camera, point: torch.Tensor) -> torch.Tensor:
    p = camera.R @ point + camera.t
    return (camera.K @ (p / p[2]))[:2]


def test_look_at_and_turntable_geometry() -> None:
    R, t = look_at(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6) and torch.det(R) > 0
    # from +z looking at the body: world +x is image right, world +y is image up
    assert torch.allclose(R, torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    centre = torch.tensor([0.1, 0.9, -0.2])
    cameras = turntable_cameras(centre, 3.0, 8, 64, 48)
    assert len(cameras) == 8
    for camera in cameras:
        position = -camera.R.T @ camera.t
        assert (position - centre)[[0, 2]].norm().item() == pytest.approx(3.0, rel=1e-5)
        assert torch.allclose(_project(camera, centre), torch.tensor([32.0, 24.0]), atol=1e-4)
        above = _project(camera, centre + torch.tensor([0.0, 0.5, 0.0]))
        assert above[1] < 24.0  # world up is image up
    quarter = -cameras[2].R.T @ cameras[2].t - centre  # 90 degrees: from +x
    assert torch.allclose(quarter, torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)


def test_framing_keeps_the_box_in_view() -> None:
    points = torch.tensor([[-0.3, 0.0, -0.1], [0.3, 1.8, 0.1]])
    centre, distance = framing_distance(points, 64, 96)
    for camera in turntable_cameras(centre, distance, 12, 64, 96):
        for corner in torch.cartesian_prod(*[points[:, i] for i in range(3)]):
            u, v = _project(camera, corner)
            assert 0 <= u <= 64 and 0 <= v <= 96


class _DiscRenderer:
    """Each Gaussian draws an opaque disc of radius 3 px with its colour (a plain-tensor stand-in
    for the renderer contract: rgb composited on black, alpha in [0, 1])."""

    def render(self, gaussians, camera, channels, settings=None):
        v, u = torch.meshgrid(torch.arange(camera.height) + 0.5,
                              torch.arange(camera.width) + 0.5, indexing="ij")
        rgb = torch.zeros(camera.height, camera.width, 3)
        alpha = torch.zeros(camera.height, camera.width, 1)
        for mean, colour in zip(gaussians.means, channels["rgb"].values, strict=True):
            x, y = _project(camera, mean)
            inside = ((u - x) ** 2 + (v - y) ** 2 < 9)[..., None]
            rgb = torch.where(inside, colour, rgb)
            alpha = torch.where(inside, torch.ones(1), alpha)
        return {"rgb": rgb, "alpha": alpha}


def test_render_frames_composites_on_white() -> None:
    gaussians = Gaussians(means=torch.tensor([[0.0, 1.0, 0.0]]), scales=torch.full((1, 3), 0.01),
                          opacities=torch.ones(1))
    cameras = turntable_cameras(torch.tensor([0.0, 1.0, 0.0]), 2.0, 3, 32, 24)
    red = torch.tensor([[1.0, 0.0, 0.0]])
    frames, timing = render_frames([(gaussians, red, c) for c in cameras], _DiscRenderer())
    assert frames.shape == (3, 24, 32, 3) and frames.dtype == np.uint8
    assert frames[:, 12, 16].tolist() == [[255, 0, 0]] * 3  # the centre pixel is the Gaussian
    assert (frames[:, 0, 0] == 255).all()  # background white
    assert timing.frames == 3 and timing.fps > 0 and math.isfinite(timing.seconds)
