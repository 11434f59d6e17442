"""Seam detection on the rendered canonical positional map (METHOD.md section 6).

Body parts that touch in the posed image but lie far apart in the canonical big pose (an arm in
front of the torso, the silhouette against the background) show as sharp changes of the rendered
canonical position. Those pixels get a low weight in input-image losses and are distilled from
rgb_aux instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from persona.ops.image import dilate, sobel_magnitude

# Canonical positions p (metres) are rendered as colour (p / POSITION_UNIT_METRES + 1) / 2.
POSITION_UNIT_METRES = 1.0

# (render, target) [H, W, 3] in [0, 1] -> per-pixel image loss map (any shape; it is averaged).
LossMapFn = Callable[[Tensor, Tensor], Tensor]


def positional_colours(canonical_positions: Tensor) -> Tensor:
    """Colours of the positional map: (p / 1 m + 1) / 2. [N, 3] -> [N, 3]."""
    return (canonical_positions / POSITION_UNIT_METRES + 1.0) / 2.0


def seam_dilation_size(alpha: Tensor, dilation_fraction: float,
                       alpha_box_threshold: float) -> int:
    """Odd side of the dilation square: dilation_fraction x the longer side of the bounding box
    of alpha > alpha_box_threshold, rounded to the nearest integer (Python's round, half to
    even, as the authors' get_kernel_size), then forced odd; 1 without such pixels."""
    inside = alpha.reshape(alpha.shape[0], alpha.shape[1]) > alpha_box_threshold
    if not bool(inside.any()):
        return 1
    rows = torch.nonzero(inside.any(1)).flatten()
    cols = torch.nonzero(inside.any(0)).flatten()
    box_height = int(rows.max() - rows.min()) + 1
    box_width = int(cols.max() - cols.min()) + 1
    size = int(round(dilation_fraction * max(box_height, box_width)))
    return size if size % 2 == 1 else size + 1


@torch.no_grad()
def detect_seams(
    positional_map: Tensor,
    alpha: Tensor,
    face_mask: Tensor | None = None,
    threshold: float = 0.02,  # Sobel magnitude above which a pixel is a seam (METHOD.md sec. 6)
    dilation_fraction: float = 0.015,  # dilation side as a fraction of the alpha box's size
    alpha_box_threshold: float = 0.9,  # alpha defining the box that sizes the dilation
) -> Tensor:
    """positional_map [H, W, 3] (rendered positional colours, on black), alpha [H, W, 1],
    face_mask [H, W] bool (the face interior, removed) -> seams [H, W] bool. No gradient.

    Normalised Sobel, magnitude over x/y per channel, mean over the 3 channels; > threshold;
    minus the face interior; dilated by a square of side dilation_fraction x max(h, w) of the
    alpha > alpha_box_threshold box (forced odd).
    """
    if positional_map.ndim != 3 or positional_map.shape[-1] != 3:
        raise ValueError(f"detect_seams: positional_map must be [H, W, 3], "
                         f"got {list(positional_map.shape)}")
    height, width = positional_map.shape[:2]
    if alpha.shape not in ((height, width, 1), (height, width)):
        raise ValueError(f"detect_seams: alpha must be [{height}, {width}, 1], "
                         f"got {list(alpha.shape)}")
    image = positional_map.permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    seams = sobel_magnitude(image)[0, 0] > threshold  # [H, W]
    if face_mask is not None:
        if face_mask.shape != (height, width):
            raise ValueError(f"detect_seams: face_mask must be [{height}, {width}], "
                             f"got {list(face_mask.shape)}")
        seams = seams & ~face_mask.bool()
    size = seam_dilation_size(alpha, dilation_fraction, alpha_box_threshold)
    return dilate(seams, size)


def seam_weight_map(seams: Tensor, seam_weight: float) -> Tensor:
    """Per-pixel loss weights: seam_weight on seams, 1 elsewhere. [H, W] bool -> [H, W] float."""
    ones = torch.ones(seams.shape, dtype=torch.float32, device=seams.device)
    return torch.where(seams, ones * seam_weight, ones)


def seam_distill_loss(rgb_render: Tensor, rgb_aux_render: Tensor, seams: Tensor,
                      loss_map_fn: LossMapFn) -> Tensor:
    """Seam distillation (METHOD.md section 12; the authors' img_boundary terms): the full image
    loss of rgb_render x seams against the DETACHED rgb_aux_render x seams, averaged over all
    pixels. rgb_render [H, W, 3]: the rgb render with geometry detached, composited over the
    image; rgb_aux_render [H, W, 3]: the rgb_aux render (geometry detached) composited the same
    way; seams [H, W] bool or float, detected on the same variant's render (base or refined).
    loss_map_fn: e.g. 0.8 L1 + 0.2 (1 - SSIM) + LPIPS. Outside the seams both images are 0."""
    if rgb_render.shape != rgb_aux_render.shape or rgb_render.shape[:2] != seams.shape:
        raise ValueError(f"seam_distill_loss: rgb {list(rgb_render.shape)}, rgb_aux "
                         f"{list(rgb_aux_render.shape)} and seams {list(seams.shape)} differ")
    seam = seams.detach().to(rgb_render.dtype)[..., None]  # [H, W, 1]
    return loss_map_fn(rgb_render * seam, rgb_aux_render.detach() * seam).mean()
