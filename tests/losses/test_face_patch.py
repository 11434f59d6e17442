"""The face patch: crop camera, crop image and box agree with each other and with renders."""

from __future__ import annotations

import pytest
import torch

from persona.losses.face_patch import (
    FACE_BOUNDARY_DILATION_FRACTION,
    crop_camera,
    crop_image,
    detect_face_boundary,
    face_box,
    face_geo_loss,
    face_patch_boundary_loss,
    face_patch_image_loss,
)
from persona.losses.image import image_loss_map
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


def _hwc_loss_map(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.8 L1 + 0.2 (1 - SSIM) on [S, S, 3] images -> [1, 1, S, S]."""
    return image_loss_map(render.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None],
                          0.8, 0.2, 0.0)


def _face_scene(size: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    patch = torch.rand(size, size, 3, generator=g)
    alpha = torch.zeros(size, size, 1)
    alpha[8:24, 8:24] = 1.0  # the face Gaussians cover a square
    render = torch.rand(size, size, 3, generator=g) * alpha  # face colours, black elsewhere
    boundary = torch.zeros(size, size, dtype=torch.bool)
    boundary[6:10, 6:26] = True
    return patch, alpha, render, boundary


def test_face_patch_image_loss_composites_face_only_and_downweights_the_boundary() -> None:
    """Catches the old patch term (whole-avatar render, no boundary weighting): pixels off the
    face show the patch (no loss), boundary pixels count 0.1."""
    patch, alpha, render, boundary = _face_scene()
    loss = face_patch_image_loss(render, alpha, patch, boundary, _hwc_loss_map)
    composite = render + patch * (1 - alpha)
    weights = torch.where(boundary, 0.1, 1.0)
    expected = (_hwc_loss_map(composite, patch)[0, 0] * weights).mean()
    torch.testing.assert_close(loss, expected)
    unweighted = _hwc_loss_map(composite, patch).mean()
    assert float(loss) < float(unweighted)
    # The alpha is not detached: the face's coverage receives gradient.
    alpha_grad = alpha.clone().requires_grad_(True)
    face_patch_image_loss(render, alpha_grad, patch, boundary, _hwc_loss_map).backward()
    assert alpha_grad.grad is not None and float(alpha_grad.grad.abs().sum()) > 0


def test_face_patch_boundary_loss_is_distillation_inside_the_boundary() -> None:
    patch, alpha, render, boundary = _face_scene()
    rgb = render.clone().requires_grad_(True)
    aux = (render.flip(0) * alpha).requires_grad_(True)
    alpha = alpha.clone().requires_grad_(True)
    loss = face_patch_boundary_loss(rgb, aux, alpha, patch, boundary, _hwc_loss_map)
    mask = boundary[..., None].float()
    a = (rgb + patch * (1 - alpha)) * mask
    b = (aux + patch * (1 - alpha)) * mask
    torch.testing.assert_close(loss, _hwc_loss_map(a, b.detach()).mean())
    loss.backward()
    assert aux.grad is None and alpha.grad is None  # target and coverage detached
    assert rgb.grad is not None and float(rgb.grad[~boundary].abs().max()) == 0.0


def test_face_geo_loss_is_l1_of_initial_colour_render_and_trains_geometry_only() -> None:
    """The authors' face_geo (missing before): L1 of the face Gaussians in their initial colours,
    composited over the image with the face alpha, against the image."""
    patch, alpha, render, _ = _face_scene()
    alpha = alpha.clone().requires_grad_(True)
    loss = face_geo_loss(render, alpha, patch)
    expected = (render - patch * alpha).abs().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert alpha.grad is not None and float(alpha.grad.abs().sum()) > 0
    # Where the face matches the image exactly, the loss is 0.
    assert float(face_geo_loss(patch * alpha.detach(), alpha.detach(), patch)) == 0.0


def test_face_boundary_uses_the_0_06_dilation_of_the_face_box() -> None:
    size = 100
    position = torch.zeros(size, size, 3)
    alpha = torch.zeros(size, size, 1)
    alpha[20:70, 30:80] = 1.0  # face box 50 x 50: 0.06 x 50 = 3 -> side 3
    position[20:70, 30:80] = 0.5  # face-masked positional colours, black off the face
    interior = torch.zeros(size, size, dtype=torch.bool)
    interior[25:65, 35:75] = True
    boundary = detect_face_boundary(position, alpha, interior)
    raw = detect_face_boundary(position, alpha, interior, dilation_fraction=0.0)
    assert FACE_BOUNDARY_DILATION_FRACTION == pytest.approx(0.06)
    assert raw[45, 29:31].all() and not raw[30:60, 40:70].any()
    # Dilation by a 3 x 3 square grows the raw boundary by exactly one pixel.
    assert boundary[45, 28] and not raw[45, 28] and not boundary[45, 27]
