"""The per-pixel image loss map and its weighted reduction."""

import pytest
import torch

from persona.losses.image import image_loss_map, weighted_mean
from persona.ops.image import ssim_map


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    render = torch.rand(2, 3, 20, 24, generator=generator)
    target = torch.rand(2, 3, 20, 24, generator=generator)
    return render, target


def test_map_is_weighted_sum_of_parts() -> None:
    render, target = _pair()

    def fake_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).sum(1, keepdim=True)

    loss = image_loss_map(render, target, 0.8, 0.2, 1.0, fake_lpips, lpips_spatial=True)
    assert loss.shape == (2, 1, 20, 24)
    l1 = (render - target).abs().mean(1, keepdim=True)
    dssim = (1 - ssim_map(render, target)).mean(1, keepdim=True)
    expected = 0.8 * l1 + 0.2 * dssim + fake_lpips(render, target)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(image_loss_map(render, target, 1.0, 0.0, 0.0), l1)


def test_zero_at_equality_and_lpips_required() -> None:
    render, _ = _pair()
    assert float(image_loss_map(render, render, lpips_weight=0.0).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="lpips_fn"):
        image_loss_map(render, render)


def test_lpips_is_the_scalar_distance_on_every_pixel_by_default() -> None:
    """The authors' ImgLoss adds the image's scalar LPIPS to every pixel; the old code used the
    spatial map (and rejected a scalar distance)."""
    render, target = _pair()

    def fake_spatial(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).sum(1, keepdim=True)  # [B, 1, H, W]

    def fake_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).sum(1).mean((1, 2))  # [B], as LPIPSDistance

    base = image_loss_map(render, target, 0.8, 0.2, 0.0)
    for fn in (fake_spatial, fake_distance):
        loss = image_loss_map(render, target, 0.8, 0.2, 0.5, fn)
        perceptual = (loss - base) / 0.5  # [B, 1, H, W]
        distance = fake_spatial(render, target).mean((1, 2, 3))  # [B]
        torch.testing.assert_close(perceptual, distance[:, None, None, None].expand_as(base))
    # Seam weights scale the scalar uniformly: weighted mean = mean(w) x distance for LPIPS.
    weights = torch.ones_like(base)
    weights[..., :5, :] = 0.1
    only_lpips = image_loss_map(render, target, 0.0, 0.0, 1.0, fake_distance)
    expected = weights.mean() * fake_distance(render, target).mean()
    torch.testing.assert_close(weighted_mean(only_lpips, weights), expected)
    with pytest.raises(ValueError, match="spatial map"):
        image_loss_map(render, target, 0.8, 0.2, 1.0, fake_distance, lpips_spatial=True)


def test_weighted_mean_counts_down_weighted_pixels_partially() -> None:
    loss = torch.ones(1, 1, 2, 2)
    weights = torch.tensor([[[[0.1, 1.0], [1.0, 1.0]]]])
    assert float(weighted_mean(loss, weights)) == pytest.approx(3.1 / 4)
    assert float(weighted_mean(loss)) == 1.0
