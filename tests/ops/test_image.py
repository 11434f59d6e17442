"""SSIM map against torchmetrics, Sobel on known ramps and steps, dilation."""

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from persona.ops.image import dilate, gaussian_blur, sobel_gradients, sobel_magnitude, ssim_map


def _image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 48, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 3, 40, 48, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_ssim_matches_torchmetrics() -> None:
    x, y = _image_pair()
    _, reference_map = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
        return_full_image=True)
    reference_mean = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0)
    # torchmetrics pads by reflection: with the same padding the whole map and its mean agree.
    reflect = ssim_map(x, y, padding_mode="reflect")
    assert reflect.shape == x.shape
    torch.testing.assert_close(reflect, reference_map, atol=1e-10, rtol=0)
    torch.testing.assert_close(reflect.mean(), reference_mean, atol=1e-10, rtol=0)
    # With zero padding (the default) only the border band of window_size // 2 pixels differs.
    zeros = ssim_map(x, y)
    interior = (slice(None), slice(None), slice(5, -5), slice(5, -5))
    torch.testing.assert_close(zeros[interior], reference_map[interior], atol=1e-10, rtol=0)
    assert (zeros[..., :5, :] - reference_map[..., :5, :]).abs().max() > 1e-3


def test_ssim_is_one_for_identical_images_and_differentiable() -> None:
    x, y = _image_pair()
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))
    y = y.clone().requires_grad_(True)
    ssim_map(x, y).mean().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_sobel_unit_ramp_gives_unit_gradient() -> None:
    height, width = 9, 11
    ramp_x = torch.arange(width, dtype=torch.float64).expand(height, width)[None, None]
    grads = sobel_gradients(ramp_x)  # [1, 1, 2, H, W]
    interior = (0, 0, slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(grads[interior][0], torch.ones(height - 2, width - 2,
                                                               dtype=torch.float64))
    torch.testing.assert_close(grads[interior][1], torch.zeros(height - 2, width - 2,
                                                               dtype=torch.float64))
    # Along rows: the y derivative.
    ramp_y = ramp_x.transpose(-1, -2) * 0.5
    grads_y = sobel_gradients(ramp_y)
    torch.testing.assert_close(grads_y[0, 0, 1, 1:-1, 1:-1],
                               torch.full((width - 2, height - 2), 0.5, dtype=torch.float64))


def test_sobel_magnitude_of_step_mean_over_channels() -> None:
    image = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    image[:, 0, :, 4:] = 1.0  # a unit vertical step in the first channel only
    magnitude = sobel_magnitude(image, eps=0.0)
    assert magnitude.shape == (1, 1, 8, 8)
    # Normalised Sobel of a unit step: 4/8 on both columns next to it; mean over 3 channels.
    torch.testing.assert_close(magnitude[0, 0, :, 3], torch.full((8,), 0.5 / 3,
                                                                 dtype=torch.float64))
    torch.testing.assert_close(magnitude[0, 0, :, 4], torch.full((8,), 0.5 / 3,
                                                                 dtype=torch.float64))
    assert magnitude[0, 0, :, :3].abs().max() == 0 and magnitude[0, 0, :, 5:].abs().max() == 0


def test_dilate_square() -> None:
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[4, 4] = True
    out = dilate(mask, 3)
    assert out.dtype == torch.bool and int(out.sum()) == 9 and out[3:6, 3:6].all()
    out5 = dilate(mask, 5)
    assert int(out5.sum()) == 25
    mask[0, 0] = True
    assert int(dilate(mask, 3)[:2, :2].sum()) == 4  # clipped at the border
    with pytest.raises(ValueError, match="odd"):
        dilate(mask, 4)


def test_gaussian_blur_keeps_mass_and_constants_and_matches_its_std() -> None:
    image = torch.zeros(1, 1, 81, 81, dtype=torch.float64)
    image[0, 0, 40, 40] = 1.0
    blurred = gaussian_blur(image, 3.0)
    assert torch.isclose(blurred.sum(), torch.tensor(1.0, dtype=torch.float64))
    coords = torch.arange(81, dtype=torch.float64) - 40
    variance_x = (blurred[0, 0].sum(0) * coords ** 2).sum()
    assert 8.6 < float(variance_x) < 9.0  # std 3 px, truncated at 3 sigma (variance x 0.97)
    constant = torch.full((1, 2, 20, 30), 0.7)
    assert torch.allclose(gaussian_blur(constant, 5.0), constant)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(constant, 0.0)
