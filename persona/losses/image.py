"""The per-pixel image loss map (METHOD.md section 5) and its weighted reduction."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from persona.ops.image import ssim_map

# A perceptual distance: (render, target) [B, 3, H, W] in [0, 1] -> a spatial map
# [B, 1, H, W] or one distance per image ([B] or [B, 1, 1, 1]).
LpipsFn = Callable[[Tensor, Tensor], Tensor]


def lpips_per_pixel(perceptual: Tensor, shape: tuple[int, ...], spatial: bool) -> Tensor:
    """The LPIPS part of the loss map [B, 1, H, W] (= shape) from lpips_fn's output.

    spatial=False (the authors' ImgLoss): the scalar distance of each image ([B], [B, 1, 1, 1],
    or the mean of a spatial map) on every pixel, so spatial weights scale it uniformly.
    spatial=True (ours): the spatial map itself, which must be [B, 1, H, W].
    """
    batch = shape[0]
    if spatial:
        if tuple(perceptual.shape) != tuple(shape):
            raise ValueError(f"image_loss_map: lpips_fn must return a spatial map {list(shape)}"
                             f" when lpips_spatial is set, got {list(perceptual.shape)}")
        return perceptual
    if perceptual.ndim == 4 and perceptual.shape[:2] == (batch, 1):
        distance = perceptual.mean((2, 3), keepdim=True)  # [B, 1, 1, 1]
    elif perceptual.numel() == batch:
        distance = perceptual.reshape(batch, 1, 1, 1)  # [B, 1, 1, 1]
    else:
        raise ValueError(f"image_loss_map: lpips_fn must return [B], [B, 1, 1, 1] or "
                         f"[B, 1, H, W] with B = {batch}, got {list(perceptual.shape)}")
    return distance.expand(shape)


def image_loss_map(
    render: Tensor,
    target: Tensor,
    l1_weight: float = 0.8,  # weight of the L1 map (METHOD.md section 5)
    ssim_weight: float = 0.2,  # weight of the (1 - SSIM) map, Gaussian window 11, sigma 1.5
    lpips_weight: float = 1.0,  # weight of the LPIPS-VGG spatial map (0 skips it)
    lpips_fn: LpipsFn | None = None,  # LPIPS module taking images in [0, 1]
    lpips_spatial: bool = False,  # True: LPIPS as a spatial map (ours); False: scalar (authors)
) -> Tensor:
    """Per-pixel image loss of render vs target [B, 3, H, W] in [0, 1] -> [B, 1, H, W].

    l1_weight * mean_c |render - target| + ssim_weight * mean_c (1 - SSIM) + lpips_weight * LPIPS,
    LPIPS being the image's scalar distance added to every pixel (the authors' ImgLoss, whose
    lpips.LPIPS is not spatial) or, with lpips_spatial, LPIPS's spatial map. Terms with weight 0
    are not computed. Spatial weights (seams) multiply the returned map.
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
        perceptual = lpips_per_pixel(lpips_fn(render, target), tuple(loss.shape),
                                     lpips_spatial)  # [B, 1, H, W]
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
