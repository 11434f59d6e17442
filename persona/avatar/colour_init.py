"""Colours at step 0 (METHOD.md section 1's unwrap, without UV maps).

rgb from the input image (else generated video 0), rgb_aux from generated video 0, seg from the
input image's part segmentation. Each Gaussian visible in a source frame takes the colour of its
pixel; unseen Gaussians take the colour of the nearest seen one in canonical space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from persona.render.projection import MIN_PROJECTION_DEPTH, project_points
from persona.render.types import Camera, Gaussians

VISIBILITY_TOLERANCE = 0.02  # m: a Gaussian within this of the rendered depth is visible
COVERAGE_ALPHA = 0.5  # rendered alpha above which a pixel counts as covered by the avatar
SOURCE_MASK_FOREGROUND = 0.5  # the source frame's mask above which a pixel is the subject
MIN_ALPHA = 1e-6  # alpha is clamped to this when normalising the rendered depth
UNWRAP_KEYS = ("image", "seg")  # the maps sampled at each visible Gaussian's pixel


@dataclass
class Unwrapped:
    """Colours sampled from one source frame."""

    is_input: bool  # the source is the input image (else a generated frame)
    colours: dict[str, Tensor]  # key -> [N, C] the map's value at each Gaussian's pixel
    visible: Tensor  # [N] bool: the Gaussian is in front and inside the subject's mask


def colour_source_rows(frames: list) -> list[int]:
    """Rows of the input image and of the first frame of the first generated split."""
    rows = [i for i, f in enumerate(frames) if f.is_input][:1]
    generated = sorted((f.split, f.index, i) for i, f in enumerate(frames) if not f.is_input)
    return rows + [generated[0][2]] if generated else rows


def unwrap_colours(sample: dict, gaussians: Gaussians, rendered: dict[str, Tensor],
                   camera: Camera, keys: tuple[str, ...] = UNWRAP_KEYS
                   ) -> tuple[dict[str, Tensor], Tensor]:
    """Colours of the maps sample[key] [H, W, C] at each Gaussian's pixel, and which Gaussians
    are visible there (inside the image, on a covered pixel of the render `rendered` of
    `gaussians` through `camera`, inside the sample's mask, not behind the rendered depth).
    Returns ({key: [N, C]}, visible [N] bool)."""
    uv, z = project_points(gaussians.means, camera)  # [N, 2], [N]
    z = z.clamp(min=MIN_PROJECTION_DEPTH)  # as the division sees it
    col = uv[:, 0].floor().long()
    row = uv[:, 1].floor().long()
    inside = (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    col, row = col.clamp(0, camera.width - 1), row.clamp(0, camera.height - 1)
    alpha = rendered["alpha"][row, col, 0]  # [N]
    depth = rendered["depth"][row, col, 0] / alpha.clamp(min=MIN_ALPHA)
    covered = alpha > COVERAGE_ALPHA
    in_mask = sample["mask"][row, col, 0] > SOURCE_MASK_FOREGROUND
    visible = inside & covered & in_mask & (z <= depth + VISIBILITY_TOLERANCE)
    return {k: sample[k][row, col] for k in keys}, visible


def fill_unseen(colours: Tensor, visible: Tensor, positions: Tensor, fill: float) -> Tensor:
    """Unseen rows of colours [N, C] take the colour of the nearest seen position [N, 3];
    all unseen -> fill."""
    colours = colours.clone().float()
    if not bool(visible.any()):
        return torch.full_like(colours, fill)
    if bool(visible.all()):
        return colours
    from scipy.spatial import cKDTree

    tree = cKDTree(positions[visible].cpu().numpy())
    _, nearest = tree.query(positions[~visible].cpu().numpy())
    colours[~visible] = colours[visible][torch.as_tensor(nearest, device=colours.device)]
    return colours


def initial_colours(sources: list[Unwrapped], canonical: Tensor, fill: float
                    ) -> dict[str, Tensor | None] | None:
    """{"rgb", "rgb_aux", "seg"}: [N, 3] in [0, 1] (seg None without an input image) from the
    unwrapped sources; None when no source saw anything to unwrap from (no source frames)."""
    rgb = rgb_aux = seg = None
    for source in sources:
        if source.is_input:
            rgb, seg = source.colours["image"], source.colours["seg"]
            rgb_visible = seg_visible = source.visible
        elif rgb_aux is None:
            rgb_aux, aux_visible = source.colours["image"], source.visible
    if rgb is None and rgb_aux is not None:
        rgb, rgb_visible = rgb_aux, aux_visible
    if rgb is None:
        return None
    if rgb_aux is None:
        rgb_aux, aux_visible = rgb, rgb_visible
    return {"rgb": fill_unseen(rgb, rgb_visible, canonical, fill),
            "rgb_aux": fill_unseen(rgb_aux, aux_visible, canonical, fill),
            "seg": fill_unseen(seg, seg_visible, canonical, fill) if seg is not None else None}
