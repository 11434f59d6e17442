"""The one pinhole projection (`project_points`) against the formulas it replaced."""

from __future__ import annotations

import torch

from persona.render.projection import project, project_points
from persona.render.silhouette import project_vertices
from persona.render.types import Camera, Gaussians


def _camera() -> Camera:
    K = torch.tensor([[120.0, 0.0, 33.0], [0.0, 110.0, 47.0], [0.0, 0.0, 1.0]])
    angle = torch.tensor(0.3)
    R = torch.tensor([[angle.cos(), 0.0, angle.sin()], [0.0, 1.0, 0.0],
                      [-angle.sin(), 0.0, angle.cos()]])
    return Camera(K, R, torch.tensor([0.1, -0.2, 3.0]), 64, 96)


def test_matches_the_hand_written_projections_it_replaces():
    torch.manual_seed(0)
    points = torch.randn(50, 3) * 0.5
    camera = _camera()
    uv, z = project_points(points, camera)
    x_cam = points @ camera.R.T + camera.t  # the system's former unwrap / face-patch code
    old = x_cam[:, :2] / x_cam[:, 2:].clamp(min=1e-6) * camera.K.diagonal()[:2] + camera.K[:2, 2]
    torch.testing.assert_close(uv, old)
    torch.testing.assert_close(z, x_cam[:, 2])
    old_synth = ((camera.K @ x_cam.T)[:2] / x_cam[:, 2]).T  # synth / preview: K @ x / z
    torch.testing.assert_close(uv, old_synth)
    gaussians = Gaussians(points, torch.full((50, 3), 0.01), torch.ones(50))
    torch.testing.assert_close(uv, project(gaussians, camera).mean2d)  # the EWA projection


def test_silhouette_vertices_use_it_in_float64_and_batches_broadcast():
    points = torch.randn(2, 7, 3) * 0.3
    camera = _camera()
    uv, z = project_points(points, camera)
    assert uv.shape == (2, 7, 2) and z.shape == (2, 7)
    uv64, z64 = project_vertices(points[0], camera)
    assert uv64.dtype == torch.float64
    torch.testing.assert_close(uv64.float(), uv[0])


def test_points_behind_the_camera_stay_finite_and_gradients_flow():
    points = torch.tensor([[0.0, 0.0, -6.0], [0.1, 0.2, 0.5]], requires_grad=True)
    uv, z = project_points(points, _camera())
    assert torch.isfinite(uv).all() and z[0] < 0  # z itself is not clamped
    uv.sum().backward()
    assert torch.isfinite(points.grad).all() and points.grad.abs().sum() > 0
