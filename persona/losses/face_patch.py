"""The face patch of the input image (METHOD.md section 5: "a 256^2 super-resolved face patch of
the input image adds patch losses x0.1 (optional)").

The authors super-resolve the face crop with ResShift; no SR model is used here, so the patch is
the input image's face at its native resolution (training runs at a lower
``data.resolution_scale``), resampled to a square of ``patch`` pixels. The avatar is rendered
with a camera whose image is exactly that square, so patch pixel (u, v) and native pixel
``(x0 + (u + 0.5) / s, y0 + (v + 0.5) / s)`` (s = patch / side) see the same ray.
Pure functions; the system wires them (``model.losses.face_patch``).

The authors' patch terms (avatar/main/model.py, all x 0.1, input image only, BASE render only):
- patch_face: image loss of the face Gaussians' render (all Gaussians rasterised, colours rgb x
  is_face, so other parts occlude in black) composited over the patch with the face Gaussians'
  own alpha (not detached), x a face-boundary weight map (0.1 on the boundary, 1 elsewhere);
- patch_face_boundary: seam distillation inside the face boundary (the full-avatar rgb render
  with geometry detached vs the face Gaussians' rgb_aux render, detached);
- patch_mask_face: |face Gaussians' alpha - SMPL-X face silhouette| (eyes + expression vertices);
- patch_face_geo: L1 of the face Gaussians rendered with their frozen initial colours vs patch.
On the full input image, face_geo is the same L1 at weight 1. Here is_face = expression face
plus eyes. The face boundary is the seam detector run on the patch render of the positional
colours x is_face, minus the SMPL-X face (with the mouth interior) > 0.9, dilated by 0.06 x the
box of the face alpha > 0.9.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from persona.losses.seams import (
    LossMapFn,
    detect_seams,
    seam_distill_loss,
    seam_weight_map,
)
from persona.render.types import Camera

# Dilation of the face boundary as a fraction of the face alpha box (authors' patch_kernel_ratio).
FACE_BOUNDARY_DILATION_FRACTION = 0.06
# Sobel magnitude threshold of the face boundary (the authors' boundary_thr, as for seams).
FACE_BOUNDARY_THRESHOLD = 0.02
# Alpha defining the box that sizes the dilation (authors: mask > 0.9).
FACE_BOUNDARY_ALPHA_BOX = 0.9
# Weight of face-boundary pixels in the patch image loss (authors: 0.1).
FACE_BOUNDARY_PIXEL_WEIGHT = 0.1


def face_box(points_2d: Tensor, width: int, height: int, margin: float) -> tuple[int, int, int]:
    """Square integer crop (x0, y0, side) around 2D points [P, 2] (pixels), enlarged by
    ``margin`` about their centre and shifted (not shrunk) to lie inside the image; the side is
    at most the image's shorter side."""
    lo, hi = points_2d.min(0).values, points_2d.max(0).values  # [2]
    centre = (lo + hi) / 2
    side = int(math.ceil(float((hi - lo).max()) * margin))
    side = max(1, min(side, width, height))
    x0 = int(round(float(centre[0]) - side / 2))
    y0 = int(round(float(centre[1]) - side / 2))
    return min(max(x0, 0), width - side), min(max(y0, 0), height - side), side


def crop_camera(camera: Camera, x0: int, y0: int, side: int, patch: int) -> Camera:
    """The camera whose ``patch`` x ``patch`` image is the square crop (x0, y0, side) of
    ``camera``'s image, resampled: u' = (u - x0) s with s = patch / side (continuous pixels)."""
    s = patch / side
    K = camera.K.clone()
    K[0, 0], K[1, 1] = K[0, 0] * s, K[1, 1] * s
    K[0, 2], K[1, 2] = (K[0, 2] - x0) * s, (K[1, 2] - y0) * s
    return Camera(K, camera.R, camera.t, patch, patch, camera.near, camera.far)


def crop_image(image: Tensor, x0: int, y0: int, side: int, patch: int) -> Tensor:
    """The square crop (x0, y0, side) of image [H, W, C] resampled to [patch, patch, C]
    (bilinear with antialiasing; pixel centres map as in ``crop_camera``)."""
    crop = image[y0:y0 + side, x0:x0 + side].permute(2, 0, 1)[None]  # [1, C, side, side]
    if side == patch:
        return crop[0].permute(1, 2, 0)
    out = F.interpolate(crop, size=(patch, patch), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0].permute(1, 2, 0).contiguous()  # [patch, patch, C]


