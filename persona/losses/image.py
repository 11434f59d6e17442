"""The per-pixel image loss map (METHOD.md section 5) and its weighted reduction."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from persona.ops.image import ssim_map

# A perceptual distance: (render, target) [B, 3, H, W] in [0, 1] -> spatial map [B, 1, H, W].
LpipsFn = Callable[[Tensor, Tensor], Tensor]


def image_loss_map(
    render: Tensor,
    target: Tensor,
    l1_weight: float = 0.8,  # weight of the L1 map (METHOD.md section 5)
    ssim_weight: float = 0.2,  # weight of the (1 - SSIM) map, Gaussian window 11, sigma 1.5
    lpips_weight: float = 1.0,  # weight of the LPIPS-VGG spatial map (0 skips it)
    lpips_fn: LpipsFn | None = None,  # LPIPS module taking images in [0, 1], spatial output
) -> Tensor:
    """Per-pixel image loss of render vs target [B, 3, H, W] in [0, 1] -> [B, 1, H, W].

    l1_weight * mean_c |render - target| + ssim_weight * mean_c (1 - SSIM) + lpips_weight * LPIPS.
    Terms with weight 0 are not computed. Spatial weights (seams) multiply the returned map.
    """
    if render.ndim != 4 or render.shape != target.shape:
        raise ValueError(f"image_loss_map: render and target must both be [B, C, H, W], got "
                         f"{list(render.shape)} and {list(target.shape)}")
    loss = render.new_zeros(render.shape[0], 1, *render.shape[2:])
    if l1_weight:
        loss = loss + l1_weight * (render - target).abs().mean(1, keepdim=True)
    if ssim_weight:
        loss = loss + ssim_weight * (1.0 - ssim_map(render, target)).mean(1, keepdim=True)
    if lpips_weight:
        if lpips_fn is None:
            raise ValueError("image_loss_map: lpips_weight is nonzero but no lpips_fn was given "
                             "(set the LPIPS weight to 0 or provide the LPIPS module)")
        perceptual = lpips_fn(render, target)
        if perceptual.shape != loss.shape:
            raise ValueError(f"image_loss_map: lpips_fn must return a spatial map "
                             f"{list(loss.shape)}, got {list(perceptual.shape)}")
        loss = loss + lpips_weight * perceptual
    return loss


def weighted_mean(loss_map: Tensor, weight_map: Tensor | None = None) -> Tensor:
    """Mean over all pixels of loss_map [B, 1, H, W] times weight_map (same shape, or None).

    The mean is over every pixel, not normalised by the weights: a pixel of weight 0.1 counts a
    tenth (the seam down-weighting of METHOD.md section 6).
    """
    if weight_map is None:
        return loss_map.mean()
    if weight_map.shape != loss_map.shape:
        raise ValueError(f"weighted_mean: weight_map {list(weight_map.shape)} does not match "
                         f"loss_map {list(loss_map.shape)}")
    return (loss_map * weight_map).mean()
