"""Image operators: the SSIM map, Gaussian blur, Sobel gradients and binary dilation.

Images are channel-first [B, C, H, W] floats unless a docstring says otherwise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# SSIM stabilisers of Wang et al. 2004: C1 = (K1 L)^2, C2 = (K2 L)^2 with L the data range.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# The 3x3 Sobel kernel's absolute weights sum to 8; dividing by it makes the response of a unit
# ramp per pixel equal to 1 (kornia's `spatial_gradient(normalized=True)`).
SOBEL_NORMALIZER = 8.0


def _check_image(x: Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an image batch [B, C, H, W], got {list(x.shape)}")


def gaussian_window(window_size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalised 1D Gaussian of odd length window_size. Returns [window_size]."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size: expected a positive odd integer, got {window_size}")
    coords = torch.arange(window_size, dtype=dtype, device=device) - (window_size - 1) / 2.0
    window = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    return window / window.sum()


def _filter_separable(x: Tensor, window: Tensor, padding_mode: str) -> Tensor:
    """Depthwise 'same' filtering of [B, C, H, W] by window (x) window."""
    channels = x.shape[1]
    radius = window.shape[0] // 2
    mode = "constant" if padding_mode == "zeros" else padding_mode
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    kernel_h = window.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    kernel_w = window.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
    x = F.conv2d(x, kernel_h, groups=channels)
    return F.conv2d(x, kernel_w, groups=channels)


GAUSSIAN_RADIUS_SIGMAS = 3.0  # a Gaussian blur's window reaches this many sigmas each side


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of [B, C, H, W] with std ``sigma`` pixels (window +-3 sigma, borders
    replicated, so a constant image stays constant) -> [B, C, H, W]."""
    _check_image(x, "x")
    if sigma <= 0:
        raise ValueError(f"gaussian_blur: sigma must be > 0 pixels, got {sigma}")
    radius = max(1, math.ceil(GAUSSIAN_RADIUS_SIGMAS * sigma))
    radius = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)  # replicate padding's limit
    window = gaussian_window(2 * radius + 1, sigma, x.dtype, x.device)
    return _filter_separable(x, window, "replicate")


def ssim_map(
    x: Tensor,
    y: Tensor,
    window_size: int = 11,  # Gaussian window side (METHOD.md section 5)
    sigma: float = 1.5,  # Gaussian window standard deviation in pixels (METHOD.md section 5)
    data_range: float = 1.0,  # value range of the images
    padding_mode: Literal["zeros", "reflect", "replicate"] = "zeros",  # 3DGS's ssim pads zeros
) -> Tensor:
    """Per-pixel, per-channel SSIM of x and y [B, C, H, W] -> [B, C, H, W].

    Local statistics use a Gaussian window; the borders are padded so the map has the input's
    size. Away from the border (window_size // 2 pixels) the values do not depend on the padding
    and equal torchmetrics' ``structural_similarity_index_measure`` map (which pads by
    reflection: ``padding_mode="reflect"`` reproduces it everywhere).
    """
    _check_image(x, "x")
    if x.shape != y.shape:
        raise ValueError(f"ssim_map: x and y shapes differ: {list(x.shape)} vs {list(y.shape)}")
    window = gaussian_window(window_size, sigma, x.dtype, x.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    stats = _filter_separable(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, padding_mode)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x = (xx - mu_x * mu_x).clamp(min=0.0)  # rounding can make tiny variances negative
    var_y = (yy - mu_y * mu_y).clamp(min=0.0)
    cov_xy = xy - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def sobel_gradients(x: Tensor, normalized: bool = True) -> Tensor:
    """Sobel derivatives of [B, C, H, W] along x (columns) and y (rows) -> [B, C, 2, H, W].

    Replicate padding keeps the size (no false edges at the border). ``normalized`` divides the
    kernels by 8 so that a ramp of slope s per pixel gives s (kornia's normalisation).
    """
    _check_image(x, "x")
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                            dtype=x.dtype, device=x.device)
    if normalized:
        kernel_x = kernel_x / SOBEL_NORMALIZER
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # [2, 1, 3, 3]
    batch, channels, height, width = x.shape
    flat = F.pad(x.reshape(batch * channels, 1, height, width), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(flat, kernels).reshape(batch, channels, 2, height, width)


def sobel_magnitude(x: Tensor, eps: float = 1e-6, normalized: bool = True) -> Tensor:
    """Edge strength of [B, C, H, W] -> [B, 1, H, W] (METHOD.md section 6).

    Per channel sqrt(gx^2 + gy^2 + eps) of the (normalised) Sobel gradients, as kornia's
    ``filters.sobel``; then the mean over channels.
    """
    gradients = sobel_gradients(x, normalized)  # [B, C, 2, H, W]
    magnitude = torch.sqrt((gradients * gradients).sum(2) + eps)  # [B, C, H, W]
    return magnitude.mean(1, keepdim=True)


def dilate(mask: Tensor, kernel_size: int) -> Tensor:
    """Binary dilation of mask [H, W] (or [B, H, W]) by a square of odd side -> same shape, bool."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"dilate: kernel_size must be a positive odd integer, got {kernel_size}")
    if mask.ndim not in (2, 3):
        raise ValueError(f"dilate: expected mask [H, W] or [B, H, W], got {list(mask.shape)}")
    if kernel_size == 1:
        return mask.bool().clone()
    batched = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    dilated = F.max_pool2d(batched, kernel_size, stride=1, padding=kernel_size // 2)
    return dilated.reshape(mask.shape) > 0.5
