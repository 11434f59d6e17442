"""The seam detector on a hand-built and on a rendered scene with a known seam."""

import torch

from persona.losses.image import image_loss_map
from persona.losses.seams import (
    detect_seams,
    positional_colours,
    seam_dilation_size,
    seam_distill_loss,
    seam_weight_map,
)
from persona.render.dense import DenseRenderer
from persona.render.types import Camera, ChannelGroup, Gaussians, RenderSettings

SIZE = 64  # image side in pixels
FOCAL = 128.0  # pixels; at depth 2 m one pixel is 1/64 m
DEPTH = 2.0  # metres
SPACING = 0.02  # metres between Gaussians
SHIFT = 0.8  # metres: canonical distance between the two halves (an arm vs the torso)


def _render_two_regions() -> dict[str, torch.Tensor]:
    """A plane filling the view; canonical positions jump by SHIFT across world x = 0, which
    projects onto the line between pixel columns 31 and 32."""
    coords = (torch.arange(-30, 30, dtype=torch.float32) + 0.5) * SPACING  # +-0.59 m, not 0
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([xs.flatten(), ys.flatten(), torch.full_like(xs.flatten(), DEPTH)], -1)
    canonical = means.clone()
    canonical[means[:, 0] > 0, 0] += SHIFT
    count = means.shape[0]
    gaussians = Gaussians(means=means, scales=torch.full((count, 3), 0.75 * SPACING),
                          opacities=torch.ones(count))
    camera = Camera(K=torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1]]),
                    R=torch.eye(3), t=torch.zeros(3), width=SIZE, height=SIZE)
    channels = {"position": ChannelGroup(positional_colours(canonical), geometry_grad=False)}
    return DenseRenderer().render(gaussians, camera, channels, RenderSettings(depth=False))


def test_rendered_known_seam_marked_along_line_and_nowhere_far() -> None:
    out = _render_two_regions()
    alpha = out["alpha"]
    assert float(alpha.min()) > 0.9  # the plane covers the whole view: no silhouette edge
    fraction = 0.1  # 0.1 x 64 = 6.4 -> 6 -> odd 7: a radius of 3 pixels
    seams = detect_seams(out["position"], alpha, None, dilation_fraction=fraction)
    assert seams.shape == (SIZE, SIZE) and seams.dtype == torch.bool
    # Every row is marked on both sides of the line and across the dilation width.
    assert seams[:, 29:35].all()
    columns = torch.arange(SIZE)[None].expand(SIZE, SIZE)
    distance = (columns + 0.5 - SIZE / 2).abs()  # pixel-centre distance to the line
    assert not seams[distance > 6].any()  # 3 px of blending + 3 px of dilation at most
    # Without dilation the raw detection hugs the line.
    raw = detect_seams(out["position"], alpha, None, dilation_fraction=0.0)
    assert raw[:, 31:33].all() and not raw[distance > 3].any()
    # The face interior is removed (before dilation, which may grow back 3 rows into it).
    face = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    face[:20] = True
    with_face = detect_seams(out["position"], alpha, face, dilation_fraction=fraction)
    assert not with_face[:17].any() and with_face[20:, 29:35].all()


def test_hand_built_silhouette_and_internal_seam() -> None:
    height, width = 40, 60
    position = torch.zeros(height, width, 3)
    alpha = torch.zeros(height, width, 1)
    alpha[10:30, 10:50] = 1.0
    # Smooth canonical positions inside the body; a jump at column 30.
    columns = torch.arange(width, dtype=torch.float32)
    position[10:30, 10:50, 0] = 0.5 + 0.001 * columns[10:50]
    position[10:30, 30:50, 1] = 0.4
    position[10:30, 10:50, 2] = 0.5
    seams = detect_seams(position, alpha, None, dilation_fraction=0.0)
    assert seams[12:28, 29:31].all()  # the internal seam
    assert seams[15, 9:11].all() and seams[9, 20] and seams[30, 20]  # the silhouette
    assert not seams[15:25, 14:26].any() and not seams[15:25, 34:46].any()  # smooth interiors
    assert not seams[:5].any() and not seams[35:].any()  # background far from the body


def test_dilation_size_from_alpha_box() -> None:
    alpha = torch.zeros(200, 300, 1)
    alpha[50:150, 20:280] = 0.95  # box 100 x 260
    # The authors' get_kernel_size rounds (the old floor gave 3 here).
    assert seam_dilation_size(alpha, 0.015, 0.9) == 5  # round(3.9) = 4 -> 5
    alpha.zero_()
    alpha[50:150, 20:220] = 0.95  # box width 200: round(3.0) = 3, odd
    assert seam_dilation_size(alpha, 0.015, 0.9) == 3
    alpha.zero_()
    alpha[50:150, 20:187] = 0.95  # box width 167: round(2.505) = 3
    assert seam_dilation_size(alpha, 0.015, 0.9) == 3
    assert seam_dilation_size(alpha, 0.015, 0.99) == 1  # no pixel above the threshold


def test_seam_weight_map() -> None:
    seams = torch.tensor([[True, False]])
    torch.testing.assert_close(seam_weight_map(seams, 0.1), torch.tensor([[0.1, 1.0]]))


def _hwc_loss_map(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.8 L1 + 0.2 (1 - SSIM) on [H, W, 3] images -> [1, 1, H, W] (the system's wrapper)."""
    return image_loss_map(render.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None],
                          0.8, 0.2, 0.0)


def test_seam_distill_is_the_full_image_loss_inside_seams() -> None:
    """Catches the old distillation (L1 of the difference only): the SSIM part is included and
    the loss is that of the masked images; rgb_aux is detached; nothing outside seams counts."""
    generator = torch.Generator().manual_seed(3)
    rgb = torch.rand(24, 30, 3, generator=generator, requires_grad=True)
    rgb_aux = torch.rand(24, 30, 3, generator=generator, requires_grad=True)
    seams = torch.zeros(24, 30, dtype=torch.bool)
    seams[6:18, 8:20] = True
    loss = seam_distill_loss(rgb, rgb_aux, seams, _hwc_loss_map)
    mask = seams[..., None].float()
    expected = _hwc_loss_map(rgb * mask, rgb_aux.detach() * mask).mean()
    torch.testing.assert_close(loss, expected)
    old = ((rgb - rgb_aux) * mask).abs().mean()
    assert abs(float(loss.detach()) - float(old.detach())) > 1e-2  # not the old L1-only value
    loss.backward()
    assert rgb_aux.grad is None  # the rgb_aux render is the (detached) target
    assert rgb.grad is not None and float(rgb.grad[~seams].abs().max()) == 0.0
    assert float(rgb.grad[seams].abs().sum()) > 0.0
    # Colours outside the seams do not change the loss.
    changed = rgb.detach().clone()
    changed[~seams] = 0.5
    torch.testing.assert_close(seam_distill_loss(changed, rgb_aux, seams, _hwc_loss_map),
                               loss.detach())