def composite(render: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """render [H, W, 3] (on black) + background [H, W, 3] x (1 - alpha [H, W, 1])."""
    return render + background * (1.0 - alpha)


def detect_face_boundary(
    face_positional_map: Tensor,
    face_alpha: Tensor,
    face_interior: Tensor,
    threshold: float = FACE_BOUNDARY_THRESHOLD,  # Sobel magnitude threshold
    dilation_fraction: float = FACE_BOUNDARY_DILATION_FRACTION,  # of the face alpha box
) -> Tensor:
    """The authors' boundary_face: seams of the patch render of positional colours x is_face
    (all Gaussians rasterised; non-face ones black) [S, S, 3], minus face_interior [S, S] bool
    (the SMPL-X face with mouth interior, > 0.9), dilated by an odd square of side
    dilation_fraction x the longer side of the face_alpha [S, S, 1] > 0.9 box. -> [S, S] bool."""
    return detect_seams(face_positional_map, face_alpha, face_interior, threshold,
                        dilation_fraction, FACE_BOUNDARY_ALPHA_BOX)


def face_patch_image_loss(
    face_render: Tensor,
    face_alpha: Tensor,
    patch: Tensor,
    boundary: Tensor,
    loss_map_fn: LossMapFn,
    boundary_weight: float = FACE_BOUNDARY_PIXEL_WEIGHT,  # weight of face-boundary pixels
) -> Tensor:
    """The authors' patch_face (before its x 0.1): image loss of the face Gaussians' base render
    face_render [S, S, 3] (colours x is_face, on black) composited over patch [S, S, 3] with the
    face Gaussians' alpha face_alpha [S, S, 1] (not detached), against patch, weighted by
    boundary_weight on boundary [S, S] pixels, mean over all pixels. loss_map_fn returns a map
    whose last two dimensions are [S, S] (e.g. [1, 1, S, S])."""
    loss_map = loss_map_fn(composite(face_render, face_alpha, patch), patch)  # [..., S, S]
    weights = seam_weight_map(boundary.bool(), boundary_weight).to(loss_map)  # [S, S]
    return (loss_map * weights).mean()


def face_patch_boundary_loss(
    rgb_geo_detached: Tensor,
    face_aux_render: Tensor,
    face_alpha: Tensor,
    patch: Tensor,
    boundary: Tensor,
    loss_map_fn: LossMapFn,
) -> Tensor:
    """The authors' patch_face_boundary (before its x 0.1): seam distillation in the patch.
    rgb_geo_detached [S, S, 3]: the whole avatar's rgb render, geometry detached (on black);
    face_aux_render [S, S, 3]: the face Gaussians' rgb_aux render (colours x is_face); both
    composited over patch with face_alpha [S, S, 1] (detached for the first), then the image
    loss of the first x boundary vs the detached second x boundary, mean over all pixels."""
    render = composite(rgb_geo_detached, face_alpha.detach(), patch)  # [S, S, 3]
    target = composite(face_aux_render, face_alpha, patch)  # [S, S, 3], detached inside
    return seam_distill_loss(render, target, boundary, loss_map_fn)


def face_geo_loss(face_init_render: Tensor, face_alpha: Tensor, target: Tensor) -> Tensor:
    """The authors' face_geo (input image, x 1) and patch_face_geo (patch, x 0.1): mean over
    pixels and channels of |face_init_render + target (1 - face_alpha) - target|, where
    face_init_render [H, W, 3] renders the face Gaussians with their frozen INITIAL colours
    (x is_face; other Gaussians black, occluding) and face_alpha [H, W, 1] is the face
    Gaussians' alpha (not detached). Only geometry receives gradient."""
    if face_init_render.shape != target.shape:
        raise ValueError(f"face_geo_loss: render {list(face_init_render.shape)} and target "
                         f"{list(target.shape)} differ")
    return (composite(face_init_render, face_alpha, target) - target).abs().mean()
