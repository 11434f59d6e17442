"""The face patch: crop camera, crop image and box agree with each other and with renders."""

from __future__ import annotations

import torch

from persona.losses.face_patch import crop_camera, crop_image, face_box
from persona.render.torch_renderer import TorchRenderer
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings


def _camera(width: int = 60, height: int = 80) -> Camera:
    K = torch.tensor([[90.0, 0.0, 31.0], [0.0, 92.0, 38.5], [0.0, 0.0, 1.0]])
    return Camera(K, torch.eye(3), torch.zeros(3), width, height)


def _project(points: torch.Tensor, camera: Camera) -> torch.Tensor:
    x = points @ camera.R.T + camera.t
    return x[:, :2] / x[:, 2:] * camera.K.diagonal()[:2] + camera.K[:2, 2]


def test_crop_camera_maps_pixels_by_the_crop() -> None:
    camera = _camera()
    points = torch.rand(50, 3) * torch.tensor([0.6, 0.8, 1.0]) + torch.tensor([-0.3, -0.4, 2.0])
    x0, y0, side, patch = 11, 17, 24, 64
    crop = crop_camera(camera, x0, y0, side, patch)
    expected = (_project(points, camera) - torch.tensor([x0, y0])) * (patch / side)
    torch.testing.assert_close(_project(points, crop), expected)
    assert (crop.width, crop.height) == (patch, patch)


def test_crop_image_samples_the_crop_pixel_centres() -> None:
    """On a linear ramp, bilinear upsampling is exact: patch pixel (u, v) holds the ramp at
    native (x0 + (u + 0.5) / s, y0 + (v + 0.5) / s) in continuous coordinates."""
    height, width = 40, 50
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    ramp = torch.stack([0.01 * xs, 0.02 * ys, 0.3 + 0.005 * xs + 0.004 * ys], -1)  # [H, W, 3]
    x0, y0, side, patch = 7, 9, 20, 48
    out = crop_image(ramp, x0, y0, side, patch)
    s = patch / side
    v, u = torch.meshgrid(torch.arange(patch) + 0.5, torch.arange(patch) + 0.5, indexing="ij")
    nx, ny = x0 + u / s, y0 + v / s
    expected = torch.stack([0.01 * nx, 0.02 * ny, 0.3 + 0.005 * nx + 0.004 * ny], -1)
    inner = slice(3, patch - 3)  # the crop's outermost half pixel is clamped at its border
    torch.testing.assert_close(out[inner, inner], expected[inner, inner], atol=1e-5, rtol=0)
    flat = crop_image(torch.full((40, 50, 3), 0.25), 0, 0, 40, 16)  # downsampling, antialiased
    torch.testing.assert_close(flat, torch.full((16, 16, 3), 0.25))


def test_face_box_margin_square_and_clamped() -> None:
    points = torch.tensor([[20.0, 30.0], [30.0, 50.0]])
    assert face_box(points, 100, 100, 1.0) == (15, 30, 20)  # 20 x 20 about the centre (25, 40)
    assert face_box(points, 100, 100, 1.5) == (10, 25, 30)
    assert face_box(points, 26, 100, 1.5) == (0, 27, 26)  # side <= width, shifted inside
    assert face_box(torch.tensor([[95.0, 5.0], [99.0, 9.0]]), 100, 100, 2.0) == (92, 3, 8)


def test_render_with_the_crop_camera_equals_the_crop_of_the_full_render() -> None:
    """At scale 1 (side = patch) the crop camera's render is the full render's crop."""
    g = torch.Generator().manual_seed(0)
    n = 200
    means = torch.rand(n, 3, generator=g) * torch.tensor([0.8, 1.0, 0.5]) \
        + torch.tensor([-0.4, -0.5, 2.5])
    gaussians = Gaussians(means, torch.full((n, 3), 0.03), torch.full((n,), 0.8))
    colours = torch.rand(n, 3, generator=g)
    camera = _camera()
    renderer = TorchRenderer()
    settings = RenderSettings(depth=False)
    full = renderer.render(gaussians, camera, {"rgb": ChannelGroup(colours)}, settings)
    x0, y0, side = 13, 21, 32
    crop = renderer.render(gaussians, crop_camera(camera, x0, y0, side, side),
                           {"rgb": ChannelGroup(colours)}, settings)
    assert full["alpha"][y0:y0 + side, x0:x0 + side].mean() > 0.3
    for key in ("rgb", "alpha"):
        torch.testing.assert_close(crop[key], full[key][y0:y0 + side, x0:x0 + side],
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(crop_image(full["rgb"], x0, y0, side, side),
                               full["rgb"][y0:y0 + side, x0:x0 + side])
