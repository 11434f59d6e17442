"""Colour regularisers as the authors' code computes them (METHOD.md section 12).

- hand_image_tv_loss: squared total variation of the RENDERED hand images (each hand's Gaussians
  alone, geometry detached, on black) on pixel pairs both inside hand alpha > 0.9 (the authors'
  TVReg, x 100 in the table).
- hand_rgb_aux_loss: hand Gaussian colours toward the detached rgb_aux colours, squared.
- mouth_rgb_loss: mouth-interior colours toward the detached mean colour of its ring, squared.

The older forms (TV over mesh edges, absolute differences) stay in persona.losses.regularizers.
"""

from __future__ import annotations

from torch import Tensor

# Hand pixels count for the total variation where the hand's rendered alpha exceeds this.
HAND_ALPHA_THRESHOLD = 0.9


def hand_image_tv_loss(hand_images: Tensor, hand_alpha: Tensor,
                       alpha_threshold: float = HAND_ALPHA_THRESHOLD) -> Tensor:
    """Squared total variation of rendered hand images inside their alpha (the authors' TVReg).

    hand_images [K, H, W, C] (one render per hand, e.g. K = 2: right, left), hand_alpha
    [K, H, W, 1] or [K, H, W] (each hand's own alpha; thresholded, so no gradient through it).
    Horizontal term: (x[:, :, j] - x[:, :, j+1])^2 on pairs with both pixels inside, averaged
    over all K x H x (W - 1) x C entries (not over the inside pairs); vertical likewise; their
    sum.
    """
    if hand_images.ndim != 4:
        raise ValueError(f"hand_image_tv_loss: hand_images must be [K, H, W, C], got "
                         f"{list(hand_images.shape)}")
    if hand_alpha.ndim == 4:
        hand_alpha = hand_alpha[..., 0]
    if hand_alpha.shape != hand_images.shape[:3]:
        raise ValueError(f"hand_image_tv_loss: hand_alpha {list(hand_alpha.shape)} must be "
                         f"{list(hand_images.shape[:3])}")
    inside = (hand_alpha.detach() > alpha_threshold).to(hand_images.dtype)[..., None]  # [K,H,W,1]
    dx = (hand_images[:, :, :-1] - hand_images[:, :, 1:]) ** 2  # [K, H, W-1, C]
    dy = (hand_images[:, :-1] - hand_images[:, 1:]) ** 2  # [K, H-1, W, C]
    horizontal = (dx * inside[:, :, :-1] * inside[:, :, 1:]).mean()
    vertical = (dy * inside[:, :-1] * inside[:, 1:]).mean()
    return horizontal + vertical


def hand_rgb_aux_loss(rgb: Tensor, rgb_aux: Tensor, hand_mask: Tensor,
                      squared: bool = True) -> Tensor:
    """Hand colours toward rgb_aux (detached): mean over hand Gaussians and channels of
    (rgb - rgb_aux)^2 (authors), or |rgb - rgb_aux| with squared=False (ours before).
    rgb, rgb_aux [N, 3] activated colours; hand_mask [N] bool. No hand Gaussian: 0. Masked
    sums, not boolean indexing: nothing is read back to the host."""
    diff = rgb - rgb_aux.detach()  # [N, 3]
    return masked_mean(diff ** 2 if squared else diff.abs(), hand_mask)


def mouth_rgb_loss(rgb: Tensor, mouth_mask: Tensor, ring_mask: Tensor,
                   squared: bool = True) -> Tensor:
    """Mouth-interior colours toward the detached mean colour of the surrounding ring: mean over
    the interior and channels of (rgb_i - mean_ring rgb)^2 (authors), or |.| with squared=False.
    rgb [N, 3]; masks [N] bool. An empty interior or ring gives 0."""
    ring = ring_mask.to(rgb.dtype)[:, None]  # [N, 1]
    ring_count = ring.sum()
    target = ((rgb * ring).sum(0) / ring_count.clamp(min=1)).detach()  # [3]
    diff = rgb - target  # [N, 3]
    loss = masked_mean(diff ** 2 if squared else diff.abs(), mouth_mask)
    return loss * (ring_count > 0).to(loss.dtype)  # an empty ring: 0


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values [N, C] over the rows where mask [N] is True and every channel; 0 (with a
    zero gradient) when none is."""
    weight = mask.to(values.dtype)[:, None]  # [N, 1]
    count = weight.sum() * values.shape[1]
    return (values * weight).sum() / count.clamp(min=1)
